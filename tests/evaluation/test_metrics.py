"""Metrics against independent implementations — pytrec_eval (trec_eval's C code), ir_measures (its
pytrec_eval provider averages like ``trec_eval -c``; its MS MARCO provider is ``msmarco_eval.py``) and a
naive full-sort reference — always on the unfiltered qrels and run; the evaluate driver as a subprocess."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys

import ir_measures
import numpy as np
import pytest
import pytrec_eval

from openmatch.dataset.qrels import load_qrels, write_trec_run
from openmatch.evaluation import (
    evaluate,
    evaluate_rankings,
    evaluate_scores,
    mean_over_queries,
    parse_metric,
    rank_scores,
)

from tests import REPO

# our name -> trec_eval measure as pytrec_eval is asked for it (its result key has "_" for "."); mrr@k
# (MS MARCO's) has none: the naive reference and ir_measures' MS MARCO provider check it.
TREC = {"mrr": "recip_rank", "recall@100": "recall.100", "recall@5": "recall.5", "ndcg@10": "ndcg_cut.10",
        "ndcg@3": "ndcg_cut.3", "ndcg": "ndcg", "map": "map", "map@5": "map_cut.5", "precision@5": "P.5",
        "precision@20": "P.20"}
ALL = ["mrr@10", "mrr@3", *TREC]


def trec_eval_values(qrels, run, names):
    """pytrec_eval's per-query values, for the queries it reports (those of both the qrels and the run)."""
    raw = pytrec_eval.RelevanceEvaluator(qrels, {TREC[n] for n in names if n in TREC}).evaluate(run)
    return {n: {qid: row[TREC[n].replace(".", "_")] for qid, row in raw.items()} for n in names if n in TREC}


def naive(qrels, run, name):
    """``{qid: value}`` for every query of the qrels: full sort in trec_eval's order (score as float32
    descending, then pid descending), textbook formulas, 0 without a relevant passage or without hits."""
    metric = parse_metric(name)
    values = {}
    for qid, rels in qrels.items():
        ranked = [pid for pid, _ in sorted(run.get(qid, {}).items(), key=lambda x: (np.float32(x[1]), x[0]), reverse=True)]
        k = metric.k or len(ranked)
        top = ranked[:k]
        relevant = {pid for pid, rel in rels.items() if rel > 0}
        if not relevant:
            values[qid] = 0.0
        elif metric.family == "mrr":
            values[qid] = next((1 / i for i, pid in enumerate(top, 1) if pid in relevant), 0.0)
        elif metric.family == "recall":
            values[qid] = len(relevant & set(top)) / len(relevant)
        elif metric.family == "precision":
            values[qid] = len(relevant & set(top)) / metric.k
        elif metric.family == "map":
            hits, total = 0, 0.0
            for i, pid in enumerate(top, 1):
                if pid in relevant:
                    hits += 1
                    total += hits / i
            values[qid] = total / len(relevant)
        elif metric.family == "ndcg":
            dcg = sum(max(rels.get(pid, 0), 0) / math.log2(i + 1) for i, pid in enumerate(top, 1))
            ideal = sorted((r for r in rels.values() if r > 0), reverse=True)[: metric.k or None]
            values[qid] = dcg / sum(g / math.log2(i + 1) for i, g in enumerate(ideal, 1))
    return values


def assert_all_agree(qrels, run, names=ALL):
    """Ours equals trec_eval on every query trec_eval reports, every other query of the qrels scores 0
    (``trec_eval -c``), and the naive reference agrees everywhere; nothing filters the reference input."""
    ours = evaluate(qrels, run, names, per_query=True)
    reference = trec_eval_values(qrels, run, names)
    for name in names:
        assert list(ours[name]) == list(qrels), name  # every query of the qrels, in qrels order
        for qid, value in reference.get(name, {}).items():
            assert ours[name][qid] == pytest.approx(value, abs=1e-9), (name, qid)
        assert ours[name] == pytest.approx(naive(qrels, run, name), abs=1e-12), name
        for qid in qrels.keys() - run.keys():
            assert ours[name][qid] == 0.0, (name, qid)
        if name in reference:  # the mean of trec_eval -c: its values summed over the qrels' query count
            assert mean_over_queries(ours)[name] == pytest.approx(sum(reference[name].values()) / len(qrels), abs=1e-12)
    return ours


