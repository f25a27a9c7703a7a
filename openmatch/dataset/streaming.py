"""Exactly-once splitting of a record stream across distributed ranks and DataLoader workers.

Every reader of a shared stream (``world_size`` ranks × ``num_workers`` loader workers) keeps the records
whose position ``i`` satisfies ``i % readers == reader``. Each record therefore goes to exactly one reader,
whatever the world size and worker count, which is what OpenMatch's ``IterableDataset`` got wrong: with
more than one worker every worker replayed the whole stream.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, Optional

from torch.utils.data import IterableDataset, get_worker_info

from ..distributed import dist_context


def reader_slot(rank: int, world_size: int, worker_id: int, num_workers: int) -> tuple[int, int]:
    """``(reader_index, num_readers)`` of one worker of one rank."""
    num_workers = max(num_workers, 1)
    return rank * num_workers + worker_id, world_size * num_workers


def take_share(items: Iterable, reader: int, num_readers: int) -> Iterator:
    """The items at positions ``reader, reader + num_readers, ...``."""
    for position, item in enumerate(items):
        if position % num_readers == reader:
            yield item


class ShardedStream(IterableDataset):
    """An ``IterableDataset`` over ``make_stream()`` in which each item reaches exactly one worker of one rank.

    ``transform`` runs inside the worker on the items it owns, so expensive work such as tokenisation is
    parallelised and never done twice. ``rank``/``world_size`` default to the distributed context.
    """

    def __init__(
        self,
        make_stream: Callable[[], Iterable],
        transform: Optional[Callable] = None,
        rank: Optional[int] = None,
        world_size: Optional[int] = None,
    ):
        self.make_stream = make_stream
        self.transform = transform
        self.rank = rank
        self.world_size = world_size

    def __iter__(self):
        rank, world_size = dist_context()
        rank = self.rank if self.rank is not None else rank
        world_size = self.world_size if self.world_size is not None else world_size
        info = get_worker_info()
        worker_id, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        reader, readers = reader_slot(rank, world_size, worker_id, num_workers)
        items = take_share(self.make_stream(), reader, readers)
        if self.transform is None:
            return iter(items)
        return map(self.transform, items)
