"""Fuse two or more TREC runs of the same queries into one TREC run.

    python -m openmatch.driver.fuse --run dense.trec bm25.trec --trec_save_path hybrid.trec \
        [--method rrf [--rrf_k 60] | --method interpolation [--normalization minmax|zscore] [--alpha 0.5]] \
        [--weights W [W ...]] [--depth 100] [--run_id fused]

``rrf`` (the default) is reciprocal rank fusion, ``Σ w / (k + rank)``; ``interpolation`` sums each run's
per-query normalised scores with weights (``--alpha A`` for two runs is ``--weights A 1-A``; equal weights by
default). Input ranks follow trec_eval's order (score, then passage id descending; the rank column is
ignored), and the fused run is written in the order evaluation reads it back. Details:
:mod:`openmatch.evaluation.fusion`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional, Sequence

from ..cli import ArgumentParser, add_log_level_argument, main_wrapper
from ..dataset.qrels import load_run, write_trec_run
from ..errors import UsageError
from ..evaluation.fusion import NORMALIZATIONS, RRF_K, interpolate, reciprocal_rank_fusion
from ..utils import setup_logging

logger = logging.getLogger("openmatch.fuse")

METHODS = ("rrf", "interpolation")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m openmatch.driver.fuse", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, nargs="+", help="two or more TREC runs: 'qid Q0 pid rank score run_id'")
    parser.add_argument("--trec_save_path", required=True, help="where to write the fused TREC run")
    parser.add_argument("--method", default="rrf", choices=METHODS,
                        help="reciprocal rank fusion, or interpolation of normalised scores")
    parser.add_argument("--rrf_k", type=float, default=None, help=f"rrf: the constant k of 1 / (k + rank) (default {RRF_K})")
    parser.add_argument("--normalization", default=None, choices=NORMALIZATIONS,
                        help="interpolation: per-query score normalisation (default minmax)")
    parser.add_argument("--alpha", type=float, default=None,
                        help="interpolation of two runs: weight of the first run, 1 - alpha of the second")
    parser.add_argument("--weights", type=float, nargs="+", default=None,
                        help="one weight per run (default: 1 each for rrf, 1 / number of runs for interpolation)")
    parser.add_argument("--depth", type=int, default=100, help="passages kept per query in the fused run")
    parser.add_argument("--run_id", default="fused", help="last column of the fused run")
    add_log_level_argument(parser)
    return parser


def resolve_weights(args) -> Optional[list[float]]:
    """``--weights``, or ``--alpha`` as the two weights it stands for; flags of the other method are refused."""
    if args.method == "rrf":
        if args.normalization is not None or args.alpha is not None:
            raise UsageError("--normalization and --alpha apply to --method interpolation, not rrf")
        if args.rrf_k is not None and not args.rrf_k >= 0:
            raise UsageError(f"--rrf_k must be a non-negative number, got {args.rrf_k}")
    elif args.rrf_k is not None:
        raise UsageError("--rrf_k applies to --method rrf, not interpolation")
    if args.alpha is None:
        return args.weights
    if args.weights is not None:
        raise UsageError("give --alpha or --weights, not both")
    if len(args.run) != 2:
        raise UsageError(f"--alpha weighs two runs, got {len(args.run)}: use --weights, one per run")
    if not 0 <= args.alpha <= 1:
        raise UsageError(f"--alpha must be in [0, 1], got {args.alpha}")
    return [args.alpha, 1 - args.alpha]


@main_wrapper
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(0, args.log_level)
    if len(args.run) < 2:
        raise UsageError(f"--run needs two or more runs to fuse, got {len(args.run)}")
    if len(set(args.run)) != len(args.run):
        raise UsageError("--run names the same file twice")
    if args.depth < 1:
        raise UsageError(f"--depth must be at least 1, got {args.depth}")
    output = os.path.realpath(args.trec_save_path)
    if any(os.path.realpath(path) == output for path in args.run):
        raise UsageError(f"--trec_save_path {args.trec_save_path} is one of the runs to fuse: write the fused run elsewhere")
    weights = resolve_weights(args)
    if weights is not None and len(weights) != len(args.run):
        raise UsageError(f"--weights has {len(weights)} values for {len(args.run)} runs: give one per run")
    runs = [load_run(path) for path in args.run]
    if args.method == "rrf":
        fused = reciprocal_rank_fusion(runs, k=RRF_K if args.rrf_k is None else args.rrf_k, weights=weights, depth=args.depth)
    else:
        fused = interpolate(runs, weights=weights, normalization=args.normalization or "minmax", depth=args.depth)
    lines = write_trec_run(args.trec_save_path, fused.items(), run_id=args.run_id)
    logger.info("fused %d runs (%s): wrote %d lines for %d queries to %s", len(runs), args.method, lines, len(fused),
                args.trec_save_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
