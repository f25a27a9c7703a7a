"""Fault matrix, index area: damaged or missing index files, reruns that repair them, and output paths, disks and
resources that cannot work, through the build_index and retrieve commands."""

from __future__ import annotations

import errno
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest

from tests.faults import assert_succeeded, assert_user_error, assert_warned, files_under, run_command, write_lines

SHARD0 = ("embeddings.rank0.shard0.npy", "ids.rank0.shard0.txt", "shard.rank0.shard0.json")
SHARD1 = ("embeddings.rank0.shard1.npy", "ids.rank0.shard1.txt", "shard.rank0.shard1.json")


def flip_bytes(path: Path, offset: int = -10) -> None:
    """Change bytes inside a file without changing its size (one row of an embedding file)."""
    with open(path, "r+b") as handle:
        handle.seek(offset, os.SEEK_END)
        old = handle.read(4)
        handle.seek(offset, os.SEEK_END)
        handle.write(bytes(b ^ 0x5A for b in old))


def swap_first_lines(path: Path) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[0], lines[1] = lines[1], lines[0]
    write_lines(path, lines)


def truncate(path: Path) -> None:
    with open(path, "r+b") as handle:
        handle.truncate(os.path.getsize(path) - 4)


def keep_mtime(damage):
    """``damage`` done with the file's mtime set back, as a copy with preserved times would leave it."""

    def done(path: Path) -> None:
        stat = os.stat(path)
        damage(path)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    return done


def set_total(index: Path, total: int) -> None:
    manifest = json.loads((index / "manifest.json").read_text())
    manifest["total"] = total
    (index / "manifest.json").write_text(json.dumps(manifest))


# case -> (the file damaged, how): same size, same mtime, fewer or more bytes or rows, or gone.
DAMAGES = {
    "row_changed_same_size": ("embeddings.rank0.shard0.npy", flip_bytes),
    "row_changed_in_the_second_shard": ("embeddings.rank0.shard1.npy", flip_bytes),
    "row_changed_mtime_kept": ("embeddings.rank0.shard1.npy", keep_mtime(flip_bytes)),
    "ids_swapped": ("ids.rank0.shard0.txt", swap_first_lines),
    "embeddings_truncated": ("embeddings.rank0.shard1.npy", truncate),
    "ids_line_added": ("ids.rank0.shard1.txt", lambda p: p.write_text(p.read_text() + "d9999\n")),
    "embeddings_missing": ("embeddings.rank0.shard1.npy", os.unlink),
    "ids_missing": ("ids.rank0.shard0.txt", os.unlink),
}


def fill_disk_on_save(monkeypatch, after: int) -> None:
    """Make the disk fill up while the embedding file after the first ``after`` is written, as a full disk does:
    half of the file reaches its temporary name, then ``write`` fails with ENOSPC (naming no file)."""
    real, calls = np.save, []

    def save(handle, array, **kwargs):
        calls.append(array.shape)
        if len(calls) <= after:
            return real(handle, array, **kwargs)
        handle.write(b"\x93NUMPY" + bytes(64))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "save", save)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in files_under(folder)}


# ------------------------------------------------------------------------- searched data is verified data


@pytest.mark.parametrize("case", sorted(DAMAGES))
def test_retrieve_refuses_a_damaged_index(case, copy_index, retrieve_argv, tmp_path, capfd):
    index = copy_index()
    # A first search stamps the files as verified (tests/retriever/test_index.py); the damage must be found
    # all the same.
    assert_succeeded(run_command("retrieve", retrieve_argv(index, tmp_path / "first.trec"), capfd))
    name, damage = DAMAGES[case]
    damage(index / name)
    before = snapshot(index)
    outcome = run_command("retrieve", retrieve_argv(index, tmp_path / "run.trec"), capfd)
    assert_user_error(outcome, name, "rerun build_index")
    assert not (tmp_path / "run.trec").exists()
    assert snapshot(index) == before  # refused, not repaired or half-written by a search


def test_retrieve_refuses_a_manifest_whose_total_is_wrong(copy_index, retrieve_argv, tmp_path, capfd):
    index = copy_index()
    set_total(index, 299)
    outcome = run_command("retrieve", retrieve_argv(index, tmp_path / "run.trec"), capfd)
    assert_user_error(outcome, "manifest.json", "299", "rerun build_index")
    assert not (tmp_path / "run.trec").exists()


# ----------------------------------------------------------------------------------- a rerun repairs


REPAIRS = {
    "row_changed_same_size": lambda index: flip_bytes(index / SHARD0[0]),
    "embeddings_truncated": lambda index: truncate(index / SHARD0[0]),
    "ids_swapped": lambda index: swap_first_lines(index / SHARD0[1]),
    "embeddings_missing": lambda index: os.unlink(index / SHARD0[0]),
    "shard_missing": lambda index: [os.unlink(index / name) for name in SHARD0],
    "shard_record_damaged": lambda index: (index / SHARD0[2]).write_text("{not json"),
}