# ---------------------------------------------------------------------------------------------- hand-built cases

TRICKY_QRELS = {
    "tie": {"a": 1, "c": 2, "b": 0},  # ties broken by pid descending: d, c, b, a
    "graded": {"p1": 3, "p2": 1, "p3": 2, "p9": 2},  # p9 never retrieved: in the ideal ranking only
    "absent": {"x": 1},  # judged, not in the run: 0 everywhere (trec_eval -c)
    "zeros": {"z": 0, "y": 0},  # judgments all 0, retrieved: trec_eval reports it, 0 everywhere
    "zeros-absent": {"w": 0},  # judgments all 0, not in the run: 0 everywhere (trec_eval -c)
    "short": {"s2": 1, "s5": 1},  # run shorter than the cutoffs
    "late": {"l12": 1},  # relevant at rank 12: RR counts it, RR@10 does not
}
TRICKY_RUN = {
    "tie": {"a": 1.0, "b": 1.0, "c": 1.0, "d": 1.0},
    "graded": {"p2": 9.0, "p1": 8.0, "n1": 7.0, "p3": 7.0, "n2": 1.0},
    "zeros": {"z": 5.0, "y": 4.0},
    "short": {"s1": 3.0, "s2": 2.0},
    "late": {f"l{i}": 100.0 - i for i in range(1, 30)},
    "unjudged": {"u": 1.0},  # not in the qrels: ignored
}


def test_tricky_cases_match_trec_eval_and_naive():
    ours = assert_all_agree(TRICKY_QRELS, TRICKY_RUN)
    assert list(ours["mrr@10"]) == list(TRICKY_QRELS)  # all-0 queries included, the run-only one not
    assert ours["mrr@10"]["tie"] == 0.5  # c ranks second under trec_eval's tie rule
    assert ours["mrr"]["late"] == pytest.approx(1 / 12) and ours["mrr@10"]["late"] == 0.0
    assert ours["precision@20"]["short"] == 1 / 20 and ours["recall@100"]["short"] == 0.5
    assert all(values[qid] == 0.0 for values in ours.values() for qid in ("absent", "zeros", "zeros-absent"))


def test_queries_judged_all_zero_count_like_trec_eval_c():
    # trec_eval -c and ir_measures average over every query of the qrels, also those with judgments of 0 only.
    qrels = {"q1": {"a": 1}, "q2": {"b": 0}, "q3": {"c": 0}}
    run = {"q1": {"a": 2.0, "b": 1.0}, "q2": {"b": 2.0, "a": 1.0}}
    names = ["mrr@10", "mrr", "recall@5", "ndcg@10", "map", "precision@5"]
    ours = evaluate(qrels, run, names)
    reference = ir_measures.pytrec_eval.calc_aggregate(
        [ir_measures.RR, ir_measures.R @ 5, ir_measures.nDCG @ 10, ir_measures.AP, ir_measures.P @ 5], qrels, run
    )
    assert ours == pytest.approx({"mrr@10": 1 / 3, "mrr": 1 / 3, "recall@5": 1 / 3, "ndcg@10": 1 / 3, "map": 1 / 3,
                                  "precision@5": 1 / 15}, abs=1e-12)
    measure_of = {"mrr": ir_measures.RR, "recall@5": ir_measures.R @ 5, "ndcg@10": ir_measures.nDCG @ 10,
                  "map": ir_measures.AP, "precision@5": ir_measures.P @ 5}
    assert {n: reference[m] for n, m in measure_of.items()} == pytest.approx({n: ours[n] for n in measure_of}, abs=1e-12)
    assert ours["mrr@10"] == pytest.approx(ir_measures.msmarco.calc_aggregate([ir_measures.RR @ 10], qrels, run)[ir_measures.RR @ 10])
    # qrels without any relevant passage: every query scores 0, as in trec_eval (a warning, not an error)
    none_relevant = {"q2": {"b": 0}}
    assert evaluate(none_relevant, run, names) == {name: 0.0 for name in names}
    assert pytrec_eval.RelevanceEvaluator(none_relevant, {"recip_rank", "ndcg"}).evaluate(run) == {"q2": {"recip_rank": 0.0, "ndcg": 0.0}}


