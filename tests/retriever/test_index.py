"""The index folder's checks at search: every shard file against the manifest once, then a stamp per file, kept in
the folder or, when the folder is read-only, in the user's cache."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from openmatch import api
from openmatch.retriever import index as index_module
from openmatch.retriever import write_index
from openmatch.retriever.index import VERIFIED_FILE, IndexFolderError

N, DIM = 50, 8


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """A two-shard index of random vectors; the user's cache is a fresh folder, so no stamp comes from elsewhere."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    write_index(str(tmp_path / "idx"), [f"p{i}" for i in range(N)], rng.standard_normal((N, DIM)).astype(np.float32),
                shard_size=30)
    return tmp_path / "idx"


@pytest.fixture
def hashed(monkeypatch):
    """The names of the files hashed from now on."""
    names: list[str] = []
    real = index_module._digest

    def digest(path, *args, **kwargs):
        names.append(os.path.basename(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(index_module, "_digest", digest)
    return names


def search(folder):
    queries = np.eye(DIM, dtype=np.float32)[:2]
    return api.search(folder, queries, ["q0", "q1"], depth=5)


def test_each_file_is_hashed_once_until_it_changes(folder, hashed):
    first = search(folder)
    assert sorted(hashed) == sorted(["embeddings.rank0.shard0.npy", "ids.rank0.shard0.txt",
                                     "embeddings.rank0.shard1.npy", "ids.rank0.shard1.txt"])
    assert (folder / VERIFIED_FILE).exists()
    hashed.clear()
    assert search(folder) == first and hashed == []
    # A file touched (its content the same) is hashed again, alone; the others keep their stamps.
    os.utime(folder / "embeddings.rank0.shard1.npy")
    assert search(folder) == first and hashed == ["embeddings.rank0.shard1.npy"]
    hashed.clear()
    assert search(folder) == first and hashed == []


def test_a_stamp_does_not_vouch_for_another_manifest(folder):
    search(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["shards"][0]["ids_sha256"] = "0" * 64  # the manifest now expects other ids than the stamp saw
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFolderError, match=r"ids\.rank0\.shard0\.txt: its content does not match .* rerun build_index"):
        search(folder)


def test_a_damaged_stamp_is_ignored(folder, hashed):
    search(folder)
    (folder / VERIFIED_FILE).write_text("{not json")
    hashed.clear()
    search(folder)
    assert len(hashed) == 4


def test_a_read_only_folder_keeps_its_stamp_in_the_cache(folder, hashed, monkeypatch, tmp_path):
    real = index_module.write_json_atomic

    def write(path, obj):
        if os.path.dirname(os.path.abspath(path)) == str(folder):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, obj)

    monkeypatch.setattr(index_module, "write_json_atomic", write)
    first = search(folder)
    assert not (folder / VERIFIED_FILE).exists()
    assert len(list((tmp_path / "cache" / "openmatch" / "verified").glob("*.json"))) == 1
    hashed.clear()
    assert search(folder) == first and hashed == []


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes in any folder")
def test_a_read_only_folder_is_searchable(folder, hashed, tmp_path):
    folder.chmod(0o555)
    try:
        first = search(folder)
        hashed.clear()
        assert search(folder) == first and hashed == []
    finally:
        folder.chmod(0o755)
    assert not (folder / VERIFIED_FILE).exists()


def test_an_index_without_recorded_sizes_is_still_checked(folder):
    """Indexes built before the file sizes were recorded: their checksums and rows are checked all the same."""
    manifest = json.loads((folder / "manifest.json").read_text())
    for meta in manifest["shards"]:
        assert meta.pop("embeddings_bytes") > 0 and meta.pop("ids_bytes") > 0
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert len(search(folder)) == 2
    with open(folder / "embeddings.rank0.shard1.npy", "ab") as handle:
        handle.write(b"\0" * 4)
    with pytest.raises(IndexFolderError, match=r"embeddings\.rank0\.shard1\.npy: .* bytes where a \(20, 8\) float32"):
        search(folder)



@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("block_rows", [7, 30, 64])
def test_blocks_are_the_stored_rows_across_shards(tmp_path, monkeypatch, dtype, block_rows):
    """Blocks read by offset (not a memory map) are the shards' rows in order, across shard boundaries, for
    float16 shards converted a few rows at a time too."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(index_module._ShardReader, "_CHUNK_ROWS", 4)
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((N, DIM)).astype(np.float32)
    write_index(str(tmp_path / "idx"), [f"p{i}" for i in range(N)], vectors, shard_size=13, dtype=dtype)
    index = index_module.EmbeddingIndex(tmp_path / "idx")
    expected = vectors.astype(dtype).astype(np.float32)

    def no_memory_map(*args, **kwargs):  # mapped pages stay resident: the blocks must be read, not mapped
        raise AssertionError("iter_blocks mapped a shard")

    monkeypatch.setattr(np, "memmap", no_memory_map)
    seen = []
    for offset, block in index.iter_blocks(block_rows, first=3, last=N - 2):
        assert block.dtype == np.float32 and len(block) <= block_rows
        seen.append((offset, block.copy()))  # the block is reused between iterations
    assert [offset for offset, _ in seen] == list(range(3, N - 2, block_rows))
    np.testing.assert_array_equal(np.concatenate([b for _, b in seen]), expected[3 : N - 2])


def test_a_shard_cut_short_after_the_check_is_an_error_naming_it(folder):
    index = index_module.EmbeddingIndex(folder)  # verified while intact
    path = folder / index.shards[1]["embeddings"]
    os.truncate(path, os.path.getsize(path) - DIM * 4)
    with pytest.raises(IndexFolderError, match=r"embeddings\.rank0\.shard1\.npy: ends before"):
        list(index.iter_blocks(16))


@pytest.mark.parametrize("ids,repeated", [
    (["a", "b", "c", "d"], None),
    (["a", "b", "c", "a"], "a"),  # across shards
    (["é", "b", "x", "é"], "é"),  # unicode shard
    (["p1", "é", "p10", "p1"], "p1"),  # a bytes shard and a unicode shard in one table
    (["a", "a "], None),  # trailing white space is part of an id
])
def test_id_table_and_its_repeats(tmp_path, ids, repeated):
    (tmp_path / "ids.0.txt").write_text("".join(f"{i}\n" for i in ids[:2]), encoding="utf-8")
    (tmp_path / "ids.1.txt").write_text("".join(f"{i}\n" for i in ids[2:]), encoding="utf-8")
    shards = [{"ids": "ids.0.txt", "count": 2}, {"ids": "ids.1.txt", "count": len(ids) - 2}]
    table = index_module.read_id_table(str(tmp_path), shards)
    assert table.astype(str).tolist() == ids
    assert index_module.first_repeated_id(table) == repeated
    with pytest.raises(IndexFolderError, match=r"ids.1.txt: holds \d ids, the manifest says 9"):
        index_module.read_id_table(str(tmp_path), [shards[0], {"ids": "ids.1.txt", "count": 9}])
