"""False-negative control in hard-negative mining (openmatch/negatives.py): the rank window, judged positives
and the margins, each removing known candidates of hand-built runs; positive scores from the run and from an
index's model; build_hn's diagnostics; build_train's negatives from BM25."""

from __future__ import annotations

import json
import logging
import math
import random

import numpy as np
import pytest

from openmatch import api
from openmatch.errors import InputError, UsageError
from openmatch.negatives import CandidateFilter, MiningOptions, mine
from openmatch.preprocessing import sample_negatives
from tests.tiny_models import synthetic_words

# --------------------------------------------------------------------------------------------- rules


# q1: one positive (0.85, rank 3). Window 2..7; relative threshold 0.85 - 0.05*0.85 = 0.8075; absolute 0.75.
Q1 = [("p1", 0.95), ("p2", 0.90), ("pos1", 0.85), ("p3", 0.84), ("p4", 0.80), ("p5", 0.70), ("p6", 0.50),
      ("p7", 0.40)]
# q2: two positives; pos2a in the run (0.6), pos2b not.
Q2 = [("a", 0.90), ("b", 0.70), ("pos2a", 0.60), ("c", 0.58), ("d", 0.30)]
RELEVANT = {"q1": ["pos1"], "q2": ["pos2a", "pos2b"], "q3": ["pos3"]}
Q3 = [("x", 0.9), ("y", 0.8)]  # its positive is nowhere in the run
QUERIES = {"q1": "first", "q2": "second", "q3": "third"}
OPTIONS = MiningOptions(depth=7, first_rank=2, relative_margin=0.05, absolute_margin=0.1)


def chunk():
    return [(1, "q1", list(Q1)), (9, "q2", list(Q2)), (14, "q3", list(Q3)), (16, "unjudged", [("z", 1.0)])]


def test_each_rule_removes_its_candidates():
    screen = CandidateFilter(OPTIONS)
    out = {qid: pids for _, qid, pids in screen(chunk(), QUERIES | {"unjudged": "u"}, RELEVANT)}
    # q1: p1 above --first_rank, p2 and p3 by the relative margin, pos1 judged, p4 (0.80: not above 0.8075, above
    # 0.75) by the absolute margin, p7 below --depth.
    assert out["q1"] == ["p5", "p6"]
    # q2: s+ is the positive in the run (0.6): a is rank 1, b and c above 0.57, d kept.
    assert out["q2"] == ["d"]
    # q3: no positive score, so only the window and the positives apply; unjudged queries pass the window only.
    assert out["q3"] == ["y"] and out["unjudged"] == []
    stats = screen.stats
    assert stats.removed == {"above_first_rank": 3, "below_depth": 1, "judged_positive": 2, "relative_margin": 4,
                             "absolute_margin": 1}
    assert (stats.queries, stats.hits, stats.kept) == (3, 15, 4)
    assert sum(stats.removed.values()) + stats.kept == stats.hits
    assert stats.positive_scores == {"from_run": 2, "computed": 0, "missing": 2}
    assert stats.queries_without_positive_score == 1 and stats.examples_without_positive_score == ["q3"]


def test_defaults_keep_todays_candidates():
    """Without flags: the top 200 minus judged positives, in rank order (what build_hn took before)."""
    screen = CandidateFilter(MiningOptions())
    out = {qid: pids for _, qid, pids in screen(chunk(), QUERIES, RELEVANT)}
    for qid, hits in (("q1", Q1), ("q2", Q2), ("q3", Q3)):
        assert out[qid] == [pid for pid, _ in hits if pid not in RELEVANT[qid]]
    assert screen.stats.removed["judged_positive"] == 2 and screen.stats.positive_scores["from_run"] == 0


class FakeScorer:
    """Stands in for IndexScorer: fixed scores per (qid, pid), recording what was asked."""

    def __init__(self, scores):
        self.scores, self.asked, self.prepared = scores, [], False

    def prepare(self, relevant):
        self.prepared = True

    def score(self, requests):
        self.asked += [(qid, pid) for qid, _, pids in requests for pid in pids]
        return {(qid, pid): self.scores[(qid, pid)] for qid, _, pids in requests for pid in pids if (qid, pid) in self.scores}


