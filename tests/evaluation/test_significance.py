"""Paired significance tests against scipy (permutation_test with paired samples, ttest_rel), Holm against a
hand computation of statsmodels' rule, and ``evaluate --baseline`` / ``--per_query PATH`` end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from openmatch.evaluation.significance import (
    compare_to_baseline,
    holm,
    randomization_test,
    t_test,
    win_tie_loss,
)


def scipy_paired_permutation(a, b, n_resamples, seed=0):
    """scipy's paired permutation test of the mean difference (swaps within each pair)."""
    result = stats.permutation_test(
        (np.asarray(b, float), np.asarray(a, float)), lambda x, y, axis: np.mean(x - y, axis=axis),
        permutation_type="samples", vectorized=True, n_resamples=n_resamples, alternative="two-sided",
        random_state=seed,
    )
    return result.pvalue


def metric_like(rng, n):
    """Per-query values as a metric produces them: many 0s and 1s, reciprocal ranks, repeated values."""
    return rng.choice([0.0, 1.0, 0.5, 1 / 3, 0.25, 0.1, 0.6309297535714575], size=n)


@pytest.mark.parametrize("seed", range(6))
def test_exact_randomization_test_equals_scipys_exact_test(seed):
    rng = np.random.default_rng(seed)
    n = 11  # 2**11 = 2048 sign assignments <= 10,000: both enumerate them all
    a = metric_like(rng, n)
    b = np.where(rng.random(n) < 0.5, a, metric_like(rng, n)) if seed % 2 else rng.random(n)
    ours = randomization_test(a, b, permutations=10_000)
    theirs = scipy_paired_permutation(a, b, 10_000)
    assert ours == pytest.approx(theirs, rel=1e-12, abs=1e-15)
    assert 0 < ours <= 1


def test_exact_randomization_test_known_value():
    # Differences 1, 1, 1: of the 8 sign assignments, only +++ and --- reach |mean| 1 -> p = 2/8.
    assert randomization_test([0, 0, 0], [1, 1, 1], permutations=8) == 0.25
    # A zero difference flips to itself: adding one leaves the p-value unchanged.
    assert randomization_test([0, 0, 0, 0.5], [1, 1, 1, 0.5], permutations=16) == 0.25


@pytest.mark.parametrize("shift", [0.0, 0.02, 0.05])
def test_sampled_randomization_test_agrees_with_scipy_within_monte_carlo_error(shift):
    rng = np.random.default_rng(7)
    n = 300
    a = metric_like(rng, n)
    b = np.clip(a + rng.normal(shift, 0.2, n), 0, 1)
    ours = randomization_test(a, b, permutations=10_000, seed=0)
    theirs = scipy_paired_permutation(a, b, 10_000, seed=1)
    # Two independent estimates of the same p-value from 10,000 draws each.
    p = (ours + theirs) / 2
    assert abs(ours - theirs) <= 5 * math.sqrt(2 * p * (1 - p) / 10_000) + 2e-4, (ours, theirs)
    # The seed fixes the answer; the sampled p-value is never 0.
    assert randomization_test(a, b, permutations=10_000, seed=0) == ours
    assert ours >= 1 / 10_001


def test_sampled_p_value_does_not_depend_on_the_chunking(monkeypatch):
    from openmatch.evaluation import significance

    rng = np.random.default_rng(9)
    a, b = metric_like(rng, 200), metric_like(rng, 200)
    whole = randomization_test(a, b, permutations=3000, seed=4)
    monkeypatch.setattr(significance, "_SIGNS_PER_CHUNK", 200 * 7)  # 7 assignments per draw
    assert randomization_test(a, b, permutations=3000, seed=4) == whole
    assert randomization_test(a, b, permutations=3000, seed=5) != whole


def test_randomization_test_of_identical_runs_is_one():
    assert randomization_test([0.2, 0.5, 1.0], [0.2, 0.5, 1.0]) == 1.0


@pytest.mark.parametrize("seed", range(4))
def test_t_test_is_scipys_ttest_rel(seed):
    rng = np.random.default_rng(seed)
    a, b = metric_like(rng, 50), metric_like(rng, 50)
    assert t_test(a, b) == stats.ttest_rel(b, a).pvalue
    assert t_test(a, b) == t_test(b, a)  # two-sided


def test_t_test_of_identical_runs_is_one_not_nan():
    assert t_test([0.1, 0.7, 0.3], [0.1, 0.7, 0.3]) == 1.0


def test_holm_against_hand_computation():
    # Sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> kept monotone: 0.06.
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02], abs=1e-15)
    assert holm([0.5, 0.6]) == [1.0, 1.0]  # capped at 1, then monotone
    assert holm([0.02]) == [0.02]  # one comparison: nothing to adjust
    adjusted = holm([0.01, math.nan, 0.02])  # NaN is no test: m = 2
    assert adjusted[0] == pytest.approx(0.02) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.02)


def test_win_tie_loss():
    assert win_tie_loss([0.5, 0.5, 1.0, 0.0], [1.0, 0.5, 0.0, 0.0]) == (1, 2, 1)