@pytest.mark.parametrize("case", sorted(REPAIRS))
def test_rerun_repairs_exactly_the_damaged_shard(case, copy_index, build_index_argv, retrieve_argv, tmp_path, capfd):
    index = copy_index()
    assert_succeeded(run_command("retrieve", retrieve_argv(index, tmp_path / "before.trec"), capfd))
    intact = snapshot(index)
    kept = {name: os.stat(index / name) for name in SHARD1}
    REPAIRS[case](index)
    if case != "shard_record_damaged":  # search reads the manifest's copy of the shard record, not this file
        assert_user_error(run_command("retrieve", retrieve_argv(index, tmp_path / "refused.trec"), capfd), "shard0",
                          "rerun build_index")

    outcome = run_command("build_index", build_index_argv(index), capfd)
    assert_warned(outcome, "shard 0 of rank 0 is damaged", "encoding it again")
    assert "shard 1 " not in outcome.stderr
    for name, stat in kept.items():  # shard 1 was neither re-encoded nor rewritten
        now = os.stat(index / name)
        assert (now.st_ino, now.st_mtime_ns, now.st_size) == (stat.st_ino, stat.st_mtime_ns, stat.st_size), name
    assert (index / SHARD0[1]).read_bytes() == intact[SHARD0[1]]  # the same passages, in the same rows
    np.testing.assert_allclose(np.load(index / SHARD0[0]), np.load(io.BytesIO(intact[SHARD0[0]])), atol=1e-6, rtol=0)
    manifest = json.loads((index / "manifest.json").read_text())
    assert all((index / meta[key]).exists() for meta in manifest["shards"] for key in ("embeddings", "ids"))

    assert_succeeded(run_command("retrieve", retrieve_argv(index, tmp_path / "after.trec"), capfd))
    assert (tmp_path / "after.trec").read_text() == (tmp_path / "before.trec").read_text()


def test_an_interrupted_repair_leaves_no_manifest_pointing_at_a_missing_file(copy_index, build_index_argv, retrieve_argv,
                                                                             tmp_path, capfd, monkeypatch):
    index = copy_index()
    flip_bytes(index / SHARD0[0])
    fill_disk_on_save(monkeypatch, after=0)
    outcome = run_command("build_index", build_index_argv(index), capfd)
    assert_user_error(outcome, SHARD0[0], "no space left")
    assert "manifest.json" not in files_under(index)  # the damaged shard is gone, and so is the manifest
    assert not set(SHARD0) & files_under(index)
    assert_user_error(run_command("retrieve", retrieve_argv(index, tmp_path / "run.trec"), capfd),
                      "no index manifest", "rerun build_index")
    monkeypatch.undo()
    assert_succeeded(run_command("build_index", build_index_argv(index), capfd))
    assert_succeeded(run_command("retrieve", retrieve_argv(index, tmp_path / "run.trec"), capfd))


# ------------------------------------------------------------------- output paths, disks and resources


@pytest.fixture
def no_model_loading(monkeypatch):
    """Make loading the model fail the test: a case refused by a pre-flight check must stop before it."""
    from openmatch import api

    def load_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the command refused its arguments")

    monkeypatch.setattr(api, "load_model", load_model)


def _run_is_a_folder(tmp_path):
    (tmp_path / "runs").mkdir()
    return tmp_path / "runs", "is a folder"


def _run_parent_is_a_file(tmp_path):
    (tmp_path / "runs").write_text("a file, not a folder\n")
    return tmp_path / "runs" / "dev.trec", "is not a folder"


@pytest.mark.parametrize("case", [_run_is_a_folder, _run_parent_is_a_file], ids=["is_a_folder", "parent_is_a_file"])
def test_retrieve_refuses_an_unwritable_run_path_before_encoding(case, built_index, retrieve_argv, tmp_path, capfd,
                                                                  no_model_loading):
    run, reason = case(tmp_path)
    before = files_under(tmp_path)
    outcome = run_command("retrieve", retrieve_argv(built_index, run), capfd)
    assert_user_error(outcome, "--trec_save_path", str(tmp_path / "runs"), reason)
    assert files_under(tmp_path) == before


def test_use_gpu_without_gpu_faiss_is_refused_before_encoding(built_index, retrieve_argv, tmp_path, capfd,
                                                              no_model_loading):
    from openmatch.retriever.faiss_loader import has_gpu_support, import_faiss

    if has_gpu_support(import_faiss()):
        pytest.skip("faiss has GPU support here")
    outcome = run_command("retrieve", retrieve_argv(built_index, tmp_path / "run.trec", "--use_gpu"), capfd)
    assert_user_error(outcome, "--use_gpu")
    assert not (tmp_path / "run.trec").exists()