def test_the_lowest_positive_score_counts_and_missing_ones_are_computed():
    scorer = FakeScorer({("q2", "pos2b"): 0.2, ("q2", "pos2a"): 0.6, ("q1", "pos1"): 0.85, ("q3", "pos3"): 0.85})
    screen = CandidateFilter(OPTIONS, scorer)
    out = {qid: pids for _, qid, pids in screen(chunk(), QUERIES, RELEVANT)}
    # q2's s+ is now min(0.6, 0.2) = 0.2: thresholds 0.19 and 0.1, so b, c and d all go.
    assert out["q2"] == []
    # q3's positive scores 0.85 with the model: x is rank 1, y (0.8) above 0.75.
    assert out["q3"] == []
    assert screen.stats.positive_scores == {"from_run": 2, "computed": 2, "missing": 0}
    assert screen.stats.queries_without_candidates == 2 and screen.stats.queries_without_positive_score == 0
    # Positives missing from the run were computed; those in the run were computed once more, as a check only.
    assert {("q2", "pos2b"), ("q3", "pos3")} <= set(scorer.asked) and scorer.prepared


def test_a_run_of_another_retriever_is_refused_when_scores_are_computed():
    scorer = FakeScorer({("q1", "pos1"): 12.5, ("q2", "pos2a"): 0.6, ("q2", "pos2b"): 0.2, ("q3", "pos3"): 0.8})
    with pytest.raises(InputError, match="'q1' scores passage 'pos1' 0.85 in the run but 12.5"):
        CandidateFilter(OPTIONS, scorer, source="run.trec")(chunk(), QUERIES, RELEVANT)


@pytest.mark.parametrize("positive, relative, absolute, limit", [
    (0.8, 0.1, None, 0.72), (-2.0, 0.5, None, -3.0), (5.0, None, 1.5, 3.5), (5.0, 0.5, 1.0, 2.5), (5.0, 0.1, 1.0, 4.0),
    (1.0, None, None, math.inf),
])
def test_threshold(positive, relative, absolute, limit):
    options = MiningOptions(relative_margin=relative, absolute_margin=absolute)
    assert options.threshold(positive) == pytest.approx(limit)


@pytest.mark.parametrize("fields, flag", [
    ({"first_rank": 0}, "--first_rank"), ({"depth": 5, "first_rank": 6}, "--first_rank"), ({"depth": 0}, "--depth"),
    ({"relative_margin": 1.5}, "--relative_margin"), ({"relative_margin": float("nan")}, "--relative_margin"),
    ({"absolute_margin": -0.1}, "--absolute_margin"),
])
def test_bad_options(fields, flag):
    with pytest.raises(UsageError, match=flag):
        MiningOptions(**fields)


def test_mine_in_memory_matches_the_screen():
    negatives, stats = mine({qid: hits for qid, hits in (("q1", Q1), ("q2", Q2), ("q3", Q3))}, RELEVANT, OPTIONS)
    assert negatives == {"q1": ["p5", "p6"], "q2": ["d"], "q3": ["y"]}
    assert stats.removed["relative_margin"] == 4


# ------------------------------------------------------------------------- build_hn, tiny BERT, an index


@pytest.fixture(scope="module")
def tiny_collection(tiny_bert, tmp_path_factory):
    """30 passages of synthetic words, 4 queries (each the text of its positive), an index of the passages by a
    mean-pooling, normalising tiny BERT, and the model's run of the queries (depth 20)."""
    rng = random.Random(3)
    words = synthetic_words()
    root = tmp_path_factory.mktemp("negatives")
    passages = {f"d{i}": (" ".join(rng.choices(words, k=2)), " ".join(rng.choices(words, k=12))) for i in range(30)}
    (root / "corpus.tsv").write_text("".join(f"{pid}\t{title}\t{text}\n" for pid, (title, text) in passages.items()))
    positives = {f"q{i}": f"d{3 * i}" for i in range(4)}
    queries = {qid: passages[pid][1] for qid, pid in positives.items()}
    (root / "queries.tsv").write_text("".join(f"{qid}\t{text}\n" for qid, text in queries.items()))
    (root / "qrels.tsv").write_text("".join(f"{qid} 0 {pid} 1\n" for qid, pid in positives.items()))
    model, tokenizer = api.load_model(tiny_bert, pooling="mean", normalize=True)
    api.build_index(model, tokenizer, root / "corpus.tsv", root / "index", template="<title> <text>",
                    column_names="id,title,text", max_len=32, device="cpu", progress=False, model_path=str(tiny_bert))
    hits = api.retrieve(model, tokenizer, root / "queries.tsv", root / "index", template="<text>",
                        column_names="id,text", max_len=16, depth=20, device="cpu")
    return {"root": root, "passages": passages, "positives": positives, "queries": queries, "hits": hits,
            "model": model, "tokenizer": tokenizer, "tiny_bert": tiny_bert}


