"""BM25 through bm25s: the documented tokens and scores, trec_eval's tie order, the index folder (no pickle,
reused by a rerun), the bm25 command, and the BM25 figure on SciFact test."""

from __future__ import annotations

import json
import math
import os
from collections import Counter

import numpy as np
import pytest

from openmatch import api
from openmatch.retriever.bm25 import BM25S_FILES, CONFIG_FILE, IDS_FILE, BM25Index, BM25Options, tokenize
from tests.faults import assert_succeeded, run_command, write_lines

CORPUS = [
    ("d1", "Dense retrieval", "Dense retrievers encode queries and passages into vectors."),
    ("d2", "Sparse retrieval", "BM25 ranks passages by the query terms they contain, weighted by rarity."),
    ("d3", "Cats", "The cat sat on the mat; cats like mats."),
    ("d4", "Dogs", "A dog runs. Dogs are running in the park with other dogs."),
    ("d5", "Empty", "!!! ..."),
]


@pytest.fixture
def corpus(tmp_path):
    return write_lines(tmp_path / "corpus.tsv", ["\t".join(row) for row in CORPUS])


def test_tokens_are_lowercase_words_of_two_characters_stopped_and_stemmed():
    text = ["The Running dogs, a cat! x2 Mats_7"]
    assert tokenize(text, stemmer="none", stopwords="none") == [["the", "running", "dogs", "cat", "x2", "mats_7"]]
    assert tokenize(text, stemmer="none", stopwords="en") == [["running", "dogs", "cat", "x2", "mats_7"]]
    assert tokenize(text, stemmer="english", stopwords="en") == [["run", "dog", "cat", "x2", "mats_7"]]
    # Porter's original stemmer differs from Snowball English on some words.
    assert tokenize(["generously"], stemmer="porter", stopwords="none") != tokenize(["generously"], stemmer="english", stopwords="none")


def reference_scores(texts, query, k1, b, stemmer, stopwords):
    """Lucene's BM25 (the documented formula), term by term in plain Python."""
    docs = [Counter(words) for words in tokenize(texts, stemmer, stopwords)]
    lengths = [sum(d.values()) for d in docs]
    avgdl = sum(lengths) / len(docs)
    (q_words,) = tokenize([query], stemmer, stopwords)
    scores = []
    for doc, length in zip(docs, lengths):
        total = 0.0
        for word in q_words:
            tf, df = doc[word], sum(1 for d in docs if word in d)
            if tf:
                idf = math.log(1 + (len(docs) - df + 0.5) / (df + 0.5))
                total += idf * tf / (tf + k1 * (1 - b + b * length / avgdl))
        scores.append(total)
    return scores


@pytest.mark.parametrize("k1, b, stemmer, stopwords", [(0.9, 0.4, "english", "en"), (1.5, 0.75, "none", "none"),
                                                        (0.0, 1.0, "porter", "en")])
def test_scores_follow_the_documented_formula(corpus, k1, b, stemmer, stopwords):
    options = BM25Options(k1=k1, b=b, stemmer=stemmer, stopwords=stopwords, template="<title> <text>",
                          column_names="id,title,text")
    index = BM25Index.build(corpus, options)
    query = "dogs running and the cats with passages, passages"
    texts = [f"{title} {text}" for _, title, text in CORPUS]
    want = reference_scores(texts, query, k1, b, stemmer, stopwords)
    (hits,) = index.search([query], ["q"], depth=10).values()
    got = dict(hits)
    # Only passages sharing a token are listed, best first, each with the formula's score (float32).
    assert set(got) == {pid for (pid, *_), score in zip(CORPUS, want) if score != 0}
    for (pid, *_), score in zip(CORPUS, want):
        if pid in got:
            assert got[pid] == pytest.approx(score, rel=1e-5)
    assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)


def test_ties_are_broken_by_passage_id_descending_and_cut_at_depth(tmp_path):
    from openmatch.evaluation.metrics import rank_scores

    # Ten identical passages tie; trec_eval orders them d9, d8, ... d0, so depth 4 keeps d9..d6.
    path = write_lines(tmp_path / "c.tsv", [f"d{i}\tsame words here" for i in range(10)] + ["x\tother things"])
    index = BM25Index.build(path, BM25Options(column_names="id,text"))
    (hits,) = index.search(["words"], ["q"], depth=4).values()
    assert [pid for pid, _ in hits] == ["d9", "d8", "d7", "d6"]
    (everything,) = index.search(["words"], ["q"], depth=100).values()
    pids = [pid for pid, _ in everything]
    assert pids == rank_scores([[s for _, s in everything]], ["q"], pids)["q"]
    assert "x" not in pids


def test_queries_without_a_known_token_have_no_hits(corpus):
    index = api.bm25_index(corpus, template="<title> <text>", column_names="id,title,text")
    hits = api.bm25_search(index, {"q1": "zebra quagga", "q2": "the a of", "q3": "cat"})
    assert hits["q1"] == [] and hits["q2"] == []
    assert [pid for pid, _ in hits["q3"]] == ["d3"]


