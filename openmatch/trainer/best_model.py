"""``--keep_best``: training never ends below where it started on the validation set.

A fixed number of epochs can leave a collection with few training queries worse than its zero-shot model. With
``--keep_best`` the start model is validated before the first step (the retrieval validation of
:mod:`openmatch.trainer.retrieval_eval`: MRR@k, k the first of ``--eval_retrieval_k``), again at every
evaluation of ``--eval_strategy`` and once more after the last step when that step was not evaluated; each
model that beats every earlier one is saved to ``OUTPUT_DIR/best_model/``. At the end ``--output_dir`` holds
the best of them: the last model when it is the best, otherwise the best weights are loaded back and saved there
(for the start model: its weights with this run's ``openmatch_config.json``). A tie keeps the earlier model, so
training must improve the validation MRR to replace the start model. The log says which model was kept, and
``OUTPUT_DIR/keep_best.json`` records every validation (``history``: step and value) and the kept step.

Hugging Face's ``load_best_model_at_end`` only chooses among saved checkpoints (the start model is none of them)
and needs a full checkpoint — optimizer included — at every evaluation; here only the model is saved, and only
when it improves. A resumed run (``--resume_from_checkpoint``) continues from ``best_model/keep_best.json``.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Optional

from transformers import TrainerCallback

from ..errors import UsageError
from ..utils import write_json_atomic
from .retrieval_eval import parse_ks

logger = logging.getLogger(__name__)

BEST_DIR = "best_model"
RECORD = "keep_best.json"


class KeepBest(TrainerCallback):
    """Records every validation's MRR and saves each model that beats all earlier ones to ``best_model/``."""

    def __init__(self, trainer):
        args = trainer.args
        if trainer.eval_dataset is None:
            raise UsageError("--keep_best chooses by validation MRR: give the validation set with --eval_path")
        if not args.eval_retrieval_k:
            raise UsageError("--keep_best chooses by validation MRR, which an empty --eval_retrieval_k switches off")
        self.trainer = trainer
        self.metric = f"eval_mrr@{parse_ks(args.eval_retrieval_k)[0]}"
        self.folder = Path(args.output_dir) / BEST_DIR
        self.history: list[dict] = []
        self.best: Optional[dict] = None

    # ------------------------------------------------------------------ record
    def load(self) -> bool:
        """Continue from the record of an interrupted run, if ``best_model/`` holds one."""
        path = self.folder / RECORD
        if not path.exists():
            return False
        record = json.loads(path.read_text(encoding="utf-8"))
        self.history, self.best = record["history"], record["best"]
        logger.info("--keep_best: continuing from %s (best so far: %s)", path, self.describe(self.best))
        return True

    def record(self) -> dict:
        return {"metric": self.metric, "history": self.history, "best": self.best}

    @staticmethod
    def describe(entry: dict) -> str:
        what = "the start model" if entry["step"] == 0 else f"step {entry['step']}"
        return f"{what}, {entry['value']:.4f}"

    # ------------------------------------------------------------------ callback
    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not metrics or self.metric not in metrics:
            return
        entry = {"step": int(state.global_step), "value": float(metrics[self.metric])}
        if self.history and self.history[-1]["step"] == entry["step"]:
            return  # the same weights evaluated again (an evaluation after the last step that already had one)
        self.history.append(entry)
        if self.best is None or entry["value"] > self.best["value"]:
            self.best = entry
            self.trainer.save_model(str(self.folder))
            if self.trainer.is_world_process_zero():
                write_json_atomic(self.folder / RECORD, self.record())
            logger.info("--keep_best: %s %.4f at step %d is the best so far; saved to %s", self.metric,
                        entry["value"], entry["step"], self.folder)

    # ------------------------------------------------------------------ end
    def restore(self) -> None:
        """Put the best weights into the trainer's model (they are there already when the last model is best)."""
        last = self.history[-1]
        self.trainer.accelerator.wait_for_everyone()  # every rank reads what rank 0 saved
        if self.best["step"] != last["step"]:
            self.trainer._load_from_checkpoint(str(self.folder))
        logger.info("--keep_best: kept %s (%s %.4f; the start model %s, the last model, step %d, %s)",
                    "the start model" if self.best["step"] == 0 else f"the model of step {self.best['step']}",
                    self.metric, self.best["value"], _start(self.history), last["step"],
                    f"{last['value']:.4f}")

    def finish(self) -> None:
        """After the best model is saved to ``--output_dir``: write the record there and drop ``best_model/``."""
        self.trainer.accelerator.wait_for_everyone()
        if self.trainer.is_world_process_zero():
            write_json_atomic(Path(self.trainer.args.output_dir) / RECORD,
                              {**self.record(), "kept": self.best["step"]})
            shutil.rmtree(self.folder, ignore_errors=True)


def _start(history: list[dict]) -> str:
    start = next((entry for entry in history if entry["step"] == 0), None)
    return f"{start['value']:.4f}" if start is not None else "not validated in this run"


def train_keeping_best(trainer, resume_from_checkpoint: Optional[str] = None) -> KeepBest:
    """Train with ``--keep_best`` (module docstring) and save the best model to ``--output_dir``."""
    keeper = KeepBest(trainer)
    trainer.add_callback(keeper)
    if not (resume_from_checkpoint and keeper.load()):
        if trainer.is_world_process_zero():
            shutil.rmtree(keeper.folder, ignore_errors=True)  # a previous run's best is no candidate of this one
        trainer.accelerator.wait_for_everyone()
        # The model is still the one --model_name_or_path names (a checkpoint is loaded by train()).
        trainer.evaluate()
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    if not keeper.history or keeper.history[-1]["step"] != trainer.state.global_step:
        trainer.evaluate()
    keeper.restore()
    trainer.save_model()
    keeper.finish()
    return keeper
