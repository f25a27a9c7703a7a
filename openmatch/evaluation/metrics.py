"""Ranking metrics: trec_eval's measures, computed by trec_eval's own C code (``pytrec_eval``), and MS MARCO's
official MRR@k.

One rule for every metric, the rule of ``trec_eval -c`` (and of ``ir_measures`` and MS MARCO's
``msmarco_eval.py``):

- **Queries**: the *judged queries* are the queries of the qrels, i.e. those with at least one judgment of
  any relevance, 0 included (trec_eval's query set). A metric is the mean over all of them: a judged query
  missing from the run scores 0, and so does one whose judgments are all 0 (it has nothing relevant to
  find). That is ``trec_eval -c``; plain ``trec_eval`` averages over the judged queries present in the
  run only. For every query trec_eval reports (judged and in the run) the per-query value is trec_eval's
  own. Run queries that are not judged are ignored, as by trec_eval.
- **Relevant**: relevance > 0 (trec_eval's default ``relevance_level`` 1). Graded relevance matters to nDCG
  only, whose gain is the relevance and whose ideal ranking comes from the qrels.
- **Order**: trec_eval's: score descending, ties broken by passage id descending (byte-wise string
  comparison). Scores are compared in single precision (float32), as trec_eval stores them as C floats:
  scores differing only beyond float32's ~7 significant digits are a tie. The rank column of a run file is
  ignored, as trec_eval ignores it. :func:`evaluate_rankings` takes explicit orders instead.

Metric names (aliases: ``RR@10``, ``R@100``, ``nDCG@10``, ``AP``, ``P@5``, ``recip_rank``, ``ndcg_cut_10``...):

- ``mrr@k``: **MS MARCO's MRR@k** (official at k = 10): 1/rank of the first relevant passage if it is within
  the top k, else 0 (no trec_eval measure; ir_measures' ``RR@k``);
- ``mrr``: 1/rank of the first relevant passage, no cut-off (``recip_rank``);
- ``recall@k``: relevant passages in the top k / relevant passages judged (``recall_k``);
- ``precision@k``: relevant passages in the top k / k, also when fewer were retrieved (``P_k``);
- ``ndcg@k``, ``ndcg``: nDCG of the top k or of the whole ranking, gain = relevance, discount
  log2(rank + 1) (``ndcg_cut_k``, ``ndcg``);
- ``map@k``, ``map``: average precision over the top k or the whole ranking (``map_cut_k``, ``map``).

``mrr@k`` is the one measure trec_eval lacks (``recip_rank`` has no cut-off, which reads about a point
higher on a typical MS MARCO run): it is trec_eval's ``recip_rank`` set to 0 when the first relevant
passage ranks below k. It keeps MS MARCO's semantics — the qrels define the queries, a query missing from
the run scores 0, the mean is over all of them — with two precisions where ``msmarco_eval.py`` is silent
or loose: it counts every qrels line as relevant whatever its label (MS MARCO's qrels hold only 1s; here,
as in ir_measures' MS MARCO provider, relevance > 0), and it orders by the run's rank column (here by score,
as above; the runs this package writes list hits by descending score, so the two agree up to exactly equal
scores).

Evaluating the MS MARCO dev run (6,980 queries x 1,000 hits) takes a few seconds once the run is loaded.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np
import pytrec_eval

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
# trec_eval (pytrec_eval) does the ranking and the measures; only mrr@k's cut-off is ours.

# family -> trec_eval measure (uncut, cut at k); every family has a cut-off-k form in trec_eval but mrr.
_TREC_MEASURES = {
    "mrr": ("recip_rank", None),
    "recall": (None, "recall"),
    "precision": (None, "P"),
    "ndcg": ("ndcg", "ndcg_cut"),
    "map": ("map", "map_cut"),
}


def _trec_key(metric: Metric) -> str:
    """Key of ``metric``'s value in pytrec_eval's results (``mrr@k``: ``recip_rank``, cut here)."""
    uncut, cut = _TREC_MEASURES[metric.family]
    if metric.k is None or metric.family == "mrr":
        return uncut
    return f"{cut}_{metric.k}"


def _trec_measures(metrics: Sequence[Metric]) -> set[str]:
    """What to ask pytrec_eval for: uncut measures by name, cut ones as ``ndcg_cut.5,10`` (its own cut-offs
    only, not trec_eval's default list)."""
    measures, cutoffs = set(), {}
    for metric in metrics:
        uncut, cut = _TREC_MEASURES[metric.family]
        if metric.k is None or metric.family == "mrr":
            measures.add(uncut)
        else:
            cutoffs.setdefault(cut, set()).add(metric.k)
    measures |= {f"{cut}.{','.join(map(str, sorted(ks)))}" for cut, ks in cutoffs.items()}
    return measures


def _value(row: Mapping[str, float], metric: Metric) -> float:
    if metric.family == "mrr" and metric.k is not None:
        # recip_rank is exactly 1/rank of the first relevant passage: MS MARCO's MRR@k keeps it in the top k only.
        rr = row["recip_rank"]
        return rr if rr > 0 and round(1 / rr) <= metric.k else 0.0
    return row[_trec_key(metric)]


def _judged(qrels: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, int]]:
    """``{qid: {pid: relevance}}`` of the judged queries (at least one judgment, of any relevance), with the
    str ids and int relevances pytrec_eval takes."""
    judged = {
        str(qid): {str(pid): int(rel) for pid, rel in judgments.items()} for qid, judgments in qrels.items() if judgments
    }
    if not judged:
        raise InputError("the qrels hold no judgment: nothing to evaluate")
    return judged


