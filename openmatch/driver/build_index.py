"""Encode a corpus into an embedding index folder (OpenMatch's recipe flags, plus ``--bf16``).

    python -m openmatch.driver.build_index --output_dir EMB --model_name_or_path MODEL \
        --corpus_path corpus.tsv --doc_template "Title: <title> Text: <text>" --doc_column_names id,title,text \
        --p_max_len 128 --per_device_eval_batch_size 256 --fp16 --dataloader_num_workers 1

Distributed: ``torchrun --nproc_per_node=N -m openmatch.driver.build_index ...`` (or
``python -m torch.distributed.launch``); each rank encodes its share, rank 0 writes ``manifest.json``.
Writes ``.npy`` shards of at most ``--max_inmem_docs / world_size`` passages per rank; a rerun resumes,
a folder holding another index is refused unless ``--overwrite_output_dir``. Layout:
:mod:`openmatch.retriever.index`.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from typing import Optional, Sequence

from ..arguments import DataArguments, InferenceArguments, ModelArguments
from ..cli import main_wrapper, parse_args
from ..distributed import dist_context, init_distributed, teardown_distributed
from ..errors import UsageError
from ..utils import dataclasses_to_dict, setup_logging

logger = logging.getLogger("openmatch.build_index")


@dataclass
class IndexArguments:
    """Index-only flags (not in OpenMatch)."""

    embedding_dtype: str = field(
        default="float32", metadata={"help": "dtype of the stored embeddings", "choices": ["float32", "float16"]}
    )


def device_of(infer_args) -> Optional[str]:
    return "cpu" if getattr(infer_args, "use_cpu", False) else None


# The dataclasses this driver parses, in order (docs and tests import this tuple).
ARGUMENT_CLASSES = (ModelArguments, DataArguments, InferenceArguments, IndexArguments)


@main_wrapper
def main(argv: Optional[Sequence[str]] = None) -> int:
    model_args, data_args, infer_args, index_args = parse_args(ARGUMENT_CLASSES, argv)
    init_distributed()
    rank, _ = dist_context()
    setup_logging(rank, infer_args.log_level)
    if not data_args.corpus_path:
        raise UsageError("--corpus_path is required: the passages to encode (TSV/JSONL, optionally .gz)")
    from .. import api

    model, tokenizer = api.load_model(model_args)
    api.build_index(
        model,
        tokenizer,
        data_args.corpus_path,
        infer_args.output_dir,
        model_path=model_args.model_name_or_path,
        max_len=data_args.p_max_len,
        batch_size=infer_args.per_device_eval_batch_size,
        template=data_args.doc_template,
        column_names=data_args.doc_column_names,
        num_workers=infer_args.dataloader_num_workers,
        max_inmem_docs=infer_args.max_inmem_docs,
        dtype=index_args.embedding_dtype,
        fp16=infer_args.fp16,
        bf16=infer_args.bf16,
        overwrite=infer_args.overwrite_output_dir,
        device=device_of(infer_args),
        extra_manifest=_snapshot(model_args, data_args, infer_args, index_args),
    )
    teardown_distributed()
    return 0


def _snapshot(*args) -> dict:
    keep = ("output_dir", "per_device_eval_batch_size", "fp16", "bf16", "dataloader_num_workers", "max_inmem_docs", "use_cpu")
    snap = dataclasses_to_dict(*args)
    for name in list(snap):
        if name == "InferenceArguments":  # the rest of TrainingArguments says nothing about the index
            snap[name] = {key: snap[name].get(key) for key in keep}
    return snap


if __name__ == "__main__":
    sys.exit(main())
