"""Syntax errors in plain words: what Lark reports (an unexpected token or character, or
the end of the file) turned into a :class:`~kedsl.lang.diagnostics.Diagnostic` with a
message and a hint, plus the span of the broken statement, which the parser blanks out to
go on and report the next error too."""
from __future__ import annotations

import re
from typing import Any

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from ..errors import did_you_mean
from .ast import Batch, Edit, EditsFrom, ModelStmt, OnFailStmt, Pos, RelationStmt, SaveStmt, UseStmt
from .builder import StandaloneExpect, item_pos
from .diagnostics import Diagnostic

# Statement keywords (terminal names Lark gives them) and how messages name the statement.
_STATEMENT_KINDS = {
    "MODEL": "the model statement",
    "RELATION": "the relation",
    "USE": "the `use` statement",
    "ON_FAIL": "the `on_fail` statement",
    "EDIT": "the edit",
    "INSERT": "the insert",
    "ERASE": "the erase",
    "EDITS": "the `edits from` statement",
    "_EXPECT": "the expectation",
    "BATCH": "the batch",
    "SAVE": "the save statement",
}
STATEMENT_KEYWORDS = ("model", "relation", "use", "on_fail", "edit", "edits", "insert", "erase", "expect", "batch", "save")


def dedupe(diags: list[Diagnostic]) -> list[Diagnostic]:
    seen: set[tuple[int, int, str]] = set()
    out = []
    for d in diags:
        key = (d.line, d.col, d.message)
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


def blank_out(text: str, start: int, end: int) -> str:
    """Replace text[start:end] by spaces, keeping newlines so positions stay valid."""
    middle = "".join(c if c == "\n" else " " for c in text[start:end])
    return text[:start] + middle + text[end:]


_DESCRIBE = {
    "NAME": "a name",
    "STRING": "a string",
    "SIGNED_INT": "a number",
    "SIGNED_FLOAT": "a number",
    "CMP_OP": "a comparison (`>=`, `>`, `<=`, `<`, `==`)",
    "$END": "the end of the file",
    "LBRACE": "`{`",
}


def _describe_expected(names: set[str], parser: Lark) -> str:
    parts: list[str] = []
    for n in sorted(names):
        if n in _DESCRIBE:
            d = _DESCRIBE[n]
        else:
            try:
                d = f"`{parser.get_terminal(n).pattern.value}`"
            except KeyError:
                d = n
        if d not in parts:
            parts.append(d)
    statement_starts = {f"`{k}`" for k in STATEMENT_KEYWORDS}
    if statement_starts <= set(parts):
        parts = [p for p in parts if p not in statement_starts] + ["a statement"]
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " or " + parts[-1]


def _describe_found(tok: Token) -> str:
    if tok.type == "$END":
        return "the end of the file"
    text = str(tok)
    if len(text) > 30:
        text = text[:27] + "..."
    return f"`{text}`"


def _value_stack(e: UnexpectedInput) -> list[Any]:
    state = getattr(e, "interactive_parser", None)
    state = state.parser_state if state is not None else getattr(e, "state", None)
    return list(getattr(state, "value_stack", None) or [])


def _statement_context(stack: list[Any]) -> tuple[Token | None, Any]:
    """(keyword token of the statement being parsed, the last item parsed)."""
    finished = (Edit, EditsFrom, Batch, ModelStmt, RelationStmt, UseStmt, OnFailStmt, SaveStmt, StandaloneExpect)
    keyword = None
    for item in reversed(stack):
        if isinstance(item, finished):
            break  # the statement being parsed starts after a finished one
        if isinstance(item, Tree) and str(item.data).startswith(("__start", "__batch")):
            break  # a run of finished statements
        if isinstance(item, Token):
            if item.type == "LBRACE":
                break
            if item.type in _STATEMENT_KINDS:
                keyword = item  # keep the earliest: `expect` inside an edit belongs to it
    return keyword, stack[-1] if stack else None


