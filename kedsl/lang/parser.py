"""Parse ``.ke`` source into the AST of :mod:`kedsl.lang.ast`.

The Lark parser (LALR, contextual lexer) is built once per process, from Lark's on-disk
cache of the grammar analysis when it exists, and builds the AST directly while parsing
(an inline transformer: no intermediate parse tree). Syntax errors become
:class:`~kedsl.lang.diagnostics.Diagnostic` objects with a plain-words message; after one,
the parser blanks out the broken statement and goes on, so a script with several broken
statements reports each of them.

The pieces: this module sets Lark up and runs it; :mod:`.builder` turns reductions into
AST nodes; :mod:`.syntax_errors` words the errors.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from pathlib import Path

import lark
from lark import Lark
from lark.exceptions import UnexpectedInput

from .ast import Script
from .builder import Builder
from .diagnostics import Diagnostic, ScriptError, sort_key
from .grammar_file import grammar_path
from .syntax_errors import blank_out, dedupe, syntax_diagnostic

MAX_SYNTAX_ERRORS = 10

_lock = threading.Lock()
_parser: Lark | None = None
_builder: Builder | None = None


def _get_parser() -> tuple[Lark, Builder]:
    global _parser, _builder
    if _parser is None:
        builder = Builder()
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


def _cache_file(path: Path) -> str | bool:
    """Lark pickles its grammar analysis here (keyed by the grammar's hash inside the file
    name Lark checks); fall back to Lark's own temp-dir cache if the directory is not
    writable."""
    cache_dir = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    d = os.path.join(cache_dir, "kedsl")
    try:
        os.makedirs(d, exist_ok=True)
        if not os.access(d, os.W_OK):
            raise OSError
    except OSError:
        d = tempfile.gettempdir()
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
                diag, blank = syntax_diagnostic(e, text, parser, filename)
                diags.append(diag)
                if blank is None or blank[1] <= blank[0]:
                    break
                text = blank_out(text, *blank)
                continue
            diags.extend(builder.diags)
            if diags:
                # Comments and positions are those of the original source either way.
                break
            script.filename = filename
            script.source = source
            script.comments = list(builder.comments)
            return script, []
    return None, sorted(dedupe(diags), key=sort_key)


def parse(source: str, filename: str = "<script>") -> Script:
    """Parse a script, raising :class:`ScriptError` (with every diagnostic) if it is invalid."""
    script, diags = parse_with_diagnostics(source, filename)
    if script is None:
        raise ScriptError(diags, source)
    return script
