"""Running across processes with torch.distributed: the ranks of one run, and the local
launcher behind ``--workers``.

A run is distributed when a launcher started it as one of several ranks: ``torchrun``
(one machine or many, under Slurm or a Kubernetes training operator) or ``--workers N``,
which starts the same command N times through torch's elastic launcher (what
``torchrun --standalone`` does). Both set ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT``; :func:`ranks_from_environment` joins the process group from them: gloo
for CPU tensors, and NCCL as well for CUDA tensors when the machine has GPUs.

Besides the collectives, the ranks share the rendezvous' key-value store under a
``kedsl/`` prefix: counters that let rank 0 report the whole run's progress, and
heartbeats that let it name a rank that stopped answering.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Callable, Sequence, TypeVar

import torch

from .errors import ExitCode, KedslError

log = logging.getLogger(__name__)

T = TypeVar("T")

#: How often each rank's heartbeat ticks, and how long rank 0 waits for a silent rank
#: before it declares it dead (a rank's own work never blocks its heartbeat thread).
HEARTBEAT_S = 2.0
SILENCE_LIMIT_S = 60.0


class RankError(KedslError):
    """A rank of a distributed run died or failed; the run's results are incomplete."""

    exit_code = ExitCode.RANK_FAILED


@dataclass
class Ranks:
    """This process's place in a distributed run, and the run's collectives."""

    rank: int
    world: int
    store: Any  # the rendezvous' key-value store, under kedsl's prefix
    collective_device: torch.device  # where tensors go for a collective: cuda for NCCL, else cpu
    _beat: threading.Event = field(default_factory=threading.Event, repr=False)
    _keys: int = 0

    def fresh_key(self, name: str) -> str:
        """A store key for ``name`` that no earlier call gave: every rank makes the same
        calls in the same order, so the n-th call names the same key on every rank."""
        self._keys += 1
        return f"{name}/{self._keys}"

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes files and prints."""
        return self.rank == 0

    def share(self, items: Sequence[T]) -> list[T]:
        """This rank's share of ``items``: every ``world``-th one from position ``rank``
        (strided, so ranks get as many items each, early and late ones alike)."""
        return list(items[self.rank :: self.world])

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The elementwise sum of ``tensor`` over all ranks (a new tensor, on ``tensor``'s device)."""
        import torch.distributed as dist

        t = tensor.to(self.collective_device, copy=True)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.to(tensor.device)

    def broadcast_object(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank (any picklable value)."""
        import torch.distributed as dist

        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0, device=self.collective_device)
        return box[0]  # type: ignore[return-value]

    def gather_objects(self, obj: Any, what: str) -> list[Any] | None:
        """Every rank's ``obj``, in rank order, on rank 0 (None elsewhere). A rank that
        died before sending its part is named in a :class:`RankError`."""
        import torch.distributed as dist

        parts: list[Any] | None = [None] * self.world if self.is_main else None
        try:
            dist.gather_object(obj, parts, dst=0)
        except RuntimeError as exc:  # gloo/NCCL: a peer closed its connection
            raise self.lost(what, exc) from None
        return parts

    # -- progress and liveness through the store ----------------------------------------------
    def add(self, key: str, amount: int) -> int:
        """Add ``amount`` to the run-wide counter ``key``; returns its new value."""
        return int(self.store.add(key, amount))

    def start_heartbeat(self) -> None:
        """Tick this rank's heartbeat counter in a daemon thread until :meth:`close`."""

        def beat() -> None:
            while not self._beat.wait(HEARTBEAT_S):
                try:
                    self.store.add(f"beat/{self.rank}", 1)
                except Exception:  # noqa: BLE001 - the store went away: the run is over
                    return

        self.store.add(f"beat/{self.rank}", 1)
        threading.Thread(target=beat, name=f"kedsl-heartbeat-{self.rank}", daemon=True).start()

    def silent_ranks(self, since: dict[int, tuple[int, float]]) -> list[int]:
        """Ranks whose heartbeat has not moved for :data:`SILENCE_LIMIT_S`; ``since`` is
        the caller's memory of (last count, when it changed), updated here."""
        now = time.monotonic()
        silent = []
        for r in range(self.world):
            count = self.add(f"beat/{r}", 0)
            last = since.get(r)
            if last is None or last[0] != count:
                since[r] = (count, now)
            elif now - last[1] > SILENCE_LIMIT_S:
                silent.append(r)
        return silent

    def wait_for_count(self, key: str, total: int, on_change: Callable[[int], None], what: str) -> None:
        """Block until the counter ``key`` reaches ``total`` (calling ``on_change`` with each
        new value), or raise a :class:`RankError` naming the ranks that fell silent."""
        since: dict[int, tuple[int, float]] = {}
        seen = -1
        while True:
            count = self.add(key, 0)
            if count != seen:
                seen = count
                on_change(count)
            if count >= total:
                return
            silent = self.silent_ranks(since)
            if silent:
                raise self.lost(what, None, silent)
            time.sleep(0.2)

    def lost(self, what: str, exc: BaseException | None, ranks: Sequence[int] | None = None) -> RankError:
        """The error for a run that lost ranks during ``what``: the ranks named when known
        (given, or those whose heartbeat stopped)."""
        if ranks is None:
            try:  # whose heartbeat stands still over a few beats
                since: dict[int, tuple[int, float]] = {}
                self.silent_ranks(since)
                time.sleep(min(3 * HEARTBEAT_S, SILENCE_LIMIT_S))
                ranks = [r for r in range(self.world) if r != self.rank and self.add(f"beat/{r}", 0) == since[r][0]]
            except Exception:  # noqa: BLE001 - the store went down with the run: the ranks stay unnamed
                ranks = []
        who = f"rank {', '.join(str(r) for r in ranks)} of {self.world}" if ranks else f"a rank of {self.world}"
        detail = f" ({exc})" if exc is not None else ""
        return RankError(
            f"{who} died or stopped answering during {what}{detail}; the run is incomplete and nothing was written",
            "see that rank's output above for its error; start the run again",
        )

    def close(self) -> None:
        """Stop the heartbeat and leave the process group."""
        import torch.distributed as dist

        self._beat.set()
        if dist.is_initialized():
            dist.destroy_process_group()


def launched_world_size() -> int:
    """How many ranks the launcher started (1 when not launched as one of several)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def ranks_from_environment(timeout_s: float = 24 * 3600.0) -> Ranks | None:
    """Join the process group the launcher set up (``torchrun``, ``--workers``), or None
    for a run of one process. CPU tensors go through gloo; where CUDA is available NCCL
    carries CUDA tensors and each rank uses the GPU of its ``LOCAL_RANK``. ``timeout_s``
    bounds a collective: generous, since a rank that finished its share waits in one for
    the slowest rank's last group (a dead rank is caught sooner, by the launcher or by
    rank 0's heartbeat check)."""
    import torch.distributed as dist

    if launched_world_size() <= 1:
        return None
    timeout = timedelta(seconds=timeout_s)
    use_cuda = torch.cuda.is_available() and dist.is_nccl_available()
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    # the rendezvous gives the store the launcher set up; the process group and kedsl's
    # counters live under separate prefixes of it, as init_process_group's own does
    store, rank, world = next(dist.rendezvous("env://", timeout=timeout))
    store.set_timeout(timeout)
    dist.init_process_group(
        backend="cpu:gloo,cuda:nccl" if use_cuda else "gloo",
        store=dist.PrefixStore("default_pg", store),
        rank=rank,
        world_size=world,
        timeout=timeout,
    )
    ranks = Ranks(
        rank=rank,
        world=world,
        store=dist.PrefixStore("kedsl", store),
        collective_device=torch.device("cuda", torch.cuda.current_device()) if use_cuda else torch.device("cpu"),
    )
    ranks.start_heartbeat()
    log.info("rank %d of %d joined the process group (%s)", rank, world, "gloo + NCCL" if use_cuda else "gloo")
    return ranks


def launch_local(workers: int, argv: Sequence[str]) -> None:
    """Run ``python -m kedsl ARGV`` as ``workers`` ranks on this machine through torch's
    elastic launcher (as ``torchrun --standalone --nproc-per-node WORKERS`` would); raise
    a :class:`RankError` naming the first rank that failed."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # torchrun's rule, shared fairly: each rank gets its part of the cores, not all of them
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=workers,
        run_id=f"kedsl-{uuid.uuid4().hex[:12]}",
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        monitor_interval=0.5,
    )
    try:
        elastic_launch(config, sys.executable)("-m", "kedsl", *argv)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        how = f"killed by {failure.signal_name()}" if failure.exitcode < 0 else f"exit code {failure.exitcode}"
        raise RankError(
            f"rank {rank} of {workers} failed ({how}); the run is incomplete and nothing was written",
            "see that rank's output above for its error" if failure.exitcode > 0 else "the rank was killed (out of memory?); start the run again",
        ) from None
