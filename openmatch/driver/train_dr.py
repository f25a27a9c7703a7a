"""Train a dense retriever: ``python -m openmatch.driver.train_dr --output_dir ... --model_name_or_path ...``.

Accepts OpenMatch v2's command line (the recipe's stage-1/stage-2 commands run verbatim), one process or
many (``torchrun --nproc_per_node=N`` or ``python -m torch.distributed.launch --nproc_per_node=N``; on CPU
the processes talk over gloo). The final model is saved to ``--output_dir`` in ``DRModel``'s format; with
``--keep_best``, the best of the validated models, the start model included (:mod:`openmatch.trainer.best_model`).

Before the first step, cheapest first: the resume target, a write test of ``--output_dir``, the model source
and config, the training files' token ids against the vocabulary, then (weights loaded) the maximum lengths
against the model's position embeddings; each problem is one ``error:`` line.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from transformers import set_seed

from ..arguments import DataArguments, DRTrainingArguments, ModelArguments
from ..cli import main_wrapper, parse_args
from ..dataset.train_dataset import TrainCollator, TrainDataset, resolve_train_files, scan_training_file
from ..distributed import teardown_distributed
from ..errors import InputError, MissingInputError, OutputExistsError, UsageError
from ..modeling import load_model_and_tokenizer
from ..modeling.checkpoint import CONFIG_NAME, backbone_config, check_max_len
from ..trainer import DRTrainer
from ..trainer.best_model import train_keeping_best
from ..trainer.dr_trainer import checkpoint_folders, incomplete_reason, latest_complete_checkpoint
from ..utils import check_writable_folder, setup_logging

logger = logging.getLogger("openmatch.train_dr")

# The dataclasses this driver parses, in order (docs and tests import this tuple).
ARGUMENT_CLASSES = (ModelArguments, DataArguments, DRTrainingArguments)

_RESUME_LAST = {"true", "last", "latest"}


def resolve_resume(training_args) -> Optional[str]:
    """The checkpoint to resume from, and the guard against training over a previous run.

    ``--resume_from_checkpoint PATH`` resumes from PATH; ``--resume_from_checkpoint true`` from the newest
    complete ``checkpoint-N`` of ``--output_dir``: newer ones that a killed save left incomplete are removed
    (by the first process) with a warning. Without it, an output folder that already holds a checkpoint or a
    saved model is refused unless ``--overwrite_output_dir`` (OpenMatch's behaviour).
    """
    out = Path(training_args.output_dir)
    resume = training_args.resume_from_checkpoint
    if resume:
        if str(resume).lower() in _RESUME_LAST:
            last = latest_complete_checkpoint(out, remove_incomplete=training_args.process_index == 0)
            if last is None:
                found = checkpoint_folders(out)
                if found:
                    raise InputError(
                        f"{out}: no complete checkpoint-N folder to resume from (--resume_from_checkpoint): "
                        f"{found[0].name} is incomplete ({incomplete_reason(found[0])})"
                    )
                raise MissingInputError(f"{out}: no checkpoint-N folder to resume from (--resume_from_checkpoint)")
            logger.info("resuming from %s", last)
            return str(last)
        if not Path(resume).is_dir():
            raise MissingInputError(f"{resume}: no such checkpoint folder (--resume_from_checkpoint)")
        reason = incomplete_reason(resume)
        if reason is not None:
            raise InputError(f"{resume}: incomplete checkpoint ({reason}); cannot resume from it (--resume_from_checkpoint)")
        return str(resume)
    if out.is_dir() and not training_args.overwrite_output_dir:
        previous = [p.name for p in out.iterdir() if p.name.startswith("checkpoint-") or p.name == CONFIG_NAME]
        if previous:
            raise OutputExistsError(
                f"{out} already holds a training run ({', '.join(sorted(previous)[:3])}); pass "
                "--resume_from_checkpoint true to continue it or --overwrite_output_dir to train over it"
            )
    return None


def check_training_data(data_args, vocab_size: Optional[int]) -> None:
    """Every line of the training (and validation) files checked (:func:`scan_training_file`: types, empty lists,
    token ids below the model's vocabulary size) before the model is loaded: an id out of range would otherwise
    end the first step with an IndexError. The datasets built afterwards skip the check."""
    paths = resolve_train_files(data_args.train_path, data_args.train_dir)
    if data_args.eval_path:
        if not os.path.isfile(data_args.eval_path):
            raise MissingInputError(f"{data_args.eval_path}: no such file (--eval_path)")
        paths.append(data_args.eval_path)
    for path in paths:
        scan_training_file(path, vocab_size, data_args.train_n_passages)


def build_trainer(model_args, data_args, training_args, callbacks=None) -> DRTrainer:
    """Model, tokenizer, datasets and collator composed into a ``DRTrainer`` (what ``main`` trains).

    Inputs are checked cheapest first: the model's config and the training data's token ids before the
    weights are loaded, the maximum lengths against the loaded model before any dataset is built.
    """
    if not (data_args.train_path or data_args.train_dir):
        raise UsageError("give the training data with --train_path FILE or --train_dir FOLDER")
    set_seed(training_args.seed)
    check_training_data(data_args, getattr(backbone_config(model_args), "vocab_size", None))
    model, tokenizer = load_model_and_tokenizer(model_args)
    check_max_len(model, q_max_len=data_args.q_max_len, p_max_len=data_args.p_max_len)
    data_seed = training_args.data_seed if training_args.data_seed is not None else training_args.seed
    train_dataset = TrainDataset.from_args(data_args, tokenizer, seed=data_seed, check_lines=False)
    eval_dataset = (
        TrainDataset.from_args(data_args, tokenizer, seed=data_seed, path=data_args.eval_path, check_lines=False)
        if data_args.eval_path
        else None
    )
    logger.info("%d training examples%s", len(train_dataset),
                f", {len(eval_dataset)} validation examples" if eval_dataset is not None else "")
    return DRTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=TrainCollator.for_tokenizer(tokenizer),
        processing_class=tokenizer,
        callbacks=callbacks,
        extra_args=(model_args, data_args),
    )


@main_wrapper
def main(argv: Optional[Sequence[str]] = None) -> None:
    model_args, data_args, training_args = parse_args(ARGUMENT_CLASSES, argv)
    setup_logging(training_args.process_index if training_args.world_size > 1 else 0, training_args.log_level)
    resume = resolve_resume(training_args)
    check_writable_folder(training_args.output_dir, "--output_dir")
    logger.info(
        "process %d of %d on %s, fp16=%s bf16=%s", training_args.process_index, training_args.world_size,
        training_args.device, training_args.fp16, training_args.bf16,
    )
    trainer = build_trainer(model_args, data_args, training_args)
    if training_args.keep_best:
        train_keeping_best(trainer, resume)  # also saves the best model to --output_dir
    else:
        trainer.train(resume_from_checkpoint=resume)
        trainer.save_model()
    if trainer.is_world_process_zero():
        logger.info("model saved to %s", training_args.output_dir)
    teardown_distributed(trainer.model_wrapped)


if __name__ == "__main__":
    sys.exit(main())
