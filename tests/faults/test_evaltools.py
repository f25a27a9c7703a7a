"""Fault-matrix cases of the evaluation tools: the bm25 and fuse commands and evaluate's --baseline /
--per_query. Each case checks the exit status, the one error line naming the file or flag, no traceback, and
what the output folder holds afterwards."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.faults import assert_succeeded, assert_user_error, assert_warned, files_under, run_command, write_lines

# ------------------------------------------------------------------------------------------------- bm25


def bm25_argv(collection, out: Path, run: Path, *extra) -> list:
    return ["--output_dir", out, "--corpus_path", collection.corpus, "--doc_template", "<title> <text>",
            "--doc_column_names", "id,title,text", "--query_path", collection.queries, "--query_column_names",
            "id,text", "--trec_save_path", run, "--retrieve_depth", "5", *extra]


def _set(argv: list, flag: str, value) -> list:
    argv = list(argv)
    if value is None:
        at = argv.index(flag)
        del argv[at : at + 2]
    else:
        argv[argv.index(flag) + 1] = value
    return argv


BM25_BAD_INPUT = {
    # case: (edit of the arguments, needles of the error line)
    "missing_corpus": (lambda a, tmp: _set(a, "--corpus_path", tmp / "nope.tsv"), ["nope.tsv", "--corpus_path"]),
    "no_corpus_flag": (lambda a, tmp: _set(a, "--corpus_path", None), ["--corpus_path is required"]),
    "queries_without_run_path": (lambda a, tmp: _set(a, "--trec_save_path", None), ["--query_path", "--trec_save_path"]),
    "missing_queries": (lambda a, tmp: _set(a, "--query_path", tmp / "q.tsv"), ["q.tsv", "--query_path"]),
    "b_out_of_range": (lambda a, tmp: [*a, "--b", "1.5"], ["--b", "1.5"]),
    "negative_k1": (lambda a, tmp: [*a, "--k1", "-1"], ["--k1"]),
    "zero_depth": (lambda a, tmp: _set(a, "--retrieve_depth", "0"), ["--retrieve_depth"]),
    "run_id_with_space": (lambda a, tmp: [*a, "--run_id", "my run"], ["--run_id"]),
    # Training and tokenizer flags are not bm25's: accepted and ignored, they would look as if they did something.
    "training_flag": (lambda a, tmp: [*a, "--train_n_passages", "4"], ["--train_n_passages: not a flag of this command"]),
    "length_flag": (lambda a, tmp: [*a, "--p_max_len=64"], ["--p_max_len: not a flag of this command"]),
    # argparse's own errors: one line, not the usage block of every flag first.
    "no_output_dir_flag": (lambda a, tmp: _set(a, "--output_dir", None), ["required: --output_dir", "--help"]),
    "depth_not_a_number": (lambda a, tmp: _set(a, "--retrieve_depth", "ten"), ["--retrieve_depth", "invalid int value: 'ten'"]),
    "duplicate_passage_id": (
        lambda a, tmp: _set(a, "--corpus_path", write_lines(tmp / "dup.tsv", ["d1\tt\tone", "d2\tt\ttwo", "d1\tt\tthree"])),
        ["dup.tsv:3", "'d1'", "line 1"],
    ),
}


@pytest.mark.parametrize("case", sorted(BM25_BAD_INPUT))
def test_bm25_refuses_bad_input_and_writes_nothing(case, collection, tmp_path, capfd):
    edit, needles = BM25_BAD_INPUT[case]
    out, run = tmp_path / "bm25", tmp_path / "run.trec"
    outcome = run_command("bm25", edit(bm25_argv(collection, out, run), tmp_path), capfd)
    assert_user_error(outcome, *needles)
    assert "usage:" not in outcome.stderr
    assert files_under(out) == set() and not run.exists()


def test_bm25_refuses_an_index_of_other_settings_and_keeps_it(collection, tmp_path, capfd):
    out, run = tmp_path / "bm25", tmp_path / "run.trec"
    assert_succeeded(run_command("bm25", bm25_argv(collection, out, run), capfd))
    before = {name: (out / name).read_bytes() for name in files_under(out)}
    run.unlink()
    outcome = run_command("bm25", bm25_argv(collection, out, run, "--k1", "1.2", "--stemmer", "none"), capfd)
    assert_user_error(outcome, str(out), "k1: 0.9 -> 1.2", "stemmer: 'english' -> 'none'", "--overwrite_output_dir")
    assert {name: (out / name).read_bytes() for name in files_under(out)} == before
    assert not run.exists()


def test_bm25_refuses_a_damaged_index_and_rebuilds_a_partial_one(collection, tmp_path, capfd):
    out, run = tmp_path / "bm25", tmp_path / "run.trec"
    assert_succeeded(run_command("bm25", bm25_argv(collection, out, run), capfd))
    complete = files_under(out)
    want = run.read_text()
    run.unlink()
    ids = (out / "ids.txt").read_text().splitlines()
    (out / "ids.txt").write_text("\n".join(ids[:-1]) + "\n")  # a passage short
    outcome = run_command("bm25", bm25_argv(collection, out, run), capfd)
    assert_user_error(outcome, str(out), "ids.txt 299", "--overwrite_output_dir")
    assert not run.exists()

    (out / "ids.txt").unlink()  # a file gone: the description says what to build, so it is built again
    outcome = run_command("bm25", bm25_argv(collection, out, run), capfd)
    assert_warned(outcome, str(out), "ids.txt", "building it again")
    assert files_under(out) == complete and run.read_text() == want

    (out / "bm25.json").write_text("{not json")
    run.unlink()
    outcome = run_command("bm25", bm25_argv(collection, out, run), capfd)
    assert_user_error(outcome, "bm25.json", "--overwrite_output_dir")
    assert not run.exists()
    assert_succeeded(run_command("bm25", bm25_argv(collection, out, run, "--overwrite_output_dir"), capfd))
    assert run.read_text() == want


def test_bm25_bad_query_file_leaves_the_index_and_no_run(collection, tmp_path, capfd):
    out, run = tmp_path / "bm25", tmp_path / "run.trec"
    queries = write_lines(tmp_path / "queries.tsv", ["q1\tfirst", "q2\tsecond", "q1\tagain"])
    outcome = run_command("bm25", _set(bm25_argv(collection, out, run), "--query_path", queries), capfd)
    assert_user_error(outcome, "queries.tsv:3", "'q1'")
    assert "bm25.json" in files_under(out)  # the index is sound and kept for the rerun
    assert not run.exists()


# ------------------------------------------------------------------------------------------------- fuse


@pytest.fixture
def runs(tmp_path):
    lines = [f"q{q} Q0 d{d} {r} {10 - r} x" for q in range(3) for r, d in enumerate(range(q, q + 5), start=1)]
    return [write_lines(tmp_path / "a.trec", lines), write_lines(tmp_path / "b.trec", reversed(lines)),
            write_lines(tmp_path / "c.trec", lines[:7])]


FUSE_BAD_INPUT = {
    "one_run": (lambda r, tmp: ["--run", r[0]], ["--run", "two or more"]),
    "same_run_twice": (lambda r, tmp: ["--run", r[0], r[0]], ["--run", "twice"]),
    "missing_run": (lambda r, tmp: ["--run", r[0], tmp / "nope.trec"], ["nope.trec"]),
    "malformed_run": (lambda r, tmp: ["--run", r[0], write_lines(tmp / "bad.trec", ["q1 Q0 d1 1 1.0 x", "q1 Q0 d2 x"])],
                      ["bad.trec:2"]),
    "alpha_with_three_runs": (lambda r, tmp: ["--run", *r, "--method", "interpolation", "--alpha", "0.5"],
                              ["--alpha", "--weights"]),
    "alpha_out_of_range": (lambda r, tmp: ["--run", *r[:2], "--method", "interpolation", "--alpha", "1.5"], ["--alpha", "1.5"]),
    "alpha_with_rrf": (lambda r, tmp: ["--run", *r[:2], "--alpha", "0.5"], ["--alpha", "interpolation"]),
    "rrf_k_with_interpolation": (lambda r, tmp: ["--run", *r[:2], "--method", "interpolation", "--rrf_k", "10"], ["--rrf_k"]),
    "negative_rrf_k": (lambda r, tmp: ["--run", *r[:2], "--rrf_k", "-1"], ["--rrf_k"]),
    "weights_count": (lambda r, tmp: ["--run", *r, "--weights", "1", "2"], ["--weights", "3 runs"]),
    "zero_depth": (lambda r, tmp: ["--run", *r[:2], "--depth", "0"], ["--depth"]),
    "run_id_with_space": (lambda r, tmp: ["--run", *r[:2], "--run_id", "my run"], ["run id", "white space"]),
}


@pytest.mark.parametrize("case", sorted(FUSE_BAD_INPUT))
def test_fuse_refuses_bad_input_and_writes_nothing(case, runs, tmp_path, capfd):
    build, needles = FUSE_BAD_INPUT[case]
    out = tmp_path / "out" / "fused.trec"
    outcome = run_command("fuse", [*build(runs, tmp_path), "--trec_save_path", out], capfd)
    assert_user_error(outcome, *needles)
    assert files_under(tmp_path / "out") == set()


def test_fuse_refuses_to_write_over_one_of_its_runs(runs, capfd):
    before = runs[0].read_text()
    outcome = run_command("fuse", ["--run", *runs[:2], "--trec_save_path", runs[0]], capfd)
    assert_user_error(outcome, "--trec_save_path", str(runs[0]), "one of the runs")
    assert runs[0].read_text() == before


# ----------------------------------------------------------------------------- evaluate --baseline


EVALUATE_BAD_INPUT = {
    "unknown_baseline": (lambda r: ["--run", f"s1={r[0]}", f"s2={r[1]}", "--baseline", "zero"], ["--baseline", "'zero'", "s1, s2"]),
    "baseline_alone": (lambda r: ["--run", f"s1={r[0]}", "--baseline", "s1"], ["--baseline", "other --run"]),
    "no_permutations": (lambda r: ["--run", f"s1={r[0]}", f"s2={r[1]}", "--baseline", "s1", "--permutations", "0"],
                        ["--permutations"]),
    "per_query_into_a_folder": (lambda r: ["--run", f"s1={r[0]}", f"s2={r[1]}", "--per_query", r[0].parent / "out"],
                                ["out"]),
    "per_query_under_a_file": (lambda r: ["--run", f"s1={r[0]}", f"s2={r[1]}", "--per_query", r[0] / "pq.tsv"],
                               [f"{'a.trec'}/pq.tsv", "not a folder"]),
}


@pytest.mark.parametrize("case", sorted(EVALUATE_BAD_INPUT))
def test_evaluate_baseline_refuses_bad_input_and_writes_nothing(case, runs, tmp_path, capfd):
    qrels = write_lines(tmp_path / "qrels.tsv", ["q0 0 d0 1", "q1 0 d3 1", "q2 0 d9 1"])
    (tmp_path / "out").mkdir()
    metrics_json = tmp_path / "out" / "m.json"
    argv = ["--qrels", qrels, *EVALUATE_BAD_INPUT[case][0](runs), "--output", metrics_json]
    outcome = run_command("evaluate", argv, capfd)
    assert_user_error(outcome, *EVALUATE_BAD_INPUT[case][1])
    assert files_under(tmp_path / "out") == set()


def test_evaluate_baseline_over_runs_missing_queries_compares_them_as_zero(runs, tmp_path, capfd):
    """A judged query missing from one run scores 0 there and is still a pair in the tests."""
    qrels = write_lines(tmp_path / "qrels.tsv", ["q0 0 d0 1", "q1 0 d3 1", "q2 0 d4 1"])
    out = tmp_path / "m.json"
    outcome = run_command("evaluate", ["--qrels", qrels, "--run", f"full={runs[0]}", f"part={runs[2]}",
                                       "--metrics", "mrr@10", "--baseline", "full", "--output", out], capfd)
    assert_succeeded(outcome)
    (row,) = json.loads(out.read_text())["significance"]["comparisons"]
    assert row["wins"] + row["ties"] + row["losses"] == 3 and row["losses"] >= 1  # q2 is missing from "part"
    assert "(part: 1 judged queries are missing from the run and score 0)" in outcome.stdout
    assert os.path.getsize(out) > 0
