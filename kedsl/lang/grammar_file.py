"""Find ``kedsl.lark``: inside the installed package (the wheel force-includes it at
``kedsl/grammar/kedsl.lark``) or, for a source/editable checkout, in the repo's ``grammar/``."""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path

GRAMMAR_NAME = "kedsl.lark"


def grammar_path() -> Path:
    """The path of the grammar file this installation uses."""
    packaged = files("kedsl") / "grammar" / GRAMMAR_NAME
    if packaged.is_file():
        return Path(str(packaged))
    source_checkout = Path(__file__).resolve().parents[2] / "grammar" / GRAMMAR_NAME
    if source_checkout.is_file():
        return source_checkout
    raise FileNotFoundError(
        f"the kedsl grammar was found neither at {packaged} nor at {source_checkout}; "
        "the installation is incomplete"
    )


def grammar_text() -> str:
    return grammar_path().read_text(encoding="utf-8")
