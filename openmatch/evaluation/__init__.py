"""Ranking evaluation: trec_eval's measures (Recall@k, nDCG@k, MAP, Precision@k, uncut MRR) computed by
pytrec_eval, and MRR@k with the official MS MARCO semantics; means as ``trec_eval -c``."""

from .metrics import (
    DEFAULT_METRICS,
    Metric,
    evaluate,
    evaluate_rankings,
    evaluate_scores,
    mean_over_queries,
    parse_metric,
    parse_metrics,
    rank_scores,
)

__all__ = [
    "DEFAULT_METRICS",
    "Metric",
    "evaluate",
    "evaluate_rankings",
    "evaluate_scores",
    "mean_over_queries",
    "parse_metric",
    "parse_metrics",
    "rank_scores",
]