def write_run(path, hits):
    path.write_text("".join(f"{qid} Q0 {pid} {rank} {score:.9g} dense\n"
                            for qid, ranked in hits.items() for rank, (pid, score) in enumerate(ranked, 1)))
    return path


def build_hn_argv(data, run, save_to, *extra):
    root = data["root"]
    return ["--tokenizer_name", data["tiny_bert"], "--hn_file", run, "--qrels", root / "qrels.tsv",
            "--queries", root / "queries.tsv", "--collection", root / "corpus.tsv", "--save_to", save_to,
            "--doc_template", "<title> <text>", "--q_max_len", "16", "--n_sample", "100", *extra]


def run_build_hn(argv):
    from openmatch.cli import run
    from openmatch.driver import build_hn

    return run(build_hn.main, [str(a) for a in argv])


def negatives_written(data, save_to) -> dict[str, set[str]]:
    """Each query's negatives in the output, mapped back to passage ids through their token ids."""
    tokenizer = data["tokenizer"]
    by_tokens = {}
    for pid, (title, text) in data["passages"].items():
        ids = tokenizer(f"{title} {text}", add_special_tokens=False, truncation=True, max_length=128)["input_ids"]
        by_tokens[tuple(ids)] = pid
    query_of = {}
    for qid, text in data["queries"].items():
        query_of[tuple(tokenizer(text, add_special_tokens=False, truncation=True, max_length=16)["input_ids"])] = qid
    out = {}
    for path in sorted(save_to.glob("split*.hn.jsonl")):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            out[query_of[tuple(record["query"])]] = {by_tokens[tuple(n)] for n in record["negatives"]}
    return out


def split_margin(positive: float, scores: list[float]) -> float:
    """An absolute margin whose threshold lies halfway between two neighbouring candidate scores near their
    middle, so that rounding can never move a candidate across it."""
    ordered = sorted(scores)
    k = len(ordered) // 2
    return positive - (ordered[k - 1] + ordered[k]) / 2


def test_build_hn_margin_with_positive_scores_from_the_index(tiny_collection, tmp_path, caplog):
    """The run lacks every positive (as when it lies below the retrieved depth): their scores are computed
    with --index_dir's model and equal query·passage of independently encoded texts."""
    data = tiny_collection
    model, tokenizer = data["model"], data["tokenizer"]
    hits = {qid: [(pid, s) for pid, s in ranked if pid != data["positives"][qid]] for qid, ranked in data["hits"].items()}
    run = write_run(tmp_path / "run.trec", hits)
    qids = list(data["queries"])
    q = api.encode(model, tokenizer, [data["queries"][qid] for qid in qids], max_len=16, side="query", device="cpu")
    p = api.encode(model, tokenizer, [" ".join(data["passages"][data["positives"][qid]]) for qid in qids], max_len=32,
                   device="cpu")
    positive = dict(zip(qids, (q * p).sum(axis=1).tolist()))
    # One absolute margin for all: halfway between neighbours of q0's candidate scores.
    margin = split_margin(positive["q0"], [s for _, s in hits["q0"]])
    assert margin > 0
    expected = {qid: {pid for pid, s in ranked if s <= positive[qid] - margin} for qid, ranked in hits.items()}
    removed = sum(len(ranked) - len(expected[qid]) for qid, ranked in hits.items())
    assert 0 < removed < sum(len(r) for r in hits.values())  # the rule has something to remove and to keep
    save_to = tmp_path / "out"
    with caplog.at_level(logging.INFO):
        assert run_build_hn(build_hn_argv(data, run, save_to, "--absolute_margin", f"{margin!r}", "--index_dir",
                                          data["root"] / "index")) == 0
    got = negatives_written(data, save_to)
    assert {qid: got.get(qid, set()) for qid in expected} == expected
    stats = json.loads((save_to / "build_hn.stats.json").read_text())
    assert stats["positive_scores"] == {"from_run": 0, "computed": 4, "missing": 0}
    assert stats["removed"]["absolute_margin"] == removed and stats["removed"]["judged_positive"] == 0
    assert stats["settings"]["absolute_margin"] == margin and stats["settings"]["index_dir"] == str(data["root"] / "index")
    assert f"{removed} by --absolute_margin" in caplog.text and "judged queries; removed 0 above --first_rank" in caplog.text


