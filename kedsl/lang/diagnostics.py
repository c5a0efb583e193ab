"""Diagnostics: what ``check`` and the parser report about a script, and how it is shown.

A diagnostic is rendered like a compiler's::

    eiffel.ke:7:34: error: unknown method `rme`
        edit "Eiffel Tower" located_in -> "Rome" using rme;
                                                       ^~~
    hint: did you mean `rome`?
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..errors import KedslError
from .ast import Pos

ERROR = "error"
WARNING = "warning"


@dataclass
class Diagnostic:
    """One problem in a script. ``line``/``col`` are 1-based; ``end_col`` is exclusive
    and on ``line`` (a span that runs onto later lines is underlined to the line's end)."""

    severity: str
    message: str
    line: int
    col: int
    end_col: int
    hint: str | None = None
    code: str = "error"
    filename: str = "<script>"
    # A problem in a row of a data file (`edits from`): the file as messages name it, the
    # row (from 1) and the column; line/col are then the statement that names the file.
    data_file: str | None = None
    data_row: int | None = None
    data_column: str | None = None

    @property
    def is_error(self) -> bool:
        return self.severity == ERROR

    @property
    def location(self) -> str:
        """``FILE:ROW[:COLUMN]`` for a row of a data file, else ``SCRIPT:LINE:COL``."""
        if self.data_file is not None and self.data_row is not None:
            return f"{self.data_file}:{self.data_row}" + (f":{self.data_column}" if self.data_column else "")
        return f"{self.filename}:{self.line}:{self.col}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def render(self, source: str | None = None) -> str:
        """``FILE:LINE:COL: severity: message`` (``DATA:ROW[:COLUMN]`` and the statement
        naming the data file, for a row), the source line, a caret line, the hint."""
        out = [f"{self.location}: {self.severity}: {self.message}"]
        if self.data_row is not None:
            out.append(f"  in {self.filename}:{self.line}:{self.col}, the `edits from` statement that reads {self.data_file}")
        lines = source.splitlines() if source is not None else []
        if 1 <= self.line <= len(lines):
            text = lines[self.line - 1].expandtabs(1)  # one column per character
            out.append("    " + text)
            start = max(self.col, 1)
            width = max(1, min(self.end_col, len(text) + 1) - start)
            out.append("    " + " " * (start - 1) + "^" + "~" * (width - 1))
        if self.hint:
            out.append(f"hint: {self.hint}")
        return "\n".join(out)


def diag_at(
    pos: Pos,
    message: str,
    code: str,
    hint: str | None = None,
    severity: str = ERROR,
    filename: str = "<script>",
) -> Diagnostic:
    """A diagnostic spanning ``pos`` (to the end of its first line if it spans lines)."""
    end_col = pos.end_col if pos.end_line in (0, pos.line) and pos.end_col > pos.col else pos.col + 1
    if pos.end_line > pos.line:
        end_col = 10**6  # clipped to the line's length when rendered
    return Diagnostic(severity, message, pos.line, pos.col, end_col, hint, code, filename)


def render_all(diagnostics: list[Diagnostic], source: str | None) -> str:
    return "\n".join(d.render(source) for d in diagnostics)


def sort_key(d: Diagnostic) -> tuple[int, int, int]:
    return (d.line, d.col, d.data_row or 0)


class ScriptError(KedslError):
    """A script that does not parse or does not check; carries every diagnostic."""

    def __init__(self, diagnostics: list[Diagnostic], source: str | None = None):
        self.diagnostics = diagnostics
        self.source = source
        errors = [d for d in diagnostics if d.is_error]
        first = errors[0] if errors else diagnostics[0]
        more = f" (and {len(errors) - 1} more error(s))" if len(errors) > 1 else ""
        super().__init__(f"{first.location}: {first.message}{more}", first.hint)

    def render(self) -> str:
        return render_all(self.diagnostics, self.source)
