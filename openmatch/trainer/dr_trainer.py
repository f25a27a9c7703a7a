"""``DRTrainer``: the Hugging Face ``Trainer`` (transformers 5) taught to train a ``DRModel``.

Only what differs from the stock trainer lives here: the contrastive step (optionally cross-device, optionally
gradient-cached), the training set's epoch (set by the trainer itself, see ``_run_epoch``), checkpoints in
``DRModel``'s format (and resuming from them), and retrieval metrics next to the validation loss. Scheduling,
mixed precision, gradient accumulation, DDP, logging (TensorBoard) and checkpoint rotation are the stock
trainer's.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

import torch
from transformers import Trainer
from transformers.training_args import ParallelMode

from ..distributed import gather_with_grad
from ..errors import InputError, UsageError
from ..modeling import ContrastiveLoss, DRModel
from ..modeling.checkpoint import CONFIG_NAME, load_lora_weights, read_config
from ..utils import dataclasses_to_dict, write_json_atomic
from .gradcache import GradCache
from .retrieval_eval import RetrievalValidation, parse_ks

logger = logging.getLogger(__name__)

ARGS_NAME = "openmatch_args.json"


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

    def _contrastive_loss(self, q_reps: torch.Tensor, p_reps: torch.Tensor) -> torch.Tensor:
        if self.args.negatives_x_device:
            q_reps, p_reps = gather_with_grad(q_reps), gather_with_grad(p_reps)
        return self.loss_fn(q_reps, p_reps)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The contrastive loss of a batch (the true loss: the cross-device factor is applied at backward)."""
        out = model(query=inputs["query"], passage=inputs["passage"])
        loss = self._contrastive_loss(out.q_reps, out.p_reps)
        return (loss, out) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        """Forward and backward of one micro-batch; returns the loss divided by the accumulation steps."""
        model.train()
        if hasattr(self.optimizer, "train") and callable(self.optimizer.train):
            self.optimizer.train()
        inputs = self._prepare_inputs(inputs)
        scale = 1.0 / self.current_gradient_accumulation_steps
        if self.grad_cache is not None:
            loss = self.grad_cache(model, inputs["query"], inputs["passage"], loss_scale=scale * self._loss_factor)
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
        os.makedirs(output_dir, exist_ok=True)
        write_json_atomic(Path(output_dir) / ARGS_NAME, dataclasses_to_dict(*self.extra_args, self.args))
        model.save(output_dir, tokenizer=self.tokenizer)

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