def test_compare_to_baseline_adjusts_over_the_compared_runs():
    rng = np.random.default_rng(3)
    qids = [f"q{i}" for i in range(40)]
    base = metric_like(rng, 40)
    runs = {"base": base, "same": base.copy(), "better": np.clip(base + rng.normal(0.1, 0.2, 40), 0, 1),
            "other": metric_like(rng, 40)}
    per_query = {name: {"ndcg@10": dict(zip(qids, values.tolist())), "mrr@10": dict(zip(qids, (values / 2).tolist()))}
                 for name, values in runs.items()}
    rows = compare_to_baseline(per_query, "base", permutations=2000, seed=5)
    assert [(r.run, r.metric) for r in rows] == [(n, m) for n in ("same", "better", "other") for m in ("ndcg@10", "mrr@10")]
    for metric, scale in (("ndcg@10", 1.0), ("mrr@10", 0.5)):
        of_metric = [r for r in rows if r.metric == metric]
        raw_rand = [randomization_test(base * scale, runs[r.run] * scale, 2000, 5) for r in of_metric]
        raw_t = [t_test(base * scale, runs[r.run] * scale) for r in of_metric]
        assert [r.p_randomization for r in of_metric] == raw_rand
        assert [r.p_t_test for r in of_metric] == raw_t
        assert [r.p_randomization_holm for r in of_metric] == holm(raw_rand)
        assert [r.p_t_test_holm for r in of_metric] == holm(raw_t)
        for r in of_metric:
            values = runs[r.run] * scale
            assert r.difference == pytest.approx(values.mean() - base.mean() * scale, abs=1e-12)
            assert (r.wins, r.ties, r.losses) == win_tie_loss(base * scale, values)
    same = rows[0]
    assert same.p_randomization == same.p_t_test == 1.0 and (same.wins, same.losses) == (0, 0)


# ---------------------------------------------------------------------------------- the evaluate command


@pytest.fixture
def three_runs(tmp_path):
    rng = np.random.default_rng(11)
    qids = [f"q{i}" for i in range(30)]
    (tmp_path / "qrels.tsv").write_text("".join(f"{q} 0 d{i % 5} 1\n" for i, q in enumerate(qids)))
    paths = {}
    for name in ("zero", "s1", "s2"):
        lines = []
        for i, q in enumerate(qids):
            order = rng.permutation(8) if name != "s2" else np.roll(np.arange(8), -(i % 5) if i % 3 else 3)
            lines += [f"{q} Q0 d{d} {r + 1} {10 - r} {name}\n" for r, d in enumerate(order)]
        paths[name] = tmp_path / f"{name}.trec"
        paths[name].write_text("".join(lines))
    return tmp_path / "qrels.tsv", paths


def test_evaluate_baseline_prints_and_saves_the_tests(three_runs, tmp_path, capsys):
    from openmatch.dataset.qrels import load_qrels, load_run
    from openmatch.driver.evaluate import main
    from openmatch.evaluation import evaluate

    qrels, paths = three_runs
    out, per_query_path = tmp_path / "m.json", tmp_path / "per_query.tsv"
    status = main(["--qrels", str(qrels), "--run", *(f"{n}={p}" for n, p in paths.items()), "--metrics", "ndcg@10,mrr@10",
                   "--baseline", "zero", "--permutations", "3000", "--per_query", str(per_query_path),
                   "--output", str(out)])
    assert status == 0
    printed = capsys.readouterr().out
    assert "significance vs baseline 'zero' over 30 judged queries" in printed and "3000 permutations" in printed
    per_query = {n: evaluate(load_qrels(qrels), load_run(p), ["ndcg@10", "mrr@10"], per_query=True) for n, p in paths.items()}
    want = compare_to_baseline(per_query, "zero", permutations=3000)
    saved = json.loads(out.read_text())["significance"]
    assert saved["baseline"] == "zero" and saved["comparisons"] == [c.to_dict() for c in want]
    for c in want:  # one printed row per (run, metric) with its numbers
        row = next(line.split() for line in printed.splitlines() if line.split()[:2] == [c.run, c.metric])
        assert row[4] == f"{c.difference:+.4f}" and row[-1] == f"{c.wins}/{c.ties}/{c.losses}"
    # s2 ranks the relevant passage first for two queries in three: better than a random order, by a lot.
    best = next(c for c in want if c.run == "s2" and c.metric == "mrr@10")
    assert best.difference > 0.2 and best.p_randomization_holm < 0.01 and best.p_t_test_holm < 0.01

    # --per_query PATH: every run's values, exactly, and nothing printed per query.
    lines = per_query_path.read_text().splitlines()
    assert lines[0] == "run\tmetric\tqid\tvalue" and len(lines) == 1 + 3 * 2 * 30
    for line in lines[1:]:
        name, metric, qid, value = line.split("\t")
        assert float(value) == per_query[name][metric][qid]
    assert not any(line.startswith("ndcg@10\tq") or "\tndcg@10\tq" in line for line in printed.splitlines())


def test_bare_per_query_still_prints(three_runs, capsys):
    from openmatch.driver.evaluate import main

    qrels, paths = three_runs
    assert main(["--qrels", str(qrels), "--run", str(paths["zero"]), "--metrics", "mrr@10", "--per_query"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("mrr@10\t")]
    assert len(rows) == 30
