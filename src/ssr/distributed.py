"""Several processes (`accelerate launch`): who does what, and how they wait for each other.

A run under N processes is one computation, not N: every process trains (data parallel), the
greedy generation of evaluation and refinement is split across processes and gathered, and the
main process alone owns the run directory (the lock, config, log, every file written) and does
the steps that are one process's work (SSR synthesis and selection, rehearsal selection, the
L2 / EWC state). The others wait at a barrier and then read what it wrote, so every process
sees the same files at the same point and takes the same branches; that is what keeps their
collective calls (gradient all-reduce, gathers) matched.

The process group is created with a long timeout (`SSR_DIST_TIMEOUT_MINUTES`, default 12
hours): while the main process synthesises for hours on a 7B model the others sit in a
barrier, which torch's default (10 minutes for NCCL) would turn into a crash. A process that
dies is still noticed at once: the launcher (torchrun) stops the others.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from datetime import timedelta
from functools import lru_cache
from typing import Any, TypeVar

import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs

from ssr.errors import PeerError

log = logging.getLogger(__name__)

T = TypeVar("T")
DEFAULT_TIMEOUT_MINUTES = 12 * 60


def timeout() -> timedelta:
    """How long a process waits at a barrier or collective before giving up."""
    minutes = os.environ.get("SSR_DIST_TIMEOUT_MINUTES", "")
    try:
        value = float(minutes) if minutes.strip() else DEFAULT_TIMEOUT_MINUTES
    except ValueError:
        raise ValueError(f"SSR_DIST_TIMEOUT_MINUTES={minutes!r}: expected a number of minutes") from None
    return timedelta(minutes=value)


def _accelerator_visible() -> bool:
    return torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())


@lru_cache(maxsize=1)
def get_accelerator() -> Accelerator:
    """One Accelerator per process (its state is global); bf16 is handled per stage by autocast.

    Without a GPU, several processes (WORLD_SIZE > 1) run on the CPU over gloo: accelerate
    only does that when told `cpu=True`, and its own `--cpu` launch flag starts a single
    process, so a CPU machine launches with `--multi_gpu` (torchrun) and lands here.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1 and os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true" and os.environ.get("MASTER_ADDR"):
        log.warning("accelerate launch --cpu starts one process whatever --num_processes says; "
                    "for several processes on a CPU machine use --multi_gpu (see README, Scaling)")
    cpu = world > 1 and not _accelerator_visible()
    return Accelerator(cpu=cpu, kwargs_handlers=[InitProcessGroupKwargs(timeout=timeout())])


class Dist:
    """This process's place in the run: rank, world size, and the few collectives the runner uses."""

    def __init__(self, accelerator: Accelerator | None = None):
        self.accelerator = accelerator or get_accelerator()
        self.rank = self.accelerator.process_index
        self.world = self.accelerator.num_processes
        self.is_main = self.accelerator.is_main_process
        self.device = self.accelerator.device

    def barrier(self) -> None:
        """Wait until every process gets here (a no-op with one process)."""
        if self.world > 1:
            self.accelerator.wait_for_everyone()

    def broadcast(self, obj: T) -> T:
        """The main process's `obj` on every process (pickled)."""
        if self.world == 1:
            return obj
        from accelerate.utils import broadcast_object_list

        box = [obj if self.is_main else None]
        broadcast_object_list(box, from_process=0)
        return box[0]

    def all_gather(self, items: list) -> list:
        """Every process's `items`, concatenated in rank order, on every process."""
        if self.world == 1:
            return list(items)
        from accelerate.utils import gather_object

        return gather_object(list(items))

    def on_main(self, fn: Callable[..., Any], *args, **kwargs) -> None:
        """Run a step that writes the run directory on the main process, then let everyone go on:
        the others wait (long synthesis included, see `timeout`) and afterwards see its files."""
        if self.is_main:
            fn(*args, **kwargs)
        self.barrier()

    def decide(self, fn: Callable[[], T]) -> T:
        """A value the main process computes (e.g. "is this step done?"), the same on every process.
        An error on the main process is raised on every process (the others with its message)."""
        if self.world == 1:
            return fn()
        outcome: tuple[bool, Any] = (True, None)
        if self.is_main:
            try:
                outcome = (True, fn())
            except Exception as err:  # noqa: BLE001 - re-raised below, after the others know
                outcome = (False, err)
        ok, value = self.broadcast(outcome)
        if not ok:
            if self.is_main:
                raise value
            raise PeerError(value) from None
        return value


@lru_cache(maxsize=1)
def current() -> Dist:
    """This process's `Dist` (creating the process group on first use)."""
    return Dist()
