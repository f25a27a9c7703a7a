"""Evaluate a TREC run against qrels.

    python -m openmatch.driver.evaluate --qrels Q --run R [R ...] \
        [--metrics mrr@10,recall@100,recall@1000,ndcg@10,map] [--per_query] [--output metrics.json]

Prints a table of the means over the judged queries — every query of the qrels, also one whose judgments
are all 0 — where a judged query missing from the run scores 0, as with ``trec_eval -c``; ``mrr@10`` is
MS MARCO's official MRR@10, ``mrr`` trec_eval's uncut ``recip_rank``. With ``--per_query`` it first prints
``metric qid value`` lines like ``trec_eval -q``. ``--output`` writes the same numbers as JSON, atomically. Several runs (``--run zero-shot=a.trec stage1=b.trec``)
are compared in one table, a row per run. Semantics of each metric:
:mod:`openmatch.evaluation.metrics`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional, Sequence

from ..cli import add_log_level_argument, main_wrapper
from ..dataset.qrels import load_qrels, load_run
from ..errors import UsageError
from ..evaluation.metrics import evaluate, mean_over_queries, parse_metrics
from ..utils import setup_logging, write_json_atomic

DEFAULT_DRIVER_METRICS = "mrr@10,recall@100,recall@1000,ndcg@10,map"

logger = logging.getLogger("openmatch.evaluate")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m openmatch.driver.evaluate", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--qrels", required=True, help="qrels: 'qid 0 pid rel', 'qid pid' or BEIR 'query-id corpus-id score'")
    parser.add_argument(
        "--run", required=True, nargs="+",
        help="TREC run(s): 'qid Q0 pid rank score run_id'; NAME=PATH names a run in the comparison table",
    )
    parser.add_argument(
        "--metrics", nargs="+", default=[DEFAULT_DRIVER_METRICS],
        help=f"comma- or space-separated (default {DEFAULT_DRIVER_METRICS})",
    )
    parser.add_argument("--per_query", action="store_true", help="also print 'metric qid value' for every judged query")
    parser.add_argument("--output", default=None, help="write the results as JSON to this file")
    add_log_level_argument(parser)
    return parser


def format_table(results: dict[str, float], num_queries: int) -> str:
    width = max(len("metric"), *(len(name) for name in results))
    lines = [f"{'metric':<{width}}  value   (over {num_queries} judged queries)"]
    lines += [f"{name:<{width}}  {value:.4f}" for name, value in results.items()]
    return "\n".join(lines)


def format_comparison(results: dict[str, dict[str, float]], num_queries: int) -> str:
    """A row per run, a column per metric."""
    metric_names = list(next(iter(results.values())))
    name_width = max(len("run"), *(len(name) for name in results))
    widths = [max(len(m), 6) for m in metric_names]
    header = f"{'run':<{name_width}}  " + "  ".join(f"{m:>{w}}" for m, w in zip(metric_names, widths))
    lines = [f"(over {num_queries} judged queries)", header, "-" * len(header)]
    for name, means in results.items():
        lines.append(f"{name:<{name_width}}  " + "  ".join(f"{means[m]:>{w}.4f}" for m, w in zip(metric_names, widths)))
    return "\n".join(lines)


def parse_run_names(specs: Sequence[str]) -> dict[str, str]:
    """``["a.trec", "stage1=b.trec"]`` → ``{"a.trec": "a.trec", "stage1": "b.trec"}``."""
    named = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        name, path = (name, path) if sep and name and path else (spec, spec)
        if name in named:
            raise UsageError(f"run name {name!r} given twice")
        named[name] = path
    return named


def evaluate_one(qrels, run_path: str, metrics, per_query_output: bool) -> dict:
    run = load_run(run_path)
    per_query = evaluate(qrels, run, metrics, per_query=True)
    judged_qids = next(iter(per_query.values())).keys()
    summary = {
        "run": run_path,
        "num_judged_queries": len(judged_qids),
        "num_run_queries": len(run),
        "num_judged_missing_from_run": sum(1 for qid in judged_qids if qid not in run),
        "metrics": mean_over_queries(per_query),
    }
    if per_query_output:
        summary["per_query"] = per_query
    return summary


@main_wrapper
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(0, args.log_level)
    metrics = parse_metrics(",".join(args.metrics))  # before reading anything: a typo fails fast
    runs = parse_run_names(args.run)
    qrels = load_qrels(args.qrels)
    summaries = {name: evaluate_one(qrels, path, metrics, args.per_query) for name, path in runs.items()}
    for name, summary in summaries.items():
        prefix = f"{name}\t" if len(runs) > 1 else ""
        for metric, values in summary.get("per_query", {}).items():
            for qid, value in values.items():
                print(f"{prefix}{metric}\t{qid}\t{value:.4f}")
    num_judged = next(iter(summaries.values()))["num_judged_queries"]
    if len(runs) == 1:
        summary = next(iter(summaries.values()))
        print(format_table(summary["metrics"], num_judged))
    else:
        print(format_comparison({name: s["metrics"] for name, s in summaries.items()}, num_judged))
    without_relevant = sum(1 for judgments in qrels.values() if not any(rel > 0 for rel in judgments.values()))
    if without_relevant:
        print(f"({without_relevant} judged queries have no relevant passage and score 0)")
    for name, summary in summaries.items():
        if summary["num_judged_missing_from_run"]:
            print(f"({name}: {summary['num_judged_missing_from_run']} judged queries are missing from the run and score 0)")
    if args.output:
        payload = next(iter(summaries.values())) if len(runs) == 1 else {"runs": summaries}
        write_json_atomic(args.output, {"qrels": args.qrels, **payload})
    return 0


if __name__ == "__main__":
    sys.exit(main())
