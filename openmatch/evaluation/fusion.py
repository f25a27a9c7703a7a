"""Fusing several runs of the same queries into one: reciprocal rank fusion and normalised score interpolation.

A run is ``{qid: {pid: score}}`` (what :func:`openmatch.dataset.qrels.load_run` reads); the fused run is
``{qid: [(pid, score), ...]}`` best first, the shape :func:`openmatch.dataset.qrels.write_trec_run` writes.

- **Ranks** of an input run are trec_eval's (:mod:`openmatch.evaluation.metrics`): score descending, compared
  in float32, ties by passage id descending; the rank column of a run file plays no part, as in evaluation.
- :func:`reciprocal_rank_fusion` (Cormack, Clarke and Büttcher, SIGIR 2009): ``score(d) = Σ_r w_r / (k +
  rank_r(d))`` over the runs that retrieved ``d`` (``k = 60``, weights 1 by default).
- :func:`interpolate`: each run's scores are normalised per query — ``minmax``: ``(s - min) / (max - min)``,
  ``zscore``: ``(s - mean) / std`` (population std) — and ``score(d) = Σ_r w_r · norm_r(d)``; a passage a run
  did not retrieve for the query gets that run's lowest normalised score there (0 under ``minmax``), and a run
  whose hits for a query all score the same gives every passage 0 there. Weights are ``1 / (number of runs)``
  by default; two runs with weight ``alpha`` are ``weights=(alpha, 1 - alpha)``.
- **Output**: every query of any input run (first-seen order), each with its ``depth`` best passages ordered
  as trec_eval will read them back: fused score descending in float32 (the precision run files keep), then
  passage id descending, so the written ranks agree with evaluation.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import numpy as np

from ..errors import InputError, UsageError

Run = Mapping[str, Mapping[str, float]]
Ranked = dict[str, list[tuple[str, float]]]

RRF_K = 60
NORMALIZATIONS = ("minmax", "zscore")


def order_hits(pids: Sequence[str], scores: Sequence[float]) -> np.ndarray:
    """Indices of ``pids`` in trec_eval's order: float32 score descending, then passage id descending."""
    scores32 = np.asarray(scores, dtype=np.float64).astype(np.float32)
    by_id = np.argsort(np.array(list(pids), dtype=object), kind="stable")[::-1]
    id_rank = np.empty(len(pids), dtype=np.int64)
    id_rank[by_id] = np.arange(len(pids))
    return np.lexsort((id_rank, -scores32))


def _check(runs: Sequence[Run], weights: Optional[Sequence[float]], default: float) -> list[float]:
    if len(runs) < 2:
        raise UsageError(f"fusion needs at least two runs, got {len(runs)}")
    if weights is None:
        return [default] * len(runs)
    weights = [float(w) for w in weights]
    if len(weights) != len(runs):
        raise UsageError(f"{len(weights)} weights for {len(runs)} runs: give one weight per run")
    if not all(math.isfinite(w) for w in weights):
        raise UsageError(f"weights must be finite numbers, got {weights}")
    return weights


def _queries(runs: Sequence[Run]) -> list[str]:
    return list(dict.fromkeys(qid for run in runs for qid in run))


def _best(fused: dict[str, float], depth: Optional[int]) -> list[tuple[str, float]]:
    pids = list(fused)
    order = order_hits(pids, [fused[p] for p in pids])
    if depth is not None:
        order = order[:depth]
    return [(pids[i], fused[pids[i]]) for i in order]


def _check_depth(depth: Optional[int]) -> None:
    if depth is not None and depth < 1:
        raise UsageError(f"the fused run's depth must be at least 1, got {depth}")


def reciprocal_rank_fusion(
    runs: Sequence[Run], k: float = RRF_K, weights: Optional[Sequence[float]] = None, depth: Optional[int] = None
) -> Ranked:
    """Reciprocal rank fusion of ``runs`` (see the module docstring); ``depth`` keeps each query's best ``depth``."""
    weights = _check(runs, weights, 1.0)
    if not (math.isfinite(k) and k >= 0):
        raise UsageError(f"the RRF constant k must be a non-negative number, got {k}")
    _check_depth(depth)
    fused_run: Ranked = {}
    for qid in _queries(runs):
        fused: dict[str, float] = {}
        for run, weight in zip(runs, weights):
            hits = run.get(qid)
            if not hits:
                continue
            pids = list(hits)
            for rank, i in enumerate(order_hits(pids, list(hits.values())), start=1):
                fused[pids[i]] = fused.get(pids[i], 0.0) + weight / (k + rank)
        fused_run[qid] = _best(fused, depth)
    return fused_run


def normalize(scores: np.ndarray, method: str) -> np.ndarray:
    """One query's scores of one run normalised by ``minmax`` or ``zscore`` (constant scores: all 0)."""
    if method not in NORMALIZATIONS:
        raise UsageError(f"unknown normalisation {method!r}: use {' or '.join(NORMALIZATIONS)}")
    if method == "minmax":
        low, spread = scores.min(), scores.max() - scores.min()
    else:
        low, spread = scores.mean(), scores.std()
    if not spread > 0:
        return np.zeros_like(scores)
    return (scores - low) / spread


def interpolate(
    runs: Sequence[Run],
    weights: Optional[Sequence[float]] = None,
    normalization: str = "minmax",
    depth: Optional[int] = None,
) -> Ranked:
    """Weighted sum of per-query normalised scores (see the module docstring)."""
    weights = _check(runs, weights, 1.0 / max(len(runs), 1))
    if normalization not in NORMALIZATIONS:
        raise UsageError(f"unknown normalisation {normalization!r}: use {' or '.join(NORMALIZATIONS)}")
    _check_depth(depth)
    fused_run: Ranked = {}
    for qid in _queries(runs):
        normalised = []
        for position, run in enumerate(runs):
            hits = run.get(qid) or {}
            scores = np.fromiter(hits.values(), dtype=np.float64, count=len(hits))
            if not np.isfinite(scores).all():
                raise InputError(f"run {position + 1}, query {qid!r}: a score is not a finite number")
            values = normalize(scores, normalization) if len(hits) else scores
            floor = float(values.min()) if len(hits) else 0.0
            normalised.append((dict(zip(hits, values.tolist())), floor))
        pids = dict.fromkeys(pid for by_pid, _ in normalised for pid in by_pid)
        fused = {
            pid: math.fsum(w * by_pid.get(pid, floor) for w, (by_pid, floor) in zip(weights, normalised))
            for pid in pids
        }
        fused_run[qid] = _best(fused, depth)
    return fused_run
