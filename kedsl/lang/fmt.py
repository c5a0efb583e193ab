"""The canonical form of a script (``kedsl fmt``).

Rules: one statement per line, `;` at the end; an edit longer than
MAX_WIDTH breaks before `->`; an edit's `expect` clauses go on their own
lines, indented four spaces; batch members are indented four spaces; one blank line is
kept wherever the source had one or more; comments are kept (a comment inside a
multi-line statement moves above it). Formatting is idempotent and the result parses to
an equal tree.
"""
from __future__ import annotations

import unicodedata
from typing import Any

from ..registry.params import Range
from .ast import (
    Batch,
    Comment,
    Edit,
    EditsFrom,
    Expect,
    Ident,
    MethodCall,
    ModelStmt,
    OnFailStmt,
    Pos,
    RelationStmt,
    SaveStmt,
    Script,
    UseStmt,
)

INDENT = "    "
# An edit longer than this breaks before its `->` (or `from`).
MAX_WIDTH = 88
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r", "\0": "\\0"}


def quote(text: str) -> str:
    """A string literal for ``text``: escapes for quotes, backslashes and control or
    line-breaking characters; other unicode as is."""
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp") or ch == "\x85":
            code = ord(ch)
            out.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return quote(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, Range):
        return f"{value.start}..{value.stop}"
    if isinstance(value, Ident):
        return value.name
    if isinstance(value, list):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    raise TypeError(f"not a script value: {value!r}")


def format_call(call: MethodCall) -> str:
    if not call.args:
        return call.name
    return call.name + "(" + ", ".join(f"{a.name}={format_value(a.value)}" for a in call.args) + ")"


def format_expect(ex: Expect) -> str:
    parts = ["expect", ex.metric]
    prompts = []
    for p in ex.prompts:
        prompts.append(f"{quote(p.prompt)} unchanged" if p.unchanged else f"{quote(p.prompt)} -> {quote(p.answer or '')}")
    if prompts:
        parts.append(", ".join(prompts))
    if ex.op is not None:
        parts.append(ex.op if ex.threshold is None else f"{ex.op} {format_value(float(ex.threshold))}")
    return " ".join(parts)


def _edit_lines(e: Edit) -> list[str]:
    about = (
        f"prompt {quote(e.prompt)} subject {quote(e.subject)}"
        if e.prompt is not None
        else f"{quote(e.subject)} {e.relation}"
    )
    head = f"{e.kind} {about}"
    if e.kind == "erase":
        rest = f"from {quote(e.old or '')}" + (f" refusal {quote(e.target)}" if e.target is not None else "")
    else:
        rest = f"-> {quote(e.target or '')}"
    if e.kind == "edit" and e.old is not None:
        rest += f" from {quote(e.old)}"
    if e.using is not None:
        rest += f" using {format_call(e.using)}"
    if len(head) + 1 + len(rest) <= MAX_WIDTH:
        lines = [f"{head} {rest}"]
    else:
        lines = [head, INDENT + rest]
    lines += [INDENT + format_expect(x) for x in e.expects]
    lines[-1] += ";"
    return lines


def _edits_from_lines(s: EditsFrom) -> list[str]:
    """``edits from "PATH" [as F] [with ...] [using ...]`` on one line if it fits, else
    the `with` and `using` parts on lines of their own; expectations below."""
    head = f"edits from {quote(s.path)}" + (f" as {s.format}" if s.format is not None else "")
    parts = []
    if s.columns:
        parts.append("with " + ", ".join(f"{a.name}={format_value(a.value)}" for a in s.columns))
    if s.using is not None:
        parts.append(f"using {format_call(s.using)}")
    one_line = " ".join([head, *parts])
    lines = [one_line] if len(one_line) <= MAX_WIDTH else [head] + [INDENT + p for p in parts]
    lines += [INDENT + format_expect(x) for x in s.expects]
    lines[-1] += ";"
    return lines


