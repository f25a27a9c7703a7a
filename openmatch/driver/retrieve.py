"""Encode queries and search an index folder built by ``build_index``; write a TREC run.

    python -m openmatch.driver.retrieve --output_dir EMB --model_name_or_path MODEL \
        --query_path dev.query.txt --query_template "<text>" --query_column_names id,text --q_max_len 32 \
        --trec_save_path run/dev.trec [--retrieve_depth 100] [--faiss_index IVF4096,Flat [--check_recall 200]] [--use_gpu]

Exact inner-product search by default (block by block, exact top-k merge); ``--faiss_index`` takes a faiss
factory string for approximate search, whose trained index is saved in the index folder and reused by later
runs; ``--check_recall N`` measures its recall against exact search on N sampled queries
(``<trec_save_path>.recall.json``). The query encoder must be the model the index was built with (checked
against the manifest). Under ``torchrun`` / ``torch.distributed.launch`` every rank encodes the queries and
searches its share of the index's rows; the ranks' top-k lists are merged exactly and rank 0 writes the run.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Optional, Sequence

from ..arguments import DataArguments, InferenceArguments, ModelArguments, SearchArguments
from ..cli import main_wrapper, parse_args
from ..distributed import all_ok, dist_context, init_distributed, raise_unless_all_ok, teardown_distributed
from ..errors import UsageError
from ..utils import check_writable_folder, setup_logging, write_json_atomic

logger = logging.getLogger("openmatch.retrieve")

# The dataclasses this driver parses, in order (docs and tests import this tuple).
ARGUMENT_CLASSES = (ModelArguments, DataArguments, InferenceArguments, SearchArguments)
# Beside the run: the recall check of --check_recall.
RECALL_SUFFIX = ".recall.json"


@main_wrapper
def main(argv: Optional[Sequence[str]] = None) -> int:
    model_args, data_args, infer_args, search_args = parse_args(ARGUMENT_CLASSES, argv)
    init_distributed()
    rank, _ = dist_context()
    setup_logging(rank, infer_args.log_level)
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
    from ..retriever import SearchOptions
    from ..retriever.search import check_search_resources

    options = SearchOptions.from_args(data_args, infer_args, search_args)
    check_search_resources(options)
    index = _open_index(infer_args.output_dir, rank)
    model, tokenizer = load_model(model_args)
    check_max_len(model, q_max_len=data_args.q_max_len)
    results = retrieve(model, tokenizer, data_args.query_path, index, options=options)
    error = None
    if rank == 0:
        try:
            _write_outputs(run_path, results, infer_args.run_id)
        except BaseException as err:  # reported here; the other ranks stop instead of waiting
            error = err
    raise_unless_all_ok(error, "rank 0 failed to write the run; see its log")
    teardown_distributed()
    return 0


def _open_index(index_dir: str, rank: int):
    """The index, its files checked against the manifest by rank 0 first: the others then find them stamped
    as verified (``verified.json``) and read only their ``stat`` instead of hashing every shard again."""
    from ..retriever import EmbeddingIndex, IndexFolderError

    index, error = None, None
    if rank == 0:
        try:
            index = EmbeddingIndex(index_dir)
        except Exception as err:
            error = err
    if not all_ok(error is None):
        if error is not None:
            raise error
        raise IndexFolderError(f"rank 0 refused the index in {index_dir}; see its log")
    return index if rank == 0 else EmbeddingIndex(index_dir)


def _write_outputs(run_path: str, results, run_id: str) -> None:
    from ..dataset.qrels import write_trec_run

    lines = write_trec_run(run_path, results.items(), run_id=run_id)
    logger.info("wrote %d lines for %d queries to %s", lines, len(results), run_path)
    recall_path = run_path + RECALL_SUFFIX
    if results.recall is not None:
        write_json_atomic(recall_path, {"run": os.path.abspath(run_path), **results.recall})
        logger.info("wrote the recall check to %s", recall_path)
    elif os.path.exists(recall_path):
        os.unlink(recall_path)  # it described the run just replaced
        logger.info("removed %s: it described the run this one replaced", recall_path)


if __name__ == "__main__":
    sys.exit(main())
