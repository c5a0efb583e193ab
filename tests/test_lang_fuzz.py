"""Random mutations of valid scripts: the front end answers with diagnostics or a tree,
never with an unexpected exception."""
from __future__ import annotations

import random
from pathlib import Path

from kedsl.lang import check_source, format_script, parse
from test_lang_checker import REG

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SEEDS = [p.read_text() for p in sorted(EXAMPLES.glob("*.ke"))] + [
    'model "m" with dtype="float32";\nuse memit(layers=3..5, lr=1e-3);\non_fail abort;\n'
    'insert prompt "Who is \\u00e9?" subject "\\u00e9" -> "x";\nerase "S" P17 from "Old";\n'
    'batch { edit "A" P17 -> "B"; expect efficacy == 1; }\nsave to "out/x" merged;\n'
]
PIECES = ['"', "\\", ";", "{", "}", "(", ")", "[", "]", ",", "->", "..", "=", ">=", "#", "\n", " ", "-", "1",
          "1e", "edit", "expect", "batch", "using", "from", "unchanged", "model", "'", "@", "\t", "é", "\\u12"]
CASES = 2500


def _mutate(rng: random.Random, src: str) -> str:
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(src) + 1)
        op = rng.random()
        if op < 0.35:
            src = src[:i] + src[i + rng.randint(1, 4):]
        elif op < 0.7:
            src = src[:i] + rng.choice(PIECES) + src[i:]
        elif op < 0.85:
            j = rng.randrange(len(src) + 1)
            a, b = sorted((i, j))
            src = src[:a] + src[b:] + src[a:b]  # move a chunk
        else:
            src = src[:i]  # truncate
    return src


def test_mutated_scripts_never_crash(tmp_path):
    rng = random.Random(20240611)
    outcomes = {"ok": 0, "invalid": 0}
    for _ in range(CASES):
        src = _mutate(rng, rng.choice(SEEDS))
        script, diags = check_source(src, "fuzz.ke", REG, base_dir=tmp_path)
        for d in diags:
            assert d.message and d.code and d.line >= 1 and d.col >= 1, d
            d.render(src)
        if script is not None:
            # Whatever parses also formats, and the formatted text parses to the same tree.
            text = format_script(script)
            assert parse(text) == script, src
        outcomes["ok" if script is not None and not any(d.is_error for d in diags) else "invalid"] += 1
    # The mutations must exercise both outcomes, or the test proves little.
    assert outcomes["ok"] > 50 and outcomes["invalid"] > 1000, outcomes
