"""Evaluate a TREC run against qrels.

    python -m openmatch.driver.evaluate --qrels Q --run R \
        [--metrics mrr@10,recall@100,recall@1000,ndcg@10,map] [--per_query] [--output metrics.json]

Prints a table of the means (over the judged queries: those with a passage of relevance > 0; a judged query
missing from the run scores 0); with ``--per_query`` first prints ``metric qid value`` lines like
``trec_eval -q``. ``--output`` writes the same numbers as JSON, atomically. Semantics of each metric:
:mod:`openmatch.evaluation.metrics`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional, Sequence

from ..dataset.qrels import load_qrels, load_run
from ..evaluation.metrics import evaluate, mean_over_queries, parse_metrics
from ..utils import setup_logging, write_json_atomic
from ._cli import main_wrapper

DEFAULT_DRIVER_METRICS = "mrr@10,recall@100,recall@1000,ndcg@10,map"

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m openmatch.driver.evaluate", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--qrels", required=True, help="qrels: 'qid 0 pid rel', 'qid pid' or BEIR 'query-id corpus-id score'")
    parser.add_argument("--run", required=True, help="TREC run: 'qid Q0 pid rank score run_id'")
    parser.add_argument("--metrics", default=DEFAULT_DRIVER_METRICS, help=f"comma-separated (default {DEFAULT_DRIVER_METRICS})")
    parser.add_argument("--per_query", action="store_true", help="also print 'metric qid value' for every judged query")
    parser.add_argument("--output", default=None, help="write the results as JSON to this file")
    return parser


def format_table(results: dict[str, float], num_queries: int) -> str:
    width = max(len("metric"), *(len(name) for name in results))
    lines = [f"{'metric':<{width}}  value   (over {num_queries} judged queries)"]
    lines += [f"{name:<{width}}  {value:.4f}" for name, value in results.items()]
    return "\n".join(lines)


@main_wrapper
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    metrics = parse_metrics(args.metrics)  # before reading anything: a typo fails fast
    qrels = load_qrels(args.qrels)
    run = load_run(args.run)
    per_query = evaluate(qrels, run, metrics, per_query=True)
    means = mean_over_queries(per_query)
    judged_qids = next(iter(per_query.values())).keys()
    num_judged = len(judged_qids)
    summary = {
        "qrels": args.qrels,
        "run": args.run,
        "num_judged_queries": num_judged,
        "num_run_queries": len(run),
        "num_judged_missing_from_run": sum(1 for qid in judged_qids if qid not in run),
        "metrics": means,
    }
    if args.per_query:
        for name, values in per_query.items():
            for qid, value in values.items():
                print(f"{name}\t{qid}\t{value:.4f}")
        summary["per_query"] = per_query
    print(format_table(means, num_judged))
    if summary["num_judged_missing_from_run"]:
        print(f"({summary['num_judged_missing_from_run']} judged queries are missing from the run and score 0)")
    if args.output:
        write_json_atomic(args.output, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
