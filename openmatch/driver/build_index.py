"""Encode a corpus into an embedding index folder (OpenMatch's recipe flags, plus ``--bf16``).

    python -m openmatch.driver.build_index --output_dir EMB --model_name_or_path MODEL \
        --corpus_path corpus.tsv --doc_template "Title: <title> Text: <text>" --doc_column_names id,title,text \
        --p_max_len 128 --per_device_eval_batch_size 256 --fp16 --dataloader_num_workers 1

Distributed: ``torchrun --nproc_per_node=N -m openmatch.driver.build_index ...`` (or
``python -m torch.distributed.launch``); each rank encodes its share, rank 0 writes ``manifest.json``.
Writes ``.npy`` shards of at most ``--max_inmem_docs / world_size`` passages per rank; a rerun resumes,
a folder holding another index is refused unless ``--overwrite_output_dir``. Layout:
:mod:`openmatch.retriever.index`; building: :mod:`openmatch.retriever.builder`.
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence

from ..arguments import DataArguments, IndexArguments, InferenceArguments, ModelArguments
from ..cli import main_wrapper, parse_args
from ..distributed import dist_context, init_distributed, teardown_distributed
from ..utils import check_writable_folder, setup_logging

# The dataclasses this driver parses, in order (docs and tests import this tuple).
ARGUMENT_CLASSES = (ModelArguments, DataArguments, InferenceArguments, IndexArguments)


@main_wrapper
def main(argv: Optional[Sequence[str]] = None) -> int:
    model_args, data_args, infer_args, index_args = parse_args(ARGUMENT_CLASSES, argv)
    init_distributed()
    rank, _ = dist_context()
    setup_logging(rank, infer_args.log_level)
    from ..api import load_model
    from ..modeling.checkpoint import check_max_len
    from ..retriever.builder import BuildOptions, build_index

    options = BuildOptions.from_args(model_args, data_args, infer_args, index_args)
    check_writable_folder(options.output_dir, "--output_dir")  # before the model is loaded and anything encoded
    model, tokenizer = load_model(model_args)
    check_max_len(model, p_max_len=data_args.p_max_len)
    build_index(model, tokenizer, options=options)
    teardown_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
