"""Check a parsed script against the plugin registry, and resolve it for the executor.

:func:`check` reports every problem it finds (not just the first) as diagnostics;
:func:`resolve_edits` turns a valid script into what the executor needs for each edit.
Nothing here imports torch: the registry holds torch-free descriptors only.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from ..datafiles import DataFileError
from ..errors import UsageError, did_you_mean
from ..registry.editors import EDITOR_PARAM, editor_folder, editor_problem
from ..registry.params import resolve_params, validate_params
from ..registry.specs import MethodSpec, Relation
from .ast import (
    Arg, Batch, Edit, EditsFrom, Ident, MethodCall, ModelStmt, OnFailStmt, Pos, RelationStmt, SaveStmt, Script, UseStmt,
)  # fmt: skip
from .data import (
    DATA_FORMATS, FIELDS, LAYOUT_COLUMNS, TEMPLATE_LAYOUTS, DataRow, DataSource, DataTable, cell, default_columns,
    fill_template, has_column, load_data, prompt_list, text_value,
)  # fmt: skip
from .diagnostics import ERROR, WARNING, Diagnostic, ScriptError, diag_at, sort_key

ON_FAIL_POLICIES = ("rollback", "keep", "abort")
DEFAULT_ON_FAIL = "rollback"
SAVE_MODES = ("merged", "adapter")
# A directory holding this file is a previous kedsl output, which `save to` may replace.
KEDSL_OUTPUT_MARKER = "kedsl.json"
# Model settings the model sources understand. Others are a warning, not an error: a
# third-party model source may accept more.
MODEL_SETTINGS = {
    "dtype": ("float32", "float16", "bfloat16", "auto"),
    "device": None,
    "device_map": None,
    "max_memory": None,
    "offload_folder": None,
    "revision": None,
    "trust_remote_code": None,
}


def _plain(value: Any) -> Any:
    """Script values as parameters: a bare identifier is its name (``layer=auto``)."""
    if isinstance(value, Ident):
        return value.name
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def call_params(call: MethodCall) -> dict[str, Any]:
    """The parameters given in ``using METHOD(k=v, ...)`` as plain values."""
    return {a.name: _plain(a.value) for a in call.args}


def _name_pos(call: MethodCall) -> Pos:
    p = call.pos
    return Pos(p.line, p.col, p.line, p.col + len(call.name))


def _first_line(p: Pos) -> Pos:
    return p if p.end_line == p.line else Pos(p.line, p.col, p.line, 10**6)


def _keyword(p: Pos, keyword: str) -> Pos:
    """The span of the keyword a statement starts with."""
    return Pos(p.line, p.col, p.line, p.col + len(keyword))


#: A data path as a script writes it -> the file to read instead.
DataFiles = Optional[Mapping[str, Union[str, "os.PathLike[str]"]]]


@dataclass
class _Seen:
    """The first edit of a subject and relation (or prompt): what it sets, and where."""

    kind: str
    target: str | None
    old: str | None
    where: str  # "line 5", or "row 12 of facts.csv"


class _RowProblem(Exception):
    """A cell of a data row that cannot be read as its field."""


class _Checker:
    def __init__(
        self,
        script: Script,
        registry: Any,
        base_dir: str | os.PathLike[str] | None,
        data_files: DataFiles = None,
    ):
        self.script = script
        self.registry = registry
        self.base_dir = Path(base_dir) if base_dir is not None else Path.cwd()
        self.data_files = data_files or {}
        self.diags: list[Diagnostic] = []
        self.relations: dict[str, RelationStmt] = {}
        self.checked_calls: dict[int, MethodSpec | None] = {}
        self.seen_edits: dict[tuple[str, str, str], _Seen] = {}
        self.rows: dict[int, list[DataRow]] = {}  # id(EditsFrom) -> its valid rows
        self.unknown_relation_hints: dict[str, str] = {}

    def err(self, pos: Pos, message: str, code: str, hint: str | None = None, severity: str = ERROR) -> None:
        self.diags.append(diag_at(pos, message, code, hint, severity, self.script.filename))

    def row_err(self, s: EditsFrom, source: DataSource, row: int, column: str | None, message: str, code: str,
                hint: str | None = None, severity: str = ERROR) -> None:  # fmt: skip
        """An error in a row of a data file, at ``FILE:ROW[:COLUMN]`` and the statement naming it."""
        d = diag_at(s.path_pos, message, code, hint, severity, self.script.filename)
        d.data_file, d.data_row, d.data_column = source.display, row, column
        self.diags.append(d)

    # -- whole script -------------------------------------------------------------
    def run(self) -> list[Diagnostic]:
        stmts = self.script.statements
        self.check_singletons(stmts)
        for s in stmts:
            if isinstance(s, RelationStmt):
                self.check_relation(s)
        default: MethodCall | None = None
        for s in stmts:
            if isinstance(s, UseStmt):
                self.method_spec(s.method)
                default = s.method
            elif isinstance(s, (Edit, EditsFrom)):
                self.check_member(s, s.using or default)
            elif isinstance(s, Batch):
                self.check_batch(s, default)
        return sorted(self.diags, key=sort_key)

    def check_singletons(self, stmts: list[Any]) -> None:
        models = [s for s in stmts if isinstance(s, ModelStmt)]
        if not models:
            self.err(Pos(1, 1, 1, 2), "the script has no `model` statement", "missing-model",
                     'say which model to edit, e.g. `model "smollm2-135m";`')
        for extra in models[1:]:
            self.err(_first_line(extra.pos), "a script has exactly one `model` statement", "multiple-models",
                     f"the model is already given on line {models[0].pos.line}")
        for m in models:
            self.check_model(m)
        saves = [s for s in stmts if isinstance(s, SaveStmt)]
        for extra in saves[1:]:
            self.err(_first_line(extra.pos), "a script saves its result at most once", "multiple-saves",
                     f"the output is already saved on line {saves[0].pos.line}")
        for s in saves:
            self.check_save(s)
        policies = [s for s in stmts if isinstance(s, OnFailStmt)]
        for extra in policies[1:]:
            self.err(_first_line(extra.pos), "a script has at most one `on_fail` statement", "multiple-on-fail",
                     f"`on_fail` is already set on line {policies[0].pos.line}")
        for p in policies:
            if p.policy not in ON_FAIL_POLICIES:
                self.err(p.policy_pos, f"unknown on_fail policy `{p.policy}`", "unknown-on-fail",
                         did_you_mean(p.policy, ON_FAIL_POLICIES) or "one of: " + ", ".join(ON_FAIL_POLICIES))

    def check_model(self, m: ModelStmt) -> None:
        if not m.ref.strip():
            self.err(_first_line(m.pos), "empty model reference", "empty-model",
                     "an alias (see `kedsl plugins`), a Hugging Face id, a local directory or a .gguf file")
        seen: set[str] = set()
        for a in m.settings:
            if a.name in seen:
                self.err(a.pos, f"model setting `{a.name}` is given twice", "duplicate-setting")
            seen.add(a.name)
            if a.name not in MODEL_SETTINGS:
                self.err(a.pos, f"unknown model setting `{a.name}`", "unknown-model-setting",
                         did_you_mean(a.name, list(MODEL_SETTINGS)) or "known: " + ", ".join(MODEL_SETTINGS),
                         severity=WARNING)
                continue
            choices = MODEL_SETTINGS[a.name]
            value = _plain(a.value)
            if choices is not None and value not in choices:
                self.err(a.pos, f"model setting `{a.name}` must be one of {', '.join(choices)}", "bad-model-setting",
                         did_you_mean(str(value), choices) if isinstance(value, str) else None)

    def check_save(self, s: SaveStmt) -> None:
        if s.mode is not None and s.mode not in SAVE_MODES:
            self.err(s.mode_pos, f"unknown save mode `{s.mode}`", "unknown-save-mode",
                     did_you_mean(s.mode, SAVE_MODES) or "one of: " + ", ".join(SAVE_MODES))
        if not s.path.strip():
            self.err(s.path_pos, "empty output directory", "empty-save-path", 'write e.g. `save to "out/edited";`')
            return
        target = Path(s.path).expanduser()
        if not target.is_absolute():
            target = self.base_dir / target
        if target.exists() and not target.is_dir():
            self.err(s.path_pos, f"`{s.path}` exists and is not a directory", "save-target-exists",
                     "choose a new directory name")
        elif target.is_dir() and any(target.iterdir()) and not (target / KEDSL_OUTPUT_MARKER).is_file():
            self.err(s.path_pos, f"`{s.path}` is a non-empty directory that is not a kedsl output", "save-target-exists",
                     f"kedsl only replaces directories it wrote (they hold {KEDSL_OUTPUT_MARKER}); choose a new directory")

    # -- relations ----------------------------------------------------------------
    def check_relation(self, r: RelationStmt) -> None:
        if r.name in self.relations:
            self.err(r.name_pos, f"relation `{r.name}` is defined twice", "duplicate-relation",
                     f"first defined on line {self.relations[r.name].pos.line}")
        else:
            self.relations[r.name] = r
        pairs = [(r.template, r.template_pos, "template")] + [
            (t, p, "paraphrase") for t, p in zip(r.paraphrases, r.paraphrase_pos or [r.template_pos] * len(r.paraphrases))
        ]
        for text, pos, what in pairs:
            n = text.count("{}")
            if n == 0:
                self.err(pos, f"relation {what} has no `{{}}` for the subject", "template-without-subject",
                         f'write where the subject goes, e.g. "{{}} {text.strip() or "is located in"}"')
            elif n > 1:
                self.err(pos, f"relation {what} has {n} `{{}}`; it takes exactly one, for the subject",
                         "template-many-subjects")

    def resolve_relation(self, name: str) -> Relation | None:
        r = self.relations.get(name)
        if r is not None:
            return Relation(id=r.name, template=r.template, paraphrases=tuple(r.paraphrases))
        return self.registry.relation(name)

    # -- methods ------------------------------------------------------------------
    def method_spec(self, call: MethodCall) -> MethodSpec | None:
        """Validate a method call once (the same call object may serve many edits)."""
        key = id(call)
        if key in self.checked_calls:
            return self.checked_calls[key]
        spec = self.registry.methods.get(call.name)
        self.checked_calls[key] = spec
        if spec is None:
            self.err(_name_pos(call), f"unknown method `{call.name}`", "unknown-method",
                     did_you_mean(call.name, list(self.registry.methods))
                     or "installed methods: " + (", ".join(sorted(self.registry.methods)) or "none"))
            return None
        seen: set[str] = set()
        args_by_name = {}
        for a in call.args:
            if a.name in seen:
                self.err(a.pos, f"parameter `{a.name}` is given twice", "duplicate-parameter")
            seen.add(a.name)
            args_by_name[a.name] = a
        problems = validate_params(spec.params, call_params(call))
        for name, message, hint in problems:
            code = "unknown-parameter" if message.startswith("unknown parameter") else "bad-parameter"
            self.err(args_by_name[name].pos, message, code, hint)
        if not problems and spec.config is not None:
            # constraints between parameters live in the (torch-free) configuration: what
            # `apply` would refuse for them is an error here already
            try:
                spec.config.from_params(resolve_params(spec.params, call_params(call)))
            except UsageError as e:
                self.err(_name_pos(call), e.message, "bad-parameter", e.hint)
        if spec.trainer is not None:  # a trained editor's folder: there, and of this method
            given = args_by_name.get(EDITOR_PARAM)
            folder = editor_folder(str(_plain(given.value)), self.base_dir) if given is not None else ""
            problem = editor_problem(folder, spec.name)
            if problem is not None:
                self.err(given.pos if given is not None else _name_pos(call), problem[0], "bad-editor", problem[1])
        return spec

    # -- edits --------------------------------------------------------------------
    def check_batch(self, b: Batch, default: MethodCall | None) -> None:
        call = b.using or default
        header = Pos(b.pos.line, b.pos.col, b.pos.line, b.pos.col + len("batch"))
        if not b.edits:
            self.err(header, "empty batch", "empty-batch", "put edits between `{` and `}`, or remove the batch")
        if call is None:
            self.err(header, "this batch has no method", "no-method",
                     "write `batch using memit { ... }` or put a `use METHOD;` statement before it")
        else:
            spec = self.method_spec(call)
            if spec is not None and not spec.supports_batch:
                batchable = sorted(n for n, m in self.registry.methods.items() if m.supports_batch)
                self.err(_name_pos(call), f"method `{call.name}` does not support batches", "no-batch-support",
                         ("methods that do: " + ", ".join(batchable)) if batchable else
                         "apply these edits one by one, outside a batch")
        for e in b.edits:
            if e.using is not None and (call is None or e.using.name != call.name):
                self.err(_name_pos(e.using), "an edit in a batch uses the batch's method", "using-in-batch",
                         "move the `using` clause to the batch: `batch using METHOD { ... }`")
            self.check_member(e, call, in_batch=True)

    def check_member(self, e: Edit | EditsFrom, call: MethodCall | None, in_batch: bool = False) -> None:
        """An edit or an `edits from` statement, with the method it gets."""
        if isinstance(e, EditsFrom):
            self.check_method_use(e.kind, _keyword(e.pos, "edits"), "`edits from` statement", call, in_batch)
            self.check_edits_from(e)
        else:
            self.check_method_use(e.kind, _keyword(e.pos, e.kind), e.kind, call, in_batch)
            self.check_edit(e)

    def check_method_use(self, kind: str, head: Pos, what: str, call: MethodCall | None, in_batch: bool) -> None:
        if call is None and not in_batch:  # a batch without a method is reported once
            self.err(head, f"this {what} has no method",
                     "no-method", "add `using METHOD` (e.g. `using rome`) or put a `use METHOD;` statement before it")
        elif call is not None and not in_batch:
            self.method_spec(call)
        spec = self.registry.methods.get(call.name) if call is not None else None
        if spec is not None and kind not in spec.kinds:
            able = sorted(n for n, m in self.registry.methods.items() if kind in m.kinds)
            self.err(head,
                     f"method `{spec.name}` cannot {kind} facts (it can {' or '.join(spec.kinds)} them)", "unsupported-kind",
                     ("methods that can: " + ", ".join(able)) if able else f"no installed method can {kind} facts")

    def check_edit(self, e: Edit) -> None:
        if not e.subject.strip():
            self.err(e.subject_pos, "empty subject", "empty-subject")
        key_relation: str
        if e.prompt is not None:
            key_relation = "prompt:" + e.prompt
            if not e.prompt.strip():
                self.err(e.prompt_pos, "empty prompt", "empty-prompt")
            elif e.subject.strip() and e.subject not in e.prompt:
                self.err(e.subject_pos, f'subject "{e.subject}" does not occur in the prompt', "subject-not-in-prompt",
                         "the subject must be written in the prompt exactly as here (case and spaces included)")
        else:
            assert e.relation is not None
            rel = self.resolve_relation(e.relation)
            if rel is None:
                self.err(e.relation_pos, f"unknown relation `{e.relation}`", "unknown-relation",
                         self.unknown_relation_hint(e.relation))
                key_relation = "relation:" + e.relation
            else:
                key_relation = "relation:" + rel.id
        if e.kind in ("edit", "insert"):
            assert e.target is not None
            if not e.target.strip():
                self.err(e.target_pos, "empty target", "empty-target", "write the new answer after `->`")
            elif e.old is not None and e.target.strip() == e.old.strip():
                self.err(e.target_pos, "the new target is the same as the old one", "target-equals-old",
                         "an edit must change the answer; drop the edit or fix one of the targets")
        if e.kind == "erase" and e.target is not None and not e.target.strip():
            self.err(e.target_pos, "empty refusal", "empty-refusal",
                     "write what the model should answer instead, or leave `refusal` out for \"I don't know.\"")
        if e.old is not None and not e.old.strip():
            self.err(e.old_pos, "empty old target", "empty-old", "write the current answer after `from`")
        problem = self.check_duplicate(key_relation, e.subject, e.relation, _Seen(e.kind, e.target, e.old, f"line {e.pos.line}"))
        if problem is not None:
            code, message, hint = problem
            where = _first_line(e.pos) if code == "duplicate-edit" or e.target is None else e.target_pos
            self.err(where, message, code, hint)
        for ex in e.expects:
            self.check_expect(ex)

    def unknown_relation_hint(self, name: str) -> str:
        # difflib is slow: a data file may name the same unknown relation thousands of times
        hint = self.unknown_relation_hints.get(name)
        if hint is None:
            names = list(self.relations) + self.registry.relation_names()
            hint = self.unknown_relation_hints[name] = (
                did_you_mean(name, names) or "define it with `relation NAME \"template with {}\";` or see `kedsl relations`"
            )
        return hint

    def check_duplicate(self, key_relation: str, subject: str, relation: str | None, this: _Seen) -> tuple[str, str, str] | None:
        """``(code, message, hint)`` when an earlier edit (written, or a row) edits the
        same subject and relation (or prompt): the same edit again, or a contradiction."""
        key = (key_relation, subject, "")
        first = self.seen_edits.get(key)
        if first is None:
            self.seen_edits[key] = this
            return None
        what = f'"{subject}" ' + (f"`{relation}`" if relation else "with this prompt")
        if (first.kind, first.target, first.old) == (this.kind, this.target, this.old):
            return "duplicate-edit", f"duplicate edit of {what}", f"the same edit is on {first.where}; remove one"
        was = f'"{first.target}"' if first.target is not None else "erased"
        return "contradicting-edit", f"contradicting edits of {what}", f"{first.where} already sets it to {was}; keep one of them"

    # -- data files -----------------------------------------------------------------
    def check_edits_from(self, s: EditsFrom) -> None:
        for ex in s.expects:
            self.check_expect(ex)
        given = self.check_column_args(s.columns)
        if s.format is not None and s.format not in DATA_FORMATS:
            self.err(s.format_pos, f"unknown data format `{s.format}`", "unknown-format",
                     did_you_mean(s.format, DATA_FORMATS) or "one of: " + ", ".join(DATA_FORMATS))
            return
        data = self.read_data(s)
        if data is None:
            return
        src = data.source
        if src.layout is not None and src.layout not in LAYOUT_COLUMNS and not given:
            self.err(s.path_pos, f"{src.display} holds {src.layout} records, which `edits from` does not read",
                     "unsupported-layout", "it reads plain columns and the ZsRE, KnowEdit and CounterFact layouts; "
                     "`kedsl bench` reads this one, or name its columns with `with subject=\"...\", target=\"...\", ...`")
            return
        layout = src.layout if src.layout in LAYOUT_COLUMNS else None
        columns = set(data.table.columns)
        cols = default_columns(columns, layout)
        unknown = False
        for f, arg in given.items():
            column = str(arg.value)
            if has_column(columns, column):
                cols[f] = column
                continue
            unknown = True
            self.err(arg.pos, f"{src.display} has no column `{column}`", "unknown-column",
                     did_you_mean(column, data.table.columns) or "its columns: " + _listed(data.table.columns))
        if unknown:
            return
        needed = {"subject": "subject", "prompt": "prompt or relation", "target": "target"}
        missing = [name for f, name in needed.items() if f not in cols and (f != "prompt" or "relation" not in cols)]
        if missing:
            self.err(s.path_pos, f"{src.display} has no {' and no '.join(f'`{m}`' for m in missing)} column", "missing-column",
                     "its columns: " + _listed(data.table.columns) + "; name the ones to use with "
                     '`with subject="...", prompt="...", target="..."`')
            return
        for p in data.table.problems:
            self.row_err(s, src, p.row, p.column, p.message, p.code, p.hint)
        rows: list[DataRow] = []
        for n, record in enumerate(data.table.records, 1):
            if record is not None:
                row = self.check_row(s, src, cols, layout, n, record)
                if row is not None:
                    rows.append(row)
        self.rows[id(s)] = rows

    def errors_since(self, start: int) -> bool:
        return any(d.is_error for d in self.diags[start:])

    def check_column_args(self, args: list[Arg]) -> dict[str, Arg]:
        """The ``with FIELD="COLUMN"`` mapping, each field once and each column a string."""
        given: dict[str, Arg] = {}
        for a in args:
            if a.name not in FIELDS:
                self.err(a.pos, f"unknown field `{a.name}`", "unknown-field",
                         did_you_mean(a.name, FIELDS) or "fields: " + ", ".join(FIELDS))
            elif a.name in given:
                self.err(a.pos, f"field `{a.name}` is given twice", "duplicate-field")
            elif not isinstance(a.value, str) or not a.value:
                self.err(a.pos, f"the column of `{a.name}` is a name in double quotes", "bad-column-name",
                         f'write e.g. `{a.name}="{a.name}"`')
            else:
                given[a.name] = a
        return given

    def read_data(self, s: EditsFrom) -> DataTable | None:
        """The statement's data file, read once per script (the checker runs more than once
        on the way to `apply`: what it checks there is what gets applied and recorded)."""
        key = (s.path, s.format)
        cached = self.script.data.get(key)
        if cached is None:
            try:
                cached = load_data(s.path, s.format, os.path.dirname(self.script.filename), self.data_files.get(s.path))
            except DataFileError as exc:
                cached = exc
            self.script.data[key] = cached
        if isinstance(cached, DataFileError):
            self.err(s.path_pos, cached.message, cached.code, cached.hint)
            return None
        return cached

    def check_row(self, s: EditsFrom, src: DataSource, cols: dict[str, str], layout: str | None, n: int,
                  record: dict[str, Any]) -> DataRow | None:  # fmt: skip
        """One row as the edit it stands for, or None after reporting each of its problems."""
        errors = len(self.diags)
        text_cells = src.format in ("csv", "tsv")
        unreadable: set[str] = set()  # fields reported as such, not also as empty

        def text(f: str) -> str | None:
            column = cols.get(f)
            if column is None:
                return None
            try:  # a benchmark layout's answers are read as `kedsl bench` reads them
                return text_value(cell(record, column), trimmed=layout is not None and f in ("target", "old"))
            except TypeError as exc:
                self.row_err(s, src, n, column, f"the {f} cannot be read: {exc}", "bad-value")
                unreadable.add(f)
                return None

        def prompts(f: str) -> list[str]:
            column = cols.get(f)
            if column is None:
                return []
            try:
                return prompt_list(cell(record, column), text_cells)
            except TypeError as exc:
                self.row_err(s, src, n, column, f"the {f} cannot be read: {exc}", "bad-value",
                             "one prompt per line, or a JSON array of strings")
                return []

        subject, prompt, relation = text("subject"), text("prompt"), text("relation")
        target, old = text("target"), text("old")
        paraphrases, locality = prompts("paraphrases"), prompts("locality")
        if subject is None and "subject" not in unreadable:
            self.row_err(s, src, n, cols["subject"], "empty subject", "empty-subject", "every row names the subject it edits")
        if prompt is not None and layout in TEMPLATE_LAYOUTS and subject is not None:
            if "{}" in prompt:
                prompt = fill_template(prompt, subject)
            else:
                self.row_err(s, src, n, cols["prompt"], "the prompt template has no `{}` for the subject", "template-without-subject")
                prompt = None
                unreadable.add("prompt")
        key_relation: str | None = None
        if prompt is not None and relation is not None:
            self.row_err(s, src, n, cols["prompt"], "the row gives both a prompt and a relation", "prompt-and-relation",
                         "leave one of the two cells empty")
        elif prompt is not None:
            key_relation = "prompt:" + prompt
            if subject is not None and subject not in prompt:
                self.row_err(s, src, n, cols["prompt"], f'subject "{subject}" does not occur in the prompt', "subject-not-in-prompt",
                             "the subject must be written in the prompt exactly as in its own cell (case and spaces included)")
        elif relation is not None:
            rel = self.resolve_relation(relation)
            if rel is None:
                self.row_err(s, src, n, cols["relation"], f"unknown relation `{relation}`", "unknown-relation",
                             self.unknown_relation_hint(relation))
            key_relation = "relation:" + (rel.id if rel is not None else relation)
        elif not unreadable & {"prompt", "relation"}:
            self.row_err(s, src, n, cols.get("prompt") or cols.get("relation"), "the row gives neither a prompt nor a relation",
                         "missing-prompt", "fill in the prompt (which contains the subject) or the relation (an id or alias)")
        if target is None:
            if "target" not in unreadable:
                self.row_err(s, src, n, cols["target"], "empty target", "empty-target", "every row gives the new answer")
        elif old is not None and target.strip() == old.strip():
            # A warning here, where a written edit has an error: benchmark files hold such
            # records (3% of ZsRE's), and the edit still writes the target.
            self.row_err(s, src, n, cols["target"], "the new target is the same as the old one", "target-equals-old",
                         "the edit changes nothing the file knows of; drop the row or fix one of the targets", WARNING)
        if not self.errors_since(errors) and subject is not None and key_relation is not None and target is not None:
            problem = self.check_duplicate(key_relation, subject, relation, _Seen("edit", target, old, f"row {n} of {src.display}"))
            if problem is not None:
                code, message, hint = problem
                self.row_err(s, src, n, cols["target"] if code == "contradicting-edit" else None, message, code, hint)
        if self.errors_since(errors) or subject is None or target is None:
            return None
        return DataRow(n, subject, prompt, relation, target, old, paraphrases or None, locality)

    def check_expect(self, ex: Any) -> None:
        spec = self.registry.metrics.get(ex.metric)
        if spec is None:
            self.err(ex.metric_pos, f"unknown metric `{ex.metric}`", "unknown-metric",
                     did_you_mean(ex.metric, list(self.registry.metrics))
                     or "installed metrics: " + (", ".join(sorted(self.registry.metrics)) or "none"))
        else:
            form = spec.prompt_form
            for p in ex.prompts:
                given = "unchanged" if p.unchanged else "answer"
                if form == "none":
                    self.err(p.pos, f"metric `{ex.metric}` takes no prompts", "prompt-form",
                             f"write `expect {ex.metric}` with an optional comparison only")
                    break
                if form in ("answer", "unchanged") and given != form:
                    shown = '"PROMPT" -> "ANSWER"' if form == "answer" else '"PROMPT" unchanged'
                    self.err(p.pos, f"metric `{ex.metric}` takes prompts written {shown}", "prompt-form")
        if ex.op is not None and ex.threshold is None:
            self.err(ex.op_pos, f"`{ex.op}` needs a number after it", "missing-threshold",
                     f"write e.g. `expect {ex.metric} {ex.op} 0.9`")


def _listed(names: list[str], n: int = 12) -> str:
    return ", ".join(f"`{c}`" for c in names[:n]) + (f", ... ({len(names)} in all)" if len(names) > n else "")


def check(
    script: Script,
    registry: Any,
    base_dir: str | os.PathLike[str] | None = None,
    data_files: DataFiles = None,
) -> list[Diagnostic]:
    """Every problem in ``script`` (resolved against ``registry``), sorted by position;
    every row of the data files its ``edits from`` statements name included.

    Relative ``save to`` paths and editor folders are resolved against ``base_dir`` (default: the current
    working directory, which is where ``apply`` writes); data files against the script's
    folder (``script.filename``'s). ``data_files`` maps a data path as the script writes it
    to the file to read instead (a replay reads the content the audit trail kept).
    """
    return _Checker(script, registry, base_dir, data_files).run()


# -- what the executor needs ---------------------------------------------------------


@dataclass
class ResolvedEdit:
    """One edit of a checked script, with every name resolved."""

    edit: Edit
    prompt: str  # the relation template with the subject substituted, or the free prompt
    paraphrases: list[str]  # paraphrase prompts (relation form only)
    relation_id: str | None  # None for a free prompt
    relation: Relation | None
    method: str
    params: dict[str, Any] = field(default_factory=dict)  # as given (defaults not filled in)
    batch: int | None = None  # index of the batch among the script's batches
    on_fail: str = DEFAULT_ON_FAIL
    row: int | None = None  # the row of a data file (``edits from``), from 1
    source: DataSource | None = None  # that data file
    locality: list[str] = field(default_factory=list)  # the row's locality prompts


def on_fail_policy(script: Script) -> str:
    return next((s.policy for s in script.statements if isinstance(s, OnFailStmt)), DEFAULT_ON_FAIL)


def resolve_edits(
    script: Script, registry: Any, base_dir: str | os.PathLike[str] | None = None, data_files: DataFiles = None
) -> list[ResolvedEdit]:
    """Resolve every edit of ``script``, each row of its data files as the written edit
    with the same fields; raise :class:`ScriptError` if it does not check."""
    checker = _Checker(script, registry, base_dir, data_files)
    diags = checker.run()
    if any(d.is_error for d in diags):
        raise ScriptError(diags, script.source or None)
    relations = {s.name: s for s in script.statements if isinstance(s, RelationStmt)}
    policy = on_fail_policy(script)

    def relation_of(name: str) -> Relation:
        r = relations.get(name)
        if r is not None:
            return Relation(id=r.name, template=r.template, paraphrases=tuple(r.paraphrases))
        found = registry.relation(name)
        assert found is not None, name  # check() reported unknown relations
        return found

    root = Path(base_dir) if base_dir is not None else Path.cwd()

    def params_of(call: MethodCall) -> dict[str, Any]:
        params = call_params(call)
        spec = registry.methods.get(call.name)
        if spec is not None and spec.trainer is not None and params.get(EDITOR_PARAM):
            # the folder check() found, whatever the working directory of the edit
            params[EDITOR_PARAM] = editor_folder(str(params[EDITOR_PARAM]), root)
        return params

    def one(e: Edit, call: MethodCall, batch: int | None) -> ResolvedEdit:
        if e.prompt is not None:
            return ResolvedEdit(e, e.prompt, [], None, None, call.name, params_of(call), batch, policy)
        assert e.relation is not None
        rel = relation_of(e.relation)
        return ResolvedEdit(
            e, rel.prompt(e.subject), rel.paraphrase_prompts(e.subject), rel.id, rel,
            call.name, params_of(call), batch, policy,
        )

    def rows(s: EditsFrom, call: MethodCall, batch: int | None) -> list[ResolvedEdit]:
        source = script.data[(s.path, s.format)].source
        out = []
        for row in checker.rows[id(s)]:
            # The edit a written statement with the row's fields is: resolved by `one`.
            e = Edit(row.subject, "edit", row.relation, row.prompt, row.target, row.old, s.using, s.expects, pos=s.pos)
            r = one(e, call, batch)
            r.row, r.source, r.locality = row.row, source, row.locality
            if row.paraphrases is not None:
                r.paraphrases = row.paraphrases
            out.append(r)
        return out

    def members(e: Edit | EditsFrom, call: MethodCall, batch: int | None) -> list[ResolvedEdit]:
        return rows(e, call, batch) if isinstance(e, EditsFrom) else [one(e, call, batch)]

    out: list[ResolvedEdit] = []
    default: MethodCall | None = None
    batch_index = 0
    for s in script.statements:
        if isinstance(s, UseStmt):
            default = s.method
        elif isinstance(s, (Edit, EditsFrom)):
            call = s.using or default
            assert call is not None
            out.extend(members(s, call, None))
        elif isinstance(s, Batch):
            call = s.using or default
            assert call is not None
            for e in s.edits:
                out.extend(members(e, call, batch_index))
            batch_index += 1
    return out
