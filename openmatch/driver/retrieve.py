"""Encode queries and search an index folder built by ``build_index``; write a TREC run.

    python -m openmatch.driver.retrieve --output_dir EMB --model_name_or_path MODEL \
        --query_path dev.query.txt --query_template "<text>" --query_column_names id,text --q_max_len 32 \
        --trec_save_path run/dev.trec [--retrieve_depth 100] [--faiss_index IVF4096,Flat] [--use_gpu]

Exact inner-product search by default (shard by shard, exact top-k merge); ``--faiss_index`` takes a faiss
factory string for approximate search. The query encoder must be the model the index was built with
(checked against the manifest). Under a distributed launcher, rank 0 does the whole job (queries are few
next to passages) and the other ranks exit.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Optional, Sequence

from ..arguments import DataArguments, InferenceArguments, ModelArguments, SearchArguments
from ..cli import main_wrapper, parse_args
from ..distributed import dist_context
from ..errors import UsageError
from ..utils import check_writable_folder, setup_logging

logger = logging.getLogger("openmatch.retrieve")

# The dataclasses this driver parses, in order (docs and tests import this tuple).
ARGUMENT_CLASSES = (ModelArguments, DataArguments, InferenceArguments, SearchArguments)


@main_wrapper
def main(argv: Optional[Sequence[str]] = None) -> int:
    model_args, data_args, infer_args, search_args = parse_args(ARGUMENT_CLASSES, argv)
    rank, _ = dist_context()
    setup_logging(rank, infer_args.log_level)
    if rank != 0:
        logger.info("rank %d: retrieval runs on rank 0 only", rank)
        return 0
    if not data_args.query_path:
        raise UsageError("--query_path is required: the queries to search (TSV/JSONL, optionally .gz)")
    if not infer_args.trec_save_path:
        raise UsageError("--trec_save_path is required: where to write the TREC run")
    # Everything that can be refused is, before the model is loaded and the queries are encoded.
    run_path = infer_args.trec_save_path
    if os.path.isdir(run_path):
        raise UsageError(f"--trec_save_path {run_path} is a folder; give the path of the run file to write")
    check_writable_folder(os.path.dirname(os.path.abspath(run_path)), "--trec_save_path", run_path)
    from ..api import load_model, retrieve
    from ..modeling.checkpoint import check_max_len
    from ..dataset.qrels import write_trec_run
    from ..retriever import EmbeddingIndex, SearchOptions
    from ..retriever.search import check_search_resources

    options = SearchOptions.from_args(data_args, infer_args, search_args)
    check_search_resources(options)
    index = EmbeddingIndex(infer_args.output_dir)  # checks the index's files against the manifest
    model, tokenizer = load_model(model_args)
    check_max_len(model, q_max_len=data_args.q_max_len)
    results = retrieve(model, tokenizer, data_args.query_path, index, options=options)
    lines = write_trec_run(infer_args.trec_save_path, results.items(), run_id=infer_args.run_id)
    logger.info("wrote %d lines for %d queries to %s", lines, len(results), infer_args.trec_save_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
