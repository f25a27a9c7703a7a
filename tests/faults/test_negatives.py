"""Fault-matrix cases of hard-negative mining: build_hn's rank window, margins and --index_dir, and build_train's
negatives from BM25 (issue 12). Each case checks the exit status, the one-line message naming the flag or file,
no traceback, and what the output folder holds afterwards."""

from __future__ import annotations

import json
import logging

import pytest

from tests.faults import assert_succeeded, assert_user_error, assert_warned, files_under, run_command, write_lines


@pytest.fixture
def dense_run(built_index, retrieve_argv, tmp_path, capfd):
    """The tiny BERT's run of the collection's queries over the shared index (10 hits each)."""
    run = tmp_path / "dense.trec"
    assert_succeeded(run_command("retrieve", retrieve_argv(built_index, run), capfd))
    return run


@pytest.fixture
def build_hn_argv(tiny_bert, collection):
    def argv(run, save_to, *extra):
        return ["--tokenizer_name", tiny_bert, "--hn_file", run, "--qrels", collection.qrels, "--queries",
                collection.queries, "--collection", collection.corpus, "--save_to", save_to,
                "--doc_template", "<title> <text>", "--q_max_len", "16", "--n_sample", "3", *extra]

    return argv


@pytest.fixture
def build_train_argv(tiny_bert, collection):
    def argv(save_to, *extra):
        return ["--tokenizer_name", tiny_bert, "--qrels", collection.qrels, "--queries", collection.queries,
                "--collection", collection.corpus, "--save_to", save_to, "--doc_template", "<title> <text>", *extra]

    return argv


def positives(collection) -> dict[str, str]:
    return {line.split()[0]: line.split()[2] for line in collection.qrels.read_text().splitlines()}


@pytest.mark.parametrize("extra, needles", [
    (["--first_rank", "0"], ["--first_rank", "0"]),
    (["--depth", "3", "--first_rank", "5"], ["--first_rank", "--depth (3)"]),
    (["--relative_margin", "1.5"], ["--relative_margin", "[0, 1]"]),
    (["--absolute_margin", "-1"], ["--absolute_margin", "non-negative"]),
    (["--absolute_margin", "nan"], ["--absolute_margin"]),
    (["--index_dir", "INDEX"], ["--index_dir", "margin"]),
    (["--relative_margin", "0.1", "--index_dir", "MISSING"], ["no-such-index"]),
])
def test_build_hn_bad_mining_flags(extra, needles, dense_run, built_index, build_hn_argv, tmp_path, capfd):
    extra = [{"INDEX": built_index, "MISSING": tmp_path / "no-such-index"}.get(arg, arg) for arg in extra]
    outcome = run_command("build_hn", build_hn_argv(dense_run, tmp_path / "out", *extra), capfd)
    assert_user_error(outcome, *needles)
    assert files_under(tmp_path / "out") == set()


def test_build_hn_refuses_a_run_of_another_retriever(dense_run, built_index, build_hn_argv, collection, tmp_path, capfd):
    """Margins compare one retriever's scores: a run whose scores are not the index model's (here BM25-like
    scores over the same hits, every positive listed) stops before any line is written."""
    judged = positives(collection)
    hits = {}
    for line in dense_run.read_text().splitlines():
        qid, _, pid, _, _, _ = line.split()
        hits.setdefault(qid, []).append(pid)
    lines = []
    for qid, pids in hits.items():
        ranked = pids + ([judged[qid]] if judged[qid] not in pids else [])
        lines += [f"{qid} Q0 {pid} {rank} {30.0 - rank} bm25" for rank, pid in enumerate(ranked, 1)]
    run = write_lines(tmp_path / "bm25.trec", lines)
    outcome = run_command("build_hn", build_hn_argv(run, tmp_path / "out", "--relative_margin", "0.1", "--index_dir",
                                                    built_index), capfd)
    assert_user_error(outcome, "bm25.trec", "in the run but", "--index_dir")
    assert files_under(tmp_path / "out") == set()


def test_build_hn_scores_missing_positives_with_the_index(dense_run, built_index, build_hn_argv, collection, tmp_path,
                                                          capfd, caplog):
    """The run's own scores pass the consistency check; positives it lacks are scored by the index's model."""
    judged = positives(collection)
    in_run = {(line.split()[0], line.split()[2]) for line in dense_run.read_text().splitlines()}
    listed = sum((qid, pid) in in_run for qid, pid in judged.items())
    with caplog.at_level(logging.INFO, logger="openmatch"):
        outcome = run_command("build_hn", build_hn_argv(dense_run, tmp_path / "out", "--relative_margin", "0.0",
                                                        "--index_dir", built_index), capfd)
    assert_succeeded(outcome)
    stats = json.loads((tmp_path / "out" / "build_hn.stats.json").read_text())
    assert stats["positive_scores"] == {"from_run": listed, "computed": len(judged) - listed, "missing": 0}
    assert f"{stats['removed']['relative_margin']} by --relative_margin 0;" in caplog.text


