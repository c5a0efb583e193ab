"""The AST of a ``.ke`` script: plain dataclasses carrying source positions.

Positions never take part in equality (``compare=False``), so a script and its formatted
form parse to equal trees. ``expect`` statements written after an edit's ``;`` are
attached to that edit by the parser, so the tree has one shape for both spellings.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

from ..registry.params import Range


@dataclass(frozen=True)
class Pos:
    """1-based line and column of a node's first character (end is exclusive)."""

    line: int = 0
    col: int = 0
    end_line: int = 0
    end_col: int = 0


NOPOS = Pos()


@dataclass(frozen=True)
class Ident:
    """A bare identifier used as a value (``auto``, ``merged``)."""

    name: str


Value = Union[str, int, float, bool, Range, Ident, list]


@dataclass
class Arg:
    """A keyword argument ``name=value`` (method parameters, model settings)."""

    name: str
    value: Value
    pos: Pos = field(default=NOPOS, compare=False)


@dataclass
class MethodCall:
    """``rome`` or ``memit(layers=[3, 4, 5])``."""

    name: str
    args: list[Arg] = field(default_factory=list)
    pos: Pos = field(default=NOPOS, compare=False)

    def params(self) -> dict[str, Value]:
        return {a.name: a.value for a in self.args}


@dataclass
class ExpectPrompt:
    """One prompt of an expectation: ``"p" -> "answer"`` or ``"p" unchanged``."""

    prompt: str
    answer: str | None = None
    unchanged: bool = False
    pos: Pos = field(default=NOPOS, compare=False)


@dataclass
class Expect:
    """``expect METRIC [prompts] [OP NUMBER]``; op/threshold None means the default."""

    metric: str
    prompts: list[ExpectPrompt] = field(default_factory=list)
    op: str | None = None  # one of ">=", ">", "<=", "<", "=="
    threshold: float | None = None
    pos: Pos = field(default=NOPOS, compare=False)
    metric_pos: Pos = field(default=NOPOS, compare=False)
    op_pos: Pos = field(default=NOPOS, compare=False)


@dataclass
class Edit:
    """One fact change.

    ``kind`` is "edit" (change: new target, optional old), "insert" (a new fact: no old
    target) or "erase" (stop stating ``old``; ``target`` is the refusal the script gives
    with ``refusal "TEXT"``, None for the default). Either ``relation`` (with ``subject``)
    or ``prompt`` (a free prompt that contains ``subject``) is set.
    """

    subject: str
    kind: str = "edit"
    relation: str | None = None
    prompt: str | None = None
    target: str | None = None
    old: str | None = None
    using: MethodCall | None = None
    expects: list[Expect] = field(default_factory=list)
    pos: Pos = field(default=NOPOS, compare=False)
    subject_pos: Pos = field(default=NOPOS, compare=False)
    target_pos: Pos = field(default=NOPOS, compare=False)
    relation_pos: Pos = field(default=NOPOS, compare=False)
    prompt_pos: Pos = field(default=NOPOS, compare=False)
    old_pos: Pos = field(default=NOPOS, compare=False)


@dataclass
class EditsFrom:
    """``edits from "PATH" [as FORMAT] [with FIELD="COLUMN", ...] CLAUSES;``: every row of
    a data file as an edit. ``path`` is as written (relative to the script); ``columns``
    map edit fields (``subject``, ``target``, ...) to the file's column names; ``using``
    and ``expects`` apply to every row. The rows are read by the checker, not the parser."""

    path: str
    format: str | None = None
    columns: list[Arg] = field(default_factory=list)
    using: MethodCall | None = None
    expects: list[Expect] = field(default_factory=list)
    pos: Pos = field(default=NOPOS, compare=False)
    path_pos: Pos = field(default=NOPOS, compare=False)
    format_pos: Pos = field(default=NOPOS, compare=False)

    kind = "edit"  # every row changes a fact, as an `edit` statement does


@dataclass
class ModelStmt:
    """``model "ref" with dtype="float32", device="cpu";``"""

    ref: str
    settings: list[Arg] = field(default_factory=list)
    pos: Pos = field(default=NOPOS, compare=False)


@dataclass
class RelationStmt:
    """``relation NAME "template" paraphrase "t1", "t2";``"""

    name: str
    template: str
    paraphrases: list[str] = field(default_factory=list)
    pos: Pos = field(default=NOPOS, compare=False)
    name_pos: Pos = field(default=NOPOS, compare=False)
    template_pos: Pos = field(default=NOPOS, compare=False)
    paraphrase_pos: list[Pos] = field(default_factory=list, compare=False, repr=False)


@dataclass
class UseStmt:
    """``use METHOD(params);``: the default method for edits without ``using``."""

    method: MethodCall
    pos: Pos = field(default=NOPOS, compare=False)


@dataclass
class OnFailStmt:
    """``on_fail rollback|keep|abort;``: what a failed expectation does."""

    policy: str
    pos: Pos = field(default=NOPOS, compare=False)
    policy_pos: Pos = field(default=NOPOS, compare=False)


@dataclass
class Batch:
    """``batch using METHOD { edit ...; edit ...; }``: one update for all its edits."""

    using: MethodCall | None
    edits: list[Edit | EditsFrom] = field(default_factory=list)
    pos: Pos = field(default=NOPOS, compare=False)
    lbrace_pos: Pos = field(default=NOPOS, compare=False)


@dataclass
class SaveStmt:
    """``save to "dir" [merged|adapter];``"""

    path: str
    mode: str | None = None
    pos: Pos = field(default=NOPOS, compare=False)
    path_pos: Pos = field(default=NOPOS, compare=False)
    mode_pos: Pos = field(default=NOPOS, compare=False)


@dataclass
class Comment:
    """A ``#`` comment, kept so that ``fmt`` does not lose it (not part of the tree)."""

    text: str  # including the leading "#"
    line: int
    col: int


Statement = Union[ModelStmt, RelationStmt, UseStmt, OnFailStmt, Edit, EditsFrom, Batch, SaveStmt]


@dataclass
class Script:
    statements: list[Statement] = field(default_factory=list)
    filename: str = field(default="<script>", compare=False)
    source: str = field(default="", compare=False, repr=False)
    comments: list[Comment] = field(default_factory=list, compare=False, repr=False)
    # The data files `edits from` statements name, as the checker read them (keyed by the
    # path as written and the format): read once, so what is checked, applied and hashed
    # is the same.
    data: dict[tuple[str, str | None], Any] = field(default_factory=dict, compare=False, repr=False)

    # Convenience views used by the checker and the executor.
    @property
    def model(self) -> ModelStmt | None:
        return next((s for s in self.statements if isinstance(s, ModelStmt)), None)

    @property
    def save(self) -> SaveStmt | None:
        return next((s for s in self.statements if isinstance(s, SaveStmt)), None)

    def edits(self) -> list[Edit]:
        """Every written edit in order, batch members included (not the rows of data files)."""
        return self._members(Edit)

    def data_statements(self) -> list[EditsFrom]:
        """Every ``edits from`` statement in order, batch members included."""
        return self._members(EditsFrom)

    def _members(self, kind: type) -> list[Any]:
        out: list[Any] = []
        for s in self.statements:
            if isinstance(s, kind):
                out.append(s)
            elif isinstance(s, Batch):
                out.extend(e for e in s.edits if isinstance(e, kind))
        return out