def test_output_dir_under_a_file_is_refused_before_encoding(build_index_argv, tmp_path, capfd, no_model_loading):
    (tmp_path / "data").write_text("a file, not a folder\n")
    outcome = run_command("build_index", build_index_argv(tmp_path / "data" / "emb"), capfd)
    assert_user_error(outcome, "--output_dir", str(tmp_path / "data" / "emb"), "is not a folder")
    assert files_under(tmp_path) == {"data"}


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes in any folder")
def test_output_dir_in_a_read_only_folder_is_refused_before_encoding(build_index_argv, tmp_path, capfd,
                                                                      no_model_loading):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        outcome = run_command("build_index", build_index_argv(parent / "emb"), capfd)
    finally:
        parent.chmod(0o700)
    assert_user_error(outcome, "--output_dir", str(parent / "emb"), "cannot write")
    assert files_under(parent) == set()


def test_a_full_disk_while_writing_a_shard(build_index_argv, retrieve_argv, tmp_path, capfd, monkeypatch):
    index = tmp_path / "emb"
    fill_disk_on_save(monkeypatch, after=1)  # shard 0 is written, shard 1 meets the full disk
    outcome = run_command("build_index", build_index_argv(index), capfd)
    assert_user_error(outcome, str(index / SHARD1[0]), "no space left")
    # Nothing of shard 1, no temporary file, no manifest: the finished shard 0 is all there is.
    assert files_under(index) == {"build.json", *SHARD0}
    shard0 = os.stat(index / SHARD0[0])
    monkeypatch.undo()
    outcome = run_command("build_index", build_index_argv(index), capfd)
    assert_succeeded(outcome)
    assert os.stat(index / SHARD0[0]).st_mtime_ns == shard0.st_mtime_ns  # resumed: only shard 1 was encoded
    assert_succeeded(run_command("retrieve", retrieve_argv(index, tmp_path / "run.trec"), capfd))


def test_a_corpus_fixed_after_a_failed_build_is_accepted(collection, build_index_argv, retrieve_argv, tmp_path, capfd):
    lines = collection.corpus.read_text(encoding="utf-8").splitlines()
    corpus = write_lines(tmp_path / "corpus.tsv", [*lines[:4], "d4\tonly a title", *lines[5:]])
    argv = build_index_argv(tmp_path / "emb")
    argv[argv.index("--corpus_path") + 1] = corpus
    assert_user_error(run_command("build_index", argv, capfd), f"{corpus}:5")
    assert not [name for name in files_under(tmp_path / "emb") if name.startswith("shard.")]
    write_lines(corpus, lines)  # fixed: another size and mtime than build.json records
    assert_succeeded(run_command("build_index", argv, capfd))
    assert_succeeded(run_command("retrieve", retrieve_argv(tmp_path / "emb", tmp_path / "run.trec"), capfd))
    manifest = json.loads((tmp_path / "emb" / "manifest.json").read_text())
    assert manifest["total"] == len(lines) and manifest["corpus"]["size"] == os.path.getsize(corpus)


def test_a_shard_larger_than_memory_is_refused_before_encoding(build_index_argv, retrieve_argv, tmp_path, capfd,
                                                               monkeypatch):
    """OpenMatch's default shard (10M passages) of MS MARCO × 768 float32 is 27 GB: with less memory than one
    shard the build stops at once, naming a --max_inmem_docs that fits, instead of being killed hours in; the
    suggested size then builds."""
    from openmatch.retriever import builder

    dim = 32  # the faults' tiny BERT
    row_bytes = dim * 4 + builder._ROW_OVERHEAD_BYTES
    monkeypatch.setattr(builder, "available_memory", lambda: 6 * row_bytes)  # memory for 6 rows
    argv = build_index_argv(tmp_path / "emb")
    argv[argv.index("--max_inmem_docs") + 1] = "100"
    outcome = run_command("build_index", argv, capfd)
    assert_user_error(outcome, str(argv[argv.index("--corpus_path") + 1]), f"× {dim} float32",
                      "--max_inmem_docs 3 or less")
    assert files_under(tmp_path) == set()  # the output folder was not even made
    argv[argv.index("--max_inmem_docs") + 1] = "3"
    assert_succeeded(run_command("build_index", argv, capfd))
    manifest = json.loads((tmp_path / "emb" / "manifest.json").read_text())
    assert {shard["count"] for shard in manifest["shards"]} <= {1, 2, 3} and len(manifest["shards"]) >= 2
    assert_succeeded(run_command("retrieve", retrieve_argv(tmp_path / "emb", tmp_path / "run.trec"), capfd))
