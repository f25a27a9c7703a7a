"""Ranking evaluation: MRR@k with the official MS MARCO semantics, Recall@k, nDCG@k, MAP, Precision@k."""

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