def test_build_hn_margin_with_positive_scores_from_the_run(tiny_collection, tmp_path):
    """Positives the run lists, even below --depth, give s+ from the run itself (no model needed); the
    relative margin and the rank window apply together."""
    data = tiny_collection
    hits = data["hits"]
    depth, first_rank = 12, 2
    positive = {qid: dict(ranked)[data["positives"][qid]] for qid, ranked in hits.items()}
    window = {qid: [(pid, s) for pid, s in ranked[first_rank - 1 : depth] if pid != data["positives"][qid]]
              for qid, ranked in hits.items()}
    # A relative margin halfway between neighbours of q1's candidate scores (its positive scores above them all).
    scores = sorted(s for _, s in window["q1"])
    k = len(scores) // 2
    relative = 1 - (scores[k - 1] + scores[k]) / 2 / positive["q1"]
    assert 0 < relative < 1 and all(v > 0 for v in positive.values())
    expected = {qid: {pid for pid, s in ranked if s <= positive[qid] * (1 - relative)} for qid, ranked in window.items()}
    save_to = tmp_path / "out"
    argv = build_hn_argv(data, write_run(tmp_path / "run.trec", hits), save_to, "--relative_margin", f"{relative!r}",
                         "--depth", depth, "--first_rank", first_rank)
    assert run_build_hn(argv) == 0
    got = negatives_written(data, save_to)
    assert {qid: got.get(qid, set()) for qid in expected} == expected
    stats = json.loads((save_to / "build_hn.stats.json").read_text())
    assert stats["positive_scores"] == {"from_run": 4, "computed": 0, "missing": 0}
    assert stats["removed"]["above_first_rank"] == 4 and stats["removed"]["below_depth"] == 4 * (20 - depth)
    assert stats["removed"]["relative_margin"] == sum(len(window[q]) - len(expected[q]) for q in window)


def test_api_mine_negatives_computes_missing_positive_scores(tiny_collection):
    data = tiny_collection
    hits = {qid: [(pid, s) for pid, s in ranked if pid != data["positives"][qid]] for qid, ranked in data["hits"].items()}
    negatives, stats = api.mine_negatives(hits, data["root"] / "qrels.tsv", absolute_margin=0.0,
                                          index_dir=data["root"] / "index", queries=data["queries"], q_max_len=16)
    assert stats["positive_scores"]["computed"] == 4 and set(negatives) == set(hits)
    model, tokenizer = data["model"], data["tokenizer"]
    for qid, ranked in hits.items():
        q = api.encode(model, tokenizer, [data["queries"][qid]], max_len=16, side="query", device="cpu")[0]
        p = api.encode(model, tokenizer, [" ".join(data["passages"][data["positives"][qid]])], max_len=32, device="cpu")[0]
        assert negatives[qid] == [pid for pid, s in ranked if s <= float(q @ p)]


@pytest.mark.parametrize("folder", ["plain", "checkpoint"])
def test_load_index_model_is_the_index_model(folder, tiny_collection, tmp_path):
    """A plain Hugging Face folder gets the manifest's pooling and normalisation; a checkpoint folder decides
    its own architecture. Either way the query encoder is the index's model."""
    data = tiny_collection
    index = data["root"] / "index"
    if folder == "checkpoint":
        data["model"].save(tmp_path / "ckpt", tokenizer=data["tokenizer"])
        index = tmp_path / "index"
        api.build_index(data["model"], data["tokenizer"], data["root"] / "corpus.tsv", index, template="<title> <text>",
                        column_names="id,title,text", max_len=32, device="cpu", progress=False,
                        model_path=str(tmp_path / "ckpt"))
    model, tokenizer = api.load_index_model(index)
    assert (model.config.pooling, model.config.normalize) == ("mean", True)
    texts = list(data["queries"].values())
    np.testing.assert_allclose(api.encode(model, tokenizer, texts, max_len=16, side="query", device="cpu"),
                               api.encode(data["model"], tokenizer, texts, max_len=16, side="query", device="cpu"), atol=1e-6)


