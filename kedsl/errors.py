"""Errors a user can cause, and the exit codes the CLI maps them to.

This module must stay free of torch/transformers imports: ``check`` and ``fmt`` use it.
"""
from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes of the ``kedsl`` command (documented in README.md)."""

    OK = 0
    EXPECTATION_FAILED = 1  # the run completed but an `expect` did not hold
    INVALID = 2  # invalid script or command-line usage
    INTERNAL = 3  # a bug in kedsl or a plugin: please report it
    MODEL = 4  # the model could not be found, fetched or loaded
    STORE = 5  # the provenance database is missing, locked, corrupt or foreign
    DATA = 6  # an input file (benchmark data, corpus) is missing or malformed
    KEY = 7  # a signing or verification key is missing, unreadable or of the wrong type
    SIGNATURE = 8  # a signature or signed attestation does not verify with the key given
    RANK_FAILED = 9  # a rank of a distributed run (torchrun, --workers) died or failed


class KedslError(Exception):
    """An error the user can fix. Carries a message, an optional hint and an exit code.

    The CLI prints ``error: <message>`` and ``hint: <hint>`` and exits with ``exit_code``;
    it never shows a traceback for these.
    """

    exit_code: ExitCode = ExitCode.INVALID

    def __init__(self, message: str, hint: str | None = None, exit_code: ExitCode | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(KedslError):
    exit_code = ExitCode.INVALID


class ModelError(KedslError):
    exit_code = ExitCode.MODEL


class StoreError(KedslError):
    exit_code = ExitCode.STORE


class DataError(KedslError):
    exit_code = ExitCode.DATA


class SigningKeyError(KedslError):
    """A signing or verification key is missing, unreadable or of the wrong type."""

    exit_code = ExitCode.KEY


class PluginError(KedslError):
    """A plugin is missing, broken or violates the plugin contract."""

    exit_code = ExitCode.INVALID


def did_you_mean(name: str, choices: "list[str] | set[str] | tuple[str, ...]") -> str | None:
    """Return a hint 'did you mean `x`?' for the closest choice, or None."""
    import difflib

    close = difflib.get_close_matches(name, sorted(choices), n=1, cutoff=0.6)
    if close:
        return f"did you mean `{close[0]}`?"
    return None
