"""``DRTrainer``: the Hugging Face ``Trainer`` (transformers 5) taught to train a ``DRModel``.

Only what differs from the stock trainer lives here: the contrastive step (optionally cross-device, optionally
gradient-cached), the training set's epoch (set by the trainer itself, see ``_run_epoch``), checkpoints in
``DRModel``'s format (and resuming from them), and retrieval metrics next to the validation loss. Scheduling,
mixed precision, gradient accumulation, DDP, logging (TensorBoard) and checkpoint rotation are the stock
trainer's.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Optional

import torch
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.training_args import ParallelMode

from ..distributed import gather_with_grad
from ..errors import InputError, OpenMatchError, ResourceError, UsageError
from ..modeling import ContrastiveLoss, DRModel, batch_false_negative_mask
from ..modeling.checkpoint import CONFIG_NAME, TRAINER_ARGS_NAME, load_lora_weights, read_config
from ..utils import dataclasses_to_dict, write_json_atomic
from .gradcache import GradCache
from .retrieval_eval import RetrievalValidation, parse_ks

logger = logging.getLogger(__name__)

ARGS_NAME = TRAINER_ARGS_NAME
# The stock trainer writes this last into a checkpoint-N folder (after the model, optimizer, scheduler and RNG
# states): with it and our CONFIG_NAME (the model's last file) a checkpoint is complete.
TRAINER_STATE_NAME = "trainer_state.json"
_CHECKPOINT_RE = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
# errno values of a full disk or an exhausted quota.
_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def incomplete_reason(folder: str | os.PathLike) -> Optional[str]:
    """Why the checkpoint folder ``folder`` is incomplete (e.g. its save was killed), or ``None`` when complete."""
    folder = Path(folder)
    if not (folder / CONFIG_NAME).is_file():
        return f"no {CONFIG_NAME}"
    state = folder / TRAINER_STATE_NAME
    if not state.is_file():
        return f"no {TRAINER_STATE_NAME}"
    try:
        json.loads(state.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return f"{TRAINER_STATE_NAME} is cut off"
    return None


def checkpoint_folders(output_dir: str | os.PathLike) -> list[Path]:
    """The ``checkpoint-N`` folders of a run's output folder, newest (highest N) first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _CHECKPOINT_RE.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found, key=lambda item: item[0], reverse=True)]


def latest_complete_checkpoint(output_dir: str | os.PathLike, remove_incomplete: bool = False) -> Optional[Path]:
    """The newest complete ``checkpoint-N`` of ``output_dir`` (``None`` if there is none).

    Newer folders that are incomplete (a save killed or out of disk space) are skipped with a warning and,
    with ``remove_incomplete`` (the saving rank) and a complete one to resume from, removed: the resumed run
    writes them again, and what a killed save left there must not be mixed into the new save.
    """
    skipped = []
    for folder in checkpoint_folders(output_dir):
        reason = incomplete_reason(folder)
        if reason is None:
            for stale, why in skipped:
                if remove_incomplete:
                    shutil.rmtree(stale, ignore_errors=True)
                logger.warning("%s is incomplete (%s; its save was cut off): %s; resuming from %s", stale, why,
                               "removed it" if remove_incomplete else "skipped", folder.name)
            return folder
        skipped.append((folder, reason))
    return None


def save_error(err: OSError, folder: str | os.PathLike) -> BaseException:
    """The user error for an ``OSError`` raised while saving into ``folder``: a full disk names the file and the
    folder; another error that names its file is already one (the commands print it as one line)."""
    if isinstance(err, OpenMatchError) or err.errno not in _NO_SPACE:
        return err
    where = err.filename or folder
    return ResourceError(
        f"{where}: no space left on device while saving {folder}; free some space, then rerun with "
        "--resume_from_checkpoint true to continue from the last complete checkpoint"
    )



def _raise_save_error(err: OSError, folder) -> None:
    converted = save_error(err, folder)
    if converted is err:
        raise err
    raise converted from err


