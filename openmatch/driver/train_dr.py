"""Train a dense retriever: ``python -m openmatch.driver.train_dr --output_dir ... --model_name_or_path ...``.

Accepts OpenMatch v2's command line (the recipe's stage-1/stage-2 commands run verbatim), one process or
many (``torchrun --nproc_per_node=N`` or ``python -m torch.distributed.launch --nproc_per_node=N``; on CPU
the processes talk over gloo). The final model is saved to ``--output_dir`` in ``DRModel``'s format; with
``--keep_best``, the best of the validated models, the start model included (:mod:`openmatch.trainer.best_model`).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from transformers import set_seed
from transformers.trainer_utils import get_last_checkpoint

from ..arguments import DataArguments, DRTrainingArguments, ModelArguments
from ..cli import main_wrapper, parse_args
from ..dataset.train_dataset import TrainCollator, TrainDataset
from ..distributed import teardown_distributed
from ..errors import MissingInputError, OutputExistsError, UsageError
from ..modeling import load_model_and_tokenizer
from ..modeling.checkpoint import CONFIG_NAME
from ..trainer import DRTrainer
from ..trainer.best_model import train_keeping_best
from ..utils import setup_logging

logger = logging.getLogger("openmatch.train_dr")

# The dataclasses this driver parses, in order (docs and tests import this tuple).
ARGUMENT_CLASSES = (ModelArguments, DataArguments, DRTrainingArguments)

_RESUME_LAST = {"true", "last", "latest"}


def resolve_resume(training_args) -> Optional[str]:
    """The checkpoint to resume from, and the guard against training over a previous run.

    ``--resume_from_checkpoint PATH`` resumes from PATH; ``--resume_from_checkpoint true`` from the newest
    ``checkpoint-N`` of ``--output_dir``. Without it, an output folder that already holds a checkpoint or a
    saved model is refused unless ``--overwrite_output_dir`` (OpenMatch's behaviour).
    """
    out = Path(training_args.output_dir)
    resume = training_args.resume_from_checkpoint
    if resume:
        if str(resume).lower() in _RESUME_LAST:
            last = get_last_checkpoint(str(out)) if out.is_dir() else None
            if last is None:
                raise MissingInputError(f"{out}: no checkpoint-N folder to resume from (--resume_from_checkpoint)")
            return last
        if not Path(resume).is_dir():
            raise MissingInputError(f"{resume}: no such checkpoint folder (--resume_from_checkpoint)")
        return str(resume)
    if out.is_dir() and not training_args.overwrite_output_dir:
        previous = [p.name for p in out.iterdir() if p.name.startswith("checkpoint-") or p.name == CONFIG_NAME]
        if previous:
            raise OutputExistsError(
                f"{out} already holds a training run ({', '.join(sorted(previous)[:3])}); pass "
                "--resume_from_checkpoint true to continue it or --overwrite_output_dir to train over it"
            )
    return None


def build_trainer(model_args, data_args, training_args, callbacks=None) -> DRTrainer:
    """Model, tokenizer, datasets and collator composed into a ``DRTrainer`` (what ``main`` trains)."""
    if not (data_args.train_path or data_args.train_dir):
        raise UsageError("give the training data with --train_path FILE or --train_dir FOLDER")
    set_seed(training_args.seed)
    model, tokenizer = load_model_and_tokenizer(model_args)
    data_seed = training_args.data_seed if training_args.data_seed is not None else training_args.seed
    train_dataset = TrainDataset.from_args(data_args, tokenizer, seed=data_seed)
    eval_dataset = (
        TrainDataset.from_args(data_args, tokenizer, seed=data_seed, path=data_args.eval_path)
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
    teardown_distributed()


if __name__ == "__main__":
    sys.exit(main())