def test_trec_eval_tie_order_is_pid_descending():
    qrels = {"q": {"10": 1}}
    # '9' > '10' > '1' as strings: the relevant '10' ranks second among the three tied passages.
    run = {"q": {"1": 0.5, "10": 0.5, "9": 0.5}}
    assert evaluate(qrels, run, ["mrr"])["mrr"] == 0.5
    assert pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(run)["q"]["recip_rank"] == 0.5


def test_scores_tie_in_single_precision_like_trec_eval():
    # Distinct doubles, equal as float32 (trec_eval stores scores as C float): a tie, broken by pid descending.
    qrels = {"463373": {"7416571": 1}}
    run = {"463373": {"3008108": 0.6744150775358865, "2914084": 0.6732905532711495, "7416571": 0.6732905217534942}}
    assert evaluate(qrels, run, ["mrr"])["mrr"] == 0.5
    assert pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(run)["463373"]["recip_rank"] == 0.5


def test_random_runs_with_many_ties():
    rng = random.Random(7)
    qrels, run = {}, {}
    for q in range(60):
        qid = f"q{q}"
        qrels[qid] = {f"d{rng.randrange(40)}": rng.choice([0, 1, 1, 2, 3]) for _ in range(rng.randint(1, 8))}
        if q % 7 == 0:
            continue  # judged but absent
        run[qid] = {f"d{rng.randrange(40)}": float(rng.randint(0, 5)) for _ in range(rng.randint(1, 30))}
    assert_all_agree(qrels, run)
    # The explicit-order and score-matrix paths agree with the score path under the same tie rule.
    ranked = {qid: [pid for pid, _ in sorted(h.items(), key=lambda x: (x[1], x[0]), reverse=True)] for qid, h in run.items()}
    assert evaluate_rankings(ranked, qrels, ALL) == evaluate(qrels, run, ALL)
    pids = [f"d{i}" for i in range(40)]
    qids = sorted(run)
    matrix = np.full((len(qids), len(pids)), -1e9)
    for row, qid in enumerate(qids):
        for pid, score in run[qid].items():
            matrix[row, pids.index(pid)] = score
    full = {qid: {pid: float(matrix[row, j]) for j, pid in enumerate(pids)} for row, qid in enumerate(qids)}
    assert evaluate_scores(matrix, qids, pids, qrels, ALL) == pytest.approx(evaluate(qrels, full, ALL), abs=1e-12)
    top5 = rank_scores(matrix, qids, pids, depth=5)
    assert all(top5[qid] == evaluate_ranked[:5] for qid, evaluate_ranked in rank_scores(matrix, qids, pids).items())


def test_errors():
    with pytest.raises(ValueError, match="unknown metric"):
        parse_metric("mrr10x")
    with pytest.raises(ValueError, match="needs a cutoff"):
        parse_metric("recall")
    assert parse_metric("RR@10").name == "mrr@10" and parse_metric("nDCG@10").name == "ndcg@10"
    assert parse_metric("AP").name == "map" and parse_metric("recall_100").name == "recall@100"
    with pytest.raises(ValueError, match="share no query"):
        evaluate({"q1": {"a": 1}}, {"q2": {"a": 1.0}})
    with pytest.raises(ValueError, match="no judgment"):
        evaluate({"q1": {}}, {"q1": {"a": 1.0}})
    with pytest.raises(ValueError, match="twice"):
        evaluate_rankings({"q1": ["a", "a"]}, {"q1": {"a": 1}})
    with pytest.raises(ValueError, match="'q1': the run holds a NaN"):
        evaluate({"q1": {"a": 1}}, {"q1": {"a": 1.0, "b": float("nan")}})


