"""Ranking evaluation: trec_eval's measures (Recall@k, nDCG@k, MAP, Precision@k, uncut MRR) computed by
pytrec_eval, and MRR@k with the official MS MARCO semantics; means as ``trec_eval -c``; paired significance
tests between runs (:mod:`.significance`) and run fusion (:mod:`.fusion`)."""

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
from .fusion import interpolate, reciprocal_rank_fusion
from .significance import compare_to_baseline, holm, randomization_test, t_test, win_tie_loss

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
    "interpolate",
    "reciprocal_rank_fusion",
    "compare_to_baseline",
    "holm",
    "randomization_test",
    "t_test",
    "win_tie_loss",
]
