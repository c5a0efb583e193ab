"""How values become records: the one JSON spelling hashed everywhere, and plain JSON
values for what methods and metrics report. Torch-free (a tensor can only reach
:func:`jsonable` once torch is imported)."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def canonical_json(obj: Any) -> str:
    """The one JSON spelling hashed everywhere: sorted keys, no spaces, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def jsonable(obj: Any) -> Any:
    """Plain JSON values (tensors become lists, numbers floats) for records."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(obj, torch.Tensor):
        return obj.detach().cpu().tolist() if obj.numel() <= 64 else f"<tensor {tuple(obj.shape)}>"
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if hasattr(obj, "item"):
        return obj.item()
    return str(obj)
