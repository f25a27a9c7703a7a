"""MS MARCO preprocessing: the recipe's shell steps, build_train and build_hn on real data, bad input."""

from __future__ import annotations

import gzip
import importlib.util
import json
import logging
import os
import re
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pytest

from openmatch.preprocessing import ids_json, sample_negatives

from tests import REPO
SCRIPTS = REPO / "scripts" / "msmarco"
DOC_TEMPLATE = "Title: <title> Text: <text>"


def load_script(name):
    spec = importlib.util.spec_from_file_location(f"_om_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build_train = load_script("build_train")
build_hn = load_script("build_hn")


def run_script(module, argv):
    from openmatch.cli import run

    return run(module.main, [str(a) for a in argv])


def read_lines(folder, pattern):
    out = []
    for path in sorted(Path(folder).glob(pattern)):
        out.extend(path.read_text().splitlines())
    return out


def triples_by_qid(marco):
    grouped = OrderedDict()
    with open(marco / "qidpidtriples.train.full.2.tsv", "rb") as handle:
        for raw in handle:
            qid, _pos, neg = raw.decode().rstrip("\r\n").split("\t")
            grouped.setdefault(qid, []).append(neg)
    return grouped


def positives_by_qid(marco, name="qrels.train.tsv"):
    qrels = OrderedDict()
    for line in (marco / name).read_text().splitlines():
        qid, _, pid, rel = line.split("\t")
        if int(rel) > 0:
            qrels.setdefault(qid, []).append(pid)
    return qrels


@pytest.fixture(scope="module")
def tokenizer(minilm_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_path))


@pytest.fixture(scope="module")
def marco(shared_data):
    return shared_data / "scifact-marco"