def _trec_eval(judged: dict[str, dict[str, int]], run: dict[str, Mapping[str, float]], measures: set[str]) -> dict:
    """pytrec_eval's ``{qid: {measure: value}}`` for the judged queries of ``run`` (those it reports)."""
    for qid, hits in run.items():
        if any(map(math.isnan, hits.values())):
            raise InputError(f"query {qid!r}: the run holds a NaN score, which has no rank")
    evaluator = pytrec_eval.RelevanceEvaluator(judged, measures)
    try:
        return evaluator.evaluate(run)
    except TypeError:
        # pytrec_eval takes only str passage ids and Python float scores; converting every hit up front
        # would cost more than the evaluation on MS MARCO dev, so only runs that need it are converted.
        return evaluator.evaluate({qid: {str(pid): float(score) for pid, score in hits.items()} for qid, hits in run.items()})


def _aggregate(
    qrels: Mapping[str, Mapping[str, int]],
    run: Mapping[str, Mapping[str, float]],
    metrics,
    per_query: bool,
):
    parsed = parse_metrics(metrics)
    judged = _judged(qrels)
    shared = run.keys() & judged.keys()
    if not shared:
        raise InputError(
            f"the run and the qrels share no query ({len(run)} run queries, {len(judged)} judged queries, "
            f"e.g. run {sorted(run)[:3]} vs qrels {sorted(judged)[:3]}): wrong qrels file or id mismatch?"
        )
    without_relevant = sum(1 for judgments in judged.values() if not any(rel > 0 for rel in judgments.values()))
    if without_relevant == len(judged):
        logger.warning("the qrels judge no passage relevant (relevance > 0): every metric is 0")
    missing, ignored = len(judged) - len(shared), len(run) - len(shared)
    if missing or ignored or without_relevant:
        logger.info(
            "%d judged queries: %d missing from the run and %d without a relevant passage (they score 0); "
            "%d run queries without judgments ignored",
            len(judged), missing, without_relevant, ignored,
        )
    raw = _trec_eval(judged, {qid: run[qid] for qid in shared}, _trec_measures(parsed))
    values = {metric.name: {} for metric in parsed}
    for qid in judged:
        row = raw.get(qid)  # absent: not in the run, or no hits there (trec_eval -c: 0 for every measure)
        for metric in parsed:
            values[metric.name][qid] = 0.0 if row is None else _value(row, metric)
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
    (every query of the qrels, in qrels order; absent from the run = 0), like ``trec_eval -c``. See the
    module docstring for the exact semantics of each metric and of ties. Raises ``ValueError`` for an
    unknown metric, qrels without any judgment, a NaN score, or a run sharing no query with the qrels.
    """
    return _aggregate(qrels, {str(qid): hits for qid, hits in run.items()}, metrics, per_query)


def evaluate_rankings(
    ranked: Mapping[str, Sequence[str]],
    qrels: Mapping[str, Mapping[str, int]],
    metrics: str | Sequence[str] = DEFAULT_METRICS,
    per_query: bool = False,
) -> dict:
    """Like :func:`evaluate` for explicit orders ``{qid: [pid, ...]}`` (best first), e.g. from a trainer's
    validation search; positions give the ranks, no scores or tie rule involved."""
    run = {}
    for qid, pids in ranked.items():
        pids = [str(pid) for pid in pids]
        if len(set(pids)) != len(pids):
            raise InputError(f"query {str(qid)!r}: a passage appears twice in the ranking")
        # Distinct descending scores that trec_eval's float32 holds exactly (integers up to 2**24).
        run[str(qid)] = dict(zip(pids, map(float, range(len(pids), 0, -1))))
    return _aggregate(qrels, run, metrics, per_query)


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
