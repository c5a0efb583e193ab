"""Parse ``.ke`` source into the AST of :mod:`kedsl.lang.ast`.

The Lark parser (LALR, contextual lexer) is built once per process, from Lark's on-disk
cache of the grammar analysis when it exists, and builds the AST directly while parsing
(an inline transformer: no intermediate parse tree). Syntax errors become
:class:`~kedsl.lang.diagnostics.Diagnostic` objects with a plain-words message; after one,
the parser blanks out the broken statement and goes on, so a script with several broken
statements reports each of them.
"""
from __future__ import annotations

import re
import threading
from typing import Any

from lark import Lark, Token, Transformer, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from ..errors import did_you_mean
from ..params import Range
from .ast import (
    Arg,
    Batch,
    Comment,
    Edit,
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
from .diagnostics import Diagnostic, ScriptError, diag_at, sort_key

MAX_SYNTAX_ERRORS = 10

# Statement keywords (terminal names Lark gives them) and how messages name the statement.
_STATEMENT_KINDS = {
    "MODEL": "the model statement",
    "RELATION": "the relation",
    "USE": "the `use` statement",
    "ON_FAIL": "the `on_fail` statement",
    "EDIT": "the edit",
    "INSERT": "the insert",
    "ERASE": "the erase",
    "_EXPECT": "the expectation",
    "BATCH": "the batch",
    "SAVE": "the save statement",
}
STATEMENT_KEYWORDS = ("model", "relation", "use", "on_fail", "edit", "insert", "erase", "expect", "batch", "save")


def _pos(tok: Token) -> Pos:
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


def _item_pos(item: Any) -> Pos:
    if isinstance(item, Token):
        return _pos(item)
    if isinstance(item, _Using):
        return item.call.pos
    if isinstance(item, _StandaloneExpect):
        return item.expect.pos
    return getattr(item, "pos", None) or Pos()


def _span(children: list[Any]) -> Pos:
    """From the first child's start to the last child's end."""
    first = last = None
    for item in children:
        p = _item_pos(item)
        if p.line:
            first = p
            break
    for item in reversed(children):
        p = _item_pos(item)
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


class _StandaloneExpect:
    __slots__ = ("expect",)

    def __init__(self, expect: Expect):
        self.expect = expect


class _Builder(Transformer):
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
        pos = _pos(tok)
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
        return _Val(int(tok) if tok.type == "SIGNED_INT" else float(tok), _pos(tok))

    def true(self, c: list[Token]) -> _Val:
        return _Val(True, _pos(c[0]))

    def false(self, c: list[Token]) -> _Val:
        return _Val(False, _pos(c[0]))

    def range(self, c: list[Token]) -> _Val:
        return _Val(Range(int(c[0]), int(c[2])), _span(c))

    def ident(self, c: list[Token]) -> _Val:
        return _Val(Ident(str(c[0])), _pos(c[0]))

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
            name_pos=_pos(name),
            template_pos=t.pos,
            paraphrase_pos=[p.pos for p in ps],
        )

    def use_stmt(self, c: list[Any]) -> UseStmt:
        return UseStmt(c[1], _span(c))

    def on_fail_stmt(self, c: list[Any]) -> OnFailStmt:
        return OnFailStmt(str(c[1]), _span(c), _pos(c[1]))

    def save_stmt(self, c: list[Any]) -> SaveStmt:
        path = self._decode(c[2])
        mode = c[3] if c[3].type == "NAME" else None
        return SaveStmt(
            path.value,
            str(mode) if mode is not None else None,
            _span(c),
            path.pos,
            _pos(mode) if mode is not None else Pos(),
        )

    def subject_relation(self, c: list[Token]) -> _About:
        return _About(self._decode(c[0]), str(c[1]), _pos(c[1]), None, _span(c))

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
        return _Comparison(str(c[0]), value, _pos(c[0]), _span(c))

    def expect_clause(self, c: list[Any]) -> Expect:
        metric = c[1]
        ex = Expect(str(metric), pos=_span(c), metric_pos=_pos(metric))
        for item in c[2:]:
            if isinstance(item, ExpectPrompt):
                ex.prompts.append(item)
            elif isinstance(item, _Comparison):
                ex.op, ex.threshold, ex.op_pos = item.op, item.value, item.op_pos
        return ex

    def expect_stmt(self, c: list[Any]) -> _StandaloneExpect:
        return _StandaloneExpect(c[0])

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
        else:
            target = self._decode(strings[0])
            edit.target, edit.target_pos = target.value, target.pos
            if len(strings) > 1:
                old = self._decode(strings[1])
                edit.old, edit.old_pos = old.value, old.pos
        for item in c[2:]:
            if isinstance(item, _Using):
                if edit.using is not None:
                    self._err(item.call.pos, "an edit takes one `using` clause", "duplicate-using",
                              f"this edit already uses `{edit.using.name}`")
                else:
                    edit.using = item.call
            elif isinstance(item, Expect):
                edit.expects.append(item)
        return edit

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
            if not isinstance(item, _StandaloneExpect):
                out.append(item)
                continue
            prev = out[-1] if out else None
            if isinstance(prev, Batch) and prev.edits:
                prev = prev.edits[-1]
            if isinstance(prev, Edit):
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
                    lbrace = _pos(item)
            else:
                items.append(item)
        return Batch(using, self._attach(items), _span(c), lbrace)

    def start(self, c: list[Any]) -> Script:
        return Script(self._attach(list(c)))