@pytest.fixture(scope="module")
def prepared(marco, tmp_path_factory):
    out = tmp_path_factory.mktemp("marco")
    subprocess.run(["bash", str(SCRIPTS / "prepare_marco.sh"), str(marco), str(out)], check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def corpus(prepared):
    rows = OrderedDict()
    for line in (prepared / "corpus.tsv").read_text().splitlines():
        pid, title, text = line.split("\t")
        rows[pid] = (title, text)
    return rows


def tokenise(tokenizer, texts, max_len):
    return [ids_json(ids) for ids in tokenizer(texts, add_special_tokens=False, truncation=True, max_length=max_len)["input_ids"]]


def test_prepare_marco_outputs(prepared, marco, corpus):
    assert len(corpus) == 5183
    assert list(corpus) == sorted(corpus, key=int)
    paras = dict(line.split("\t", 1) for line in (marco / "para.txt").read_text().splitlines())
    titles = dict(line.split("\t", 1) for line in (marco / "para.title.txt").read_text().splitlines())
    assert set(corpus) == set(paras)
    for pid, (title, text) in corpus.items():
        assert text == paras[pid] and title == titles.get(pid, "")

    expected = triples_by_qid(marco)
    lines = (prepared / "train.negatives.tsv").read_text().splitlines()
    assert len(lines) == len(expected) == 809
    got = OrderedDict((qid, negs.split(",")) for qid, negs in (line.split("\t") for line in lines))
    assert got == expected  # same queries, same order, every negative (duplicates kept) in file order


def test_prepare_marco_bounds_its_sorts_and_spills_next_to_the_output(marco, prepared, tmp_path):
    """Each of the three concurrent sorts gets a fixed buffer and a temporary folder inside the output folder
    (GNU sort otherwise sizes its buffer from the input: 4.8 GB at MS MARCO's size); with a buffer far smaller than
    the input, so that every sort spills and merges, corpus.tsv is still the bytes of the recipe's own command."""
    bin_dir, log = tmp_path / "bin", tmp_path / "sort.log"
    bin_dir.mkdir()
    real_sort = subprocess.run(["bash", "-c", "command -v sort"], capture_output=True, text=True, check=True).stdout.strip()
    (bin_dir / "sort").write_text(f'#!/usr/bin/env bash\necho "$*" >> {log}\nexec {real_sort} "$@"\n')
    (bin_dir / "sort").chmod(0o755)
    out = tmp_path / "out"
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", SORT_BUFFER="64K")
    # OUT given relative to the working folder, as in the tutorial.
    subprocess.run(["bash", str(SCRIPTS / "prepare_marco.sh"), str(marco), "out"], check=True, capture_output=True, env=env,
                   cwd=tmp_path)

    calls = log.read_text().splitlines()
    assert len(calls) == 3
    for call in calls:
        words = call.split()
        assert words[words.index("-S") + 1] == "64K"
        assert Path(words[words.index("-T") + 1]).parent == out
    assert sorted(p.name for p in out.iterdir()) == ["corpus.tsv", "train.negatives.tsv"]  # the sorts' folder removed

    recipe = (  # the recipe's join, verbatim, with sort's own buffer sizing
        "join  -t \"$(echo -en '\\t')\"  -e '' -a 1  -o 1.1 2.2 1.2  <(sort -k1,1 para.txt) <(sort -k1,1 para.title.txt)"
        " | sort -k1,1 -n"
    )
    expected = subprocess.run(["bash", "-c", recipe], cwd=marco, capture_output=True, check=True).stdout
    assert (out / "corpus.tsv").read_bytes() == expected == (prepared / "corpus.tsv").read_bytes()
    assert (out / "train.negatives.tsv").read_bytes() == (prepared / "train.negatives.tsv").read_bytes()


def test_recipe_awk_verbatim_loses_query_zero_and_build_train_says_so(marco, prepared, minilm_path, tmp_path, capsys):
    """The recipe's awk drops the qid of a first query numbered 0; build_train stops with file:line."""
    awk = (
        "awk -v RS='\\r\\n' '$1==last {printf \",%s\",$3; next} NR>1 {print \"\";} "
        "{last=$1; printf \"%s\\t%s\",$1,$3;} END{print \"\";}' "
        f"{marco}/qidpidtriples.train.full.2.tsv > {tmp_path}/train.negatives.tsv"
    )
    subprocess.run(["bash", "-c", awk], check=True)
    first = (tmp_path / "train.negatives.tsv").read_text().splitlines()[0]
    assert first.startswith(",") and "\t" not in first
    code = run_script(build_train, [
        "--tokenizer_name", minilm_path, "--negative_file", tmp_path / "train.negatives.tsv",
        "--qrels", marco / "qrels.train.tsv", "--queries", marco / "train.query.txt",
        "--collection", prepared / "corpus.tsv", "--save_to", tmp_path / "out", "--doc_template", DOC_TEMPLATE,
    ])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: ") and "train.negatives.tsv:1:" in err[-1]
    assert "prepare_marco.sh" in err[-1]
    assert not (tmp_path / "out" / "split00.jsonl").exists()


@pytest.fixture(scope="module")
def recipe_builds(marco, prepared, minilm_path, tmp_path_factory):
    """The recipe's command verbatim (paths substituted), and again with 2 workers and 300-line shards."""
    out1, out2 = tmp_path_factory.mktemp("t5"), tmp_path_factory.mktemp("t5_w2")
    recipe = [
        "--tokenizer_name", str(minilm_path),
        "--negative_file", str(prepared / "train.negatives.tsv"),
        "--qrels", str(marco / "qrels.train.tsv"),
        "--queries", str(marco / "train.query.txt"),
        "--collection", str(prepared / "corpus.tsv"),
        "--save_to", str(out1) + "/",
        "--doc_template", "Title: <title> Text: <text>",
    ]
    # In-process (same argv, same openmatch.cli.run path as the script's __main__): a second interpreter would only add
    # import time; test_bad_input_from_the_command_line_has_no_traceback runs the script as a process.
    assert run_script(build_train, recipe) == 0
    argv2 = recipe[:-4] + ["--save_to", out2, "--doc_template", DOC_TEMPLATE, "--num_workers", "2", "--shard_size", "300"]
    assert run_script(build_train, argv2) == 0
    return out1, out2


def test_build_train_recipe(recipe_builds, marco, corpus, tokenizer):
    out1, out2 = recipe_builds
    assert sorted(p.name for p in out1.iterdir()) == ["split00.jsonl"]
    assert sorted(p.name for p in out2.iterdir()) == ["split00.jsonl", "split01.jsonl", "split02.jsonl"]
    assert [len(read_lines(out2, f"split0{i}.jsonl")) for i in range(3)] == [300, 300, 209]
    # Byte-identical whatever the worker count and shard size.
    assert (out1 / "split00.jsonl").read_bytes() == b"".join((out2 / f"split0{i}.jsonl").read_bytes() for i in range(3))

    lines = [json.loads(line) for line in read_lines(out1, "split*[0-9].jsonl")]
    assert len(lines) == 809
    assert all(list(line) == ["query", "positives", "negatives"] for line in lines)
    qrels = positives_by_qid(marco)
    queries = dict(line.split("\t", 1) for line in (marco / "train.query.txt").read_text().splitlines())
    triples = triples_by_qid(marco)
    qids = list(triples)  # output follows the negatives file's order

    # Queries and positives equal the independently tokenised query texts and judged passages.
    assert [ids_json(line["query"]) for line in lines] == tokenise(tokenizer, [queries[q] for q in qids], 32)
    pos_pids = [pid for q in qids for pid in qrels[q]]
    pos_tokens = iter(tokenise(tokenizer, [f"Title: {corpus[p][0]} Text: {corpus[p][1]}" for p in pos_pids], 128))
    special = {tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id}
    for qid, line in zip(qids, lines):
        assert [ids_json(p) for p in line["positives"]] == [next(pos_tokens) for _ in qrels[qid]]
        assert len(line["negatives"]) == 30
        negs = [ids_json(n) for n in line["negatives"]]
        assert len(set(negs)) == 30 and not set(negs) & {ids_json(p) for p in line["positives"]}
        assert all(0 < len(p) <= 128 and not special & set(p) for p in line["positives"] + line["negatives"])
        assert 0 < len(line["query"]) <= 32 and not special & set(line["query"])

    # For a few queries, the negatives are exactly the documented draw from (candidates - positives).
    for index in (0, 1, 400, 808):
        qid = qids[index]
        pool = list(OrderedDict.fromkeys(p for p in triples[qid] if p not in set(qrels[qid])))
        drawn = sample_negatives(qid, pool, 42, 30)
        assert set(drawn) <= set(pool)
        texts = [f"Title: {corpus[p][0]} Text: {corpus[p][1]}" for p in drawn]
        assert [ids_json(n) for n in lines[index]["negatives"]] == tokenise(tokenizer, texts, 128)


def test_sampling_depends_on_seed_and_qid_only():
    pool = [str(i) for i in range(100)]
    first = sample_negatives("q7", pool, 42, 30)
    sample_negatives("other", pool, 42, 30)  # no shared state between queries
    assert sample_negatives("q7", pool, 42, 30) == first and len(set(first)) == 30
    assert sample_negatives("q7", pool, 43, 30) != first
    assert sorted(sample_negatives("q7", pool[:5], 42, 30)) == pool[:5]  # fewer candidates: all of them


def test_build_hn_top_depth_minus_positives(marco, prepared, corpus, minilm_path, tokenizer, tmp_path, caplog):
    qrels = positives_by_qid(marco)
    triples = triples_by_qid(marco)
    qids = list(triples)[:20]
    run_lines, tops = [], {}
    for n, qid in enumerate(qids):
        ranked = list(OrderedDict.fromkeys(triples[qid]))[:15]
        ranked.insert(2, qrels[qid][0])  # a positive inside the top depth: must be left out
        if n == 0:
            ranked = ranked[:4]  # fewer than n_sample candidates: all taken, counted
        # Written in reverse rank order: the reader must order by rank, not by line.
        run_lines += [f"{qid} Q0 {pid} {r} {100 - r}.0 bm25" for r, pid in reversed(list(enumerate(ranked, 1)))]
        tops[qid] = [p for p in ranked[:10] if p not in qrels[qid]]
    run_lines.append("unjudged Q0 4983 1 1.0 bm25")
    (tmp_path / "train.trec").write_text("\n".join(run_lines) + "\n")
    save_to = tmp_path / "t5"
    save_to.mkdir()
    (save_to / "split00.jsonl").write_text("kept\n")  # build_train's shard in the same folder stays
    argv = [
        "--tokenizer_name", minilm_path, "--hn_file", tmp_path / "train.trec", "--qrels", marco / "qrels.train.tsv",
        "--queries", marco / "train.query.txt", "--collection", prepared / "corpus.tsv", "--save_to", save_to,
        "--doc_template", DOC_TEMPLATE, "--depth", "10", "--n_sample", "5",
    ]
    with caplog.at_level(logging.WARNING):
        assert run_script(build_hn, argv) == 0
    assert sorted(p.name for p in save_to.iterdir()) == ["build_hn.stats.json", "split00.hn.jsonl", "split00.jsonl"]
    lines = [json.loads(line) for line in read_lines(save_to, "split*.hn.jsonl")]
    assert len(lines) == len(qids)
    for qid, line in zip(qids, lines):
        drawn = sample_negatives(qid, tops[qid], 42, 5)
        texts = [f"Title: {corpus[p][0]} Text: {corpus[p][1]}" for p in drawn]
        assert [ids_json(n) for n in line["negatives"]] == tokenise(tokenizer, texts, 128)
    assert len(lines[0]["negatives"]) == 3
    text = caplog.text
    assert "1 queries had fewer than 5 negative candidates" in text
    assert "1 queries in " in text and "unjudged" in text
    assert f"{809 - 20} judged queries do not appear in" in text

    # A query whose hits are not contiguous is refused with the offending line.
    (tmp_path / "bad.trec").write_text("1 Q0 4983 1 1.0 r\n2 Q0 4983 1 1.0 r\n1 Q0 5836 2 0.5 r\n")
    argv[argv.index(tmp_path / "train.trec")] = tmp_path / "bad.trec"
    assert run_script(build_hn, argv) == 2


# ------------------------------------------------------------------------------------------ bad input


@pytest.fixture
def small(tmp_path):
    """A tiny, valid data set: 3 queries, 6 passages (ids are not row numbers)."""
    (tmp_path / "corpus.tsv").write_text("".join(f"{100 + i}\tTitle {i}\tpassage number {i}\n" for i in range(6)))
    (tmp_path / "queries.tsv").write_text("1\tfirst query\n2\tsecond query\n3\tthird query\n")
    (tmp_path / "qrels.tsv").write_text("1\t0\t100\t1\n2\t0\t101\t1\n3\t0\t102\t1\n")
    (tmp_path / "negs.tsv").write_text("1\t103,104,105,100\n2\t103,104\n3\t104,105\n")
    return tmp_path


def small_argv(folder, minilm_path, **overrides):
    files = {"negative_file": "negs.tsv", "qrels": "qrels.tsv", "queries": "queries.tsv", "collection": "corpus.tsv"}
    files.update(overrides)
    argv = ["--tokenizer_name", minilm_path, "--save_to", folder / "out", "--n_sample", "2"]
    for flag, name in files.items():
        if name is not None:
            argv += [f"--{flag}", folder / name]
    return argv


@pytest.mark.parametrize(
    "name, content, where, words",
    [
        ("corpus.tsv", b"100\tT\tx\n101\tonly two\n", "corpus.tsv:2:", "columns"),
        ("qrels.tsv", b"1\t0\t100\t1\n2\t0\t101\t1\n3\t0\t102\thigh\n", "qrels.tsv:3:", "integer"),
        ("queries.tsv", b"1\tfirst\n2\tsec\xffond\n", "queries.tsv:2:", "UTF-8"),
        ("negs.tsv", b"1\t103\n2 103,104\n", "negs.tsv:2:", "columns"),
    ],
)
def test_bad_input_is_one_error_line(small, minilm_path, capsys, name, content, where, words):
    (small / name).write_bytes(content)
    assert run_script(build_train, small_argv(small, minilm_path)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and where in err[-1] and words in err[-1]
    assert not (small / "out").exists() or not list((small / "out").iterdir())


def test_bad_input_from_the_command_line_has_no_traceback(small, minilm_path):
    (small / "qrels.tsv").write_text("1\t0\t100\t1\n2\t0\t101\tyes\n")
    argv = [str(a) for a in small_argv(small, minilm_path)]
    proc = subprocess.run([sys.executable, str(SCRIPTS / "build_train.py"), *argv], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and "qrels.tsv:2:" in proc.stderr


def test_skippable_problems_are_counted(small, minilm_path, caplog):
    (small / "negs.tsv").write_text("1\t103,999,104,998,100\n2\t103,104\n3\t102\n4\t103\n1\t104\n")
    (small / "qrels.tsv").write_text("1\t0\t100\t1\n2\t0\t101\t1\n2\t0\t777\t1\n3\t0\t102\t1\n5\t0\t105\t1\n6\t0\t404\t1\n")
    (small / "queries.tsv").write_text("1\tfirst\n2\tsecond\n3\tthird\n6\tsixth\n")
    with caplog.at_level(logging.WARNING):
        assert run_script(build_train, small_argv(small, minilm_path)) == 0
    lines = [json.loads(line) for line in read_lines(small / "out", "split*[0-9].jsonl")]
    assert len(lines) == 2  # queries 1 and 2; 3 has no negative left, 4 is unjudged
    assert len(lines[0]["positives"]) == 1 and len(lines[0]["negatives"]) == 2
    assert len(lines[1]["positives"]) == 1  # 777 is not in the collection
    text = caplog.text
    assert "2 negative candidates missing from" in text and "999" in text and "998" in text
    assert "1 queries were dropped because no negative candidate was left (e.g. 3)" in text
    assert "1 queries in" in text and "without any relevant judgment" in text
    assert "1 positives missing from" in text and "2:777" in text
    assert "1 repeated query blocks" in text
    assert "2 judged queries do not appear in" in text  # 5 and 6


def write_collection(path, passages: int, words: int = 400) -> int:
    """A collection of long passages (ids 0..passages-1); returns its size in bytes."""
    with open(path, "w") as handle:
        for i in range(passages):
            handle.write(f"{i}\tTitle {i}\t" + " ".join(f"w{(i * 7 + j) % 997}" for j in range(words)) + "\n")
    return path.stat().st_size


def test_build_train_memory_does_not_grow_with_the_collection(small, minilm_path):
    """The collection is read by byte offset when a chunk needs its passages, not held as texts: on full MS MARCO
    the texts alone are 5.7 GiB. Traced Python memory over the whole command, for a collection 5 times larger,
    grows by far less than the texts added (a dict of filled texts grows by more than their size)."""
    import tracemalloc

    (small / "qrels.tsv").write_text("1\t0\t10\t1\n2\t0\t20\t1\n")
    (small / "negs.tsv").write_text("1\t11,12,13\n2\t21,22\n")
    peaks, sizes = [], []
    # The first run also imports and caches what any run needs once: it is not measured.
    for passages in (2000, 2000, 10000):
        sizes.append(write_collection(small / "corpus.tsv", passages))
        tracemalloc.start()
        try:
            assert run_script(build_train, small_argv(small, minilm_path)) == 0
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
    assert peaks[2] - peaks[1] < (sizes[2] - sizes[1]) / 10


def test_tokenised_passages_are_kept_on_disk_and_each_tokenised_once(small, tiny_bert, caplog, monkeypatch):
    """Every passage a run tokenises is kept for the rest of the run (full MS MARCO: ~12M slots drawn from 8.8M
    passages, about half of them drawn before), outside the process's memory: traced memory over runs that
    tokenise 2,560 and 7,680 distinct passages grows by far less than their token texts (a cache in memory
    would hold them all, or forget some and tokenise them again), and every passage is tokenised once."""
    import tracemalloc

    from openmatch import preprocessing

    def tokenise(tokenizer, texts, max_len):  # a stand-in as fast as a split: what is measured is the keeping
        return [[len(word) * 1000 + ord(word[-1]) for word in text.split()][:max_len] for text in texts]

    load_tokenizer = preprocessing.load_tokenizer

    def load_then_reset_peak(name):  # loading a tokenizer peaks higher than what is measured here
        tokenizer = load_tokenizer(name)
        tracemalloc.reset_peak()
        return tokenizer

    monkeypatch.setattr(preprocessing, "tokenise_texts", tokenise)
    monkeypatch.setattr(preprocessing, "load_tokenizer", load_then_reset_peak)
    write_collection(small / "corpus.tsv", 7680, words=80)

    def write_queries(count):
        # Query i: positive i, nine negatives of its own, so a run tokenises count * 10 distinct passages.
        (small / "queries.tsv").write_text("".join(f"{i}\tquery number {i}\n" for i in range(count)))
        (small / "qrels.tsv").write_text("".join(f"{i}\t0\t{i}\t1\n" for i in range(count)))
        (small / "negs.tsv").write_text("".join(
            f"{i}\t{','.join(str(768 + 9 * i + j) for j in range(9))}\n" for i in range(count)))

    argv = small_argv(small, tiny_bert) + ["--n_sample", "9"]
    peaks, token_bytes = [], []
    for count in (256, 768):  # whole chunks of 256 queries, whose transient memory is the same in both
        write_queries(count)
        caplog.clear()
        tracemalloc.start()
        try:
            with caplog.at_level(logging.INFO):
                assert run_script(build_train, argv) == 0
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
        assert f"{count * 10} passage slots, {count * 10} passages tokenised" in caplog.text
        lines = [json.loads(line) for line in (small / "out" / "split00.jsonl").read_text().splitlines()]
        token_bytes.append(sum(len(ids_json(p)) for line in lines for p in line["positives"] + line["negatives"]))
    # What may grow is the queries' own state (their texts and judgments, ~0.1 MB), not the token texts.
    assert peaks[1] - peaks[0] < (token_bytes[1] - token_bytes[0]) / 4


def test_a_passage_drawn_again_in_a_later_chunk_is_read_from_the_cache(small, tiny_bert, caplog, monkeypatch):
    """Queries of later chunks (256 queries each) draw passages that earlier chunks tokenised: each passage text
    reaches the tokenizer once in the whole run, and the tokens written for a passage read back from the cache are
    that passage's (not another row's). The test above draws every passage once, so it cannot tell."""
    from openmatch import preprocessing

    seen = []

    def tokenise(tokenizer, texts, max_len):  # a stand-in that records every text it is given
        seen.extend(texts)
        return [[int(w[1:]) if w[0] == "w" else len(w) for w in text.split()][:max_len] for text in texts]

    monkeypatch.setattr(preprocessing, "tokenise_texts", tokenise)
    write_collection(small / "corpus.tsv", 600, words=6)
    texts = dict(line.split("\t", 2)[::2] for line in (small / "corpus.tsv").read_text().splitlines())
    count, shared = 600 - 88, 88  # positives 0..511 (one each); negatives from the 88 passages 512..599
    candidates = {i: [str(count + (i * 7 + j) % shared) for j in range(5)] for i in range(count)}
    (small / "queries.tsv").write_text("".join(f"{i}\tquery number {i}\n" for i in range(count)))
    (small / "qrels.tsv").write_text("".join(f"{i}\t0\t{i}\t1\n" for i in range(count)))
    (small / "negs.tsv").write_text("".join(f"{i}\t{','.join(c)}\n" for i, c in candidates.items()))
    argv = small_argv(small, tiny_bert) + ["--n_sample", "5", "--doc_template", "<text>"]
    with caplog.at_level(logging.INFO):
        assert run_script(build_train, argv) == 0

    passages = [text for text in seen if not text.startswith("query")]
    assert len(passages) == len(set(passages)) == count + shared  # each distinct passage tokenised once
    assert f"{count * 6} passage slots, {count + shared} passages tokenised" in caplog.text
    pid_of = {ids_json(tokenise(None, [text], 128)[0]): pid for pid, text in texts.items()}
    lines = [json.loads(line) for line in (small / "out" / "split00.jsonl").read_text().splitlines()]
    assert len(lines) == count
    for i, line in enumerate(lines):
        assert [pid_of[ids_json(p)] for p in line["positives"]] == [str(i)]
        assert sorted(pid_of[ids_json(n)] for n in line["negatives"]) == sorted(candidates[i])


@pytest.mark.parametrize(
    "lines",
    [
        ['{"_id": "a", "text": "x"}', '{"_id": "b", "text": "y"}', '{"_id": "a", "text": ["list"]}'],  # repeat first
        ['{"_id": "a", "text": "x"}', '{"_id": "b", "text": {"an": "object"}}', '{"_id": "a", "text": "z"}'],
        ['{"_id": "a", "body": "x"}', '{"_id": "b", "text": "y"}'],  # the template's field missing at first
        ['{"_id": "a", "text": "x"}', '{"_id": "b"}', '{"_id": "c", "text": null}', '{"_id": "d", "text": 7}'],
    ],
    ids=["repeat and list", "object then repeat", "typo", "missing, null, number"],
)
def test_the_collection_by_offset_reports_what_loading_it_reported(tmp_path, lines):
    """build_train's collection reader (by offset) stops on, and warns about, what loading every text did."""
    import warnings

    from openmatch.dataset.template import Template
    from openmatch.preprocessing import COLLECTION_COLUMNS, CollectionTexts, load_texts

    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(lines) + "\n")
    outcomes = []
    for read in (load_texts, CollectionTexts):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                result = read(path, COLLECTION_COLUMNS, Template("<text>"), "--doc_template")
            except Exception as err:  # the outcome compared is the error itself
                outcomes.append((type(err), str(err), [str(w.message) for w in caught]))
            else:
                texts = result if isinstance(result, dict) else dict(zip(list(result.store), result.texts(
                    list(range(len(result))), list(result.store))))
                outcomes.append((texts, [str(w.message) for w in caught]))
    assert outcomes[0] == outcomes[1]


@pytest.mark.parametrize("form", ["gzip", "jsonl", "string ids", "unsorted"])
def test_every_form_of_a_collection_gives_the_same_lines(small, minilm_path, form):
    """A .gz collection (read from a decompressed copy), JSONL, non-integer ids (looked up by hash) and ids out
    of order give the bytes of the plain sorted TSV."""
    with open(small / "corpus.tsv", "a") as handle:
        handle.write("106\tblank\t  \n")  # blank under <text>: known at the pass, never a candidate
    (small / "negs.tsv").write_text("1\t103,106,104,105,100,999\n2\t103,104\n3\t104,105\n")
    argv = small_argv(small, minilm_path) + ["--doc_template", "<text>"]
    assert run_script(build_train, argv) == 0
    expected = (small / "out" / "split00.jsonl").read_bytes()
    rows = [line.split("\t") for line in (small / "corpus.tsv").read_text().splitlines()]
    prefix = "p" if form == "string ids" else ""
    if form == "string ids":
        for name in ("qrels.tsv", "negs.tsv"):
            text = (small / name).read_text()
            (small / name).write_text(re.sub(r"\b(1\d\d|999)\b", r"p\1", text))
    name = {"gzip": "corpus.tsv.gz", "jsonl": "corpus.jsonl"}.get(form, "other.tsv")
    if form == "unsorted":
        rows = rows[::-1]
    if form == "jsonl":
        data = "".join(json.dumps({"_id": pid, "title": title, "text": text}) + "\n" for pid, title, text in rows)
    else:
        data = "".join(f"{prefix}{pid}\t{title}\t{text}\n" for pid, title, text in rows)
    if form == "gzip":
        with gzip.open(small / name, "wt") as handle:
            handle.write(data)
    else:
        (small / name).write_text(data)
    argv = small_argv(small, minilm_path, collection=name) + ["--doc_template", "<text>", "--save_to", small / "other"]
    assert run_script(build_train, argv) == 0
    assert (small / "other" / "split00.jsonl").read_bytes() == expected


def test_stale_shards_are_removed_and_nothing_written_on_failure(small, minilm_path):
    out = small / "out"
    out.mkdir()
    (out / "split07.jsonl").write_text("stale\n")
    (out / "split00.hn.jsonl").write_text("other kind\n")
    assert run_script(build_train, small_argv(small, minilm_path) + ["--shard_size", "1"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["split00.hn.jsonl", "split00.jsonl", "split01.jsonl", "split02.jsonl"]
    (small / "negs.tsv").write_text("1\t100\n")  # only a positive: no example at all
    assert run_script(build_train, small_argv(small, minilm_path)) == 2
    assert len(list(out.iterdir())) == 4


@pytest.mark.parametrize("script", ["build_train", "build_hn"])
def test_empty_texts_are_skipped_and_counted(small, minilm_path, tokenizer, caplog, script):
    """No "[]" reaches the training file (the loader rejects it): empty queries, positives and negatives are
    skipped and counted, whether blank (known before tokenising) or only tokenising to nothing (U+200B)."""
    from openmatch.dataset.train_dataset import TrainDataset

    invisible = "\u200b"  # not white space for str.strip(), but MiniLM's tokenizer drops it
    def tokens(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    assert invisible.strip() and not tokens(invisible)
    with (small / "corpus.tsv").open("a") as handle:
        handle.write(f"106\tblank\t   \n107\tinvisible\t{invisible}\n")
    (small / "queries.tsv").write_text(
        f"1\tfirst query\n2\tsecond query\n3\tthird query\n4\t  \n5\t{invisible}\n6\tsixth query\n7\tseventh query\n"
    )
    # 1: one blank positive of two, an invisible negative; 2: its only positive is invisible;
    # 3: its only positive is blank; 4, 5: empty queries; 6, 7: every negative candidate is empty.
    judged = {"1": ["100", "106"], "2": ["107"], "3": ["106"], "4": ["100"], "5": ["100"], "6": ["101"], "7": ["102"]}
    candidates = {"1": ["103", "107", "104"], "2": ["103"], "3": ["103"], "4": ["103"], "5": ["103"],
                  "6": ["106", "107"], "7": ["106"]}
    (small / "qrels.tsv").write_text("".join(f"{q}\t0\t{p}\t1\n" for q, pids in judged.items() for p in pids))
    if script == "build_train":
        (small / "negs.tsv").write_text("".join(f"{q}\t{','.join(pids)}\n" for q, pids in candidates.items()))
        argv = small_argv(small, minilm_path)
    else:
        (small / "run.trec").write_text("".join(
            f"{q} Q0 {p} {rank} {10 - rank}.0 r\n" for q, pids in candidates.items() for rank, p in enumerate(pids, 1)
        ))
        argv = small_argv(small, minilm_path, negative_file=None, hn_file="run.trec")
    argv += ["--doc_template", "<text>", "--n_sample", "5"]
    module = {"build_train": build_train, "build_hn": build_hn}[script]
    with caplog.at_level(logging.INFO):
        assert run_script(module, argv) == 0

    files = sorted((small / "out").glob("split*.jsonl"))
    lines = [json.loads(line) for path in files for line in path.read_text().splitlines()]
    # Only query 1 is left: its non-empty positive, and the two non-empty negatives in sampled order.
    assert len(lines) == 1
    assert lines[0]["query"] == tokens("first query") and lines[0]["positives"] == [tokens("passage number 0")]
    drawn = sample_negatives("1", ["103", "107", "104"], 42, 5)
    assert lines[0]["negatives"] == [tokens(f"passage number {int(p) - 100}") for p in drawn if p != "107"]
    dataset = TrainDataset([str(files[0])], tokenizer, train_n_passages=2, show_progress=False)
    assert dataset.raw(0)["negatives"] == lines[0]["negatives"]  # what training reads back, validated

    text = caplog.text
    assert "2 queries were skipped because their text is empty" in text and "(e.g. 4, 5)" in text
    assert "3 empty positives" in text and "1:106" in text and "2:107" in text and "3:106" in text
    assert "2 queries were dropped because no positive was left" in text
    assert "4 empty negative candidates" in text  # 107 of query 1, 106 and 107 of 6, 106 of 7
    assert "2 queries were dropped because no negative candidate was left" in text and "7, 6" in text
    assert "1 queries had fewer than 5 negative candidates; all of them were taken (e.g. 1 (2))" in text
    assert "empty texts skipped: 2 queries, 3 positives, 4 negatives" in text
