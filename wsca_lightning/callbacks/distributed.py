"""Collective steps of the WSC callback under DDP: a sharded embedding pass, and failures that reach every rank.

Lightning's strategy offers ``broadcast`` and an ``all_gather`` of equally shaped tensors. What the callback needs
beyond that lives here: sharding in whole embedding batches, gathering shards of unequal length, and making an
exception on one process an exception on all of them. Without the latter, one rank that fails inside the callback
leaves the others waiting in the next collective (the gradient all-reduce) until the process group times out, by
default after 30 minutes.

With one process every function here reduces to the plain local call.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence, TypeVar

import lightning as L
import torch
import torch.distributed as dist
from torch import Tensor

T = TypeVar("T")


class RankFailure(RuntimeError):
    """Raised on the ranks that did not fail themselves when another rank failed inside the callback."""


def shard_bounds(num_items: int, world_size: int, granule: int = 1) -> list[tuple[int, int]]:
    """Contiguous ``[start, stop)`` slices of ``num_items`` for each rank, made of whole granules of ``granule``
    items (the last one may be short); the ranks' granule counts differ by at most one.

    Contiguous shards keep the gathered rows in the original order, so the analysis sees exactly the rows (and the
    order) a single process would: no sampler padding, no duplicates. With ``granule`` = the embedding batch size,
    every image is embedded in the same batch as on one process, so the embeddings are the same to the last bit
    (given the same number of threads per process).
    """
    num_granules = -(-num_items // granule)
    base, extra = divmod(num_granules, world_size)
    bounds, start = [], 0
    for rank in range(world_size):
        stop = min(num_items, start + (base + (1 if rank < extra else 0)) * granule)
        bounds.append((start, stop))
        start = stop
    return bounds


def own_shard(indices: Sequence[int], rank: int, world_size: int, granule: int = 1) -> list[int]:
    """This rank's contiguous shard of ``indices`` (:func:`shard_bounds`); may be empty when there are fewer
    granules than ranks."""
    start, stop = shard_bounds(len(indices), world_size, granule)[rank]
    return list(indices[start:stop])


def gather_shards(trainer: L.Trainer, tensor: Tensor, num_items: int, granule: int = 1) -> Tensor:
    """Every rank's shard rows (the first rows of ``tensor``; a rank with an empty shard passes any placeholder
    row), gathered onto every rank in the original order: ``(num_items, ...)``."""
    if trainer.world_size == 1:
        return tensor[:num_items]
    bounds = shard_bounds(num_items, trainer.world_size, granule)
    width = max(1, max(stop - start for start, stop in bounds))
    # all_gather needs equal shapes: pad with zero rows, cut off again below. An inference-mode tensor cannot enter
    # the autograd-aware gather; the padded copy can.
    padded = tensor.new_zeros((width, *tensor.shape[1:]))
    rows = min(width, tensor.shape[0])
    padded[:rows] = tensor[:rows]
    gathered = trainer.strategy.all_gather(padded)  # (world_size, width, ...)
    return torch.cat([gathered[rank, : stop - start] for rank, (start, stop) in enumerate(bounds)])


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def run_on_every_rank(trainer: L.Trainer, work: Callable[[], T], what: str) -> T:
    """``work()`` on every rank; when it raises on any rank, it raises on all of them.

    The failing rank re-raises its own exception (with its traceback); the others raise :class:`RankFailure`
    naming the failing rank(s) and their messages.
    """
    if trainer.world_size == 1 or not dist.is_available() or not dist.is_initialized():
        return work()
    error: BaseException | None = None
    result: Any = None
    try:
        result = work()
    except Exception as err:  # re-raised below, after every rank has heard of it
        error = err
    messages: list[str | None] = [None] * trainer.world_size
    dist.all_gather_object(messages, None if error is None else _describe(error))
    if error is not None:
        raise error
    failed = {rank: message for rank, message in enumerate(messages) if message is not None}
    if failed:
        raise RankFailure(f"WeightSpaceCorrelation: {what} failed on rank(s) {sorted(failed)}: "
                          + "; ".join(f"rank {r}: {m}" for r, m in sorted(failed.items())))
    return result


def run_on_rank_zero(trainer: L.Trainer, work: Callable[[], T], what: str) -> T:
    """``work()`` on global rank zero only; its result is broadcast to every rank. When it raises, every rank
    raises: rank zero its own exception, the others :class:`RankFailure` with its message."""
    if trainer.world_size == 1 or not dist.is_available() or not dist.is_initialized():
        return work()
    error: BaseException | None = None
    payload: tuple[Any, str | None] = (None, None)
    if trainer.is_global_zero:
        try:
            payload = (work(), None)
        except Exception as err:  # re-raised below, after every rank has heard of it
            error = err
            payload = (None, _describe(err))
    result, message = trainer.strategy.broadcast(payload, src=0)
    if error is not None:
        raise error
    if message is not None:
        raise RankFailure(f"WeightSpaceCorrelation: {what} failed on rank 0: {message}")
    return result