def _end_of(item: Any) -> tuple[int, int] | None:
    pos = item_pos(item) if item is not None else Pos()
    if pos.line:
        return pos.end_line, pos.end_col
    return None


def _offset(text: str, line: int, col: int) -> int:
    off = 0
    for _ in range(line - 1):
        nl = text.find("\n", off)
        if nl < 0:
            return len(text)
        off = nl + 1
    return off + col - 1


def _statement_end(text: str, start: int) -> int:
    """Offset just after the next `;` (or `}`) at or after ``start``, outside strings and
    comments; the end of the text if there is none."""
    i, n = start, len(text)
    while i < n:
        c = text[i]
        if c == "#":
            nl = text.find("\n", i)
            i = n if nl < 0 else nl
            continue
        if c == '"':
            m = re.compile(r'"([^"\\\n]|\\.)*"?').match(text, i)
            i = m.end() if m else i + 1
            continue
        if c in ";}":
            return i + 1
        i += 1
    return n


def syntax_diagnostic(
    e: UnexpectedInput, text: str, parser: Lark, filename: str
) -> tuple[Diagnostic, tuple[int, int] | None]:
    """A plain-words diagnostic for a Lark error, and the span to blank out to go on."""

    def at(line: int, col: int, width: int, message: str, code: str, hint: str | None = None) -> Diagnostic:
        return Diagnostic("error", message, line, col, col + max(width, 1), hint, code, filename)

    if isinstance(e, UnexpectedCharacters):
        start = e.pos_in_stream
        ch = text[start]
        line_end = text.find("\n", start)
        line_end = len(text) if line_end < 0 else line_end
        if ch == '"':
            d = at(e.line, e.column, line_end - start, "unterminated string", "unterminated-string",
                   'a string ends with `"` on the same line; write a line break as \\n')
        elif ch == "'":
            d = at(e.line, e.column, 1, "strings use double quotes", "single-quote", 'write "..." instead of \'...\'')
        else:
            d = at(e.line, e.column, 1, f"unexpected character `{ch}`", "unexpected-character")
        stack = _value_stack(e)
        keyword, _ = _statement_context(stack)
        begin = keyword.start_pos if keyword is not None else start
        return d, (begin, _statement_end(text, line_end if ch == '"' else start + 1))

    assert isinstance(e, (UnexpectedToken, UnexpectedEOF))
    tok: Token = getattr(e, "token", None) or Token("$END", "")
    expected: set[str] = set(getattr(e, "expected", None) or getattr(e, "allowed", None) or ())
    stack = _value_stack(e)
    keyword, last = _statement_context(stack)
    kind = _STATEMENT_KINDS.get(keyword.type, "the statement") if keyword is not None else "the statement"
    prev_end = _end_of(last)
    is_end = tok.type == "$END"
    if is_end:
        line, col = prev_end if prev_end else (1, 1)
        width = 1
    else:
        line, col, width = tok.line, tok.column, len(str(tok))
    found = _describe_found(tok)
    kw = keyword.type if keyword is not None else None
    prev_type = last.type if isinstance(last, Token) else None

    d: Diagnostic
    if tok.type in ("SIGNED_INT", "SIGNED_FLOAT") and "CMP_OP" in expected:
        d = at(line, col, width, "expected a comparison before the number", "missing-comparison",
               f"write for example `>= {tok}`")
    elif kw == "INSERT" and tok.type == "_FROM":
        d = at(line, col, width, "`insert` adds a new fact and takes no `from`", "insert-with-from",
               "use `edit ... -> \"NEW\" from \"OLD\"` to change an existing fact")
    elif kw == "ERASE" and str(tok) == "->":
        d = at(line, col, width, "`erase` takes no new target", "erase-with-target",
               'write `erase "SUBJECT" RELATION from "OLD";`, or use `edit` to change the fact')
    elif "SEMICOLON" in expected and not is_end and prev_end and (
        tok.type in _STATEMENT_KINDS or tok.line > prev_end[0] or tok.type in ("RBRACE", "LBRACE")
    ):
        line, col = prev_end
        d = at(line, col, 1, f"expected `;` after {kind}", "missing-semicolon", "every statement ends with `;`")
    elif is_end and "RBRACE" in expected:
        lbrace = next((t for t in reversed(stack) if isinstance(t, Token) and t.type == "LBRACE"), None)
        if lbrace is not None:
            line, col = lbrace.line, lbrace.column
        d = at(line, col, 1, "this `{` is never closed", "unclosed-batch", "end the batch with `}`")
    elif is_end and "SEMICOLON" in expected and prev_end:
        d = at(line, col, 1, f"expected `;` after {kind}", "missing-semicolon", "every statement ends with `;`")
    elif is_end:
        d = at(line, col, 1, f"unexpected end of file in {kind}; expected {_describe_expected(expected, parser)}",
               "unexpected-eof")
    elif {"EDIT", "MODEL", "SAVE"} <= expected and tok.type == "NAME":
        d = at(line, col, width, f"unknown statement `{tok}`", "unknown-statement",
               did_you_mean(str(tok), STATEMENT_KEYWORDS)
               or "statements start with " + ", ".join(f"`{k}`" for k in STATEMENT_KEYWORDS))
    elif {"EDIT", "MODEL", "SAVE"} <= expected:
        d = at(line, col, width, f"expected a statement, found {found}", "expected-statement",
               "statements start with " + ", ".join(f"`{k}`" for k in STATEMENT_KEYWORDS))
    elif "COMMA" in expected and tok.type in ("NAME", "STRING", "SIGNED_INT", "SIGNED_FLOAT"):
        d = at(line, col, width, f"expected `,` before {found}", "missing-comma", "separate the items of a list with `,`")
    elif expected == {"STRING"} and tok.type == "NAME":
        d = at(line, col, width, f"expected a string in double quotes, found {found}", "expected-string",
               f'write "{tok}"')
    elif "NAME" in expected and prev_type == "_EXPECT":
        d = at(line, col, width, f"expected a metric name after `expect`, found {found}", "expected-metric")
    elif "NAME" in expected and prev_type in ("_USING", "USE"):
        d = at(line, col, width, f"expected a method name, found {found}", "expected-method")
    elif "NAME" in expected and kw in ("EDIT", "INSERT", "ERASE") and prev_type == "STRING":
        d = at(line, col, width, f"expected a relation name after the subject, found {found}", "expected-relation",
               'name a relation (e.g. `P103`), or write a free prompt: `edit prompt "..." subject "..." -> "..."`')
    elif "NAME" in expected and kw == "RELATION":
        d = at(line, col, width, f"expected the relation's name, found {found}", "expected-name",
               'write `relation NAME "template with {}";`')
    elif kw in ("EDIT", "INSERT") and tok.type == "STRING" and any(
        parser.get_terminal(n).pattern.value == "->" for n in expected if n not in _DESCRIBE
    ):
        d = at(line, col, width, "expected `->` before the new target", "expected-arrow",
               'write `edit "SUBJECT" RELATION -> "NEW TARGET";`')
    else:
        d = at(line, col, width, f"unexpected {found}; expected {_describe_expected(expected, parser)}",
               "syntax-error")

    # Go on after the broken statement: blank it out (up to its `;`) and parse again.
    begin = keyword.start_pos if keyword is not None and keyword.start_pos is not None else (tok.start_pos or 0)
    if is_end:
        return d, None
    if d.code == "missing-semicolon":
        # Blank only the statement that lacks its `;`; the next one parses on its own.
        stop = tok.start_pos
        if tok.type in ("RBRACE",):
            stop = tok.start_pos
        return d, (begin, stop)
    return d, (begin, _statement_end(text, tok.start_pos))
