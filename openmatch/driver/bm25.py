"""BM25 over a corpus (bm25s, no Java): index it into a folder and write a TREC run of the queries.

    python -m openmatch.driver.bm25 --output_dir BM25_DIR \
        --corpus_path corpus.tsv --doc_template "<title> <text>" --doc_column_names id,title,text \
        --query_path dev.query.txt --query_template "<text>" --query_column_names id,text \
        --trec_save_path run/dev.bm25.trec [--retrieve_depth 100] [--k1 0.9] [--b 0.4] \
        [--stemmer english|porter|none] [--stopwords en|none] [--method lucene]

The corpus and query flags are ``build_index``'s and ``retrieve``'s. The index is saved in ``--output_dir``
(``.npy`` and JSON, no pickle) with ``bm25.json`` describing it; a rerun with the same corpus and settings
loads it instead of indexing again, and an index of other settings is refused unless
``--overwrite_output_dir``. Without ``--query_path`` the command only builds the index. The run's ties are
broken by passage id descending, as trec_eval orders them. Tokens, scores and the folder:
:mod:`openmatch.retriever.bm25`.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Optional, Sequence

from ..arguments import BM25Arguments, TextArguments
from ..cli import main_wrapper, parse_args
from ..errors import MissingInputError, UsageError
from ..utils import setup_logging

logger = logging.getLogger("openmatch.bm25")

# The dataclasses this driver parses, in order (docs and tests import this tuple).
ARGUMENT_CLASSES = (TextArguments, BM25Arguments)


@main_wrapper
def main(argv: Optional[Sequence[str]] = None) -> int:
    data_args, bm25_args = parse_args(ARGUMENT_CLASSES, argv)
    setup_logging(0, bm25_args.log_level)
    if not data_args.corpus_path:
        raise UsageError("--corpus_path is required: the passages to index (TSV/JSONL, optionally .gz)")
    if bool(data_args.query_path) != bool(bm25_args.trec_save_path):
        raise UsageError("give --query_path and --trec_save_path together: the queries to search and where to write their run")
    if data_args.query_path and not os.path.exists(data_args.query_path):  # before minutes of indexing
        raise MissingInputError(f"{data_args.query_path}: no such file (--query_path)")
    from ..dataset.qrels import write_trec_run
    from ..retriever.bm25 import BM25Options, open_index, search_queries

    options = BM25Options.from_args(data_args, bm25_args)
    index = open_index(bm25_args.output_dir, data_args.corpus_path, options, overwrite=bm25_args.overwrite_output_dir)
    if data_args.query_path:
        results = search_queries(index, data_args.query_path, bm25_args.retrieve_depth,
                                 template=data_args.query_template, column_names=data_args.query_column_names)
        lines = write_trec_run(bm25_args.trec_save_path, results.items(), run_id=bm25_args.run_id)
        logger.info("wrote %d lines for %d queries to %s", lines, len(results), bm25_args.trec_save_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