def test_build_hn_margin_without_scores_warns(dense_run, build_hn_argv, collection, tmp_path, capfd):
    """Without --index_dir, a query none of whose positives is in the run keeps its candidates unscreened by
    the margins: one warning names how many and the flag that would score them."""
    judged = positives(collection)
    kept = [line for line in dense_run.read_text().splitlines() if line.split()[2] != judged[line.split()[0]]]
    run = write_lines(tmp_path / "nopos.trec", kept)
    outcome = run_command("build_hn", build_hn_argv(run, tmp_path / "out", "--absolute_margin", "0.5"), capfd)
    line = assert_warned(outcome, f"{len(judged)} queries have no score for any positive", "--index_dir")
    assert "nopos.trec" in line
    assert files_under(tmp_path / "out") == {"build_hn.stats.json", "split00.hn.jsonl"}


def test_build_hn_rules_that_remove_everything(dense_run, build_hn_argv, collection, tmp_path, capfd, caplog):
    """A window below every hit leaves no negative: one error line, the rules' summary logged, no shard."""
    with caplog.at_level(logging.INFO, logger="openmatch"):
        outcome = run_command("build_hn", build_hn_argv(dense_run, tmp_path / "out", "--first_rank", "11", "--depth",
                                                        "20"), capfd)
    assert_user_error(outcome, "no training example", "dense.trec")
    assert "removed 120 above --first_rank" in caplog.text
    assert files_under(tmp_path / "out") == set()


@pytest.mark.parametrize("extra, needles", [
    (["--negatives_from", "file"], ["--negative_file", "--negatives_from bm25"]),
    (["--negatives_from", "bm25", "--negative_file", "NEGS"], ["--negative_file", "give one"]),
    (["--negative_file", "NEGS", "--first_rank", "2"], ["--first_rank", "--negatives_from bm25"]),
    (["--negatives_from", "bm25", "--first_rank", "9", "--depth", "5"], ["--first_rank"]),
])
def test_build_train_source_flags(extra, needles, build_train_argv, tmp_path, capfd):
    negs = write_lines(tmp_path / "negs.tsv", ["q0\td1,d2"])
    extra = [negs if arg == "NEGS" else arg for arg in extra]
    outcome = run_command("build_train", build_train_argv(tmp_path / "out", *extra), capfd)
    assert_user_error(outcome, *needles)
    assert files_under(tmp_path / "out") == set()


@pytest.mark.parametrize("flag", ["--collection", "--queries", "--qrels"])
def test_build_train_bm25_missing_input(flag, build_train_argv, tmp_path, capfd):
    argv = build_train_argv(tmp_path / "out", "--negatives_from", "bm25")
    argv[argv.index(flag) + 1] = tmp_path / "nope.tsv"
    outcome = run_command("build_train", argv, capfd)
    assert_user_error(outcome, "nope.tsv", flag)
    assert files_under(tmp_path / "out") == set()


def test_build_train_bm25_writes_its_run_and_stats(build_train_argv, collection, tmp_path, capfd):
    outcome = run_command("build_train", build_train_argv(tmp_path / "out", "--negatives_from", "bm25", "--depth", "20",
                                                          "--n_sample", "4"), capfd)
    assert_succeeded(outcome)
    assert files_under(tmp_path / "out") == {"bm25.train.trec", "build_train.stats.json", "split00.jsonl"}
    lines = (tmp_path / "out" / "split00.jsonl").read_text().splitlines()
    assert len(lines) == len(positives(collection))
    stats = json.loads((tmp_path / "out" / "build_train.stats.json").read_text())
    assert stats["settings"]["depth"] == 20 and stats["source"].endswith("bm25.train.trec")


# ----------------------------------------------------------------------------------- train_dr --keep_best


@pytest.mark.parametrize("case, needles", [
    ("no_eval_path", ["--keep_best", "--eval_path"]),
    ("no_retrieval_metrics", ["--keep_best", "--eval_retrieval_k"]),
])
def test_keep_best_needs_retrieval_validation(case, needles, tiny_bert, tmp_path, capfd):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    ids = tokenizer("kaka lolo mimi", add_special_tokens=False)["input_ids"]
    train = write_lines(tmp_path / "train.jsonl", [json.dumps({"query": ids, "positives": [ids], "negatives": [ids[:1]]})] * 4)
    argv = ["--output_dir", tmp_path / "out", "--model_name_or_path", tiny_bert, "--train_path", train, "--keep_best",
            "--report_to", "none", "--per_device_train_batch_size", "2", "--q_max_len", "8", "--p_max_len", "8"]
    if case == "no_retrieval_metrics":
        argv += ["--eval_path", train, "--eval_retrieval_k", ""]
    outcome = run_command("train_dr", argv, capfd)
    assert_user_error(outcome, *needles)
    assert files_under(tmp_path / "out") == set()
