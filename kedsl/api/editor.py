"""Interactive editing (notebooks): :class:`Editor`, the same executor as scripts use."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from ..editing.request import DEFAULT_REFUSAL, EditRequest
from ..errors import UsageError, did_you_mean
from ..lang import ast
from ..registry import Registry, get_registry
from ..registry.specs import CHANGE_KINDS


class Editor:
    """Edit a model interactively (notebooks): the same executor as scripts use."""

    def __init__(
        self,
        model: str | Any = "smollm2-135m",
        *,
        settings: dict[str, Any] | None = None,
        on_fail: str = "rollback",
        seed: int = 0,
        registry: Registry | None = None,
    ):
        from ..executor import Executor
        from ..model.loading import load_model

        self.registry = registry or get_registry()
        self.model = load_model(model, settings or {}, self.registry) if isinstance(model, str) else model
        self.executor = Executor(self.model, self.registry, on_fail=on_fail, seed=seed)
        self.reports: list[Any] = []

    def edit(
        self,
        subject: str,
        relation: str | None = None,
        target: str = "",
        *,
        prompt: str | None = None,
        old: str | None = None,
        method: str = "rome",
        params: dict[str, Any] | None = None,
        expect: Iterable[ast.Expect] = (),
        kind: str = "edit",
    ) -> Any:
        """Apply one change (relation form, or a free ``prompt`` containing ``subject``).
        ``kind`` is ``edit``, ``insert`` or ``erase``; an erasure's ``target`` is the
        refusal (default "I don't know.") and ``old`` the answer to erase."""
        from ..executor import PlannedEdit

        if kind not in CHANGE_KINDS:
            raise UsageError(f"unknown kind of change `{kind}`", "one of: " + ", ".join(CHANGE_KINDS))
        if kind == "erase":
            target = target or DEFAULT_REFUSAL
            if not old:
                raise UsageError("an erasure needs the answer to erase", "pass old=...")
        if not target:
            raise UsageError("an edit needs a non-empty target", "pass target=...")
        paraphrases: list[str] = []
        if prompt is None:
            if relation is None:
                raise UsageError("an edit needs a relation or a prompt", 'e.g. relation="located_in"')
            rel = self.registry.relation(relation)
            if rel is None:
                raise UsageError(f"unknown relation `{relation}`", did_you_mean(relation, self.registry.relation_names()))
            prompt = rel.prompt(subject)
            paraphrases = rel.paraphrase_prompts(subject)
        elif subject not in prompt:
            raise UsageError(f"the subject {subject!r} does not occur in the prompt {prompt!r}")
        self.registry.method(method)
        req = EditRequest(subject=subject, prompt=prompt, target=target, old=old, kind=kind, relation=relation, paraphrases=paraphrases)
        (report,) = self.executor.run([PlannedEdit(req, method, dict(params or {}), list(expect))])
        self.reports.append(report)
        return report

    def generate(self, prompts: str | list[str], max_new_tokens: int = 20) -> str | list[str]:
        from ..toolkit.generation import generate

        single = isinstance(prompts, str)
        out = generate(self.model, [prompts] if single else list(prompts), max_new_tokens=max_new_tokens)
        return out[0] if single else out

    def save(self, out_dir: str | Path) -> Path:
        from ..model.saving import save_model

        return save_model(self.model, Path(out_dir), {"edits": [r.request.__dict__ for r in self.reports]})
