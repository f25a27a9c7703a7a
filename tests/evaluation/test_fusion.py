"""Run fusion: reciprocal rank fusion and normalised score interpolation against hand-computed values and an
independent (plain Python) computation; the fuse command writes what evaluation reads back in the same order."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from openmatch.evaluation.fusion import interpolate, order_hits, reciprocal_rank_fusion

A = {"q1": {"d1": 3.0, "d2": 2.0, "d3": 1.0}}
B = {"q1": {"d3": 5.0, "d4": 4.0, "d1": 3.0}, "q2": {"d9": 1.0}}


def test_rrf_hand_computed_with_ties_broken_by_passage_id():
    fused = reciprocal_rank_fusion([A, B])
    # d1: ranks 1 and 3; d3: ranks 3 and 1 -> equal; d2 and d4: rank 2 in one run each -> equal.
    assert fused["q1"] == [("d3", 1 / 63 + 1 / 61), ("d1", 1 / 61 + 1 / 63), ("d4", 1 / 62), ("d2", 1 / 62)]
    assert fused["q2"] == [("d9", 1 / 61)]  # a query of one run only is kept
    assert list(fused) == ["q1", "q2"]
    weighted = reciprocal_rank_fusion([A, B], k=0, weights=[2, 1])
    assert dict(weighted["q1"]) == pytest.approx({"d1": 2 / 1 + 1 / 3, "d2": 2 / 2, "d3": 2 / 3 + 1 / 1, "d4": 1 / 2})
    assert [pid for pid, _ in weighted["q1"]] == ["d1", "d3", "d2", "d4"]


def test_input_ranks_are_trec_evals_not_file_order():
    # Equal scores (also equal in float32 only) rank by passage id descending, as trec_eval orders them.
    run = {"q": {"a": 1.0, "b": 1.0 + 1e-12, "c": 2.0}}
    fused = reciprocal_rank_fusion([run, {"q": {}}], k=0)
    assert fused["q"] == [("c", 1.0), ("b", 1 / 2), ("a", 1 / 3)]
    assert order_hits(["a", "b", "c"], [1.0, 1.0 + 1e-12, 2.0]).tolist() == [2, 1, 0]


def test_minmax_interpolation_hand_computed():
    # A normalised: d1 1, d2 .5, d3 0; B: d3 1, d4 .5, d1 0; a passage missing from a run gets its minimum, 0.
    fused = interpolate([A, B], weights=[0.7, 0.3])
    assert [pid for pid, _ in fused["q1"]] == ["d1", "d2", "d3", "d4"]
    assert [score for _, score in fused["q1"]] == pytest.approx([0.7, 0.35, 0.3, 0.15])
    # q2: one hit in B (constant: 0), nothing in A.
    assert fused["q2"] == [("d9", 0.0)]


def test_zscore_interpolation_hand_computed():
    z = 1 / math.sqrt(2 / 3)  # (3 - 2) / population std of (3, 2, 1)
    fused = interpolate([A, B], normalization="zscore")
    # d1: .5 z + .5 (-z) = 0; d3 the same; d2: .5 * 0 + .5 * (missing: B's minimum, -z); d4 likewise.
    assert [pid for pid, _ in fused["q1"]] == ["d3", "d1", "d4", "d2"]
    assert dict(fused["q1"]) == pytest.approx({"d3": 0.0, "d1": 0.0, "d4": -z / 2, "d2": -z / 2})


def test_depth_keeps_the_best():
    assert [pid for pid, _ in reciprocal_rank_fusion([A, B], depth=2)["q1"]] == ["d3", "d1"]
    assert len(interpolate([A, B], depth=1)["q1"]) == 1


# ------------------------------------------------------------------------- an independent computation


def reference_order(scores: dict[str, float]) -> list[str]:
    import numpy as np

    # trec_eval's order written as one sort key: float32 score descending, then passage id descending.
    return [pid for pid, _ in sorted(scores.items(), key=lambda kv: (-float(np.float32(kv[1])), [-ord(c) for c in kv[0]] + [1]))]


def reference_rrf(runs, k):
    fused = {}
    for run in runs:
        for qid, hits in run.items():
            for rank, pid in enumerate(reference_order(hits), start=1):
                fused.setdefault(qid, {}).setdefault(pid, 0.0)
                fused[qid][pid] += 1 / (k + rank)
    return fused


def reference_interpolation(runs, weights, normalization):
    fused = {}
    for qid in {q for run in runs for q in run}:
        pids = {p for run in runs for p in run.get(qid, {})}
        total = dict.fromkeys(pids, 0.0)
        for run, weight in zip(runs, weights):
            hits = run.get(qid, {})
            if not hits:
                continue
            values = list(hits.values())
            if normalization == "minmax":
                low, spread = min(values), max(values) - min(values)
            else:
                low, spread = statistics.fmean(values), statistics.pstdev(values)
            norm = {p: (s - low) / spread if spread > 0 else 0.0 for p, s in hits.items()}
            floor = min(norm.values())
            for pid in pids:
                total[pid] += weight * norm.get(pid, floor)
        fused[qid] = total
    return fused


def random_runs(seed, n_runs=3):
    rng = random.Random(seed)
    runs = []
    for _ in range(n_runs):
        run = {}
        for q in range(20):
            pids = rng.sample([f"p{i}" for i in range(40)], rng.randint(1, 25))
            # Coarse scores: plenty of ties within a run.
            run[f"q{q}"] = {pid: round(rng.uniform(-5, 30), 1) for pid in pids}
        runs.append(run)
    return runs


@pytest.mark.parametrize("seed", range(3))
def test_rrf_equals_an_independent_computation(seed):
    runs = random_runs(seed)
    fused = reciprocal_rank_fusion(runs, k=60, depth=1000)
    want = reference_rrf(runs, 60)
    assert fused.keys() == want.keys()
    for qid, hits in fused.items():
        assert dict(hits) == pytest.approx(want[qid], rel=1e-12)
        assert [pid for pid, _ in hits] == reference_order(dict(hits))


@pytest.mark.parametrize("normalization", ["minmax", "zscore"])
@pytest.mark.parametrize("seed", range(2))
def test_interpolation_equals_an_independent_computation(seed, normalization):
    runs = random_runs(seed + 10)
    weights = [0.5, 0.3, 0.2]
    fused = interpolate(runs, weights=weights, normalization=normalization, depth=1000)
    want = reference_interpolation(runs, weights, normalization)
    assert fused.keys() == want.keys()
    for qid, hits in fused.items():
        assert dict(hits) == pytest.approx(want[qid], rel=1e-9, abs=1e-12)
        assert [pid for pid, _ in hits] == reference_order(dict(hits))


# ---------------------------------------------------------------------------------- the fuse command


def test_fuse_command_writes_the_run_evaluation_reads_back(tmp_path, capfd):
    from openmatch.dataset.qrels import load_ranked_run, load_run, write_trec_run
    from openmatch.evaluation.metrics import rank_scores
    from tests.faults import assert_succeeded, run_command

    runs = random_runs(5, n_runs=2)
    paths = []
    for i, run in enumerate(runs):
        paths.append(tmp_path / f"r{i}.trec")
        write_trec_run(paths[-1], [(q, [(p, hits[p]) for p in reference_order(hits)]) for q, hits in run.items()])
    out = tmp_path / "hybrid.trec"
    outcome = run_command("fuse", ["--run", *paths, "--trec_save_path", out, "--method", "interpolation",
                                   "--alpha", "0.25", "--depth", "10", "--run_id", "hybrid"], capfd)
    assert_succeeded(outcome)
    want = interpolate([load_run(p) for p in paths], weights=[0.25, 0.75], depth=10)
    written, ranked = load_run(out), load_ranked_run(out)
    assert list(ranked) == list(want)
    for qid, hits in want.items():
        assert ranked[qid] == [pid for pid, _ in hits]  # the rank column is the fused order
        assert written[qid] == pytest.approx(dict(hits), rel=1e-6)
        # ... and evaluation, which re-sorts by the written float32 scores, sees the same order.
        pids = list(written[qid])
        assert rank_scores([[written[qid][p] for p in pids]], [qid], pids)[qid] == ranked[qid]
    assert all(line.split()[-1] == "hybrid" for line in out.read_text().splitlines())
    assert max(len(v) for v in ranked.values()) == 10