def test_folder_is_npy_and_json_and_reloads_to_the_same_hits(corpus, tmp_path):
    out = tmp_path / "bm25"
    index = api.bm25_index(corpus, out, template="<title> <text>", column_names="id,title,text")
    names = set(os.listdir(out))
    assert {CONFIG_FILE, IDS_FILE, *BM25S_FILES[:5]} == names
    for name in names:
        if name.endswith(".npy"):
            np.load(out / name, allow_pickle=False)  # would raise on a pickled array
        elif name.endswith(".json"):
            json.loads((out / name).read_text())
    config = json.loads((out / CONFIG_FILE).read_text())
    assert config["settings"]["k1"] == 0.9 and config["settings"]["corpus"]["size"] == corpus.stat().st_size
    assert (out / IDS_FILE).read_text().split() == [row[0] for row in CORPUS]
    queries = {"q1": "dog park", "q2": "query terms passages"}
    assert api.bm25_search(out, queries) == api.bm25_search(index, queries)


def test_bm25_command_writes_a_run_and_reuses_its_index(corpus, tmp_path, capfd, caplog):
    queries = write_lines(tmp_path / "q.tsv", ["q1\trunning dogs", "q2\tsparse query terms", "q3\tnothing matches zzz"])
    out, run = tmp_path / "bm25", tmp_path / "run.trec"
    argv = ["--output_dir", out, "--corpus_path", corpus, "--doc_template", "<title> <text>", "--doc_column_names",
            "id,title,text", "--query_path", queries, "--query_column_names", "id,text", "--trec_save_path", run,
            "--retrieve_depth", "2"]
    assert_succeeded(run_command("bm25", argv, capfd))
    lines = run.read_text().splitlines()
    # q1 matches d4 only; q2 d2 (sparse, query, terms) before d1 ("queries" stems to "queri" too); q3 nothing.
    assert [line.split()[:4] for line in lines] == [["q1", "Q0", "d4", "1"], ["q2", "Q0", "d2", "1"], ["q2", "Q0", "d1", "2"]]
    assert all(line.split()[-1] == "BM25" for line in lines)
    expected = api.bm25_search(api.bm25_index(corpus, template="<title> <text>", column_names="id,title,text"),
                               queries, depth=2, column_names="id,text")
    # Scores in 9 significant digits: the float32 values exactly.
    assert [np.float32(line.split()[4]) for line in lines] == [np.float32(s) for hits in expected.values() for _, s in hits]

    stamps = {name: os.stat(out / name).st_mtime_ns for name in os.listdir(out)}
    caplog.clear()
    assert_succeeded(run_command("bm25", argv, capfd))
    assert "reusing the BM25 index" in caplog.text
    assert {name: os.stat(out / name).st_mtime_ns for name in os.listdir(out)} == stamps
    # --overwrite_output_dir rebuilds with the new settings.
    assert_succeeded(run_command("bm25", [*argv, "--k1", "1.2", "--overwrite_output_dir"], capfd))
    assert json.loads((out / CONFIG_FILE).read_text())["settings"]["k1"] == 1.2


# ----------------------------------------------------------------------------------- SciFact (real data)


def test_bm25_on_scifact_test_matches_the_known_figures(shared_data, tmp_path, capfd):
    """BEIR's SciFact BM25 reads 0.665 nDCG@10 (Anserini, flat); a plain lowercase word tokenizer with
    k1 0.9, b 0.4 about 0.66, and with stemming and stopwords more."""
    from openmatch.dataset.qrels import load_qrels, load_run
    from openmatch.evaluation import evaluate

    scifact = shared_data / "scifact"
    qrels = load_qrels(scifact / "qrels" / "test.tsv")
    run = tmp_path / "scifact.bm25.trec"
    outcome = run_command("bm25", ["--output_dir", tmp_path / "bm25", "--corpus_path", scifact / "corpus.jsonl.gz",
                                   "--doc_template", "<title> <text>", "--query_path", scifact / "queries.jsonl",
                                   "--trec_save_path", run, "--retrieve_depth", "100"], capfd)
    assert_succeeded(outcome)
    stemmed = evaluate(qrels, load_run(run), ["ndcg@10", "recall@100"])
    assert stemmed["ndcg@10"] == pytest.approx(0.6762, abs=5e-4)
    assert stemmed["recall@100"] == pytest.approx(0.9127, abs=5e-4)

    test_queries = {json.loads(line)["_id"]: json.loads(line)["text"] for line in (scifact / "queries.jsonl").open()}
    test_queries = {qid: text for qid, text in test_queries.items() if qid in qrels}
    plain = api.bm25_index(scifact / "corpus.jsonl.gz", template="<title> <text>", stemmer="none", stopwords="none")
    plain_run = {qid: dict(hits) for qid, hits in api.bm25_search(plain, test_queries, depth=100).items()}
    assert evaluate(qrels, plain_run, ["ndcg@10"])["ndcg@10"] == pytest.approx(0.6550, abs=5e-4)
