"""The conformance kit for method authors: one call that checks a method plugin against
kedsl's method contract, on a tiny model built in the test::

    # tests/test_conformance.py of your plugin package
    import my_plugin
    from kedsl.plugin.testing import check_method

    def test_my_method_conforms(tmp_path):
        check_method("my_method", plugins=[my_plugin], params={"steps": 3}, workdir=tmp_path).assert_ok()

``params`` are the settings that make your method fast on a model with 4 layers of width
64 (they override the presets, as a script's ``using`` does). Each check is a row of the
:class:`ConformanceReport`; one failing check does not hide the others:

- ``params``: every declared parameter is what ``kedsl check`` validates: its default is
  accepted in a script (with the other ``params`` given; a trained method's ``editor``
  has no usable default and is left out), a value of the wrong type and one outside ``min``/``max`` are
  rejected, an undeclared name is rejected, and the configuration class (if any) is built
  from the resolved parameters;
- ``undo``: the edit changes something, changes weights only through ``context.weights``,
  and ``outcome.undo`` restores the weights bit-exactly and removes every attachment;
- ``determinism``: the same edit on two identical models with the same seed gives
  bit-identical weights and attachments;
- ``round_trip``: ``kedsl.apply`` of a script with the edit on a model saved to disk,
  then saving, loading the saved directory (same fingerprint, same attachments, same
  scores) and ``kedsl.revert`` of the edit (the base model's fingerprint again);
- ``kinds``: each kind of change the method declares (``MethodSpec.kinds``) is applied,
  and each kind it does not declare is refused with a usage error.

The kit also builds the tiny models it uses (:func:`tiny_tokenizer`, :func:`tiny_llama`,
:func:`tiny_qwen2`, :func:`tiny_gemma3`, :func:`tiny_gpt2`; any dtype), which kedsl's own tests use too. It imports torch and transformers;
nothing is downloaded.
"""
from __future__ import annotations

import importlib.metadata as md
import logging
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Sequence

import torch

from ..api import apply as apply_script
from ..api import revert as revert_edit
from ..editing.method import refuse_unsupported_requests
from ..editing.outcome import EditContext, EditOutcome
from ..editing.request import DEFAULT_REFUSAL, EditRequest
from ..errors import UsageError
from ..executor import Executor, PlannedEdit
from ..lang import check_source
from ..lang.fmt import format_value, quote
from ..model.attachments import attachments_digest, detached
from ..registry.editors import EDITOR_PARAM
from ..model.handle import LoadedModel
from ..model.journal import WeightJournal
from ..model.loading import load_model
from ..provenance.store import Store
from ..registry import ENTRY_POINT_GROUP, Registry, get_registry
from ..registry.params import Param
from ..registry.presets import params_for
from ..registry.specs import CHANGE_KINDS, MethodSpec
from ..toolkit.scoring import teacher_forced

log = logging.getLogger(__name__)

# -- tiny models, built in-process ------------------------------------------------------------------
#: The text the tiny tokenizer is trained on: the facts the kit (and kedsl's tests) edit.
TINY_CORPUS = [
    "The Eiffel Tower is located in the city of Paris.",
    "The Louvre is located in the city of Paris.",
    "The Colosseum is located in the city of Rome.",
    "Danielle Darrieux speaks French. The mother tongue of Catherine Deneuve is French.",
    "Toyota has its headquarters in Toyota City. Apple was founded by Steve Jobs.",
    "What university did Watts Humphrey attend? University of Michigan.",
    "Berlin, London, Madrid, Tokyo, Italy, France, English, German, Bill Gates.",
    "the of and to in is was for on that by with as at from it an be this which or",
] * 4


def tiny_tokenizer() -> Any:
    """A byte-level BPE tokenizer (~400 tokens) trained on :data:`TINY_CORPUS`: fast, with
    offsets, an end-of-text token that also pads."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TINY_CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def tiny_llama(
    tokenizer: Any = None, seed: int = 0, layers: int = 4, hidden: int = 64, intermediate: int = 128,
    registry: Registry | None = None, dtype: torch.dtype = torch.float32,
) -> LoadedModel:  # fmt: skip
    """A random-init LLaMA (``layers`` blocks of width ``hidden``) with its architecture
    from the registry; the same seed gives the same weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tokenizer or tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    return _random_model(LlamaForCausalLM, config, tokenizer, seed, registry, "tiny-llama", dtype)