def test_ids_and_scores_of_other_types():
    # pytrec_eval takes only str ids and Python floats: numpy or int scores, int ids are converted.
    qrels = {1: {2: 1, 3: 2}}
    expected = evaluate({"1": {"2": 1, "3": 2}}, {"1": {"3": 0.5, "4": 0.75, "2": 0.25}}, ALL)
    assert evaluate(qrels, {1: {3: np.float32(0.5), "4": 0.75, 2: np.float16(0.25)}}, ALL) == expected
    assert evaluate(qrels, {"1": {"3": 2, "4": 3, "2": 1}}, ALL) == expected
    assert evaluate_rankings({1: [4, 3, 2]}, qrels, ALL) == expected


# ---------------------------------------------------------------------------------------------- real qrels


def random_run(qrels, hits, seed, drop_every=0, id_space=9_000_000):
    """Deterministic random run: random passages plus the judged ones at random ranks (some beyond the
    depth, so they are missed); every ``drop_every``-th query of the qrels is left out. Scores are distinct
    even in float32, so tie rules (ir_measures' MS MARCO provider breaks ties unlike trec_eval) do not matter."""
    rng = np.random.default_rng(seed)
    scores = (np.arange(hits, 0, -1) / hits).tolist()
    run = {}
    for index, (qid, judged) in enumerate(sorted(qrels.items())):
        if drop_every and index % drop_every == 0:
            continue
        pids = [str(p) for p in rng.integers(0, id_space, hits)]
        for pid in judged:
            position = int(rng.integers(0, int(hits * 1.3)))
            if position < hits:
                pids[position] = pid
        run[qid] = dict(zip(pids, scores))  # a duplicate pid keeps its later (lower) score
    return run


def assert_ir_measures_agree(qrels, run, ours):
    """Means over every query of the qrels: ir_measures' pytrec_eval provider (trec_eval -c) for the
    trec_eval measures, its MS MARCO provider (``msmarco_eval.py``) per query for ``mrr@10``."""
    measures = {"mrr": ir_measures.RR, "recall@100": ir_measures.R @ 100, "ndcg@10": ir_measures.nDCG @ 10,
                "map": ir_measures.AP, "precision@5": ir_measures.P @ 5}
    agg = ir_measures.pytrec_eval.calc_aggregate(list(measures.values()), qrels, run)
    for name, measure in measures.items():
        assert mean_over_queries(ours)[name] == pytest.approx(agg[measure], abs=1e-12), name
    official = {m.query_id: m.value for m in ir_measures.msmarco.iter_calc([ir_measures.RR @ 10], qrels, run)}
    assert official.keys() == ours["mrr@10"].keys()
    assert ours["mrr@10"] == pytest.approx(official, abs=1e-12)


def test_msmarco_dev_small_against_trec_eval_and_ir_measures(shared_data):
    qrels = load_qrels(shared_data / "msmarco-dev-small" / "qrels.dev.small.trec.txt")
    assert len(qrels) == 6980 and sum(map(len, qrels.values())) == 7437
    # 200 hits per query (1.4M) keeps the test fast; relevant passages land anywhere in 1..260.
    run = random_run(qrels, hits=200, seed=0, drop_every=50)
    names = ["mrr@10", "mrr", "recall@100", "ndcg@10", "map", "precision@5"]
    ours = evaluate(qrels, run, names, per_query=True)
    for name, values in trec_eval_values(qrels, run, names).items():
        assert len(values) == len(run) and {q: ours[name][q] for q in values} == pytest.approx(values, abs=1e-12), name
    assert_ir_measures_agree(qrels, run, ours)
    # trec_eval without -c averages over the queries of the run only, and its recip_rank is uncut: both
    # differ from the official MRR@10, measurably so on this run.
    trec = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(run)
    trec_mean = sum(row["recip_rank"] for row in trec.values()) / len(trec)
    assert len(trec) == len(run) < len(qrels)
    assert abs(trec_mean - mean_over_queries(ours)["mrr@10"]) > 1e-4
    missing = [qid for qid in qrels if qid not in run]
    assert len(ours["mrr@10"]) == 6980 and all(ours[name][qid] == 0.0 for name in names for qid in missing)


