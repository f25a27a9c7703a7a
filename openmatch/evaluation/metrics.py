"""Ranking metrics: MRR@k (official MS MARCO semantics), Recall@k, nDCG@k, MAP(@k), Precision@k.

Semantics, chosen to be unambiguous and to agree with the reference tools:

- **Judged queries** are the queries of the qrels with at least one passage of relevance > 0. Every metric is
  the mean over *all* judged queries; a judged query absent from the run scores 0 (the official MS MARCO
  ``msmarco_eval.py`` and ``ir_measures`` do this; ``trec_eval`` does it only with ``-c``). Run queries that
  are not judged are ignored, like ``trec_eval``. Queries whose judgments are all 0 are not judged queries:
  every metric of theirs would be 0 whatever the run, and counting them only dilutes the mean.
- **Order**: by score descending; ties are broken by passage id descending (byte-wise string comparison),
  which is exactly ``trec_eval``'s ``comp_sim_docno`` (and so ``pytrec_eval``'s). Scores are compared in
  single precision (float32), because ``trec_eval`` stores them as C ``float``: two scores that differ only
  beyond float32's ~7 significant digits are a tie there, and so here (tested against pytrec_eval on such a
  case). The rank column of a run file is ignored, as ``trec_eval`` ignores it. (ir_measures' MS MARCO
  provider breaks ties by ascending id at full precision instead; it agrees with us whenever no ties occur.) :func:`evaluate_rankings` takes explicit orders instead.
- A passage is **relevant** when its relevance is > 0 (``trec_eval``'s default ``relevance_level`` 1);
  graded relevance matters only to nDCG, whose gain is the relevance itself and whose discount is
  ``log2(rank + 1)`` (``trec_eval``'s ``ndcg_cut``); the ideal ranking comes from the qrels.
- ``mrr@k``: 1/rank of the first relevant passage within the top k, else 0; ``mrr``: uncut (``recip_rank``).
  ``recall@k``: relevant passages in the top k / relevant passages judged. ``precision@k``: relevant in the
  top k / k (even when fewer than k were retrieved). ``map``: sum of precision at each relevant retrieved
  passage / relevant passages judged; ``map@k`` the same over the top k (``trec_eval``'s ``map_cut``).
  ``ndcg``: uncut nDCG over the whole run.

Each metric is one small function of the ranks at which the relevant passages were retrieved
(``_PerQuery``); both entry points, :func:`evaluate` (scores) and :func:`evaluate_rankings` (orders), reduce a
query to those ranks, so they cannot disagree. Finding those ranks costs one sort of the query's scores
(numpy) plus a binary search per relevant passage, so the 6,980 × 1,000 MS MARCO dev run takes a fraction
of a second once loaded.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Optional, Sequence

import numpy as np

from ..errors import InputError, UsageError

logger = logging.getLogger(__name__)

DEFAULT_METRICS = ("mrr@10", "recall@100", "ndcg@10", "map")

# Accepted spellings (case-insensitive) -> canonical family; ir_measures / trec_eval names are accepted too.
_ALIASES = {
    "mrr": "mrr", "rr": "mrr", "recip_rank": "mrr",
    "recall": "recall", "r": "recall",
    "ndcg": "ndcg", "ndcg_cut": "ndcg",
    "map": "map", "ap": "map", "map_cut": "map",
    "precision": "precision", "p": "precision",
}
_CUTOFF_REQUIRED = {"recall", "precision"}


@dataclass(frozen=True)
class Metric:
    """A parsed metric name: ``family`` (mrr, recall, ndcg, map, precision) and cutoff ``k`` (None = uncut)."""

    family: str
    k: Optional[int] = None

    @property
    def name(self) -> str:
        return self.family if self.k is None else f"{self.family}@{self.k}"

    def __str__(self) -> str:
        return self.name


def parse_metric(name: str) -> Metric:
    """Parse ``mrr@10``, ``recall@100``, ``ndcg@10``, ``map``, ``map@100``, ``precision@5`` (also ``RR@10``,
    ``R@100``, ``nDCG@10``, ``AP``, ``P@5``, ``ndcg_cut_10``, ``recall_100``); a bad name is a ``ValueError``."""
    text = name.strip()
    match = re.fullmatch(r"([A-Za-z_]+?)(?:[@_](\d+))?", text)
    family = _ALIASES.get(match.group(1).lower()) if match else None
    if family is None:
        raise UsageError(
            f"unknown metric {name!r}: use mrr@k, mrr, recall@k, ndcg@k, ndcg, map, map@k or precision@k"
        )
    k = int(match.group(2)) if match.group(2) is not None else None
    if k is not None and k < 1:
        raise UsageError(f"metric {name!r}: the cutoff must be at least 1")
    if k is None and family in _CUTOFF_REQUIRED:
        raise UsageError(f"metric {name!r} needs a cutoff, e.g. {family}@100")
    return Metric(family, k)


def parse_metrics(metrics: str | Iterable[str | Metric]) -> list[Metric]:
    """Parse a comma-separated string or a sequence of names; duplicates are dropped, order kept."""
    items = metrics.split(",") if isinstance(metrics, str) else list(metrics)
    parsed: list[Metric] = []
    for item in items:
        if isinstance(item, str) and not item.strip():
            continue
        metric = item if isinstance(item, Metric) else parse_metric(item)
        if metric not in parsed:
            parsed.append(metric)
    if not parsed:
        raise UsageError("no metric given")
    return parsed


# --------------------------------------------------------------------------------------------------------
# Per-query state and one function per metric.


@dataclass
class _PerQuery:
    """What every metric needs of one query: 1-based ranks (ascending) of the relevant passages that were
    retrieved, their gains (relevance) in the same order, the number of relevant passages judged and the
    ideal gains (all judged relevances > 0, descending)."""

    ranks: list[int]
    gains: list[float]
    num_rel: int
    ideal: list[float]


def _mrr(q: _PerQuery, k: Optional[int]) -> float:
    if not q.ranks or (k is not None and q.ranks[0] > k):
        return 0.0
    return 1.0 / q.ranks[0]


def _recall(q: _PerQuery, k: Optional[int]) -> float:
    return sum(1 for rank in q.ranks if k is None or rank <= k) / q.num_rel


def _precision(q: _PerQuery, k: Optional[int]) -> float:
    return sum(1 for rank in q.ranks if rank <= k) / k


def _map(q: _PerQuery, k: Optional[int]) -> float:
    total = 0.0
    for found, rank in enumerate(q.ranks, start=1):
        if k is not None and rank > k:
            break
        total += found / rank
    return total / q.num_rel


def _ndcg(q: _PerQuery, k: Optional[int]) -> float:
    dcg = sum(gain / math.log2(rank + 1) for rank, gain in zip(q.ranks, q.gains) if k is None or rank <= k)
    ideal = q.ideal if k is None else q.ideal[:k]
    idcg = sum(gain / math.log2(rank + 1) for rank, gain in enumerate(ideal, start=1))
    return dcg / idcg


_FUNCTIONS: dict[str, Callable[[_PerQuery, Optional[int]], float]] = {
    "mrr": _mrr,
    "recall": _recall,
    "precision": _precision,
    "map": _map,
    "ndcg": _ndcg,
}


# --------------------------------------------------------------------------------------------------------
# Reducing a query's run to the ranks of its relevant passages.


def _judged(qrels: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, int]]:
    """``{qid: {pid: rel > 0}}`` for the judged queries (at least one relevant passage)."""
    judged = {}
    for qid, judgments in qrels.items():
        relevant = {str(pid): int(rel) for pid, rel in judgments.items() if rel > 0}
        if relevant:
            judged[str(qid)] = relevant
    if not judged:
        raise InputError("the qrels judge no passage relevant (relevance > 0): nothing to evaluate")
    return judged


def _per_query(relevant: dict[str, int], found: list[tuple[int, str]]) -> _PerQuery:
    found.sort()
    gains = [float(relevant[pid]) for _, pid in found]
    ideal = sorted((float(rel) for rel in relevant.values()), reverse=True)
    return _PerQuery([rank for rank, _ in found], gains, len(relevant), ideal)


def _ranks_from_scores(relevant: dict[str, int], hits: Mapping[str, float], qid: str) -> list[tuple[int, str]]:
    """``[(rank, pid)]`` of the relevant passages present in ``hits`` under trec_eval's order
    (score descending, then passage id descending), without sorting the passage ids."""
    present = [(pid, hits[pid]) for pid in relevant if pid in hits]
    if not present:
        return []
    # float32: trec_eval stores scores as C floats, so scores equal in single precision are tied there.
    scores = np.fromiter(hits.values(), dtype=np.float64, count=len(hits)).astype(np.float32)
    if np.isnan(scores).any():
        raise InputError(f"query {qid!r}: the run holds a NaN score, which has no rank")
    ascending = np.sort(scores)
    targets = np.array([score for _, score in present], dtype=np.float64).astype(np.float32)
    # Passages scoring strictly higher rank above; equal scores are ordered by id, descending.
    right = np.searchsorted(ascending, targets, side="right")
    above = len(scores) - right
    equal = right - np.searchsorted(ascending, targets, side="left")
    found = []
    all_pids = None
    for (pid, _), target, n_above, n_equal in zip(present, targets, above.tolist(), equal.tolist()):
        if n_equal > 1:
            all_pids = list(hits) if all_pids is None else all_pids
            n_above += sum(1 for index in np.flatnonzero(scores == target).tolist() if all_pids[index] > pid)
        found.append((n_above + 1, pid))
    return found


def _ranks_from_order(relevant: dict[str, int], ranked: Sequence[str], qid: str) -> list[tuple[int, str]]:
    """``[(rank, pid)]`` of the relevant passages present in an explicit best-first order."""
    if len(set(ranked)) != len(ranked):
        raise InputError(f"query {qid!r}: a passage appears twice in the ranking")
    if not isinstance(ranked, list):
        ranked = list(ranked)
    found = []
    for pid in relevant:
        try:
            found.append((ranked.index(pid) + 1, pid))  # a C-speed scan: relevant passages are few
        except ValueError:
            continue
    return found


def _aggregate(
    qrels: Mapping[str, Mapping[str, int]],
    run_qids: Iterable[str],
    ranks_of: Callable[[str, dict[str, int]], list[tuple[int, str]]],
    metrics,
    per_query: bool,
):
    parsed = parse_metrics(metrics)
    judged = _judged(qrels)
    run_qids = set(map(str, run_qids))
    shared = run_qids & judged.keys()
    if not shared:
        raise InputError(
            f"the run and the qrels share no query ({len(run_qids)} run queries, {len(judged)} judged queries, "
            f"e.g. run {sorted(run_qids)[:3]} vs qrels {sorted(judged)[:3]}): wrong qrels file or id mismatch?"
        )
    missing, ignored = len(judged) - len(shared), len(run_qids - judged.keys())
    if missing or ignored:
        logger.info(
            "%d judged queries, %d of them missing from the run (they score 0); %d run queries without judgments ignored",
            len(judged), missing, ignored,
        )
    values = {metric.name: {} for metric in parsed}
    for qid, relevant in judged.items():
        state = _per_query(relevant, ranks_of(qid, relevant) if qid in shared else [])
        for metric in parsed:
            values[metric.name][qid] = _FUNCTIONS[metric.family](state, metric.k)
    return values if per_query else mean_over_queries(values)


def mean_over_queries(per_query: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """``{metric: mean}`` of ``{metric: {qid: value}}``; ``math.fsum`` so the mean does not depend on query order."""
    return {name: math.fsum(by_query.values()) / len(by_query) for name, by_query in per_query.items()}


def evaluate(
    qrels: Mapping[str, Mapping[str, int]],
    run: Mapping[str, Mapping[str, float]],
    metrics: str | Sequence[str] = DEFAULT_METRICS,
    per_query: bool = False,
) -> dict:
    """Evaluate a run ``{qid: {pid: score}}`` against qrels ``{qid: {pid: relevance}}``.

    Returns ``{metric: mean}`` or, with ``per_query``, ``{metric: {qid: value}}`` over the judged queries
    (those with a passage of relevance > 0; absent from the run = 0). See the module docstring for the exact
    semantics of each metric and of ties. Raises ``ValueError`` for an unknown metric, qrels without any
    relevant passage, or a run sharing no query with the qrels.
    """
    run = {str(qid): hits for qid, hits in run.items()}
    return _aggregate(qrels, run.keys(), lambda qid, rel: _ranks_from_scores(rel, run[qid], qid), metrics, per_query)


def evaluate_rankings(
    ranked: Mapping[str, Sequence[str]],
    qrels: Mapping[str, Mapping[str, int]],
    metrics: str | Sequence[str] = DEFAULT_METRICS,
    per_query: bool = False,
) -> dict:
    """Like :func:`evaluate` for explicit orders ``{qid: [pid, ...]}`` (best first), e.g. from a trainer's
    validation search; positions give the ranks, no scores or tie rule involved."""
    ranked = {str(qid): pids for qid, pids in ranked.items()}
    return _aggregate(qrels, ranked.keys(), lambda qid, rel: _ranks_from_order(rel, ranked[qid], qid), metrics, per_query)


def rank_scores(
    scores: np.ndarray, qids: Sequence[str], pids: Sequence[str], depth: Optional[int] = None
) -> dict[str, list[str]]:
    """Turn a ``[num_queries, num_passages]`` score matrix into ``{qid: [pid, ...]}`` best first, keeping the
    top ``depth`` (all by default), with the same tie rule as :func:`evaluate` (passage id descending)."""
    # float32 throughout, as in evaluate(): trec_eval's precision for scores.
    scores = np.asarray(scores, dtype=np.float32)
    if scores.ndim != 2 or scores.shape != (len(qids), len(pids)):
        raise ValueError(f"scores of shape {scores.shape} do not match {len(qids)} queries x {len(pids)} passages")
    if np.isnan(scores).any():
        raise ValueError("the score matrix holds NaN")
    pids = [str(pid) for pid in pids]
    # Position of each passage id in descending id order: the secondary sort key for ties.
    id_order = np.empty(len(pids), dtype=np.int64)
    id_order[np.argsort(np.array(pids, dtype=object), kind="stable")[::-1]] = np.arange(len(pids))
    depth = len(pids) if depth is None else min(depth, len(pids))
    ranked = {}
    for row, qid in zip(scores, qids):
        if depth < len(pids):
            # Everything scoring at least the depth-th best score can be in the top depth.
            threshold = np.partition(row, len(pids) - depth)[len(pids) - depth]
            candidates = np.flatnonzero(row >= threshold)
        else:
            candidates = np.arange(len(pids))
        order = candidates[np.lexsort((id_order[candidates], -row[candidates].astype(np.float32)))][:depth]
        ranked[str(qid)] = [pids[i] for i in order]
    return ranked


def evaluate_scores(
    scores: np.ndarray,
    qids: Sequence[str],
    pids: Sequence[str],
    qrels: Mapping[str, Mapping[str, int]],
    metrics: str | Sequence[str] = DEFAULT_METRICS,
    depth: Optional[int] = None,
    per_query: bool = False,
) -> dict:
    """Metrics of a score matrix (queries x candidate passages), e.g. a validation set scored in memory."""
    return evaluate_rankings(rank_scores(scores, qids, pids, depth), qrels, metrics, per_query)