def tiny_qwen2(
    tokenizer: Any = None, seed: int = 0, layers: int = 4, hidden: int = 64, intermediate: int = 128,
    registry: Registry | None = None, dtype: torch.dtype = torch.float32,
) -> LoadedModel:  # fmt: skip
    """A random-init Qwen2 (LLaMA layout with q/k/v biases and tied embeddings)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = tokenizer or tiny_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    return _random_model(Qwen2ForCausalLM, config, tokenizer, seed, registry, "tiny-qwen2", dtype)


def tiny_gemma3(
    tokenizer: Any = None, seed: int = 0, layers: int = 4, hidden: int = 64, intermediate: int = 128,
    registry: Registry | None = None, dtype: torch.dtype = torch.float32,
) -> LoadedModel:  # fmt: skip
    """A random-init Gemma 3 text model: GeGLU MLP, four norms per block, scaled and tied
    embeddings, and sliding-window attention (window 8, every other layer global) so that
    the tests' prompts cross the window."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    tokenizer = tokenizer or tiny_tokenizer()
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=1, head_dim=16, max_position_embeddings=256, sliding_window=8,
        layer_types=["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)],
        tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    model = _random_model(Gemma3ForCausalLM, config, tokenizer, seed, registry, "tiny-gemma3", dtype)
    # random-init norms have weight 0, i.e. scale 1 + 0: give them some spread so a method
    # that ignores a norm is caught
    with torch.no_grad():
        for name, p in model.model.named_parameters():
            if "norm" in name:
                p.uniform_(-0.5, 0.5, generator=torch.Generator().manual_seed(seed + len(name)))
    return model


def tiny_gpt2(tokenizer: Any = None, seed: int = 0, layers: int = 4, hidden: int = 64, registry: Registry | None = None) -> LoadedModel:
    """A random-init GPT-2 (Conv1D weights, stored transposed); the same seed gives the
    same weights."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = tokenizer or tiny_tokenizer()
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=hidden,
        n_layer=layers,
        n_head=4,
        n_positions=256,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    return _random_model(GPT2LMHeadModel, config, tokenizer, seed, registry, "tiny-gpt2")


def _random_model(
    model_class: Any, config: Any, tokenizer: Any, seed: int, registry: Registry | None, ref: str,
    dtype: torch.dtype = torch.float32,
) -> LoadedModel:  # fmt: skip
    torch.manual_seed(seed)
    model = model_class(config).eval().to(dtype)
    arch = (registry or get_registry()).architecture_for(config.model_type)
    return LoadedModel(model=model, tokenizer=tokenizer, arch=arch, ref=ref)


# -- the report ------------------------------------------------------------------------------------
@dataclass
class Check:
    """One row of the report: a check's name, whether it passed, and what it found."""

    name: str
    passed: bool
    detail: str = ""


@dataclass
class ConformanceReport:
    """What :func:`check_method` found for one method."""

    method: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.passed for c in self.checks)

    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def __str__(self) -> str:
        lines = [f"conformance of method `{self.method}`:"]
        for c in self.checks:
            lines.append(f"  {'pass' if c.passed else 'FAIL'}  {c.name}" + (f": {c.detail}" if c.detail else ""))
        return "\n".join(lines)

    def assert_ok(self) -> None:
        """Raise AssertionError listing every failed check (for pytest)."""
        if not self.ok:
            raise AssertionError(str(self))


class _Failed(Exception):
    """A check's finding (not a crash of the check itself)."""


