"""Build OpenMatch training JSONL from MS MARCO-style files (the recipe's ``build_train.py``).

Positives: every passage judged relevant in ``--qrels``. Negatives: ``--n_sample`` drawn from the
query's line in ``--negative_file`` (``qid<TAB>neg1,neg2,...``, see ``prepare_marco.sh``), excluding
positives and duplicates; the draw depends only on ``--seed`` and the query id, so the output is
byte-identical whatever ``--num_workers``. Writes ``split00.jsonl``, ``split01.jsonl``, ... into
``--save_to``; merge them with ``cat SAVE_TO/split*[0-9].jsonl`` (``*.jsonl`` would also catch
build_hn's ``*.hn.jsonl`` and earlier merged files in the same folder). Queries and passages with no token
after the template and tokenisation are skipped (never written as ``[]``) and counted in the final summary.

A collection without a negatives file (BEIR layout, a new collection): ``--negatives_from bm25`` searches
``--collection`` with BM25 (bm25s, the ``bm25`` command's defaults: k1 0.9, b 0.4, Snowball stems, English
stopwords; passages filled into ``--doc_template``) for every judged query, writes the run to
``SAVE_TO/bm25.train.trec`` and mines it as ``build_hn`` does: ranks ``--first_rank`` to ``--depth`` minus
the judged positives (and the ``--relative_margin`` / ``--absolute_margin`` filters on BM25 scores), with
what each rule removed in ``SAVE_TO/build_train.stats.json``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from ..cli import ArgumentParser, main_wrapper
from ..dataset.qrels import load_qrels, relevant_ids
from ..dataset.readers import count_lines
from ..dataset.template import Template
from ..errors import MissingInputError, UsageError
from ..negatives import CandidateFilter, MiningOptions, add_mining_arguments, build_from_run, write_bm25_run
from ..preprocessing import (
    COLLECTION_COLUMNS,
    QUERY_COLUMNS,
    add_common_arguments,
    build,
    config_from_args,
    iter_negatives_file,
    load_texts,
)
from ..utils import setup_logging

logger = logging.getLogger("openmatch.build_train")

BM25_RUN = "bm25.train.trec"
STATS_FILE = "build_train.stats.json"


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--negative_file", default=None,
                        help="qid<TAB>neg1,neg2,... (train.negatives.tsv); required with --negatives_from file")
    parser.add_argument("--negatives_from", choices=("file", "bm25"), default="file",
                        help="candidates from --negative_file, or from BM25 over --collection (no negatives file needed)")
    add_mining_arguments(parser, what="with --negatives_from bm25, BM25 hits per query")
    add_common_arguments(parser)
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def check_source(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """``--negative_file`` exactly with ``--negatives_from file``; the mining flags only with ``bm25``."""
    if args.negatives_from == "file":
        if not args.negative_file:
            raise UsageError("give --negative_file (qid<TAB>neg1,neg2,...), or --negatives_from bm25 when there is none")
        changed = [f"--{name}" for name in ("depth", "first_rank", "relative_margin", "absolute_margin")
                   if getattr(args, name) != parser.get_default(name)]
        if changed:
            raise UsageError(f"{', '.join(changed)} select BM25 hits: they apply with --negatives_from bm25 only")
    elif args.negative_file:
        raise UsageError("--negative_file and --negatives_from bm25 are two sources of negatives: give one")


def bm25_run(args: argparse.Namespace, path: Path) -> int:
    """Write the BM25 run of every judged query (filled into ``--query_template``) over ``--collection``."""
    from .. import api

    relevant = relevant_ids(load_qrels(args.qrels))
    queries = load_texts(args.queries, QUERY_COLUMNS, Template(args.query_template))
    judged = {qid: queries[qid] for qid in relevant if queries.get(qid)}
    index = api.bm25_index(args.collection, template=args.doc_template, column_names=COLLECTION_COLUMNS)
    lines = write_bm25_run(path, index, judged, args.depth)
    logger.info("wrote the BM25 run of %d judged queries (%d lines) to %s", len(judged), lines, path)
    return len(judged)


@main_wrapper
def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(0, args.log_level)
    check_source(args, parser)
    config = config_from_args(args, shard_suffix=".jsonl")
    if args.negatives_from == "file":
        total = count_lines(args.negative_file)
        build(config, lambda: iter_negatives_file(args.negative_file), args.negative_file, total=total)
        return 0
    options = MiningOptions.from_args(args)
    for path, flag in ((args.collection, "--collection"), (args.queries, "--queries"), (args.qrels, "--qrels")):
        if not os.path.exists(path):  # before minutes of indexing
            raise MissingInputError(f"{path}: no such file ({flag})")
    run = Path(args.save_to) / BM25_RUN
    total = bm25_run(args, run)
    screen = CandidateFilter(options, source=str(run))
    build_from_run(config, run, screen, Path(args.save_to) / STATS_FILE, total=total)
    return 0


if __name__ == "__main__":
    sys.exit(main())