class DRTrainer(Trainer):
    """``Trainer`` for dense retrieval.

    Args beyond ``Trainer``'s: ``extra_args`` — the other resolved argument dataclasses (model, data) saved
    with every checkpoint as ``openmatch_args.json`` beside the training arguments. The model must be a
    ``DRModel``; batches come from ``TrainCollator`` (``{"query": ..., "passage": ...}``).
    """

    def __init__(self, *args, extra_args: tuple = (), **kwargs):
        # The tokenizer is saved with each checkpoint but kept from the stock trainer, which would try to align
        # its special tokens with ``model.config`` (a ``DRModelConfig``, not a transformers config).
        self.tokenizer = kwargs.pop("processing_class", None)
        super().__init__(*args, **kwargs)
        if not isinstance(self.model, DRModel):
            raise TypeError(f"DRTrainer trains a DRModel, got {type(self.model).__name__}")
        self.extra_args = tuple(extra_args)
        if self.args.negatives_x_device and self.args.parallel_mode != ParallelMode.DISTRIBUTED:
            raise UsageError(
                "--negatives_x_device shares passages across processes and needs a distributed launch "
                "(torchrun --nproc_per_node=N -m openmatch.driver.train_dr ...); drop the flag for one process"
            )
        if self.args.n_gpu > 1:
            raise UsageError(
                f"{self.args.n_gpu} GPUs are visible to one process (DataParallel), which DRTrainer does not "
                "support: launch one process per GPU with torchrun --nproc_per_node=N"
            )
        if self.args.dataloader_persistent_workers and self.args.dataloader_num_workers > 0:
            raise UsageError(
                "--dataloader_persistent_workers keeps loader workers across epochs, so they would never see "
                "the new epoch's passage sampling; drop the flag"
            )
        self.loss_fn = ContrastiveLoss(temperature=self.model.config.temperature)
        self.grad_cache = (
            GradCache(
                self.args.gc_q_chunk_size,
                self.args.gc_p_chunk_size,
                loss_fn=self._contrastive_loss,
                backward=self.accelerator.backward,
                no_sync=lambda model: self.accelerator.no_sync(model),
                forward_context=self.compute_loss_context_manager,
            )
            if self.args.grad_cache
            else None
        )
        self._retrieval: Optional[RetrievalValidation] = None
        self._retrieval_source = None
        # An empty --eval_retrieval_k switches the retrieval metrics off (validation loss only, as OpenMatch).
        self._ks = parse_ks(self.args.eval_retrieval_k) if self.args.eval_retrieval_k else []

    # ------------------------------------------------------------------ loss and step
    @property
    def _loss_factor(self) -> int:
        # With gathered negatives every rank holds the gradient of the global loss for its own reps; DDP then
        # averages over ranks, which this factor undoes.
        return self.args.world_size if self.args.negatives_x_device else 1

    def _contrastive_loss(self, q_reps: torch.Tensor, p_reps: torch.Tensor, passage_keys=None,
                          positive_keys=None) -> torch.Tensor:
        """The loss of this rank's reps (gathered from every rank with --negatives_x_device), each query's other
        positives masked out of its negatives unless --no_mask_false_negatives."""
        mask = None
        if self.args.mask_false_negatives and passage_keys is not None and positive_keys is not None:
            mask = batch_false_negative_mask(passage_keys, positive_keys, across_ranks=self.args.negatives_x_device)
        if self.args.negatives_x_device:
            q_reps, p_reps = gather_with_grad(q_reps), gather_with_grad(p_reps)
        return self.loss_fn(q_reps, p_reps, mask)

    @staticmethod
    def _keys(inputs) -> dict:
        return {name: inputs[name] for name in ("passage_keys", "positive_keys") if name in inputs}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The contrastive loss of a batch (the true loss: the cross-device factor is applied at backward)."""
        out = model(query=inputs["query"], passage=inputs["passage"])
        loss = self._contrastive_loss(out.q_reps, out.p_reps, **self._keys(inputs))
        return (loss, out) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        """Forward and backward of one micro-batch; returns the loss divided by the accumulation steps."""
        model.train()
        if hasattr(self.optimizer, "train") and callable(self.optimizer.train):
            self.optimizer.train()
        inputs = self._prepare_inputs(inputs)
        scale = 1.0 / self.current_gradient_accumulation_steps
        if self.grad_cache is not None:
            loss = self.grad_cache(model, inputs["query"], inputs["passage"], loss_scale=scale * self._loss_factor,
                                   **self._keys(inputs))
        else:
            with self.compute_loss_context_manager():
                loss = self.compute_loss(model, inputs)
            self.accelerator.backward(loss * (scale * self._loss_factor))
        return loss.detach() * scale

    def _run_epoch(self, model, epoch, *args, **kwargs):
        """One pass over the training loader, with ``train_dataset.set_epoch(epoch)`` called first.

        The stock trainer leaves the dataset's epoch to accelerate's ``DataLoaderShard.set_epoch``, which
        forwards it to the dataset only when the batch sampler is not wrapped: under ``BatchSamplerShard``
        (every multi-process run) and ``SkipBatchSampler`` (the epoch a run resumes inside) it sets the
        sampler's epoch and stops there, so the passages of epoch 0 would be drawn again. The shuffle order is
        not affected: the seedable sampler gets its epoch in all these cases. Setting the epoch here, before
        the epoch's loader iterator exists, also reaches loader workers, which copy the dataset when the
        iterator starts them.
        """
        if hasattr(self.train_dataset, "set_epoch"):
            self.train_dataset.set_epoch(epoch)
        return super()._run_epoch(model, epoch, *args, **kwargs)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Validation loss only (the retrieval metrics are computed over the whole set in ``evaluation_loop``)."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    # ------------------------------------------------------------------ validation
    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        dataset = dataloader.dataset
        if hasattr(dataset, "raw") and self._ks:
            if self._retrieval is None or self._retrieval_source is not dataset:
                self._retrieval, self._retrieval_source = RetrievalValidation(dataset, self._ks), dataset
            model = self.accelerator.unwrap_model(self.model)
            metrics = self._retrieval.run(
                model, self.args.per_device_eval_batch_size, self.args.device, autocast=self.accelerator.autocast,
                show_progress=not self.args.disable_tqdm,
            )
            output.metrics.update({f"{metric_key_prefix}_{name}": value for name, value in metrics.items()})
        return output

    # ------------------------------------------------------------------ checkpoints
    def _save(self, output_dir: Optional[str] = None, state_dict=None):
        """Save in ``DRModel``'s format (loadable by ``DRModel.load`` and OpenMatch) plus the resolved arguments."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        model = self.accelerator.unwrap_model(self.model)
        logger.info("saving model checkpoint to %s", output_dir)
        # The arguments go first: DRModel.save then writes into the (non-empty) folder and marks it complete with
        # openmatch_config.json last, rather than renaming a temporary folder over it, which would race with the
        # other ranks writing their RNG states into the same checkpoint folder.
        try:
            os.makedirs(output_dir, exist_ok=True)
            write_json_atomic(Path(output_dir) / ARGS_NAME, dataclasses_to_dict(*self.extra_args, self.args))
            model.save(output_dir, tokenizer=self.tokenizer)
        except OSError as err:
            # CONFIG_NAME was not written, so the folder never looks complete (beside ARGS_NAME, loading it says
            # the save was cut off).
            _raise_save_error(err, output_dir)

    def _save_checkpoint(self, model, trial):
        """The stock checkpoint save; one that fails (a full disk) leaves no partial ``checkpoint-N`` behind."""
        folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        try:
            super()._save_checkpoint(model, trial)
        except BaseException as err:
            # Whatever the folder held before, it is now half-written: resuming must never pick it.
            if self.args.should_save:
                shutil.rmtree(folder, ignore_errors=True)
                logger.warning("removed the incomplete checkpoint %s", folder)
            if isinstance(err, OSError):
                _raise_save_error(err, folder)
            raise

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        """Load the weights of one of our checkpoints (the stock loader expects a single HF weights file)."""
        path = Path(resume_from_checkpoint)
        if not (path / CONFIG_NAME).exists():
            raise InputError(f"{path}: not a DRTrainer checkpoint (no {CONFIG_NAME}); cannot resume from it")
        target = self.accelerator.unwrap_model(model if model is not None else self.model)
        if read_config(path).lora is not None or target.config.lora is not None:
            load_lora_weights(target, path)  # the adapter only: the frozen base is already in the model
            return
        loaded = DRModel.load(path)
        missing, unexpected = target.load_state_dict(loaded.state_dict(), strict=False)
        if missing or unexpected:
            raise InputError(
                f"{path}: checkpoint does not match the model being trained (missing {missing[:3]}, "
                f"unexpected {unexpected[:3]}); was it written with other model flags?"
            )
        del loaded

    def _load_best_model(self):
        self._load_from_checkpoint(self.state.best_model_checkpoint)