_lock = threading.Lock()
_parser: Lark | None = None
_builder: _Builder | None = None


def _get_parser() -> tuple[Lark, _Builder]:
    global _parser, _builder
    if _parser is None:
        from .grammar_file import grammar_path

        builder = _Builder()
        path = grammar_path()
        _parser = Lark(
            path.read_text(encoding="utf-8"),
            parser="lalr",
            lexer="contextual",
            maybe_placeholders=False,
            keep_all_tokens=True,
            transformer=builder,
            lexer_callbacks={"COMMENT": builder.on_comment},
            cache=_cache_file(path),
        )
        _builder = builder
    assert _builder is not None
    return _parser, _builder


def _cache_file(path: Any) -> str | bool:
    """Lark pickles its grammar analysis here (keyed by the grammar's hash inside the file
    name Lark checks); fall back to Lark's own temp-dir cache if the directory is not
    writable."""
    import os
    import tempfile

    import lark

    cache_dir = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    d = os.path.join(cache_dir, "kedsl")
    try:
        os.makedirs(d, exist_ok=True)
        if not os.access(d, os.W_OK):
            raise OSError
    except OSError:
        d = tempfile.gettempdir()
    import hashlib

    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return os.path.join(d, f"grammar-{digest}-lark{lark.__version__}.cache")


def parse_with_diagnostics(source: str, filename: str = "<script>") -> tuple[Script | None, list[Diagnostic]]:
    """Parse ``source``; return the script (None if it has syntax errors) and every
    diagnostic found while parsing."""
    parser, builder = _get_parser()
    diags: list[Diagnostic] = []
    text = source
    with _lock:
        for _attempt in range(MAX_SYNTAX_ERRORS):
            builder.reset(filename)
            try:
                script = parser.parse(text)
            except UnexpectedInput as e:
                diag, blank = _syntax_diagnostic(e, text, parser, filename)
                diags.append(diag)
                if blank is None or blank[1] <= blank[0]:
                    break
                text = _blank_out(text, *blank)
                continue
            diags.extend(builder.diags)
            if diags:
                # Comments and positions are those of the original source either way.
                break
            script.filename = filename
            script.source = source
            script.comments = list(builder.comments)
            return script, []
    return None, sorted(_dedupe(diags), key=sort_key)


def parse(source: str, filename: str = "<script>") -> Script:
    """Parse a script, raising :class:`ScriptError` (with every diagnostic) if it is invalid."""
    script, diags = parse_with_diagnostics(source, filename)
    if script is None:
        raise ScriptError(diags, source)
    return script


def _dedupe(diags: list[Diagnostic]) -> list[Diagnostic]:
    seen: set[tuple[int, int, str]] = set()
    out = []
    for d in diags:
        key = (d.line, d.col, d.message)
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


def _blank_out(text: str, start: int, end: int) -> str:
    """Replace text[start:end] by spaces, keeping newlines so positions stay valid."""
    middle = "".join(c if c == "\n" else " " for c in text[start:end])
    return text[:start] + middle + text[end:]


# -- syntax error messages -------------------------------------------------------------

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
    finished = (Edit, Batch, ModelStmt, RelationStmt, UseStmt, OnFailStmt, SaveStmt, _StandaloneExpect)
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
    pos = _item_pos(item) if item is not None else Pos()
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


def _syntax_diagnostic(
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
