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

    @property
    def is_error(self) -> bool:
        return self.severity == ERROR

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def render(self, source: str | None = None) -> str:
        """``FILE:LINE:COL: severity: message``, the source line, a caret line, the hint."""
        out = [f"{self.filename}:{self.line}:{self.col}: {self.severity}: {self.message}"]
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


def sort_key(d: Diagnostic) -> tuple[int, int]:
    return (d.line, d.col)


class ScriptError(KedslError):
    """A script that does not parse or does not check; carries every diagnostic."""

    def __init__(self, diagnostics: list[Diagnostic], source: str | None = None):
        self.diagnostics = diagnostics
        self.source = source
        errors = [d for d in diagnostics if d.is_error]
        first = errors[0] if errors else diagnostics[0]
        more = f" (and {len(errors) - 1} more error(s))" if len(errors) > 1 else ""
        super().__init__(
            f"{first.filename}:{first.line}:{first.col}: {first.message}{more}",
            first.hint,
        )

    def render(self) -> str:
        return render_all(self.diagnostics, self.source)
