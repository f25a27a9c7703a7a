"""Build OpenMatch training JSONL from MS MARCO-style files (the recipe's ``build_train.py``).

Positives: every passage judged relevant in ``--qrels``. Negatives: ``--n_sample`` drawn from the
query's line in ``--negative_file`` (``qid<TAB>neg1,neg2,...``, see ``prepare_marco.sh``), excluding
positives and duplicates; the draw depends only on ``--seed`` and the query id, so the output is
byte-identical whatever ``--num_workers``. Writes ``split00.jsonl``, ``split01.jsonl``, ... into
``--save_to``; merge them with ``cat SAVE_TO/split*[0-9].jsonl`` (``*.jsonl`` would also catch
build_hn's ``*.hn.jsonl`` and earlier merged files in the same folder). Queries and passages with no token
after the template and tokenisation are skipped (never written as ``[]``) and counted in the final summary.
"""

from __future__ import annotations

import argparse
import sys

from ..cli import main_wrapper
from ..dataset.readers import count_lines
from ..preprocessing import add_common_arguments, build, config_from_args, iter_negatives_file
from ..utils import setup_logging


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--negative_file", required=True, help="qid<TAB>neg1,neg2,... (train.negatives.tsv)")
    add_common_arguments(parser)
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


@main_wrapper
def main(argv=None):
    args = parse_args(argv)
    setup_logging(0, args.log_level)
    config = config_from_args(args, shard_suffix=".jsonl")
    total = count_lines(args.negative_file)
    build(config, lambda: iter_negatives_file(args.negative_file), args.negative_file, total=total)
    return 0


if __name__ == "__main__":
    sys.exit(main())