def test_scifact_test_qrels(shared_data):
    qrels = load_qrels(shared_data / "scifact" / "qrels" / "test.tsv")
    assert len(qrels) == 300 and sum(map(len, qrels.values())) == 339
    run = random_run(qrels, hits=1000, seed=1, drop_every=17, id_space=50_000_000)
    names = ["mrr@10", "mrr", "recall@100", "ndcg@10", "map", "map@5", "precision@5"]
    assert_ir_measures_agree(qrels, run, assert_all_agree(qrels, run, names))


def test_graded_qrels_with_all_zero_queries(shared_data):
    # SciFact's qrels made graded, with judgments of 0 (retrieved and not) and queries judged all 0, some
    # of them retrieved, some missing from the run: the files trec_eval handles and our filter used to drop.
    qrels = load_qrels(shared_data / "scifact" / "qrels" / "test.tsv")
    rng = np.random.default_rng(3)
    for index, qid in enumerate(sorted(qrels)):
        judged = qrels[qid]
        if index % 5 == 0:
            qrels[qid] = {pid: 0 for pid in judged}
        else:
            qrels[qid] = {pid: int(rng.integers(1, 4)) for pid in judged}
            qrels[qid][f"nonrel{index}"] = 0
    run = random_run(qrels, hits=300, seed=2, drop_every=11, id_space=50_000_000)
    zero_qids = [qid for qid, judged in qrels.items() if not any(judged.values())]
    assert len(zero_qids) == 60 and any(q in run for q in zero_qids) and any(q not in run for q in zero_qids)
    names = ["mrr@10", "mrr", "recall@100", "ndcg@10", "ndcg", "map", "map@5", "precision@5"]
    ours = assert_all_agree(qrels, run, names)
    assert_ir_measures_agree(qrels, run, ours)
    assert all(ours[name][qid] == 0.0 for name in names for qid in zero_qids)


# ---------------------------------------------------------------------------------------------- driver


def run_driver(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "openmatch.driver.evaluate", *map(str, args)],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=120,
    )


