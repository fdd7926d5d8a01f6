"""Multi-process data parallel for the training stages: torchrun's environment -> a process group.

``torchrun --nproc-per-node N -m edgeconvnext ...`` sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR; the
stage calls :func:`init` once, then asks :class:`Dist` whether it is the writer (rank 0), broadcasts what
rank 0 computed (calibration), and wraps the model in DistributedDataParallel. gloo on CPU, NCCL on CUDA.
Without torchrun's variables everything is a single process and every call is a no-op.

Usage::

    d = init("cpu")
    if d.is_main: ...
    obj = d.broadcast_object(obj_on_rank0)
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any

from edgeconvnext.errors import EdgeError, UsageError

log = logging.getLogger(__name__)

#: how long a rank waits for the others (calibration on rank 0 happens inside this window)
TIMEOUT = datetime.timedelta(minutes=30)


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, device: str) -> str:
        return f"cuda:{self.local_rank}" if device == "cuda" and self.enabled else device

    def broadcast_object(self, obj: Any) -> Any:
        """rank 0's ``obj`` on every rank."""
        if not self.enabled:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def broadcast_tensors(self, tensors: list[Any]) -> None:
        """Overwrite ``tensors`` in place with rank 0's values."""
        if not self.enabled:
            return
        import torch.distributed as dist

        for t in tensors:
            dist.broadcast(t.data, src=0)

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def all_ok(self, ok: bool) -> bool:
        """True when ``ok`` on every rank (a collective: every rank must call it)."""
        if not self.enabled:
            return ok
        import torch
        import torch.distributed as dist

        flag = torch.tensor([0 if ok else 1], dtype=torch.int64)
        if self.backend == "nccl":
            flag = flag.cuda(self.local_rank)
        dist.all_reduce(flag)
        return int(flag.item()) == 0

    def close(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def env_world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's variables; (0, 1, 0) without them."""

    def get(name: str, default: int) -> int:
        raw = os.environ.get(name)
        if raw is None:
            return default
        try:
            return int(raw)
        except ValueError:
            raise UsageError(f"environment variable {name}={raw!r} is not an integer (set by torchrun)") from None

    return get("RANK", 0), get("WORLD_SIZE", 1), get("LOCAL_RANK", 0)


def init(device: str) -> Dist:
    """Join torchrun's process group (gloo for cpu, nccl for cuda); a single process otherwise."""
    rank, world, local = env_world()
    if world <= 1:
        return Dist()
    import torch
    import torch.distributed as dist

    backend = "nccl" if device == "cuda" else "gloo"
    if backend == "nccl":
        if not torch.cuda.is_available() or torch.cuda.device_count() <= local:
            raise EdgeError(f"rank {rank}: --device cuda but no CUDA GPU {local} is visible")
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=TIMEOUT)
    log.info("rank %d of %d (%s)", rank, world, backend)
    return Dist(rank, world, local, backend)


class RankFailure(EdgeError):
    """Another rank failed first; this rank stops with the same exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def run_on_main(d: Dist, fn: Any) -> Any:
    """Run ``fn()`` on rank 0 and give its result to every rank; an error on rank 0 stops every rank
    with the same message and exit code (no rank is left waiting in a collective)."""
    if not d.enabled:
        return fn()
    result: Any = None
    status: tuple[bool, str, int] = (True, "", 0)
    if d.is_main:
        try:
            result = fn()
        except EdgeError as e:
            status = (False, str(e), e.exit_code)
            d.broadcast_object(status)
            raise
        except BaseException as e:
            status = (False, f"rank 0 failed: {type(e).__name__}: {e}", 1)
            d.broadcast_object(status)
            raise
    status = d.broadcast_object(status)
    if not status[0]:
        raise RankFailure(f"rank 0 failed: {status[1]}", status[2])
    return d.broadcast_object(result)
