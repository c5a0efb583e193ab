"""kedsl_wise: WISE (Wang et al. 2024, "WISE: Rethinking the Knowledge Memory for Lifelong
Model Editing of Large Language Models"), a side memory and a router at one layer.

The main memory, the model's MLP output projection at ``layer``, is never changed. Edits
go into a side memory of the same shape, kept as a delta over it, and a router decides at
every token position which memory answers: the side one where its *activation score*
(how much the side memory changes the module's output there, relative to the main
memory's output) exceeds a threshold learned from the edits, the main one elsewhere.
Each edit is trained with the routing loss that pushes its own inputs' scores up and
unrelated inputs' down, on a random subset of the memory's entries (its shard's mask:
knowledge sharding); the shards are merged with TIES (trim, elect sign, disjoint mean).

Each edit's outcome is an attachment (kind ``wise_memory``) holding its masked delta: the
side memory is a function of the installed attachments, recomputed when they change, so
undo, ``kedsl revert`` of one edit in a sequence, saving and loading are exact. The
training is :mod:`kedsl_wise.wise`, the memory and router :mod:`kedsl_wise.memory`, the
parameters :mod:`kedsl_wise.config`; this module holds only descriptors and stays
importable without torch.
"""
from __future__ import annotations

from kedsl.plugin import MethodSpec, hookimpl

from .config import DEPTH, PRESETS, WiseConfig

#: The declared parameters (derived from :class:`WiseConfig`).
PARAMS = WiseConfig.params()


@hookimpl
def register_methods() -> list[MethodSpec]:
    return [
        MethodSpec(
            name="wise",
            implementation="kedsl_wise.wise:Wise",
            config=WiseConfig,
            doc="WISE: a side memory of one MLP output projection and a router that sends edited inputs to it (an attachment, weights untouched); shards merged with TIES.",
            supports_batch=True,
            supports_sequential=True,
            presets=PRESETS,
            depth_defaults=DEPTH,
            attachments=(("wise_memory", "kedsl_wise.memory:WiseMemory"),),
            kinds=("edit", "insert", "erase"),
        )
    ]
