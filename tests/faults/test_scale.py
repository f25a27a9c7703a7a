"""Fault-matrix cases of build_train and build_hn at scale: the collection is read by byte offset while the run
goes on, and the run's token ids and a gzipped collection's decompressed copy go to temporary files."""

from __future__ import annotations

import gzip
import tempfile

import pytest

from openmatch import preprocessing
from tests.faults import assert_succeeded, assert_user_error, files_under, run_command, write_lines


@pytest.fixture
def marco(collection, tmp_path):
    """The fault collection's files in build_train's layouts, with a negatives file of the other passages and
    a run (for build_hn) of the same candidates."""
    pids = [line.split("\t", 1)[0] for line in collection.corpus.read_text().splitlines()]
    judged = [line.split() for line in collection.qrels.read_text().splitlines()]
    negatives = {qid: [pid for pid in pids[10 * i : 10 * i + 40] if pid != positive] for i, (qid, _, positive, _) in enumerate(judged)}
    write_lines(tmp_path / "negs.tsv", [f"{qid}\t{','.join(cands)}" for qid, cands in negatives.items()])
    write_lines(tmp_path / "run.trec", [f"{qid} Q0 {pid} {rank} {100 - rank} r" for qid, cands in negatives.items()
                                        for rank, pid in enumerate(cands, 1)])
    return tmp_path


def argv(command, collection, marco, tiny_bert, corpus=None):
    source = ["--negative_file", marco / "negs.tsv"] if command == "build_train" else ["--hn_file", marco / "run.trec"]
    return [*source, "--tokenizer_name", tiny_bert, "--qrels", collection.qrels, "--queries", collection.queries,
            "--collection", corpus or collection.corpus, "--save_to", marco / "out", "--n_sample", "5"]


def gzipped(collection, marco):
    path = marco / "corpus.tsv.gz"
    path.write_bytes(gzip.compress(collection.corpus.read_bytes()))
    return path


def full_disk(*args, **kwargs):
    """A temporary file on a full disk: /dev/full fails every write with ENOSPC, as a full TMPDIR does."""
    return open("/dev/full", "w+b")


@pytest.mark.parametrize("command", ["build_train", "build_hn"])
@pytest.mark.parametrize("case", ["token cache", "gzip copy"])
def test_a_full_temporary_folder_is_one_error_line(case, command, collection, marco, tiny_bert, monkeypatch, capfd):
    corpus = gzipped(collection, marco) if case == "gzip copy" else None
    monkeypatch.setattr(tempfile, "TemporaryFile", full_disk)
    outcome = run_command(command, argv(command, collection, marco, tiny_bert, corpus), capfd)
    what = "the decompressed copy of" if case == "gzip copy" else "the token ids"
    line = assert_user_error(outcome, "no space left in the temporary folder", what, "TMPDIR")
    if case == "gzip copy":
        assert "corpus.tsv.gz" in line
    assert files_under(marco / "out") == set()  # no shard, whole or half-written


@pytest.mark.parametrize("command", ["build_train", "build_hn"])
def test_a_collection_changed_during_the_run_stops_it(command, collection, marco, tiny_bert, monkeypatch, capfd):
    corpus = marco / "corpus.tsv"
    corpus.write_bytes(collection.corpus.read_bytes())
    lines = corpus.read_text().splitlines()
    build_chunk = preprocessing.ExampleBuilder.build_chunk

    def rewrite_then_build(self, chunk):  # another program rewrites the collection after build_train's pass
        write_lines(corpus, lines[1:] + lines[:1])
        return build_chunk(self, chunk)

    monkeypatch.setattr(preprocessing.ExampleBuilder, "build_chunk", rewrite_then_build)
    outcome = run_command(command, argv(command, collection, marco, tiny_bert, corpus), capfd)
    assert_user_error(outcome, str(corpus), "the file changed while it was being read")
    assert files_under(marco / "out") - {"bm25.train.trec", "build_hn.stats.json"} == set()


@pytest.mark.parametrize("command", ["build_train", "build_hn"])
def test_a_gzipped_collection_gives_the_lines_of_the_plain_one(command, collection, marco, tiny_bert, capfd):
    assert_succeeded(run_command(command, argv(command, collection, marco, tiny_bert), capfd))
    shards = sorted(files_under(marco / "out"))
    expected = {name: (marco / "out" / name).read_bytes() for name in shards if name.startswith("split")}
    assert expected
    assert_succeeded(run_command(command, argv(command, collection, marco, tiny_bert, gzipped(collection, marco)), capfd))
    assert {name: (marco / "out" / name).read_bytes() for name in expected} == expected
