"""Fault-matrix cases of the input data: corpus, queries, qrels, runs, negatives and training JSONL that are
damaged or unusual, run through the real commands (build_index, retrieve, evaluate, build_train, build_hn,
train_dr). Each case checks the exit status, the one ``error:`` (or ``warning:``) line naming the file and line
or the flag, no traceback, and what the output folder holds afterwards."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from tests.faults import assert_succeeded, assert_user_error, assert_warned, files_under, run_command, write_lines
from tests.faults.conftest import N_PASSAGES, N_QUERIES

BOM = "\ufeff"
QIDS = {f"q{i}" for i in range(N_QUERIES)}


# -- inputs made from the shared collection ------------------------------------------------------------------


def lines_of(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def write_gzip(path: Path, lines: list[str], cut: bool = False) -> Path:
    """``lines`` gzip-compressed into ``path``; ``cut`` keeps the first half of the compressed bytes, as an
    interrupted download or copy leaves it."""
    data = gzip.compress("".join(line + "\n" for line in lines).encode("utf-8"))
    path.write_bytes(data[: len(data) // 2] if cut else data)
    return path


def with_bom(path: Path, lines: list[str]) -> Path:
    return write_lines(path, [BOM + lines[0], *lines[1:]])


def corpus_jsonl_lines(collection) -> list[str]:
    rows = [line.split("\t") for line in lines_of(collection.corpus)]
    return [json.dumps({"_id": pid, "title": title, "text": text}) for pid, title, text in rows]


def negatives_lines() -> list[str]:
    return [f"q{i}\t" + ",".join(f"d{j}" for j in range(10 * i, 10 * i + 12)) for i in range(N_QUERIES)]


def run_lines(hits: int = 15) -> list[str]:
    return [f"q{i} Q0 d{(7 * i + j) % N_PASSAGES} {j + 1} {100 - j}.5 test" for i in range(N_QUERIES) for j in range(hits)]


def training_lines(n: int = 8) -> list[str]:
    return [json.dumps({"query": [5 + i, 6], "positives": [[8, 9, 10 + i]], "negatives": [[11, 12], [13, 14 + i]]})
            for i in range(n)]


def index_ids(folder: Path) -> list[str]:
    return [pid for name in sorted(files_under(folder)) if name.startswith("ids.") for pid in lines_of(folder / name)]


def index_results(folder: Path) -> set[str]:
    """What a failed build may leave: its build.json, never a shard or a manifest."""
    return {name for name in files_under(folder) if name.startswith(("embeddings.", "ids.", "shard.", "manifest"))}


def run_qids(path: Path) -> set[str]:
    return {line.split()[0] for line in lines_of(path)}


@pytest.fixture
def build_train_argv(tiny_bert, collection):
    """build_train's (or, with ``source="--hn_file"``, build_hn's) arguments over the shared collection."""

    def argv(save_to: Path, source: Path, *extra, source_flag: str = "--negative_file", qrels=None, queries=None,
             corpus=None) -> list:
        return ["--tokenizer_name", tiny_bert, "--qrels", qrels or collection.qrels,
                "--queries", queries or collection.queries, "--collection", corpus or collection.corpus,
                "--save_to", save_to, source_flag, source, "--n_sample", "3", "--truncate", "16", *extra]

    return argv


@pytest.fixture
def train_dr_argv(tiny_bert):
    def argv(out: Path, train: Path, *extra) -> list:
        return ["--output_dir", out, "--model_name_or_path", tiny_bert, "--train_path", train,
                "--per_device_train_batch_size", "4", "--train_n_passages", "2", "--q_max_len", "16",
                "--p_max_len", "16", "--max_steps", "1", "--report_to", "none", "--save_strategy", "no",
                "--disable_tqdm", "true", "--dataloader_num_workers", "0", *extra]

    return argv


def shard_lines(folder: Path, suffix: str = ".jsonl") -> list[str]:
    return [line for name in sorted(files_under(folder)) if name.endswith(suffix) for line in lines_of(folder / name)]


# -- 1. a UTF-8 byte-order mark -------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["corpus_tsv", "corpus_jsonl_gz", "queries", "qrels", "run", "negatives", "hn_run",
                                  "training"])
def test_a_byte_order_mark_is_not_part_of_the_first_id(case, collection, build_index_argv, retrieve_argv, built_index,
                                                        build_train_argv, train_dr_argv, tmp_path, capfd):
    if case.startswith("corpus"):
        if case == "corpus_tsv":
            corpus = with_bom(tmp_path / "corpus.tsv", lines_of(collection.corpus))
        else:
            lines = corpus_jsonl_lines(collection)
            corpus = write_gzip(tmp_path / "corpus.jsonl.gz", [BOM + lines[0], *lines[1:]])
        argv = build_index_argv(tmp_path / "emb")
        argv[argv.index("--corpus_path") + 1] = corpus
        if case == "corpus_jsonl_gz":
            del argv[argv.index("--doc_column_names"): argv.index("--doc_column_names") + 2]
        assert_succeeded(run_command("build_index", argv, capfd))
        assert index_ids(tmp_path / "emb")[0] == "d0"
    elif case == "queries":
        argv = retrieve_argv(built_index, tmp_path / "run.trec")
        argv[argv.index("--query_path") + 1] = with_bom(tmp_path / "queries.tsv", lines_of(collection.queries))
        assert_succeeded(run_command("retrieve", argv, capfd))
        assert run_qids(tmp_path / "run.trec") == QIDS
    elif case in ("qrels", "run"):
        qrels = (with_bom if case == "qrels" else write_lines)(tmp_path / "qrels.tsv", lines_of(collection.qrels))
        run = (with_bom if case == "run" else write_lines)(
            tmp_path / "run.trec", [f"q{i} Q0 {line.split()[2]} 1 9.5 x" for i, line in enumerate(lines_of(collection.qrels))]
        )
        outcome = run_command("evaluate", ["--qrels", qrels, "--run", run, "--metrics", "mrr@10",
                                           "--output", tmp_path / "m.json"], capfd)
        assert_succeeded(outcome)
        result = json.loads((tmp_path / "m.json").read_text())
        # Every query's one judged passage is ranked first: with the mark, q0 was a query missing from the run.
        assert result["num_judged_queries"] == N_QUERIES and result["num_judged_missing_from_run"] == 0
        assert result["metrics"]["mrr@10"] == 1.0
    elif case in ("negatives", "hn_run"):
        if case == "negatives":
            argv = build_train_argv(tmp_path / "out", with_bom(tmp_path / "neg.tsv", negatives_lines()))
            command, suffix = "build_train", ".jsonl"
        else:
            # q0 has one hit (not its positive), on the marked line, so that the mark cannot go unnoticed.
            positive = lines_of(collection.qrels)[0].split()[2]
            lines = [f"q0 Q0 {'d1' if positive == 'd0' else 'd0'} 1 200.5 test"]
            lines += [line for line in run_lines() if not line.startswith("q0 ")]
            argv = build_train_argv(tmp_path / "out", with_bom(tmp_path / "run.trec", lines), source_flag="--hn_file")
            command, suffix = "build_hn", ".hn.jsonl"
        assert_succeeded(run_command(command, argv, capfd))
        assert len(shard_lines(tmp_path / "out", suffix)) == N_QUERIES  # with the mark, q0 was a query without judgments
    else:
        train = with_bom(tmp_path / "train.jsonl", training_lines())
        assert_succeeded(run_command("train_dr", train_dr_argv(tmp_path / "model", train), capfd))
        assert (tmp_path / "model" / "openmatch_config.json").exists()


# -- 2. a truncated gzip file ---------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["corpus", "queries", "qrels", "negatives"])
def test_a_truncated_gzip_file_is_named(case, collection, build_index_argv, retrieve_argv, built_index,
                                        build_train_argv, tmp_path, capfd):
    if case == "corpus":
        path = write_gzip(tmp_path / "corpus.tsv.gz", lines_of(collection.corpus), cut=True)
        argv = build_index_argv(tmp_path / "emb")
        argv[argv.index("--corpus_path") + 1] = path
        outcome = run_command("build_index", argv, capfd)
        assert index_results(tmp_path / "emb") == set()
    elif case == "queries":
        # Long enough that half of the compressed bytes hold the first line.
        lines = [f"{line}{' kaka' * 60}" for line in lines_of(collection.queries)]
        path = write_gzip(tmp_path / "queries.tsv.gz", lines, cut=True)
        argv = retrieve_argv(built_index, tmp_path / "run.trec")
        argv[argv.index("--query_path") + 1] = path
        outcome = run_command("retrieve", argv, capfd)
        assert not (tmp_path / "run.trec").exists()
    elif case == "qrels":
        path = write_gzip(tmp_path / "qrels.tsv.gz", lines_of(collection.qrels) * 20, cut=True)
        outcome = run_command("evaluate", ["--qrels", path, "--run", tmp_path / "none.trec",
                                           "--output", tmp_path / "m.json"], capfd)
        assert not (tmp_path / "m.json").exists()
    else:
        path = write_gzip(tmp_path / "neg.tsv.gz", negatives_lines() * 5, cut=True)
        outcome = run_command("build_train", build_train_argv(tmp_path / "out", path), capfd)
        assert shard_lines(tmp_path / "out") == []
    line = assert_user_error(outcome, f"{path}:", "truncated or corrupt gzip")
    assert int(line.split(f"{path}:")[1].split(":")[0]) > 1  # the line where the data ends


# -- 3. errors in DataLoader workers --------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["build_index", "retrieve", "train_dr"])
def test_an_error_in_a_loader_worker_is_one_line(command, collection, build_index_argv, retrieve_argv, built_index,
                                                 train_dr_argv, tmp_path, capfd):
    workers = ["--dataloader_num_workers", "1"]
    if command == "build_index":
        lines = lines_of(collection.corpus)
        lines[199] = "d199\tonly a title"
        path = write_lines(tmp_path / "corpus.tsv", lines)
        argv = build_index_argv(tmp_path / "emb", *workers)
        argv[argv.index("--corpus_path") + 1] = path
        outcome = run_command("build_index", argv, capfd)
        assert_user_error(outcome, f"{path}:200: expected 3 tab-separated columns (id,title,text), found 2")
        assert index_results(tmp_path / "emb") == set()
    elif command == "retrieve":
        lines = lines_of(collection.queries)
        lines[6] = "q 6\tkaka"
        path = write_lines(tmp_path / "queries.tsv", lines)
        argv = retrieve_argv(built_index, tmp_path / "run.trec", *workers)
        argv[argv.index("--query_path") + 1] = path
        outcome = run_command("retrieve", argv, capfd)
        assert_user_error(outcome, f"{path}:7: id 'q 6' contains white space")
        assert not (tmp_path / "run.trec").exists()
    else:
        lines = training_lines()
        lines[5] = json.dumps({"query": [5, 6], "positives": [[8, "9"]], "negatives": [[11]]})
        path = write_lines(tmp_path / "train.jsonl", lines)
        argv = train_dr_argv(tmp_path / "model", path)
        argv[argv.index("--dataloader_num_workers") + 1] = "1"
        outcome = run_command("train_dr", argv, capfd)
        assert_user_error(outcome, f'{path}:6: "positives"[0] must hold non-negative integer token ids')
        assert not (tmp_path / "model" / "openmatch_config.json").exists()
    assert "DataLoader worker" not in outcome.stderr


# -- 4. a header line, or none where one is read --------------------------------------------------------------


@pytest.mark.parametrize("command", ["build_index", "retrieve"])
def test_a_header_line_matching_the_column_names_is_skipped_with_a_warning(command, collection, build_index_argv,
                                                                            retrieve_argv, built_index, tmp_path, capfd):
    if command == "build_index":
        path = write_lines(tmp_path / "corpus.tsv", ["id\ttitle\ttext", *lines_of(collection.corpus)])
        argv = build_index_argv(tmp_path / "emb")
        argv[argv.index("--corpus_path") + 1] = path
        outcome = run_command("build_index", argv, capfd)
        assert_warned(outcome, f"{path}:1: skipped a header line (id, title, text)", "--doc_column_names id,title,text")
        ids = index_ids(tmp_path / "emb")
        assert len(ids) == N_PASSAGES and "id" not in ids
    else:
        path = write_lines(tmp_path / "queries.tsv", ["_id\ttext", *lines_of(collection.queries)])
        argv = retrieve_argv(built_index, tmp_path / "run.trec", "--dataloader_num_workers", "1")
        argv[argv.index("--query_path") + 1] = path
        outcome = run_command("retrieve", argv, capfd)
        assert_warned(outcome, f"{path}:1: skipped a header line (_id, text)", "--query_column_names id,text")
        assert run_qids(tmp_path / "run.trec") == QIDS


@pytest.mark.parametrize("command", ["build_index", "retrieve"])
def test_a_headerless_tsv_without_column_names_hints_at_the_flag(command, collection, build_index_argv, retrieve_argv,
                                                                 built_index, tmp_path, capfd):
    if command == "build_index":
        argv = build_index_argv(tmp_path / "emb")
        del argv[argv.index("--doc_column_names"): argv.index("--doc_column_names") + 2]
        outcome = run_command("build_index", argv, capfd)
        flag, path = "--doc_column_names", collection.corpus
        # Refused before the folder is prepared: nothing there would hold back the corrected command.
        assert files_under(tmp_path / "emb") == set()
    else:
        argv = retrieve_argv(built_index, tmp_path / "run.trec")
        del argv[argv.index("--query_column_names"): argv.index("--query_column_names") + 2]
        outcome = run_command("retrieve", argv, capfd)
        flag, path = "--query_column_names", collection.queries
        assert not (tmp_path / "run.trec").exists()
    assert_user_error(outcome, f"{path}:2: no id field", "line 1 was read as the header",
                      f"a file without a header line needs {flag}, e.g. id,title,text)")


# -- 5. null and non-text fields ------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, ["a", "list"]], ids=["null", "list"])
def test_a_null_or_non_text_field_in_a_jsonl_corpus(value, collection, build_index_argv, tmp_path, capfd):
    records = [json.loads(line) for line in corpus_jsonl_lines(collection)]
    records[41]["text"] = value
    path = write_lines(tmp_path / "corpus.jsonl", [json.dumps(record) for record in records])
    argv = build_index_argv(tmp_path / "emb", "--dataloader_num_workers", "1")
    argv[argv.index("--corpus_path") + 1] = path
    del argv[argv.index("--doc_column_names"): argv.index("--doc_column_names") + 2]
    outcome = run_command("build_index", argv, capfd)
    if value is None:
        # As an empty text is: encoded, and reported (once per field).
        assert_warned(outcome, f"{path}:42: field 'text' is null; using an empty string")
        assert len(index_ids(tmp_path / "emb")) == N_PASSAGES
    else:
        assert_user_error(outcome, f"{path}:42: field 'text' is a list, not text")
        assert index_results(tmp_path / "emb") == set()


# -- 6. a template field that no record has -------------------------------------------------------------------


@pytest.mark.parametrize("command", ["build_index", "retrieve", "build_train"])
def test_a_misspelt_template_field_is_refused(command, collection, build_index_argv, retrieve_argv, built_index,
                                              build_train_argv, tmp_path, capfd):
    if command == "build_index":
        argv = build_index_argv(tmp_path / "emb")
        argv[argv.index("--doc_template") + 1] = "<tilte> <text>"
        outcome = run_command("build_index", argv, capfd)
        assert_user_error(outcome, "--doc_template '<tilte> <text>': no field <tilte>", f"{collection.corpus} (line 1)")
        assert files_under(tmp_path / "emb") == set()
    elif command == "retrieve":
        argv = retrieve_argv(built_index, tmp_path / "run.trec")
        argv[argv.index("--query_template") + 1] = "<txet>"
        outcome = run_command("retrieve", argv, capfd)
        assert_user_error(outcome, "--query_template '<txet>': no field <txet>", f"{collection.queries} (line 1)")
        assert not (tmp_path / "run.trec").exists()
    else:
        argv = build_train_argv(tmp_path / "out", write_lines(tmp_path / "neg.tsv", negatives_lines()),
                                "--doc_template", "Title: <tilte> Text: <text>")
        outcome = run_command("build_train", argv, capfd)
        assert_user_error(outcome, "--doc_template 'Title: <tilte> Text: <text>': no field <tilte>",
                          f"{collection.corpus} (line 1)")
        assert shard_lines(tmp_path / "out") == []


def test_a_field_missing_from_some_records_only_is_a_warning(collection, build_index_argv, tmp_path, capfd):
    records = [json.loads(line) for line in corpus_jsonl_lines(collection)]
    for record in records[100:110]:
        del record["title"]
    path = write_lines(tmp_path / "corpus.jsonl", [json.dumps(record) for record in records])
    argv = build_index_argv(tmp_path / "emb")
    argv[argv.index("--corpus_path") + 1] = path
    del argv[argv.index("--doc_column_names"): argv.index("--doc_column_names") + 2]
    outcome = run_command("build_index", argv, capfd)
    assert_warned(outcome, f"{path}:101: field 'title' missing from a record")
    assert len(index_ids(tmp_path / "emb")) == N_PASSAGES


# -- 7. a pair judged twice -----------------------------------------------------------------------------------


@pytest.mark.parametrize("relevance", ["0", "1"], ids=["conflicting", "repeated"])
def test_a_pair_judged_twice_in_the_qrels(relevance, collection, tmp_path, capfd):
    lines = lines_of(collection.qrels)
    qid, _, pid, _ = lines[2].split()
    lines.append(f"{qid} 0 {pid} {relevance}")
    qrels = write_lines(tmp_path / "qrels.tsv", lines)
    run = write_lines(tmp_path / "run.trec", [f"{line.split()[0]} Q0 {line.split()[2]} 1 1.5 x" for line in lines[:-1]])
    outcome = run_command("evaluate", ["--qrels", qrels, "--run", run, "--output", tmp_path / "m.json"], capfd)
    if relevance == "0":
        assert_user_error(outcome, f"{qrels}:{len(lines)}: query {qid!r} passage {pid!r} judged 0 here but 1 on line 3")
        assert not (tmp_path / "m.json").exists()
    else:
        assert_succeeded(outcome)  # the same judgment twice says nothing new
        assert json.loads((tmp_path / "m.json").read_text())["metrics"]["mrr@10"] == 1.0


# -- 8. build_hn's run: a hit listed twice, ranks against scores ----------------------------------------------


def test_build_hn_refuses_a_hit_listed_twice(build_train_argv, tmp_path, capfd):
    lines = run_lines()
    qid, _, pid, *_ = lines[16].split()
    lines.insert(20, f"{qid} Q0 {pid} 5 3.0 test")
    run = write_lines(tmp_path / "run.trec", lines)
    outcome = run_command("build_hn", build_train_argv(tmp_path / "out", run, source_flag="--hn_file"), capfd)
    assert_user_error(outcome, f"{run}:21: passage {pid!r} appears twice for query {qid!r} (first on line 17)")
    assert shard_lines(tmp_path / "out", ".hn.jsonl") == []


def test_build_hn_warns_once_when_ranks_contradict_scores(build_train_argv, tmp_path, capfd):
    lines = run_lines()
    for start in (15, 45):  # q1 and q3: the scores of ranks 2 and 3 swapped
        a, b = lines[start + 1].split(), lines[start + 2].split()
        a[4], b[4] = b[4], a[4]
        lines[start + 1], lines[start + 2] = " ".join(a), " ".join(b)
    run = write_lines(tmp_path / "run.trec", lines)
    outcome = run_command("build_hn", build_train_argv(tmp_path / "out", run, source_flag="--hn_file"), capfd)
    assert_warned(outcome, f"{run}: the rank column contradicts the scores in 2 queries", "'q1', line 18")
    assert len(shard_lines(tmp_path / "out", ".hn.jsonl")) == N_QUERIES


# -- 9. training JSONL checked before training ----------------------------------------------------------------


@pytest.mark.parametrize("case", ["token_id_beyond_vocabulary", "empty_positive", "no_negatives"])
def test_a_bad_training_line_stops_train_dr_before_training(case, tiny_bert, train_dr_argv, tmp_path, capfd):
    lines = training_lines(40)
    if case == "token_id_beyond_vocabulary":
        lines[30] = json.dumps({"query": [5, 6], "positives": [[8, 9]], "negatives": [[11, 10 ** 6]]})
        needle = f'"negatives"[0] holds token id {10 ** 6}, beyond the vocabulary of'
    elif case == "empty_positive":
        lines[30] = json.dumps({"query": [5, 6], "positives": [[]], "negatives": [[11]]})
        needle = '"positives"[0] must be a non-empty list of token ids'
    else:
        lines[30] = json.dumps({"query": [5, 6], "positives": [[8]], "negatives": []})
        needle = "no negatives, but --train_n_passages 2 needs 1"
    path = write_lines(tmp_path / "train.jsonl", lines)
    outcome = run_command("train_dr", train_dr_argv(tmp_path / "model", path), capfd)
    assert_user_error(outcome, f"{path}:31: {needle}")
    # Refused while the data was read: one step (--max_steps 1) would never have reached line 31.
    assert files_under(tmp_path / "model") == set()
