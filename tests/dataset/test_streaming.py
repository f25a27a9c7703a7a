"""Exactly-once streaming: each record reaches exactly one DataLoader worker of one rank (streaming.py)."""

from __future__ import annotations

from collections import Counter

import pytest
from torch.utils.data import DataLoader

from openmatch.dataset.streaming import ShardedStream, reader_slot, take_share

# 4 workers on a 2-core machine is the point of the test, not a mistake.
pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")


class IdStream:
    """A picklable stream factory (workers are spawned or forked) over string ids such as '007'."""

    def __init__(self, n: int):
        self.n = n

    def __call__(self):
        return (f"{i:03d}" for i in range(self.n))


def tag(item):
    return {"id": item}


def rank_ids(n: int, rank: int, world_size: int, num_workers: int) -> list[str]:
    stream = ShardedStream(IdStream(n), transform=tag, rank=rank, world_size=world_size)
    loader = DataLoader(stream, batch_size=3, num_workers=num_workers, collate_fn=lambda rows: [r["id"] for r in rows])
    return [rid for batch in loader for rid in batch]


@pytest.mark.parametrize("num_workers", [0, 1, 2, 4])
@pytest.mark.parametrize("world_size", [1, 2])
@pytest.mark.parametrize("n", [24, 37])  # divisible by every readers count, and uneven
def test_every_record_exactly_once(n, world_size, num_workers):
    per_rank = [rank_ids(n, rank, world_size, num_workers) for rank in range(world_size)]
    counts = Counter(rid for ids in per_rank for rid in ids)
    assert set(counts) == {f"{i:03d}" for i in range(n)}
    assert max(counts.values()) == 1  # no duplicates within or across ranks
    sets = [set(ids) for ids in per_rank]
    for a in range(world_size):
        assert len(sets[a]) == len(per_rank[a])
        for b in range(a + 1, world_size):
            assert not sets[a] & sets[b]
    # Each reader (rank, worker) owns every readers-th record, so shares differ by at most one per reader.
    workers = max(num_workers, 1)
    readers = world_size * workers
    for rank, ids in enumerate(per_rank):
        assert len(ids) == sum(len(range(rank * workers + w, n, readers)) for w in range(workers))


def test_fewer_records_than_readers():
    per_rank = [rank_ids(3, rank, 2, 4) for rank in range(2)]
    assert sorted(per_rank[0] + per_rank[1]) == ["000", "001", "002"]


def test_reader_slot_and_take_share():
    slots = {reader_slot(rank, 2, worker, 3) for rank in range(2) for worker in range(3)}
    assert slots == {(i, 6) for i in range(6)}
    assert reader_slot(1, 2, 0, 0) == (1, 2)  # num_workers 0 means the main process is the one reader
    assert list(take_share(range(10), 1, 3)) == [1, 4, 7]


def test_rank_defaults_to_environment(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert list(ShardedStream(IdStream(5))) == ["001", "003"]
