"""Saved approximate indexes: written into the index folder with faiss's own writer, keyed to the manifest and the
settings, reused while they match, built again (never used) when stale or damaged; the recall check."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil

import faiss
import numpy as np
import pytest

from openmatch import api
from openmatch.errors import OpenMatchWarning, UsageError
from openmatch.retriever import ann, write_index
from openmatch.retriever.index import EmbeddingIndex, index_files
from openmatch.retriever.search import SearchOptions, rank_rows, search_index

N, DIM, NQ = 1200, 16, 30
IDS = [f"p{i}" for i in range(N)]
QIDS = [f"q{i}" for i in range(NQ)]
# nprobe = the list count: an IVF-Flat index then returns the exact top k of the vectors it holds, so a
# result tells which vectors the index was filled with.
IVF = dict(faiss_index="IVF8,Flat", nprobe=8, depth=10)


def vectors(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((N, DIM)).astype(np.float32), rng.standard_normal((NQ, DIM)).astype(np.float32)


@pytest.fixture
def folder(tmp_path):
    passages, _ = vectors(0)
    write_index(str(tmp_path / "idx"), IDS, passages, shard_size=500)
    return tmp_path / "idx"


def exact_ids(passages: np.ndarray, queries: np.ndarray, k: int) -> list[list[str]]:
    flat = faiss.IndexFlatIP(DIM)
    flat.add(passages)
    return [[f"p{i}" for i in row] for row in flat.search(queries, k)[1]]


def hit_ids(results) -> list[list[str]]:
    return [[pid for pid, _ in hits] for hits in results.values()]


def no_rebuild(monkeypatch):
    """Make building an approximate index fail, so that a search that succeeds used the saved one."""

    def refuse(*args, **kwargs):
        raise AssertionError("the approximate index was built again")

    monkeypatch.setattr(ann, "train_sample", refuse)
    monkeypatch.setattr(EmbeddingIndex, "iter_blocks", refuse)


def test_saved_in_the_folder_and_reused(folder, monkeypatch, caplog):
    passages, queries = vectors(0)
    first = api.search(folder, queries, QIDS, **IVF)
    assert hit_ids(first) == exact_ids(passages, queries, 10)
    assert {"ann.IVF8_Flat.faiss", "ann.IVF8_Flat.json"} <= set(os.listdir(folder))
    assert set(index_files(str(folder))) >= {"ann.IVF8_Flat.faiss", "ann.IVF8_Flat.json"}  # part of the index
    # faiss's own format, which faiss reads back; not a pickle.
    assert faiss.read_index(str(folder / "ann.IVF8_Flat.faiss")).ntotal == N
    assert not (folder / "ann.IVF8_Flat.faiss").read_bytes().startswith(b"\x80")
    record = json.loads((folder / "ann.IVF8_Flat.json").read_text())
    manifest = json.loads((folder / "manifest.json").read_text())
    assert record["key"]["factory"] == record["key"]["built"] == "IVF8,Flat"
    assert record["key"]["metric"] == "inner_product" and record["key"]["rows"] == [0, N]
    assert record["key"]["training"] == {"sample": N, "seed": 0}
    assert record["key"]["embeddings"]["sha256"] == [s["embeddings_sha256"] for s in manifest["shards"]]
    assert record["file"]["bytes"] == (folder / "ann.IVF8_Flat.faiss").stat().st_size
    saved = (folder / "ann.IVF8_Flat.faiss").stat().st_mtime_ns

    no_rebuild(monkeypatch)
    with caplog.at_level(logging.INFO, logger="openmatch"):
        again = api.search(folder, queries, QIDS, **IVF)
    assert again == first
    assert "using the approximate index saved in" in caplog.text
    assert (folder / "ann.IVF8_Flat.faiss").stat().st_mtime_ns == saved
    # Search-time settings are not part of the key: another nprobe uses the same index.
    api.search(folder, queries, QIDS, **{**IVF, "nprobe": 2})
    # An index that needs no training (HNSW) is keyed without a sample.
    monkeypatch.undo()
    api.search(folder, queries, QIDS, faiss_index="HNSW8", depth=10)
    assert json.loads((folder / "ann.HNSW8.json").read_text())["key"]["training"] is None


def copy_saved(source, target, name="ann.IVF8_Flat"):
    for suffix in (".faiss", ".json"):
        shutil.copy(source / f"{name}{suffix}", target / f"{name}{suffix}")


def damage(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


# Each case leaves in the folder an approximate index that must not be used, and the reason the log gives.
STALE = {
    "other_vectors": "the shards' checksums differ",
    "other_training_sample": "the training sample differ",
    "other_factory_string_same_name": "the factory string",
    "damaged_file": "does not match the sha256",
    "truncated_file": "bytes, ",
    "missing_file": "missing",
    "unreadable_json": "unreadable",
    "missing_json": "no ann.IVF8_Flat.json says what it was built from",
}


@pytest.mark.parametrize("case", sorted(STALE))
def test_stale_or_damaged_index_is_built_again_never_used(case, folder, tmp_path, caplog):
    passages, queries = vectors(0)
    options = dict(IVF)
    if case == "other_vectors":
        # An index of other vectors (an earlier build of the folder, say), whose saved index is copied in.
        other, _ = vectors(1)
        write_index(str(tmp_path / "other"), IDS, other, shard_size=500)
        api.search(tmp_path / "other", queries, QIDS, **IVF)
        copy_saved(tmp_path / "other", folder)
    else:
        api.search(folder, queries, QIDS, **IVF)
    saved, record = folder / "ann.IVF8_Flat.faiss", folder / "ann.IVF8_Flat.json"
    if case == "other_training_sample":
        options["train_sample"] = 700
    elif case == "other_factory_string_same_name":
        # "IVF8 Flat" is not a factory string; what matters is that the json names another one for this file.
        data = json.loads(record.read_text())
        data["key"]["factory"] = data["key"]["built"] = "IVF8_Flat"
        record.write_text(json.dumps(data))
    elif case == "damaged_file":
        damage(saved)
    elif case == "truncated_file":
        saved.write_bytes(saved.read_bytes()[:-100])
    elif case == "missing_file":
        saved.unlink()
    elif case == "unreadable_json":
        record.write_text('{"key": ')
    elif case == "missing_json":
        record.unlink()
    with caplog.at_level(logging.INFO, logger="openmatch"):
        results = api.search(folder, queries, QIDS, **options)
    assert STALE[case] in caplog.text
    assert "building it again" in caplog.text or "building the approximate index again" in caplog.text
    assert hit_ids(results) == exact_ids(passages, queries, 10)  # the index searched holds this folder's vectors
    # Saved again, matching its json: the next search uses it.
    data = json.loads(record.read_text())
    assert data["file"]["sha256"] == ann.sha256_file(str(saved))
    assert data["key"]["embeddings"]["sha256"] == [s["embeddings_sha256"] for s in EmbeddingIndex(folder).shards]
    assert data["key"]["training"]["sample"] == options.get("train_sample", N)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="openmatch"):
        api.search(folder, queries, QIDS, **options)
    assert "using the approximate index saved in" in caplog.text


def test_touched_file_is_hashed_once_then_trusted(folder, monkeypatch):
    _, queries = vectors(0)
    api.search(folder, queries, QIDS, **IVF)
    os.utime(folder / "ann.IVF8_Flat.faiss")  # same bytes, another stat: hashed, found intact, stamped again
    hashed = []
    real = ann.sha256_file
    monkeypatch.setattr(ann, "sha256_file", lambda path: hashed.append(path) or real(path))
    no_rebuild(monkeypatch)
    api.search(folder, queries, QIDS, **IVF)
    api.search(folder, queries, QIDS, **IVF)
    assert hashed == [str(folder / "ann.IVF8_Flat.faiss")]


def test_a_folder_that_cannot_take_it_still_searches(folder, monkeypatch):
    passages, queries = vectors(0)
    real = ann.atomic_output

    def full_disk(path, *args, **kwargs):
        if os.path.basename(path).startswith("ann."):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(ann, "atomic_output", full_disk)
    with pytest.warns(OpenMatchWarning, match="ann.IVF8_Flat.faiss: could not save the approximate index .No space left"):
        results = api.search(folder, queries, QIDS, **IVF)
    assert hit_ids(results) == exact_ids(passages, queries, 10)
    assert not [name for name in os.listdir(folder) if "ann." in name]


def test_names_of_saved_indexes():
    assert ann.ann_names("IVF4096,PQ64x8", 0, 10, 10) == ("ann.IVF4096_PQ64x8.faiss", "ann.IVF4096_PQ64x8.json")
    assert ann.ann_names("OPQ16_64,IVF256,PQ16", 1024, 2600, 2600)[0] == "ann.OPQ16_64_IVF256_PQ16.rows1024-2600.faiss"


def test_build_index_overwrite_removes_saved_indexes(folder):
    from openmatch.retriever.index import IndexSpec, prepare_output_dir

    _, queries = vectors(0)
    api.search(folder, queries, QIDS, **IVF)
    spec = IndexSpec(model_path="", model_config={}, model_fingerprint="", dim=DIM, corpus={}, template="",
                     column_names=None, max_len=0, precision="fp32", dtype="float32", world_size=1, shard_size=10)
    prepare_output_dir(str(folder), spec, overwrite=True)
    assert sorted(os.listdir(folder)) == ["build.json"]


# --- the recall check --------------------------------------------------------------------------------------------


def test_check_recall_reports_recall_against_exact_search(folder, caplog):
    passages, queries = vectors(0)
    options = SearchOptions(depth=10, faiss_index="IVF8,Flat", nprobe=1, check_recall=12, seed=3)
    with caplog.at_level(logging.INFO, logger="openmatch"):
        results = search_index(folder, queries, QIDS, options)
    report = results.recall
    # The sample: 12 of the 30 queries, drawn with the seed; the same every time.
    sample = sorted(report["per_query"], key=QIDS.index)
    assert len(sample) == 12 and report["sampled"] == 12 and report["queries"] == NQ and report["seed"] == 3
    assert search_index(folder, queries, QIDS, options).recall == report
    truth = exact_ids(passages, queries, 10)
    for qid in sample:
        row = QIDS.index(qid)
        expected = len(set(truth[row]) & {pid for pid, _ in results[qid]}) / 10
        assert report["per_query"][qid] == pytest.approx(expected)
    assert report["recall"] == pytest.approx(np.mean(list(report["per_query"].values())))
    assert report["min_recall"] == min(report["per_query"].values())
    assert 0 < report["recall"] < 1  # one list probed of eight: some neighbours are missed
    assert report["k"] == 10 and report["nprobe"] == 1 and report["faiss_index"] == "IVF8,Flat"
    assert f"recall@10 of --faiss_index IVF8,Flat nprobe 1 against exact search: {report['recall']:.4f}" in caplog.text
    # Probing every list is exact: recall 1. More queries asked than there are: all of them.
    full = search_index(folder, queries, QIDS, SearchOptions(**IVF, check_recall=100)).recall
    assert full["recall"] == 1.0 and full["sampled"] == NQ
    assert search_index(folder, queries, QIDS, SearchOptions(**IVF)).recall is None


def test_check_recall_needs_an_approximate_index():
    with pytest.raises(UsageError, match="--check_recall compares an approximate --faiss_index with exact search"):
        SearchOptions(check_recall=5)
    with pytest.raises(UsageError, match="--check_recall must be 0"):
        SearchOptions(faiss_index="HNSW32", check_recall=-1)


# --- how the rows are shared between ranks ------------------------------------------------------------------------


@pytest.mark.parametrize("total,world_size", [(2600, 2), (5000, 3), (1024, 2), (10, 4), (4096, 4), (3 * 1024 + 1, 2)])
def test_rank_rows_cover_the_index_once_at_tile_boundaries(total, world_size):
    parts = [rank_rows(total, rank, world_size, 1024) for rank in range(world_size)]
    assert parts[0][0] == 0 and parts[-1][1] == total
    assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))  # contiguous, in rank order, no overlap
    assert all(first % 1024 == 0 and first <= last for first, last in parts)
    tiles = [-(-(last - first) // 1024) for first, last in parts]
    assert max(tiles) - min(tiles) <= 1  # as even as whole tiles allow
