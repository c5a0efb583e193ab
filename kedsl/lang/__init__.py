"""The kedsl edit language: grammar, AST, parser, checker, formatter (torch-free).

Public API::

    read_script(path) -> str                               # a .ke file's text (UsageError if unreadable)
    parse(source, filename) -> Script                      # raises ScriptError
    check_source(source, filename, registry) -> (Script | None, [Diagnostic])   # data files included
    check(script, registry) -> [Diagnostic]
    format_script(script) -> str
    resolve_edits(script, registry) -> [ResolvedEdit]      # raises ScriptError
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..datafiles import DataFileError
from ..errors import UsageError
from ..registry import get_registry
from .ast import Script
from .checker import (
    DEFAULT_ON_FAIL,
    KEDSL_OUTPUT_MARKER,
    ON_FAIL_POLICIES,
    DataFiles,
    ResolvedEdit,
    call_params,
    check,
    on_fail_policy,
    resolve_edits,
)
from .data import DATA_FORMATS, FIELDS, DataRow, DataSource, DataTable
from .diagnostics import ERROR, WARNING, Diagnostic, ScriptError, render_all
from .fmt import format_script
from .parser import parse, parse_with_diagnostics

__all__ = [
    "DATA_FORMATS",
    "DEFAULT_ON_FAIL",
    "DataFileError",
    "DataFiles",
    "DataRow",
    "DataSource",
    "DataTable",
    "Diagnostic",
    "FIELDS",
    "ERROR",
    "KEDSL_OUTPUT_MARKER",
    "ON_FAIL_POLICIES",
    "ResolvedEdit",
    "Script",
    "ScriptError",
    "WARNING",
    "call_params",
    "check",
    "check_source",
    "format_script",
    "on_fail_policy",
    "parse",
    "parse_with_diagnostics",
    "read_script",
    "render_all",
    "resolve_edits",
]


def check_source(
    source: str,
    filename: str = "<script>",
    registry: Any = None,
    base_dir: "str | os.PathLike[str] | None" = None,
    data_files: DataFiles = None,
) -> tuple[Script | None, list[Diagnostic]]:
    """Parse and check ``source``. The script is None if it does not parse; the
    diagnostics are every syntax error, or else every check error and warning (every
    bad row of the data files it names included). ``registry`` defaults to the installed
    plugins; ``data_files`` is as for :func:`check`."""
    script, diags = parse_with_diagnostics(source, filename)
    if script is None:
        return None, diags
    if registry is None:
        registry = get_registry()
    return script, check(script, registry, base_dir, data_files)


def read_script(path: str | os.PathLike[str]) -> str:
    """The text of a script file; a missing, unreadable or non-UTF-8 file is a
    :class:`~kedsl.errors.UsageError` (exit 2) that names it."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"no such file: {p}", "pass the path of a .ke file")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{p} is not UTF-8 text ({exc.reason} at byte {exc.start})", "save the script as UTF-8") from None
    except OSError as exc:
        raise UsageError(f"cannot read {p}: {exc.strerror or exc}") from None