def _statement_lines(s: Any, comments: list[Comment]) -> list[str]:
    if isinstance(s, ModelStmt):
        settings = ", ".join(f"{a.name}={format_value(a.value)}" for a in s.settings)
        return [f"model {quote(s.ref)}" + (f" with {settings}" if settings else "") + ";"]
    if isinstance(s, RelationStmt):
        line = f"relation {s.name} {quote(s.template)}"
        if not s.paraphrases:
            return [line + ";"]
        return [line, INDENT + "paraphrase " + ", ".join(quote(p) for p in s.paraphrases) + ";"]
    if isinstance(s, UseStmt):
        return [f"use {format_call(s.method)};"]
    if isinstance(s, OnFailStmt):
        return [f"on_fail {s.policy};"]
    if isinstance(s, SaveStmt):
        return [f"save to {quote(s.path)}" + (f" {s.mode}" if s.mode else "") + ";"]
    if isinstance(s, Edit):
        return _edit_lines(s)
    if isinstance(s, EditsFrom):
        return _edits_from_lines(s)
    if isinstance(s, Batch):
        head = "batch " + (f"using {format_call(s.using)} " if s.using else "") + "{"
        inner = [c for c in comments if _inside(c, s.pos)]
        body = _format_block(s.edits, inner, _first_line_after(s), s.pos.end_line)
        return [head] + [INDENT + ln if ln else ln for ln in body] + ["}"]
    raise TypeError(f"not a statement: {s!r}")


def _first_line_after(b: Batch) -> int:
    return b.lbrace_pos.line or b.pos.line


def _inside(c: Comment, pos: Pos) -> bool:
    return pos.line != 0 and pos.line <= c.line <= pos.end_line


def _span(s: Any) -> Pos:
    """A statement's span, including expectations written after its `;`."""
    p = s.pos
    if isinstance(s, (Edit, EditsFrom)):
        for x in s.expects:
            if x.pos.line and (x.pos.end_line, x.pos.end_col) > (p.end_line, p.end_col):
                p = Pos(p.line, p.col, x.pos.end_line, x.pos.end_col)
    return p


def _format_block(stmts: list[Any], comments: list[Comment], start_line: int, end_line: int) -> list[str]:
    """Lines for statements and the comments among them, keeping single blank lines."""
    # Items: (first line, last line, lines to emit). Comments inside a statement move
    # above it; a comment after a statement on its last line stays at the end of it.
    items: list[tuple[int, int, list[str]]] = []
    used: set[int] = set()
    for s in stmts:
        span = _span(s)
        mine = [c for c in comments if id(c) not in used and _inside(c, span)]
        trailing = None
        leading: list[Comment] = []
        for c in mine:
            used.add(id(c))
            if isinstance(s, Batch) and c.line != span.end_line:
                continue  # formatted inside the batch
            if c.line == span.end_line and c.col > span.end_col - 1 and trailing is None:
                trailing = c
            elif isinstance(s, Batch) and c.line == span.end_line:
                continue
            else:
                leading.append(c)
        inner = [c for c in mine if c is not trailing] if isinstance(s, Batch) else []
        lines = [c.text for c in leading] + _statement_lines(s, inner)
        if trailing is not None:
            lines[-1] += "  " + trailing.text
        first = min([span.line] + [c.line for c in leading]) if span.line else 0
        items.append((first, span.end_line, lines))
    for c in comments:
        if id(c) not in used:
            items.append((c.line, c.line, [c.text]))
    items.sort(key=lambda it: it[0])
    out: list[str] = []
    prev_end = start_line
    for i, (first, last, lines) in enumerate(items):
        if out and first and prev_end and first - prev_end > 1:
            out.append("")
        out.extend(lines)
        prev_end = last
    return out


def format_script(script: Script) -> str:
    """The canonical text of ``script`` (ends with one newline)."""
    lines = _format_block(script.statements, list(script.comments), 0, 0)
    return "\n".join(lines) + "\n" if lines else ""
