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
import sys
from dataclasses import dataclass, field
from typing import Optional, Sequence

from ..arguments import DataArguments, InferenceArguments, ModelArguments
from ..cli import main_wrapper, parse_args
from ..distributed import dist_context
from ..errors import InputError, UsageError
from ..utils import setup_logging
from .build_index import device_of

logger = logging.getLogger("openmatch.retrieve")


@dataclass
class SearchArguments:
    """Search flags beyond OpenMatch's."""

    faiss_nprobe: int = field(default=32, metadata={"help": "IVF lists visited per query (approximate search)"})
    faiss_ef_search: int = field(default=128, metadata={"help": "HNSW efSearch (approximate search)"})
    faiss_train_sample: int = field(default=262_144, metadata={"help": "vectors sampled to train an approximate index"})
    search_batch_size: int = field(default=8192, metadata={"help": "queries per faiss call"})
    allow_model_mismatch: bool = field(
        default=False, metadata={"help": "search even if the query encoder's weights differ from the index's model"}
    )


def check_compatible(model, manifest: dict, index_dir: str, allow_mismatch: bool = False) -> None:
    """Refuse a query encoder whose dimension, configuration or weights differ from the index's model."""
    from ..retriever.encode import model_fingerprint

    built = manifest["model"]
    if int(model.embedding_dim) != int(built["dim"]):
        raise InputError(
            f"the query encoder gives {model.embedding_dim}-dimensional embeddings but the index in {index_dir} holds "
            f"{built['dim']}-dimensional ones (built with {built['path'] or 'another model'}); encode queries and "
            "passages with the same model"
        )
    if allow_mismatch:
        return
    config = model.config.encoding_json() if hasattr(model.config, "encoding_json") else {}
    if config != built.get("config", config) or model_fingerprint(model) != built["fingerprint"]:
        raise InputError(
            f"the query encoder is not the model that built the index in {index_dir} (built with "
            f"{built['path'] or 'another model'}); rebuild the index or pass --allow_model_mismatch"
        )


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
    from .. import api
    from ..dataset.qrels import write_trec_run
    from ..retriever.search import EmbeddingIndex

    index = EmbeddingIndex(infer_args.output_dir)  # fails fast, before the model is loaded
    model, tokenizer = api.load_model(model_args)
    check_compatible(model, index.manifest, infer_args.output_dir, search_args.allow_model_mismatch)
    qids, q_reps = api.encode_file(
        model,
        tokenizer,
        data_args.query_path,
        max_len=data_args.q_max_len,
        batch_size=infer_args.per_device_eval_batch_size,
        template=data_args.query_template,
        column_names=data_args.query_column_names,
        side="query",
        num_workers=infer_args.dataloader_num_workers,
        device=device_of(infer_args),
        fp16=infer_args.fp16,
        bf16=infer_args.bf16,
    )
    logger.info("encoded %d queries; searching %d passages (%s)", len(qids), index.total, infer_args.faiss_index)
    results = api.search(
        index,
        q_reps,
        qids,
        depth=infer_args.retrieve_depth,
        faiss_index=infer_args.faiss_index,
        use_gpu=infer_args.use_gpu,
        starting_gpu=infer_args.faiss_starting_gpu,
        query_batch_size=search_args.search_batch_size,
        nprobe=search_args.faiss_nprobe,
        ef_search=search_args.faiss_ef_search,
        train_sample=search_args.faiss_train_sample,
    )
    lines = write_trec_run(infer_args.trec_save_path, results.items(), run_id=infer_args.run_id)
    logger.info("wrote %d lines for %d queries to %s", lines, len(results), infer_args.trec_save_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
