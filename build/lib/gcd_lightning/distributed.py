"""The processes of a multi-GPU (DDP) run: who is who, a fair share of the work, and putting it back together.

Every helper also works in a plain single process (no process group): rank 0 of 1, ``shard``
gives everything, ``gather_rows`` and ``broadcast`` return their input, ``barrier`` returns at
once. The ranks of a run share one file system (the caches): rank 0 writes, the others wait.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from lightning_fabric import Fabric
from tqdm.auto import tqdm

T = TypeVar("T")
Rows = TypeVar("Rows", torch.Tensor, dict[str, torch.Tensor])

# strategies whose processes run a function, not the whole command: the pipeline needs the latter
FUNCTION_LAUNCHERS = ("spawn", "fork", "notebook")


def initialized() -> bool:
    """Whether this process belongs to a process group."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """How many processes the run has (1 without a process group)."""
    return dist.get_world_size() if initialized() else 1


def rank() -> int:
    """This process's global rank (0 without a process group)."""
    return dist.get_rank() if initialized() else 0


def is_rank_zero() -> bool:
    return rank() == 0


def shard(n: int, rank: int, world: int) -> range:
    """The contiguous block of ``range(n)`` that ``rank`` of ``world`` processes takes.

    The blocks are in rank order, cover ``range(n)`` once and differ in length by at most one
    (the first ``n % world`` ranks take one more); a rank gets an empty range when ``n < world``.
    Concatenating the blocks of ranks 0, 1, … gives back ``range(n)``: ``gather_rows`` relies on it.
    """
    if world < 1:
        raise ValueError(f"shard: the world size must be at least 1, got {world}")
    if not 0 <= rank < world:
        raise ValueError(f"shard: rank {rank} is not in [0, {world})")
    if n < 0:
        raise ValueError(f"shard: cannot split a negative count {n}")
    size, extra = divmod(n, world)
    start = rank * size + min(rank, extra)
    return range(start, start + size + (rank < extra))


def communication_device() -> torch.device:
    """Where collectives take their tensors: the current GPU under NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's ``tensor`` concatenated along dim 0 in rank order, on every rank.

    The inverse of ``shard``: when rank ``r`` holds the rows ``shard(n, r, world)`` of an
    ``(n, ...)`` tensor, every rank gets the whole tensor back, in its original order, with no
    row lost or repeated. The ranks may hold different numbers of rows (the shorter parts are
    padded for ``all_gather`` and cut again); the other dimensions and the dtype must agree. The
    result is on ``tensor``'s device. In a single process ``tensor`` itself comes back.
    """
    world = world_size()
    if world == 1:
        return tensor
    device = communication_device()
    counts = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world)]
    dist.all_gather(counts, torch.tensor([len(tensor)], device=device))
    counts = [int(count) for count in counts]
    longest = max(counts)
    if longest == 0:
        return tensor
    padded = torch.zeros((longest, *tensor.shape[1:]), dtype=tensor.dtype, device=device)
    padded[: len(tensor)] = tensor.to(device)
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([part[:count] for part, count in zip(parts, counts)]).to(tensor.device)


