"""Paired significance tests between runs over the same judged queries: is run B better than run A, or is the
difference noise?

Every test here is *paired*: it works on the per-query differences ``d_q = b_q - a_q`` of one metric (the
values :func:`openmatch.evaluation.evaluate` returns with ``per_query=True``, over the same judged queries,
missing queries scoring 0 in both).

- :func:`randomization_test`: the paired randomization (permutation) test of Smucker, Allan and Carterette
  (CIKM 2007), two-sided: under the null hypothesis each query's two values are exchangeable, so the sign
  of each ``d_q`` is a coin flip. The p-value is the share of sign assignments whose mean difference is at
  least as far from 0 as the observed one. With at most ``permutations`` assignments in all (``2**m`` for
  ``m`` non-zero differences) every one is enumerated and the p-value is exact; otherwise ``permutations``
  random assignments are drawn from ``numpy.random.default_rng(seed)`` and the p-value is
  ``(hits + 1) / (permutations + 1)`` (the observed assignment counts as one, so it is never 0). This is
  what ``scipy.stats.permutation_test(..., permutation_type="samples")`` computes for the mean difference
  (exactly so in the exact case).
- :func:`t_test`: the paired t-test, ``scipy.stats.ttest_rel``'s two-sided p-value; when every difference
  is 0 (identical values) it is 1, where scipy returns NaN.
- :func:`holm`: Holm's step-down adjustment of the p-values of several runs compared with one baseline
  (``statsmodels``' ``multipletests(method="holm")``), which keeps the chance of any false "significant"
  at the nominal level.
- :func:`win_tie_loss`: how many queries improve, stay equal, get worse.

:func:`compare_to_baseline` puts these together for ``evaluate --baseline``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Mapping, Optional, Sequence

import numpy as np

from ..errors import DependencyError, InputError, UsageError

DEFAULT_PERMUTATIONS = 10_000
DEFAULT_SEED = 0
# Sign assignments per matrix product: at most this many, and about 4M signs in all (32 MB of float64), so
# that MS MARCO's 6,980 dev queries do not need a 10,000 x 6,980 matrix.
_CHUNK = 2048
_SIGNS_PER_CHUNK = 1 << 22


def _differences(a: Sequence[float], b: Sequence[float]) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired tests need two 1-D sequences of the same length, got {a.shape} and {b.shape}")
    if a.size == 0:
        raise ValueError("paired tests need at least one query")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("paired tests need finite values")
    return b - a


def randomization_test(
    a: Sequence[float], b: Sequence[float], permutations: int = DEFAULT_PERMUTATIONS, seed: int = DEFAULT_SEED
) -> float:
    """Two-sided p-value of the paired randomization test of ``mean(b - a)`` (see the module docstring)."""
    if permutations < 1:
        raise UsageError(f"the randomization test needs at least 1 permutation, got {permutations}")
    d = _differences(a, b)
    d = d[d != 0]  # a zero difference is the same under both signs: it changes no assignment's statistic
    if d.size == 0:
        return 1.0
    observed = abs(d.sum())
    # Sums of the same values in another order differ in the last bits: an assignment as extreme as the observed
    # one up to rounding counts as one (scipy's permutation_test allows the same relative slack).
    slack = 1e-9 * np.abs(d).sum()
    if d.size <= 62 and 2 ** d.size <= permutations:
        hits = total = 0
        for signs in _all_sign_chunks(d.size):
            hits += int(np.count_nonzero(np.abs(signs @ d) >= observed - slack))
            total += signs.shape[0]
        return hits / total
    rng = np.random.default_rng(seed)
    hits, left = 0, permutations
    rows = max(1, min(_CHUNK, _SIGNS_PER_CHUNK // d.size))
    while left:
        n = min(left, rows)
        # One uniform double per sign, drawn in order: the same signs whatever the chunk size.
        signs = np.where(rng.random((n, d.size)) < 0.5, 1.0, -1.0)
        hits += int(np.count_nonzero(np.abs(signs @ d) >= observed - slack))
        left -= n
    return (hits + 1) / (permutations + 1)


def _all_sign_chunks(m: int):
    """Every vector of ``m`` signs (±1), as ``[rows, m]`` float arrays of at most ``_CHUNK`` rows."""
    total = 2**m
    bits = np.arange(m, dtype=np.int64)
    for start in range(0, total, _CHUNK):
        codes = np.arange(start, min(start + _CHUNK, total), dtype=np.int64)
        yield ((codes[:, None] >> bits) & 1).astype(np.float64) * 2 - 1


def t_test(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of the paired t-test (``scipy.stats.ttest_rel``); 1 when ``a`` and ``b`` are equal."""
    d = _differences(a, b)
    if not d.any():
        return 1.0
    if d.size < 2:
        return math.nan  # one query: no variance to estimate
    try:
        from scipy import stats
    except ImportError as err:  # scipy is a dependency; a broken install should still say what is missing
        raise DependencyError("the paired t-test needs scipy: pip install scipy") from err
    return float(stats.ttest_rel(np.asarray(b, dtype=np.float64), np.asarray(a, dtype=np.float64)).pvalue)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the input order: the ``i``-th smallest ``p`` (1-based) becomes
    ``max over j <= i of min(1, (m - j + 1) * p_(j))``. NaN stays NaN and does not count in ``m``."""
    values = np.asarray(pvalues, dtype=np.float64)
    adjusted = np.full(values.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(values))
    m = valid.size
    running = 0.0
    for rank, index in enumerate(valid[np.argsort(values[valid], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * values[index]))
        adjusted[index] = running
    return adjusted.tolist()


def win_tie_loss(a: Sequence[float], b: Sequence[float]) -> tuple[int, int, int]:
    """Queries where ``b`` is above ``a``, equal to it, below it (values within 1e-12 are equal)."""
    d = _differences(a, b)
    ties = np.abs(d) <= 1e-12
    return int(np.count_nonzero(~ties & (d > 0))), int(np.count_nonzero(ties)), int(np.count_nonzero(~ties & (d < 0)))


@dataclass(frozen=True)
class Comparison:
    """One run against the baseline on one metric: means, mean difference (run - baseline), p-values (raw and
    Holm-adjusted over the runs compared with the same baseline), and win/tie/loss counts over queries."""

    run: str
    metric: str
    baseline_mean: float
    run_mean: float
    difference: float
    p_randomization: float
    p_t_test: float
    p_randomization_holm: float
    p_t_test_holm: float
    wins: int
    ties: int
    losses: int

    def to_dict(self) -> dict:
        return asdict(self)


def compare_to_baseline(
    per_query: Mapping[str, Mapping[str, Mapping[str, float]]],
    baseline: str,
    permutations: int = DEFAULT_PERMUTATIONS,
    seed: int = DEFAULT_SEED,
) -> list[Comparison]:
    """Compare every run of ``per_query`` (``{run: {metric: {qid: value}}}``) with ``baseline``, metric by metric.

    The runs must hold the same metrics over the same queries (as :func:`openmatch.evaluation.evaluate` gives
    for one qrels). Holm's adjustment is applied per metric and per test over the compared runs. Returns one
    :class:`Comparison` per (run, metric), runs in the given order, the baseline left out.
    """
    if baseline not in per_query:
        raise UsageError(f"--baseline {baseline!r} is not one of the runs ({', '.join(per_query)})")
    others = [name for name in per_query if name != baseline]
    if not others:
        raise UsageError("--baseline needs at least one other run to compare with it")
    base = per_query[baseline]
    rows: dict[str, list[dict]] = {}
    for metric, base_values in base.items():
        qids = list(base_values)
        a = np.fromiter((base_values[q] for q in qids), dtype=np.float64, count=len(qids))
        for name in others:
            values = per_query[name].get(metric)
            if values is None or values.keys() != base_values.keys():
                raise InputError(f"run {name!r} and the baseline {baseline!r} are not evaluated on the same queries")
            b = np.fromiter((values[q] for q in qids), dtype=np.float64, count=len(qids))
            wins, ties, losses = win_tie_loss(a, b)
            rows.setdefault(metric, []).append(dict(
                run=name, metric=metric, baseline_mean=math.fsum(a) / a.size, run_mean=math.fsum(b) / b.size,
                difference=math.fsum(b - a) / a.size, p_randomization=randomization_test(a, b, permutations, seed),
                p_t_test=t_test(a, b), wins=wins, ties=ties, losses=losses,
            ))
    by_run: dict[str, list[Comparison]] = {name: [] for name in others}
    for metric, metric_rows in rows.items():
        for key in ("p_randomization", "p_t_test"):
            for row, adjusted in zip(metric_rows, holm([row[key] for row in metric_rows])):
                row[f"{key}_holm"] = adjusted
        for row in metric_rows:
            by_run[row["run"]].append(Comparison(**row))
    return [comparison for name in others for comparison in by_run[name]]


def format_comparisons(comparisons: Sequence[Comparison], baseline: str, num_queries: int,
                       permutations: int = DEFAULT_PERMUTATIONS, seed: Optional[int] = DEFAULT_SEED) -> str:
    """The significance table ``evaluate --baseline`` prints: a row per (run, metric)."""
    runs = list(dict.fromkeys(c.run for c in comparisons))
    header = ("run", "metric", "base_mean", "run_mean", "diff", "p_rand", "p_t", "p_rand_holm", "p_t_holm", "win/tie/loss")
    table = [header] + [
        (c.run, c.metric, f"{c.baseline_mean:.4f}", f"{c.run_mean:.4f}", f"{c.difference:+.4f}",
         _p(c.p_randomization), _p(c.p_t_test), _p(c.p_randomization_holm), _p(c.p_t_test_holm),
         f"{c.wins}/{c.ties}/{c.losses}")
        for c in comparisons
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = [
        f"significance vs baseline {baseline!r} over {num_queries} judged queries: two-sided paired randomization "
        f"test ({permutations} permutations, seed {seed}) and paired t-test; holm = Holm-adjusted over "
        f"{len(runs)} run{'s' if len(runs) != 1 else ''}",
    ]
    for i, row in enumerate(table):
        lines.append("  ".join(cell.ljust(w) if j < 2 else cell.rjust(w) for j, (cell, w) in enumerate(zip(row, widths))))
        if i == 0:
            lines.append("-" * len(lines[-1]))
    return "\n".join(lines)


def _p(value: float) -> str:
    if math.isnan(value):
        return "nan"
    return f"{value:.4f}" if value >= 1e-4 else f"{value:.1e}"
