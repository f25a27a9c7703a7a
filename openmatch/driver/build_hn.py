"""Build OpenMatch hard-negative training JSONL from a TREC run (the recipe's ``build_hn.py``).

Negatives: the hits of each query in ``--hn_file`` ranked ``--first_rank`` (1) to ``--depth`` (200), minus its
judged positives and, with ``--relative_margin`` / ``--absolute_margin``, minus the hits scoring too close to
the query's lowest positive score (taken from the run, or computed with ``--index_dir``'s model when the run
lacks the positive); of what is left, ``--n_sample`` are drawn reproducibly from ``--seed`` and the query id.
The defaults keep every hit of the top 200 that is not a positive. What each rule removed is logged in one
line and written to ``SAVE_TO/build_hn.stats.json``. (OpenMatch removes positives first and then keeps 200 of
the rest; here ``--depth`` counts ranks, as the recipe describes it.) Positives and everything else as in
``build_train.py``. Writes ``split00.hn.jsonl``, ... into ``--save_to``; merge them with
``cat SAVE_TO/split*.hn.jsonl``. The rules: :mod:`openmatch.negatives`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cli import ArgumentParser, main_wrapper
from ..errors import UsageError
from ..negatives import CandidateFilter, IndexScorer, MiningOptions, add_mining_arguments, build_from_run
from ..preprocessing import add_common_arguments, config_from_args
from ..utils import setup_logging

STATS_FILE = "build_hn.stats.json"


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hn_file", required=True, help="TREC run: qid Q0 pid rank score run_id")
    add_mining_arguments(parser)
    parser.add_argument(
        "--index_dir", default=None,
        help="embedding folder the run was retrieved from: positives missing from the run are scored with its model "
        "(queries by --query_template and --q_max_len, special tokens included, as retrieve does) for the margins",
    )
    add_common_arguments(parser)
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def index_scorer(index_dir: str, q_max_len: int) -> IndexScorer:
    """Scores of positives as the run's retriever gives them: the index's model encodes the queries."""
    from .. import api
    from ..retriever.index import EmbeddingIndex

    index = EmbeddingIndex(index_dir)
    model, tokenizer = api.load_index_model(index)
    return IndexScorer(index, lambda texts: api.encode(model, tokenizer, texts, max_len=q_max_len, side="query"))


@main_wrapper
def main(argv=None):
    args = parse_args(argv)
    setup_logging(0, args.log_level)
    config = config_from_args(args, shard_suffix=".hn.jsonl")
    options = MiningOptions.from_args(args)
    if args.index_dir and not options.uses_scores:
        raise UsageError("--index_dir scores positives for --relative_margin / --absolute_margin; give a margin or drop it")
    scorer = index_scorer(args.index_dir, args.q_max_len) if args.index_dir else None
    screen = CandidateFilter(options, scorer, source=args.hn_file)
    build_from_run(config, args.hn_file, screen, Path(args.save_to) / STATS_FILE, index_dir=args.index_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
