"""Evaluate a TREC run against qrels; compare runs with paired significance tests.

    python -m openmatch.driver.evaluate --qrels Q --run R [R ...] \
        [--metrics mrr@10,recall@100,recall@1000,ndcg@10,map] [--per_query [PATH]] [--output metrics.json] \
        [--baseline NAME [--permutations 10000] [--seed 0]]

Prints a table of the means over the judged queries — every query of the qrels, also one whose judgments
are all 0 — where a judged query missing from the run scores 0, as with ``trec_eval -c``; ``mrr@10`` is
MS MARCO's official MRR@10, ``mrr`` trec_eval's uncut ``recip_rank``. With ``--per_query`` it first prints
``metric qid value`` lines like ``trec_eval -q``; ``--per_query PATH`` writes them to PATH instead (TSV with a
``run metric qid value`` header, values in full precision). ``--output`` writes the same numbers as JSON,
atomically. Several runs (``--run zero-shot=a.trec stage1=b.trec``) are compared in one table, a row per run.
``--baseline NAME`` then tests every other run against the run NAME, metric by metric, over the judged
queries: mean difference, two-sided paired randomization test and paired t-test p-values (raw and
Holm-adjusted over the compared runs) and win/tie/loss counts
(:mod:`openmatch.evaluation.significance`). Semantics of each metric: :mod:`openmatch.evaluation.metrics`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional, Sequence

from ..cli import ArgumentParser, add_log_level_argument, main_wrapper
from ..dataset.qrels import load_qrels, load_run
from ..errors import UsageError
from ..evaluation.metrics import evaluate, mean_over_queries, parse_metrics
from ..evaluation.significance import DEFAULT_PERMUTATIONS, DEFAULT_SEED, compare_to_baseline, format_comparisons
from ..utils import atomic_output, setup_logging, write_json_atomic

DEFAULT_DRIVER_METRICS = "mrr@10,recall@100,recall@1000,ndcg@10,map"

logger = logging.getLogger("openmatch.evaluate")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
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
    parser.add_argument(
        "--per_query", nargs="?", const=True, default=None, metavar="PATH",
        help="also print 'metric qid value' for every judged query; with PATH, write them there (TSV) instead",
    )
    parser.add_argument("--output", default=None, help="write the results as JSON to this file")
    parser.add_argument(
        "--baseline", default=None, metavar="NAME",
        help="compare every other run with the run NAME (paired randomization and t-tests, win/tie/loss)",
    )
    parser.add_argument(
        "--permutations", type=int, default=DEFAULT_PERMUTATIONS,
        help="random sign assignments of the randomization test (exact when 2**queries is not more)",
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the randomization test")
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


def evaluate_one(qrels, run_path: str, metrics) -> tuple[dict, dict]:
    """The summary of one run (means and counts) and its ``{metric: {qid: value}}``."""
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
    return summary, per_query


def write_per_query(path: str, per_query: dict[str, dict[str, dict[str, float]]]) -> None:
    """``run metric qid value`` lines (TSV, a header first) of every run, values as Python prints floats (exact)."""
    with atomic_output(path) as handle:
        handle.write("run\tmetric\tqid\tvalue\n")
        for name, by_metric in per_query.items():
            for metric, values in by_metric.items():
                for qid, value in values.items():
                    handle.write(f"{name}\t{metric}\t{qid}\t{value!r}\n")


@main_wrapper
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(0, args.log_level)
    metrics = parse_metrics(",".join(args.metrics))  # before reading anything: a typo fails fast
    runs = parse_run_names(args.run)
    if args.baseline is not None:
        if args.baseline not in runs:
            raise UsageError(f"--baseline {args.baseline!r} is not one of the runs ({', '.join(runs)}); name them NAME=PATH")
        if len(runs) < 2:
            raise UsageError("--baseline needs at least one other --run to compare with it")
        if args.permutations < 1:
            raise UsageError(f"--permutations must be at least 1, got {args.permutations}")
    qrels = load_qrels(args.qrels)
    summaries, per_query = {}, {}
    for name, path in runs.items():
        summaries[name], per_query[name] = evaluate_one(qrels, path, metrics)
    if args.per_query is True:
        for name, by_metric in per_query.items():
            prefix = f"{name}\t" if len(runs) > 1 else ""
            for metric, values in by_metric.items():
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
    comparisons = None
    if args.baseline is not None:
        comparisons = compare_to_baseline(per_query, args.baseline, args.permutations, args.seed)
        print()
        print(format_comparisons(comparisons, args.baseline, num_judged, args.permutations, args.seed))
    if args.per_query not in (None, True):
        write_per_query(args.per_query, per_query)
    if args.output:
        if args.per_query is not None:
            for name, summary in summaries.items():
                summary["per_query"] = per_query[name]
        payload = next(iter(summaries.values())) if len(runs) == 1 else {"runs": summaries}
        if comparisons is not None:
            payload["significance"] = {
                "baseline": args.baseline, "permutations": args.permutations, "seed": args.seed,
                "comparisons": [c.to_dict() for c in comparisons],
            }
        write_json_atomic(args.output, {"qrels": args.qrels, **payload})
    return 0


if __name__ == "__main__":
    sys.exit(main())