def map_batches(
    fn: Callable[[int, slice], Rows],
    n: int,
    batch_size: int,
    seed: int | None = None,
    progress: bool = False,
    desc: str = "batches",
) -> Rows:
    """``fn(i, rows)`` for every batch ``i`` of ``range(n)`` (``rows``: its slice), concatenated in order.

    ``fn`` returns a tensor, or a dict of tensors, with ``len(rows)`` rows on the CPU. In a DDP run
    each rank computes a contiguous block of the batches (``shard``) and every rank gets all the
    rows back (``gather_rows``): the same result as one process, provided batch ``i``'s result
    depends on ``i`` and ``rows`` alone. ``seed=s`` makes that so for random work: batch ``i`` runs
    right after ``torch.manual_seed(s + i)`` and the caller's generator is left as it was. With
    ``seed=None`` a batch draws from the generator as the batches before it on this rank left it.
    When there are fewer batches than ranks every rank computes them all; with ``n = 0`` the
    result is ``fn(0, slice(0, 0))``, so ``fn`` gives it its shape. Only rank 0 shows a progress
    bar (``progress=True``, on stderr, counting rows). ``fn`` must not itself call anything
    collective (``map_batches``, ``gather_rows``, …): the ranks run different numbers of batches.
    """
    if batch_size < 1:
        raise ValueError(f"map_batches: batch_size must be positive, got {batch_size}")
    if n == 0:
        return fn(0, slice(0, 0))
    batches = range(-(-n // batch_size))
    world = world_size()
    shared = len(batches) >= world > 1
    if shared:
        mine = shard(len(batches), rank(), world)
        batches = batches[mine.start : mine.stop]
    slices = [slice(i * batch_size, min(n, (i + 1) * batch_size)) for i in batches]
    bar = tqdm(total=sum(s.stop - s.start for s in slices), desc=desc, unit="img", file=sys.stderr,
               disable=not (progress and is_rank_zero()))
    cuda = [torch.cuda.current_device()] if torch.cuda.is_initialized() else []
    parts = []
    with bar, contextlib.nullcontext() if seed is None else torch.random.fork_rng(devices=cuda):
        for i, rows in zip(batches, slices):
            if seed is not None:
                torch.manual_seed(seed + i)
            parts.append(fn(i, rows))
            bar.update(rows.stop - rows.start)
    if isinstance(parts[0], dict):
        joined = {key: torch.cat([part[key] for part in parts]) for key in parts[0]}
        return {key: gather_rows(value) for key, value in joined.items()} if shared else joined
    joined = torch.cat(parts)
    return gather_rows(joined) if shared else joined


def broadcast(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (any picklable object), so that every rank takes the same branch."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=communication_device())
    return box[0]


def barrier() -> None:
    """Wait until every rank gets here."""
    if world_size() == 1:
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def write_on_rank_zero(write: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Call ``write(*args, **kwargs)`` on rank 0 only (a file), then wait for every rank, so all can read what it wrote."""
    if is_rank_zero():
        write(*args, **kwargs)
    barrier()


def launch(trainer: Mapping[str, Any]) -> bool:
    """Start the processes that a trainer config asks for and join them in one process group.

    With a ``strategy`` of the ``ddp`` family and more than one device, the command is run once
    more per further device (Lightning's launcher: ``LOCAL_RANK``, ``WORLD_SIZE``, … in the
    environment and, under Hydra, the same run dir) and every process joins the process group
    here, at the start of the run. So the work between the fits (attacks, saliency maps) is
    sharded over the same processes, and each ``Trainer`` finds its processes and its group
    already there. Processes started by ``torchrun`` only join. Without a ``strategy``
    (``trainer=default``, ``trainer=gpu``), on one device, or when the group exists already,
    nothing happens. Returns whether this call opened the group; whoever opened it closes it
    with ``shutdown``.

    Raises:
        ValueError: a strategy whose processes run a function (``ddp_spawn``, ``ddp_fork``,
            ``ddp_notebook``), or one given as an object instead of by name.
    """
    strategy = trainer.get("strategy")
    if strategy is None or initialized():
        return False
    if not isinstance(strategy, str):
        raise ValueError(f"trainer.strategy must be a strategy name such as 'ddp', got {strategy!r}")
    if any(word in strategy for word in FUNCTION_LAUNCHERS):
        raise ValueError(
            f"trainer.strategy={strategy!r} is not supported: its processes run the fit only, so the pipeline's "
            "attacks and caches would stay in one process; use strategy=ddp (trainer=ddp or trainer=ddp_cpu)"
        )
    fabric = Fabric(
        accelerator=trainer.get("accelerator", "auto"),
        devices=trainer.get("devices", "auto"),
        num_nodes=trainer.get("num_nodes", 1),
        strategy=strategy,
    )
    if fabric.world_size > 1:
        fabric.launch()
    return initialized()


def shutdown() -> None:
    """Leave the process group once every rank got here, so that the process exits cleanly.

    A process that exits with its gloo group still open can abort (SIGABRT) on the way out.
    """
    if initialized():
        barrier()
        dist.destroy_process_group()
