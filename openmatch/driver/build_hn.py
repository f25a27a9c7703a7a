"""Build OpenMatch hard-negative training JSONL from a TREC run (the recipe's ``build_hn.py``).

Negatives: the top ``--depth`` hits of each query in ``--hn_file`` minus its judged positives, of which
``--n_sample`` are drawn reproducibly from ``--seed`` and the query id. (OpenMatch removes positives
first and then keeps 200 of the rest; here ``--depth`` counts ranks, as the recipe describes it.)
Positives and everything else as in ``build_train.py``. Writes ``split00.hn.jsonl``, ... into
``--save_to``; merge them with ``cat SAVE_TO/split*.hn.jsonl``.
"""

from __future__ import annotations

import argparse
import sys

from ..cli import main_wrapper
from ..preprocessing import add_common_arguments, build, config_from_args, iter_run_groups
from ..utils import setup_logging


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hn_file", required=True, help="TREC run: qid Q0 pid rank score run_id")
    parser.add_argument("--depth", type=int, default=200, help="hits per query considered (by rank)")
    add_common_arguments(parser)
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


@main_wrapper
def main(argv=None):
    args = parse_args(argv)
    setup_logging(0, args.log_level)
    config = config_from_args(args, shard_suffix=".hn.jsonl")
    build(config, lambda: iter_run_groups(args.hn_file, args.depth), args.hn_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