def test_driver_prints_and_writes_metrics(tmp_path):
    qrels_path = tmp_path / "qrels.tsv"
    qrels_path.write_text("".join(f"{q}\t0\t{p}\t{r}\n" for q, judged in TRICKY_QRELS.items() for p, r in judged.items()))
    run_path = tmp_path / "run.trec"
    results = [(qid, sorted(hits.items(), key=lambda x: (x[1], x[0]), reverse=True)) for qid, hits in TRICKY_RUN.items()]
    write_trec_run(run_path, results)
    out = tmp_path / "out" / "metrics.json"
    proc = run_driver("--qrels", qrels_path, "--run", run_path, "--metrics", "mrr@10,ndcg@10,map", "--per_query", "--output", out)
    assert proc.returncode == 0, proc.stderr
    expected = evaluate(TRICKY_QRELS, TRICKY_RUN, ["mrr@10", "ndcg@10", "map"], per_query=True)
    lines = [line.split("\t") for line in proc.stdout.splitlines() if line.count("\t") == 2]
    assert len(lines) == 3 * 7 and {qid for _, qid, _ in lines} == set(TRICKY_QRELS)
    for name, qid, value in lines:
        assert float(value) == pytest.approx(expected[name][qid], abs=5e-5)
    table = {line.split()[0]: float(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith(("mrr@10 ", "ndcg@10 ", "map "))}
    means = mean_over_queries(expected)
    assert table == pytest.approx(means, abs=5e-5)
    saved = json.loads(out.read_text())
    assert saved["metrics"] == pytest.approx(means, abs=1e-12)
    assert saved["num_judged_queries"] == 7 and saved["num_judged_missing_from_run"] == 2
    assert "over 7 judged queries" in proc.stdout
    assert "2 judged queries have no relevant passage and score 0" in proc.stdout


def test_driver_errors_are_one_line(tmp_path, capsys):
    qrels_path = tmp_path / "qrels.txt"
    qrels_path.write_text("q1 0 a 1\n")
    bad = tmp_path / "bad.trec"
    bad.write_text("q1 Q0 a 1 2.0 r\nq1 Q0 b 2 1.0\n")
    proc = run_driver("--qrels", qrels_path, "--run", bad)
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: {bad}:2: a TREC run line has 6 columns (qid Q0 pid rank score run), found 5"
    other = tmp_path / "other.trec"
    other.write_text("q9 Q0 a 1 2.0 r\n")
    # The other error paths in-process (each subprocess pays the package import).
    from openmatch.driver.evaluate import main

    for argv, message in [
        (["--qrels", qrels_path, "--run", other], "share no query"),
        (["--qrels", tmp_path / "nope.txt", "--run", other], "nope.txt: no such file"),
        (["--qrels", qrels_path, "--run", other, "--metrics", "mrr@10,bogus"], "unknown metric 'bogus'"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main([str(a) for a in argv])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.startswith("error: ") and message in err
        assert len(err.strip().splitlines()) == 1


def test_driver_compares_named_runs(tmp_path, capsys):
    from openmatch.driver.evaluate import main

    qrels_path = tmp_path / "qrels.tsv"
    qrels_path.write_text("".join(f"{q}\t0\t{p}\t{r}\n" for q, judged in TRICKY_QRELS.items() for p, r in judged.items()))
    good, reversed_run = tmp_path / "good.trec", tmp_path / "reversed.trec"
    write_trec_run(good, [(q, sorted(h.items(), key=lambda x: (x[1], x[0]), reverse=True)) for q, h in TRICKY_RUN.items()])
    flipped = {q: {p: -s for p, s in hits.items()} for q, hits in TRICKY_RUN.items()}
    write_trec_run(reversed_run, [(q, sorted(h.items(), key=lambda x: (x[1], x[0]), reverse=True)) for q, h in flipped.items()])
    out = tmp_path / "cmp.json"
    assert main(["--qrels", str(qrels_path), "--run", f"a={good}", f"b={reversed_run}", "--metrics", "mrr@10,ndcg@10", "--output", str(out)]) == 0
    rows = {line.split()[0]: [float(v) for v in line.split()[1:]] for line in capsys.readouterr().out.splitlines() if line.startswith(("a ", "b "))}
    saved = json.loads(out.read_text())["runs"]
    for name, run in (("a", TRICKY_RUN), ("b", flipped)):
        expected = evaluate(TRICKY_QRELS, run, ["mrr@10", "ndcg@10"])
        assert rows[name] == pytest.approx([expected["mrr@10"], expected["ndcg@10"]], abs=5e-5)
        assert saved[name]["metrics"] == pytest.approx(expected, abs=1e-12)
    assert rows["a"] != rows["b"]


def test_driver_takes_metrics_comma_or_space_separated(tmp_path, capsys):
    from openmatch.driver import evaluate as evaluate_driver

    qrels_path = tmp_path / "qrels.tsv"
    qrels_path.write_text("".join(f"{q}\t0\t{p}\t{r}\n" for q, judged in TRICKY_QRELS.items() for p, r in judged.items()))
    run_path = tmp_path / "run.trec"
    write_trec_run(run_path, [(qid, sorted(hits.items(), key=lambda x: -x[1])) for qid, hits in TRICKY_RUN.items()])
    outputs = []
    for metrics in (["mrr@10,ndcg@10"], ["mrr@10", "ndcg@10"], ["mrr@10,", "ndcg@10"]):
        out = tmp_path / f"m{len(outputs)}.json"
        assert evaluate_driver.main(["--qrels", str(qrels_path), "--run", str(run_path), "--metrics", *metrics, "--output", str(out)]) == 0
        outputs.append(json.loads(out.read_text())["metrics"])
    assert outputs[0] == outputs[1] == outputs[2] and list(outputs[0]) == ["mrr@10", "ndcg@10"]
