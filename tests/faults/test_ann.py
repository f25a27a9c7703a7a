"""Fault matrix, approximate-index area: flags that cannot work, saved approximate indexes that are stale, damaged
or cannot be saved, and the recall check, through the retrieve command.

A search with ``--faiss_index`` writes its trained index into the index folder, so every case works on a copy of
the shared index (``copy_index``).
"""

from __future__ import annotations

import errno
import json
import logging
import os

import pytest

from tests.faults import assert_succeeded, assert_user_error, assert_warned, files_under, run_command

IVF = ("--faiss_index", "IVF4,Flat", "--faiss_nprobe", "4")  # every list probed: the exact neighbours
SAVED = ("ann.IVF4_Flat.faiss", "ann.IVF4_Flat.json")


def ann_files(index) -> set[str]:
    return {name for name in files_under(index) if name.startswith("ann.")}


# ----------------------------------------------------------------------------------- flags refused up front


@pytest.fixture
def no_model_loading(monkeypatch):
    from openmatch import api

    def load_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the command refused its arguments")

    monkeypatch.setattr(api, "load_model", load_model)


REFUSED = {
    "check_recall_with_exact_search": (("--check_recall", "5"), ("--check_recall", "'Flat' is exact already")),
    "check_recall_negative": ((*IVF, "--check_recall", "-3"), ("--check_recall", "-3")),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_retrieve_refuses_recall_flags_before_encoding(case, copy_index, retrieve_argv, tmp_path, capfd,
                                                        no_model_loading):
    index = copy_index()
    before = files_under(index)
    extra, needles = REFUSED[case]
    outcome = run_command("retrieve", retrieve_argv(index, tmp_path / "run.trec", *extra), capfd)
    assert_user_error(outcome, *needles)
    assert not (tmp_path / "run.trec").exists() and not (tmp_path / "run.trec.recall.json").exists()
    assert files_under(index) == before


def test_a_factory_string_faiss_cannot_build_is_refused_before_encoding(copy_index, retrieve_argv, tmp_path, capfd,
                                                                        monkeypatch):
    from openmatch import api

    def encode_file(*args, **kwargs):
        raise AssertionError("the queries were encoded before the command refused --faiss_index")

    monkeypatch.setattr(api, "encode_file", encode_file)
    index = copy_index()
    before = files_under(index)
    outcome = run_command("retrieve", retrieve_argv(index, tmp_path / "run.trec", "--faiss_index", "PQ5"), capfd)
    assert_user_error(outcome, "--faiss_index 'PQ5'", "dimension 32")
    assert not (tmp_path / "run.trec").exists()
    assert files_under(index) - {"verified.json"} == before  # nothing saved for it (the stamps of the checked shards are)


# ------------------------------------------------------------------ saved approximate indexes: used or rebuilt


def tamper_key(index, part, value):
    record = json.loads((index / SAVED[1]).read_text())
    record["key"][part] = value
    (index / SAVED[1]).write_text(json.dumps(record))


def flip_middle_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x5A
    path.write_bytes(bytes(data))


# case -> (what is done to the saved index after the first search, the log line's words)
STALE = {
    "built_from_other_shards": (lambda index: tamper_key(index, "embeddings", {"total": 300, "dim": 32, "sha256": ["0" * 64]}),
                                "the shards' checksums differ"),
    "built_for_other_rows": (lambda index: tamper_key(index, "rows", [0, 150]), "the rows covered differ"),
    "other_factory_string": (lambda index: tamper_key(index, "factory", "IVF4_Flat"), "the factory string"),
    "file_damaged_same_size": (lambda index: flip_middle_byte(index / SAVED[0]), "does not match the sha256"),
    "file_truncated": (lambda index: (index / SAVED[0]).write_bytes((index / SAVED[0]).read_bytes()[:50]), "bytes, "),
    "file_missing": (lambda index: os.unlink(index / SAVED[0]), "missing"),
    "record_unreadable": (lambda index: (index / SAVED[1]).write_text("{"), "unreadable"),
    "record_missing": (lambda index: os.unlink(index / SAVED[1]), "says what it was built from"),
}


@pytest.mark.parametrize("case", sorted(STALE))
def test_a_stale_or_damaged_saved_index_is_built_again(case, copy_index, retrieve_argv, tmp_path, capfd, caplog):
    index = copy_index()
    assert_succeeded(run_command("retrieve", retrieve_argv(index, tmp_path / "first.trec", *IVF), capfd))
    assert ann_files(index) == set(SAVED)
    damage, words = STALE[case]
    damage(index)
    with caplog.at_level(logging.INFO, logger="openmatch"):
        outcome = run_command("retrieve", retrieve_argv(index, tmp_path / "run.trec", *IVF), capfd)
    assert_succeeded(outcome)
    line = next(record.getMessage() for record in caplog.records if "again" in record.getMessage().split())
    assert words in line and str(index / "ann.IVF4_Flat.") in line  # names the file and why
    assert "using the approximate index saved" not in caplog.text  # never used
    assert (tmp_path / "run.trec").read_text() == (tmp_path / "first.trec").read_text()
    # Saved again, whole: the next search uses it.
    record = json.loads((index / SAVED[1]).read_text())
    assert record["key"]["factory"] == "IVF4,Flat" and record["key"]["rows"] == [0, 300]
    assert record["file"]["bytes"] == (index / SAVED[0]).stat().st_size
    assert not [name for name in os.listdir(index) if name.endswith(".tmp")]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="openmatch"):
        assert_succeeded(run_command("retrieve", retrieve_argv(index, tmp_path / "again.trec", *IVF), capfd))
    assert "using the approximate index saved" in caplog.text


def test_a_full_disk_while_saving_the_index_still_searches(copy_index, retrieve_argv, tmp_path, capfd, monkeypatch):
    from openmatch.retriever import ann

    index = copy_index()
    real = ann.atomic_output

    def full_disk(path, *args, **kwargs):
        if os.path.basename(path).startswith("ann."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(ann, "atomic_output", full_disk)
    outcome = run_command("retrieve", retrieve_argv(index, tmp_path / "run.trec", *IVF), capfd)
    assert_warned(outcome, SAVED[0], "could not save the approximate index", "No space left on device")
    assert len((tmp_path / "run.trec").read_text().splitlines()) == 12 * 10
    assert ann_files(index) == set()


# --------------------------------------------------------------------------------------------- recall check


def test_check_recall_writes_its_report_beside_the_run(copy_index, retrieve_argv, tmp_path, capfd, caplog):
    index = copy_index()
    run = tmp_path / "run.trec"
    with caplog.at_level(logging.INFO, logger="openmatch"):
        outcome = run_command("retrieve", retrieve_argv(index, run, "--faiss_index", "IVF4,Flat", "--faiss_nprobe", "1",
                                                        "--check_recall", "8"), capfd)
    assert_succeeded(outcome)
    report = json.loads((tmp_path / "run.trec.recall.json").read_text())
    assert report["run"] == str(run) and report["index"] == str(index)
    assert report["k"] == 10 and report["sampled"] == 8 and report["queries"] == 12 and report["nprobe"] == 1
    assert len(report["per_query"]) == 8 and 0 <= report["min_recall"] <= report["recall"] <= 1
    assert f"recall@10 of --faiss_index IVF4,Flat nprobe 1 against exact search: {report['recall']:.4f}" in caplog.text
    # The run it describes is replaced by one without the check: the report goes with it.
    assert_succeeded(run_command("retrieve", retrieve_argv(index, run, *IVF), capfd))
    assert not (tmp_path / "run.trec.recall.json").exists()