#: One fact per kind of change, on :data:`TINY_CORPUS`'s words.
REQUESTS = {
    "edit": EditRequest(subject="Eiffel Tower", prompt="The Eiffel Tower is located in the city of", target="Rome", old="Paris", kind="edit"),
    "insert": EditRequest(subject="Watts Humphrey", prompt="What university did Watts Humphrey attend?", target="Toyota City", kind="insert"),
    "erase": EditRequest(subject="Louvre", prompt="The Louvre is located in the city of", target=DEFAULT_REFUSAL, old="Paris", kind="erase"),
}


# -- the call ---------------------------------------------------------------------------------------
def check_method(
    method: str,
    *,
    plugins: Sequence[ModuleType] = (),
    registry: Registry | None = None,
    params: dict[str, Any] | None = None,
    model_factory: Callable[[], LoadedModel] | None = None,
    requests: dict[str, EditRequest] | None = None,
    workdir: str | Path | None = None,
    seed: int = 0,
) -> ConformanceReport:
    """Check method ``method`` against the method contract; see the module's text.

    ``plugins`` are plugin modules to register besides the installed ones (your package,
    when it is not installed); ``registry`` replaces both. ``params`` are the parameters
    the edits use. ``model_factory`` builds a fresh model per call and must give
    identical weights every time (default: :func:`tiny_llama`). ``requests`` replace
    :data:`REQUESTS` per kind. ``workdir`` holds the saved models and the provenance
    database (default: a temporary directory, removed afterwards).
    """
    registry = registry or _registry_with(plugins)
    spec = registry.method(method)
    given = dict(params or {})
    factory = model_factory or (lambda: tiny_llama(registry=registry))
    facts = {**REQUESTS, **(requests or {})}
    report = ConformanceReport(method)
    with tempfile.TemporaryDirectory(prefix="kedsl-conformance-") as tmp:
        where = Path(workdir) if workdir is not None else Path(tmp)
        where.mkdir(parents=True, exist_ok=True)
        run = _Runner(spec, registry, given, factory, facts, where, seed)
        for name, check in (
            ("params", run.check_params),
            ("undo", run.check_undo),
            ("determinism", run.check_determinism),
            ("round_trip", run.check_round_trip),
            ("kinds", run.check_kinds),
        ):
            try:
                detail = check()
                report.checks.append(Check(name, True, detail or ""))
            except _Failed as found:
                report.checks.append(Check(name, False, str(found)))
            except Exception as exc:  # the method crashed inside a check: a finding too
                log.debug("conformance check %s of %s crashed:\n%s", name, method, traceback.format_exc())
                report.checks.append(Check(name, False, f"{type(exc).__name__}: {exc}"))
    log.info("%s", report)
    return report


def _registry_with(plugins: Sequence[ModuleType]) -> Registry:
    """The installed plugins plus ``plugins`` (a module installed already is not added twice)."""
    installed = {ep.value for ep in md.entry_points(group=ENTRY_POINT_GROUP)}
    return Registry(plugins=[p for p in plugins if getattr(p, "__name__", None) not in installed])


