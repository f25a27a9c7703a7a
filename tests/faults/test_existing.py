"""Fault-matrix cases that already worked before the fault issue: kept here so they stay working."""

from __future__ import annotations

import pytest

from tests.faults import assert_succeeded, assert_user_error, files_under, run_command


def test_the_shared_index_searches(built_index, retrieve_argv, tmp_path, capfd):
    outcome = run_command("retrieve", retrieve_argv(built_index, tmp_path / "run.trec"), capfd)
    assert_succeeded(outcome)
    assert len((tmp_path / "run.trec").read_text().splitlines()) == 12 * 10


@pytest.mark.parametrize("case", ["missing_corpus", "missing_queries"])
def test_missing_input_file(case, built_index, build_index_argv, retrieve_argv, tmp_path, capfd):
    if case == "missing_corpus":
        argv = build_index_argv(tmp_path / "emb")
        argv[argv.index("--corpus_path") + 1] = tmp_path / "nope.tsv"
        outcome = run_command("build_index", argv, capfd)
        assert_user_error(outcome, "nope.tsv")
        assert files_under(tmp_path / "emb") == set()
    else:
        argv = retrieve_argv(built_index, tmp_path / "run.trec")
        argv[argv.index("--query_path") + 1] = tmp_path / "nope.tsv"
        outcome = run_command("retrieve", argv, capfd)
        assert_user_error(outcome, "nope.tsv")
        assert not (tmp_path / "run.trec").exists()


def test_the_shared_index_has_two_shards(built_index):
    # Cases that damage one shard need another that stays intact.
    assert len([name for name in files_under(built_index) if name.startswith("embeddings.")]) == 2, files_under(built_index)
