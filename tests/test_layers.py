"""The house's layering (README, "Layout"): a module of kedsl imports only from its own
layer or the ones below, and built-in plugins import only kedsl's plugin face and toolkit.
Read from the source (every import statement, those inside functions too)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Bottom to top; "" is the package's own __init__ (its version; the API on first use).
LAYERS = [
    {"", "errors", "cache", "files", "records", "datafiles", "plots", "distributed"},
    {"registry"},
    {"lang", "model"},
    {"editing"},
    {"toolkit"},
    {"evaluation", "provenance"},
    {"training", "locate"},
    {"executor"},
    {"api"},
    {"plugin", "cli", "__main__"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _imports(path: Path, package: str) -> list[str]:
    """Every kedsl module ``path`` imports, absolute."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                out.append(".".join(base + ([node.module] if node.module else [])))
            elif node.module:
                out.append(node.module)
        elif isinstance(node, ast.Import):
            out.extend(n.name for n in node.names)
    return [m for m in out if m == "kedsl" or m.startswith("kedsl.")]


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_room_of_kedsl_has_a_layer():
    rooms = {p.stem if p.is_file() else p.name for p in (ROOT / "kedsl").iterdir() if (p.suffix == ".py" or (p / "__init__.py").is_file())}
    rooms = {"" if r == "__init__" else r for r in rooms}
    assert rooms <= set(RANK), f"add {sorted(rooms - set(RANK))} to LAYERS (and to README's Layout)"


def test_no_module_imports_from_a_layer_above_its_own():
    upward = []
    for path in (ROOT / "kedsl").rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        package = ".".join(parts[:-1]) if parts[-1] != "__init__" else ".".join(parts[:-1])
        module = ".".join(parts if parts[-1] != "__init__" else parts[:-1])
        here = _room(module)
        for target in _imports(path, package):
            there = _room(target)
            if there != here and RANK.get(there, -1) > RANK[here]:
                upward.append(f"{module} imports {target}")
    assert not upward, "\n".join(sorted(upward))


def test_built_in_plugins_import_only_the_plugin_face_and_the_toolkit():
    stray = []
    for path in (ROOT / "plugins").rglob("*.py"):
        for target in _imports(path, "plugins"):
            if target not in ("kedsl.plugin", "kedsl.toolkit") and not target.startswith("kedsl.toolkit."):
                stray.append(f"{path.relative_to(ROOT)} imports {target}")
    assert not stray, "\n".join(sorted(stray))