class _Runner:
    def __init__(self, spec: MethodSpec, registry: Registry, given: dict[str, Any], factory: Callable[[], LoadedModel],
                 facts: dict[str, EditRequest], workdir: Path, seed: int):  # fmt: skip
        self.spec, self.registry, self.given, self.factory = spec, registry, given, factory
        self.facts, self.workdir, self.seed = facts, workdir, seed
        self.kind = spec.kinds[0]  # the kind the edits of the other checks use

    # -- helpers --------------------------------------------------------------------------------
    def resolved(self, model: LoadedModel) -> dict[str, Any]:
        return params_for(self.spec, self.given, model).params

    def apply(self, model: LoadedModel, kind: str | None = None) -> tuple[EditOutcome, EditContext]:
        """One edit as the executor makes it: kinds checked, torch seeded, a fresh journal."""
        request = self.facts[kind or self.kind]
        refuse_unsupported_requests(self.spec, [request])
        context = EditContext(weights=WeightJournal(model.model), cache_dir=self.workdir / "cache", seed=self.seed, state={})
        torch.manual_seed(self.seed)
        outcome = self.spec.load().apply(model, [request], self.resolved(model), context)
        if not isinstance(outcome, EditOutcome):
            raise _Failed(f"apply returned {type(outcome).__name__}, not the EditOutcome of context.outcome()")
        return outcome, context

    def statement(self, kind: str, params: dict[str, Any]) -> str:
        """The edit of ``kind`` as a script statement using the method with ``params``."""
        r = self.facts[kind]
        about = f"prompt {quote(r.prompt)} subject {quote(r.subject)}"
        args = ", ".join(f"{k}={format_value(v)}" for k, v in params.items())
        using = f"using {self.spec.name}" + (f"({args})" if args else "")
        if kind == "erase":
            refusal = f" refusal {quote(r.target)}" if r.target != DEFAULT_REFUSAL else ""
            return f"erase {about} from {quote(r.old or 'unknown')}{refusal} {using};"
        return f"{kind} {about} -> {quote(r.target)} {using};"

    def script_errors(self, params: dict[str, Any]) -> list[str]:
        source = f'model "tiny";\n{self.statement(self.kind, params)}\n'
        _, diags = check_source(source, "<conformance>", self.registry)
        return [f"{d.code}: {d.message}" for d in diags if d.is_error]

    # -- the checks -----------------------------------------------------------------------------
    def check_params(self) -> str:
        problems: list[str] = []
        for p in self.spec.params:
            # the other parameters as the edits give them (a trained method's editor is required)
            required = self.spec.trainer is not None and p.name == EDITOR_PARAM
            if p.default is not None and not required:
                _, err = p.validate(p.default)
                if err:
                    problems.append(f"the default of `{p.name}` is invalid: {err}")
                elif self.script_errors({**self.given, p.name: p.default}):
                    problems.append(f"`kedsl check` rejects `{p.name}` at its default {p.default!r}: {self.script_errors({**self.given, p.name: p.default})}")
            for label, value in _invalid_values(p):
                if not self.script_errors({**self.given, p.name: value}):
                    problems.append(f"`kedsl check` accepts `{p.name}={format_value(value)}` ({label})")
        if not any("unknown-parameter" in e for e in self.script_errors({"not_a_declared_parameter": 1})):
            problems.append("`kedsl check` accepts an undeclared parameter")
        if self.spec.config is not None:
            probe = self.factory()
            cfg = self.spec.config.from_params(self.resolved(probe), self.seed)
            missing = {p.name for p in self.spec.params} - set(vars(cfg))
            if missing:
                problems.append(f"{self.spec.config.__name__} lacks {sorted(missing)}")
        if problems:
            raise _Failed("; ".join(problems))
        return f"{len(self.spec.params)} parameters"

    def check_undo(self) -> str:
        model = self.factory()
        fp0, attached0 = model.fingerprint(), list(model.attachments)
        before = {n: t.detach().clone() for n, t in model.model.state_dict().items()}
        outcome, _ = self.apply(model)
        if not outcome.changes and not outcome.attachments:
            raise _Failed("the edit changed nothing: no weight through context.weights and no attachment through context.attach")
        with detached(model):
            changed = {n for n, t in model.model.state_dict().items() if n in before and not torch.equal(t, before[n])}
        outside = sorted(changed - set(outcome.changes))
        if outside:
            raise _Failed(f"weights changed outside context.weights (no exact undo possible): {outside[:5]}")
        outcome.undo(model)
        if model.attachments != attached0:
            raise _Failed(f"undo left {len(model.attachments) - len(attached0)} attachment(s) installed")
        if model.fingerprint() != fp0:
            raise _Failed("undo did not restore the weights bit-exactly")
        return f"{len(outcome.changes)} weight(s), {len(outcome.attachments)} attachment(s) undone"

    def check_determinism(self) -> str:
        first, second = self.factory(), self.factory()
        if first.fingerprint() != second.fingerprint():
            raise _Failed("the model factory gave two different models: give one that is deterministic")
        results = []
        for model in (first, second):
            self.apply(model)
            results.append((model.fingerprint(), attachments_digest(model)))
        if results[0][0] != results[1][0]:
            raise _Failed("the same edit with the same seed gave different weights")
        if results[0][1] != results[1][1]:
            raise _Failed("the same edit with the same seed gave different attachments")
        return f"weights {results[0][0][:12]}"

    def check_round_trip(self) -> str:
        base_dir, out, reverted = self.workdir / "base", self.workdir / "edited", self.workdir / "reverted"
        base = self.factory()
        base.model.save_pretrained(base_dir)
        base.tokenizer.save_pretrained(base_dir)
        script = self.workdir / "conformance.ke"
        script.write_text(f"model {quote(str(base_dir))};\n{self.statement(self.kind, self.given)}\nsave to {quote(str(out))};\n", encoding="utf-8")
        db = self.workdir / "conformance.db"
        model = load_model(str(base_dir), {}, self.registry)
        fp_base = model.fingerprint()
        report = apply_script(script, db=db, model=model, registry=self.registry, seed=self.seed, argv=["conformance"])
        (edit,) = report.edits
        if edit.status != "applied":
            raise _Failed(f"the edit was {edit.status}: {edit.error or ''}")
        loaded = load_model(str(out), {}, self.registry)
        if loaded.fingerprint() != model.fingerprint():
            raise _Failed("the saved and loaded weights differ from the edited model's")
        if attachments_digest(loaded) != attachments_digest(model):
            raise _Failed("the attachments loaded from the saved directory differ from the edited model's")
        probe = [(self.facts[self.kind].prompt, self.facts[self.kind].target or "Paris")]
        (now,), (back,) = teacher_forced(model, probe), teacher_forced(loaded, probe)
        if now.predicted != back.predicted or abs(now.logprob - back.logprob) > 1e-4:
            raise _Failed("the saved and loaded model scores the edit prompt differently from the edited model")
        with Store.open(db) as store:
            revert_edit(store, edit.edit_id, out, reverted, registry=self.registry, argv=["conformance"])
        restored = load_model(str(reverted), {}, self.registry)
        if restored.attachments:
            raise _Failed(f"revert left {len(restored.attachments)} attachment(s)")
        if restored.fingerprint() != fp_base:
            raise _Failed("revert did not give back the base model's weights")
        return "apply, save, load and revert"

    def check_kinds(self) -> str:
        problems, seen = [], []
        for kind in CHANGE_KINDS:
            model = self.factory()
            executor = Executor(model, self.registry, on_fail="keep", seed=self.seed, cache_dir=self.workdir / "cache", says_now_tokens=0)
            planned = PlannedEdit(request=self.facts[kind], method=self.spec.name, given_params=dict(self.given), expects=[])
            try:
                (result,) = executor.run([planned])
            except UsageError as exc:
                if kind in self.spec.kinds:
                    problems.append(f"refused `{kind}`, which it declares: {exc.message}")
                seen.append(f"{kind}: refused")
                continue
            if kind not in self.spec.kinds:
                problems.append(f"accepted `{kind}`, which it does not declare")
            elif result.status != "applied":
                problems.append(f"`{kind}` was {result.status}")
            seen.append(f"{kind}: applied")
        if problems:
            raise _Failed("; ".join(problems))
        return ", ".join(seen)


def _invalid_values(p: Param) -> list[tuple[str, Any]]:
    """Values ``kedsl check`` must reject for ``p``: of the wrong type, and past its bounds."""
    wrong_type = {"bool": 1, "str": 1}.get(p.type, "not a number")
    if p.type == "list[str]":
        wrong_type = [1]
    out: list[tuple[str, Any]] = [("the wrong type", wrong_type)]
    integer = p.type in ("int", "int|auto", "layers", "list[int]")
    if p.min is not None:
        low = int(p.min) - 1 if integer else p.min - 1.0
        out.append((f"below its minimum {p.min}", [low] if p.type in ("layers", "list[int]") else low))
    if p.max is not None:
        high = int(p.max) + 1 if integer else p.max + 1.0
        out.append((f"above its maximum {p.max}", [high] if p.type in ("layers", "list[int]") else high))
    if p.choices:
        out.append(("not one of its choices", "__none_of_the_choices__"))
    return out