# ------------------------------------------------------------------------------- build_train from BM25


def run_build_train(argv):
    from openmatch.cli import run
    from openmatch.driver import build_train

    return run(build_train.main, [str(a) for a in argv])


def test_build_train_negatives_from_bm25(tiny_collection, tmp_path, caplog):
    """No negatives file: BM25 over the collection gives each judged query its top --depth minus positives,
    the same draw build_hn makes from a run."""
    data = tiny_collection
    root = data["root"]
    save_to = tmp_path / "out"
    argv = ["--tokenizer_name", data["tiny_bert"], "--negatives_from", "bm25", "--qrels", root / "qrels.tsv",
            "--queries", root / "queries.tsv", "--collection", root / "corpus.tsv", "--save_to", save_to,
            "--doc_template", "<title> <text>", "--q_max_len", "16", "--depth", "8", "--n_sample", "5"]
    with caplog.at_level(logging.INFO):
        assert run_build_train(argv) == 0
    assert sorted(p.name for p in save_to.iterdir()) == ["bm25.train.trec", "build_train.stats.json", "split00.jsonl"]
    bm25 = api.bm25_index(root / "corpus.tsv", column_names="id,title,text", template="<title> <text>")
    expected_hits = api.bm25_search(bm25, data["queries"], depth=8)
    tokenizer = data["tokenizer"]
    lines = [json.loads(line) for line in (save_to / "split00.jsonl").read_text().splitlines()]
    assert len(lines) == len(data["queries"])
    for qid, line in zip(data["queries"], lines):
        pool = [pid for pid, _ in expected_hits[qid] if pid != data["positives"][qid]]
        drawn = sample_negatives(qid, pool, 42, 5)
        texts = [" ".join(data["passages"][pid]) for pid in drawn]
        assert line["negatives"] == tokenizer(texts, add_special_tokens=False, truncation=True, max_length=128)["input_ids"]
    stats = json.loads((save_to / "build_train.stats.json").read_text())
    assert stats["queries"] == 4 and stats["removed"]["judged_positive"] == sum(
        data["positives"][q] in dict(h) for q, h in expected_hits.items())
    assert "wrote the BM25 run of 4 judged queries" in caplog.text


def test_build_train_bm25_on_scifact_beir_layout(shared_data, minilm_path, tmp_path):
    """SciFact in BEIR layout (no triples file): a line for every training query with a positive."""
    scifact = shared_data / "scifact"
    if not (scifact / "corpus.jsonl.gz").exists():
        pytest.skip(f"{scifact} not found")
    save_to = tmp_path / "out"
    argv = ["--tokenizer_name", minilm_path, "--negatives_from", "bm25", "--qrels", scifact / "qrels" / "train.tsv",
            "--queries", scifact / "queries.jsonl", "--collection", scifact / "corpus.jsonl.gz", "--save_to", save_to,
            "--doc_template", "Title: <title> Text: <text>", "--depth", "100", "--first_rank", "4"]
    assert run_build_train(argv) == 0
    positives = {}
    for line in (scifact / "qrels" / "train.tsv").read_text().splitlines()[1:]:
        qid, pid, rel = line.split("\t")
        if int(rel) > 0:
            positives.setdefault(qid, set()).add(pid)
    lines = (save_to / "split00.jsonl").read_text().splitlines()
    assert len(lines) == len(positives) == 809
    # Each line draws 30 negatives, or every candidate of a query BM25 matched few passages for.
    candidates = {}
    for line in (save_to / "bm25.train.trec").read_text().splitlines():
        qid, _, pid, rank, _, _ = line.split()
        candidates[qid] = candidates.get(qid, 0) + (int(rank) >= 4 and pid not in positives[qid])
    qids = [qid for qid in candidates]  # the run and the output follow the qrels' query order
    assert [len(json.loads(line)["negatives"]) for line in lines] == [min(30, candidates[q]) for q in qids]
    stats = json.loads((save_to / "build_train.stats.json").read_text())
    assert stats["queries"] == 809 and stats["removed"]["above_first_rank"] == 3 * 809
