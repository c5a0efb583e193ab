"""Builds the AST of :mod:`kedsl.lang.ast` while the LALR parser reduces rules (an inline
Lark transformer: no intermediate parse tree). String literals are decoded here, and a
bad escape becomes a diagnostic rather than an exception."""
from __future__ import annotations

import re
from typing import Any

from lark import Token, Transformer

from ..registry.params import Range
from .ast import (
    Arg,
    Batch,
    Comment,
    Edit,
    EditsFrom,
    Expect,
    ExpectPrompt,
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
from .diagnostics import Diagnostic, diag_at


def token_pos(tok: Token) -> Pos:
    return Pos(tok.line, tok.column, tok.end_line, tok.end_column)


_ESCAPE = re.compile(r"\\(u[0-9A-Fa-f]{4}|U[0-9A-Fa-f]{8}|.)", re.DOTALL)
_SIMPLE_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t", "r": "\r", "0": "\0"}


class _Str:
    """A decoded string literal with its position."""

    __slots__ = ("value", "pos")

    def __init__(self, value: str, pos: Pos):
        self.value = value
        self.pos = pos


class _About:
    """The subject part of an edit: ``"S" REL`` or ``prompt "P" subject "S"``."""

    __slots__ = ("subject", "relation", "relation_pos", "prompt", "pos")

    def __init__(self, subject: _Str, relation: str | None, relation_pos: Pos, prompt: _Str | None, pos: Pos):
        self.subject = subject
        self.relation = relation
        self.relation_pos = relation_pos
        self.prompt = prompt
        self.pos = pos


class _Val:
    """A value with its position (unwrapped into plain Python values in the AST)."""

    __slots__ = ("value", "pos")

    def __init__(self, value: Any, pos: Pos):
        self.value = value
        self.pos = pos


class _Comparison:
    __slots__ = ("op", "value", "op_pos", "pos")

    def __init__(self, op: str, value: float | None, op_pos: Pos, pos: Pos):
        self.op, self.value, self.op_pos, self.pos = op, value, op_pos, pos


def item_pos(item: Any) -> Pos:
    if isinstance(item, Token):
        return token_pos(item)
    if isinstance(item, _Using):
        return item.call.pos
    if isinstance(item, StandaloneExpect):
        return item.expect.pos
    return getattr(item, "pos", None) or Pos()


def _span(children: list[Any]) -> Pos:
    """From the first child's start to the last child's end."""
    first = last = None
    for item in children:
        p = item_pos(item)
        if p.line:
            first = p
            break
    for item in reversed(children):
        p = item_pos(item)
        if p.line:
            last = p
            break
    if first is None or last is None:
        return Pos()
    return Pos(first.line, first.col, last.end_line, last.end_col)


class _Using:
    __slots__ = ("call",)

    def __init__(self, call: MethodCall):
        self.call = call


class StandaloneExpect:
    __slots__ = ("expect",)

    def __init__(self, expect: Expect):
        self.expect = expect


class Builder(Transformer):
    """Builds AST nodes as the LALR parser reduces rules. Per-parse state (diagnostics,
    comments) lives in ``self.state``; parses are serialized by a lock."""

    def __init__(self) -> None:
        super().__init__()
        self.diags: list[Diagnostic] = []
        self.comments: list[Comment] = []
        self.filename = "<script>"

    def reset(self, filename: str) -> None:
        self.diags = []
        self.comments = []
        self.filename = filename

    def on_comment(self, tok: Token) -> Token:
        self.comments.append(Comment(str(tok).rstrip(), tok.line, tok.column))
        return tok

    def _err(self, pos: Pos, message: str, code: str, hint: str | None = None) -> None:
        self.diags.append(diag_at(pos, message, code, hint, filename=self.filename))

    # -- strings ------------------------------------------------------------------
    def _decode(self, tok: Token) -> _Str:
        raw = str(tok)[1:-1]
        pos = token_pos(tok)
        if "\\" not in raw:
            return _Str(raw, pos)

        def one(m: re.Match[str]) -> str:
            esc = m.group(1)
            if esc in _SIMPLE_ESCAPES:
                return _SIMPLE_ESCAPES[esc]
            if esc[0] in "uU" and len(esc) > 1:
                code = int(esc[1:], 16)
                if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
                    self._escape_error(tok, m, f"`\\{esc}` is not a valid unicode character")
                    return ""
                return chr(code)
            self._escape_error(tok, m, f"unknown escape `\\{esc}` in string")
            return ""

        return _Str(_ESCAPE.sub(one, raw), pos)

    def _escape_error(self, tok: Token, m: re.Match[str], message: str) -> None:
        col = tok.column + 1 + m.start()
        self._err(
            Pos(tok.line, col, tok.line, col + len(m.group(0))),
            message,
            "bad-escape",
            'escapes are \\" \\\\ \\n \\t \\r \\0 \\uXXXX \\UXXXXXXXX; unicode may also be written as is',
        )

    # -- values -------------------------------------------------------------------
    # The parser keeps every token (keep_all_tokens) so that each node's span can be
    # computed from its first and last child; punctuation and keywords are dropped here.
    def string(self, c: list[Token]) -> _Val:
        s = self._decode(c[0])
        return _Val(s.value, s.pos)

    def number(self, c: list[Token]) -> _Val:
        tok = c[0]
        return _Val(int(tok) if tok.type == "SIGNED_INT" else float(tok), token_pos(tok))

    def true(self, c: list[Token]) -> _Val:
        return _Val(True, token_pos(c[0]))

    def false(self, c: list[Token]) -> _Val:
        return _Val(False, token_pos(c[0]))

    def range(self, c: list[Token]) -> _Val:
        return _Val(Range(int(c[0]), int(c[2])), _span(c))

    def ident(self, c: list[Token]) -> _Val:
        return _Val(Ident(str(c[0])), token_pos(c[0]))

    def list(self, c: list[Any]) -> _Val:
        return _Val([v.value for v in c if isinstance(v, _Val)], _span(c))

    def arg(self, c: list[Any]) -> Arg:
        return Arg(str(c[0]), c[2].value, _span(c))

    def method_call(self, c: list[Any]) -> MethodCall:
        return MethodCall(str(c[0]), [a for a in c if isinstance(a, Arg)], _span(c))

    # -- statements ---------------------------------------------------------------
    def model_stmt(self, c: list[Any]) -> ModelStmt:
        return ModelStmt(self._decode(c[1]).value, [a for a in c if isinstance(a, Arg)], _span(c))

    def relation_stmt(self, c: list[Any]) -> RelationStmt:
        name = c[1]
        strings = [self._decode(t) for t in c if isinstance(t, Token) and t.type == "STRING"]
        t, ps = strings[0], strings[1:]
        return RelationStmt(
            str(name),
            t.value,
            [p.value for p in ps],
            pos=_span(c),
            name_pos=token_pos(name),
            template_pos=t.pos,
            paraphrase_pos=[p.pos for p in ps],
        )

    def use_stmt(self, c: list[Any]) -> UseStmt:
        return UseStmt(c[1], _span(c))

    def on_fail_stmt(self, c: list[Any]) -> OnFailStmt:
        return OnFailStmt(str(c[1]), _span(c), token_pos(c[1]))

    def save_stmt(self, c: list[Any]) -> SaveStmt:
        path = self._decode(c[2])
        mode = c[3] if c[3].type == "NAME" else None
        return SaveStmt(
            path.value,
            str(mode) if mode is not None else None,
            _span(c),
            path.pos,
            token_pos(mode) if mode is not None else Pos(),
        )

    def subject_relation(self, c: list[Token]) -> _About:
        return _About(self._decode(c[0]), str(c[1]), token_pos(c[1]), None, _span(c))

    def free_prompt(self, c: list[Token]) -> _About:
        return _About(self._decode(c[3]), None, Pos(), self._decode(c[1]), _span(c))

    def using_clause(self, c: list[Any]) -> _Using:
        return _Using(c[1])

    def expect_answer(self, c: list[Token]) -> ExpectPrompt:
        return ExpectPrompt(self._decode(c[0]).value, self._decode(c[2]).value, False, _span(c))

    def expect_unchanged(self, c: list[Token]) -> ExpectPrompt:
        return ExpectPrompt(self._decode(c[0]).value, None, True, _span(c))

    def comparison(self, c: list[Any]) -> _Comparison:
        value = float(c[1].value) if len(c) > 1 else None
        return _Comparison(str(c[0]), value, token_pos(c[0]), _span(c))

    def expect_clause(self, c: list[Any]) -> Expect:
        metric = c[1]
        ex = Expect(str(metric), pos=_span(c), metric_pos=token_pos(metric))
        for item in c[2:]:
            if isinstance(item, ExpectPrompt):
                ex.prompts.append(item)
            elif isinstance(item, _Comparison):
                ex.op, ex.threshold, ex.op_pos = item.op, item.value, item.op_pos
        return ex

    def expect_stmt(self, c: list[Any]) -> StandaloneExpect:
        return StandaloneExpect(c[0])

    def _edit(self, kind: str, c: list[Any]) -> Edit:
        about: _About = c[1]
        strings = [t for t in c[2:] if isinstance(t, Token) and t.type == "STRING"]
        edit = Edit(
            subject=about.subject.value,
            kind=kind,
            relation=about.relation,
            prompt=about.prompt.value if about.prompt else None,
            pos=_span(c),
            subject_pos=about.subject.pos,
            relation_pos=about.relation_pos,
            prompt_pos=about.prompt.pos if about.prompt else Pos(),
        )
        if kind == "erase":
            old = self._decode(strings[0])
            edit.old, edit.old_pos = old.value, old.pos
            if len(strings) > 1:  # `refusal "TEXT"`: what the model answers instead
                refusal = self._decode(strings[1])
                edit.target, edit.target_pos = refusal.value, refusal.pos
        else:
            target = self._decode(strings[0])
            edit.target, edit.target_pos = target.value, target.pos
            if len(strings) > 1:
                old = self._decode(strings[1])
                edit.old, edit.old_pos = old.value, old.pos
        self._clauses(edit, c[2:], "an edit", "this edit")
        return edit

    def _clauses(self, stmt: Edit | EditsFrom, items: list[Any], what: str, this: str) -> None:
        """A statement's `using` (one at most) and `expect` clauses, in any order."""
        for item in items:
            if isinstance(item, _Using):
                if stmt.using is not None:
                    self._err(item.call.pos, f"{what} takes one `using` clause", "duplicate-using",
                              f"{this} already uses `{stmt.using.name}`")
                else:
                    stmt.using = item.call
            elif isinstance(item, Expect):
                stmt.expects.append(item)

    def edits_from_stmt(self, c: list[Any]) -> EditsFrom:
        path = self._decode(next(t for t in c if isinstance(t, Token) and t.type == "STRING"))
        stmt = EditsFrom(path.value, pos=_span(c), path_pos=path.pos)
        fmt = next((t for t in c if isinstance(t, Token) and t.type == "NAME"), None)
        if fmt is not None:
            stmt.format, stmt.format_pos = str(fmt), token_pos(fmt)
        stmt.columns = [a for a in c if isinstance(a, Arg)]
        self._clauses(stmt, c, "an `edits from` statement", "this statement")
        return stmt

    def change(self, c: list[Any]) -> Edit:
        return self._edit("edit", c)

    def insertion(self, c: list[Any]) -> Edit:
        return self._edit("insert", c)

    def erasure(self, c: list[Any]) -> Edit:
        return self._edit("erase", c)

    def edit_stmt(self, c: list[Any]) -> Edit:
        return c[0]

    def _attach(self, items: list[Any]) -> list[Any]:
        """Attach each standalone ``expect ...;`` to the edit just before it."""
        out: list[Any] = []
        for item in items:
            if not isinstance(item, StandaloneExpect):
                out.append(item)
                continue
            prev = out[-1] if out else None
            if isinstance(prev, Batch) and prev.edits:
                prev = prev.edits[-1]
            if isinstance(prev, (Edit, EditsFrom)):
                prev.expects.append(item.expect)
            else:
                self._err(
                    item.expect.pos,
                    "`expect` must follow an edit",
                    "expect-without-edit",
                    "an `expect ...;` statement applies to the edit just before it; "
                    "move it after an edit or write it as a clause of one",
                )
        return out

    def batch_stmt(self, c: list[Any]) -> Batch:
        using = None
        lbrace = Pos()
        items: list[Any] = []
        for item in c:
            if isinstance(item, _Using):
                using = item.call
            elif isinstance(item, Token):
                if item.type == "LBRACE":
                    lbrace = token_pos(item)
            else:
                items.append(item)
        return Batch(using, self._attach(items), _span(c), lbrace)

    def start(self, c: list[Any]) -> Script:
        return Script(self._attach(list(c)))
