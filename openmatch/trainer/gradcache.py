"""Gradient caching (Gao et al., 2021): contrastive batches larger than memory, with the same gradients.

The step runs in three phases:

1. every sub-batch (chunk) is encoded without a graph, remembering the RNG state before each forward;
2. the loss is computed on the detached representations and back-propagated to them only: this gives
   ``dL/d reps``, the "cached" gradient;
3. every chunk is encoded again, this time with a graph, after restoring its RNG state (so dropout draws the
   same masks as in phase 1 and the cached gradient belongs to exactly this forward), and
   ``sum(reps * cached_grad)`` is back-propagated: by the chain rule that accumulates ``dL/d params``.

Memory holds one chunk's activations at a time instead of the whole batch's. Under DDP every re-forward but
the last runs under ``no_sync`` so gradients are all-reduced once per step. The last query chunk and the
last passage chunk are encoded in ONE forward call in both phases, so that the synchronising backward reaches
every parameter (an untied model's query tower as well as its passage tower), which DDP requires.
Representations are cast to float32 before the loss, so fp16/bf16 autocast only affects the encoders.
"""

from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, Optional

import torch
from torch import Tensor


class RandState:
    """The CPU and CUDA generator states, to replay a forward with the same dropout masks."""

    def __init__(self):
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None

    @contextlib.contextmanager
    def replay(self):
        """Run the block from the saved state; the generators are put back afterwards."""
        cpu, cuda = torch.get_rng_state(), (torch.cuda.get_rng_state_all() if self.cuda is not None else None)
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)
        try:
            yield
        finally:
            torch.set_rng_state(cpu)
            if cuda is not None:
                torch.cuda.set_rng_state_all(cuda)


def split_batch(batch: dict[str, Tensor], chunk_size: int) -> list[dict[str, Tensor]]:
    """Row chunks of a padded batch, each trimmed to its own longest sequence (right padding)."""
    if chunk_size < 1:
        raise ValueError(f"chunk size must be positive, got {chunk_size}")
    chunks = []
    rows = batch["input_ids"].size(0)
    for start in range(0, rows, chunk_size):
        chunk = {key: value[start : start + chunk_size] for key, value in batch.items()}
        longest = int(chunk["attention_mask"].sum(dim=1).max().item())
        chunks.append({key: value[:, : max(longest, 1)] for key, value in chunk.items()})
    return chunks


class GradCache:
    """One gradient-cached contrastive step.

    ``loss_fn(q_reps, p_reps)`` is the (possibly cross-device) loss; ``backward(tensor)`` back-propagates
    (the trainer passes ``accelerator.backward`` so that the fp16 grad scaler applies); ``no_sync(model)``
    returns the context that defers DDP's all-reduce (a null context when not distributed).
    """

    def __init__(
        self,
        q_chunk_size: int,
        p_chunk_size: int,
        loss_fn: Callable[[Tensor, Tensor], Tensor],
        backward: Optional[Callable[[Tensor], None]] = None,
        no_sync: Optional[Callable[[torch.nn.Module], ContextManager]] = None,
        forward_context: Optional[Callable[[], ContextManager]] = None,
    ):
        self.q_chunk_size, self.p_chunk_size = q_chunk_size, p_chunk_size
        self.loss_fn = loss_fn
        self.backward = backward or (lambda t: t.backward())
        self.no_sync = no_sync or (lambda model: model.no_sync() if hasattr(model, "no_sync") else contextlib.nullcontext())
        self.forward_context = forward_context or contextlib.nullcontext

    def _calls(self, query: dict, passage: dict) -> list[tuple[Optional[dict], Optional[dict]]]:
        q_chunks = split_batch(query, self.q_chunk_size)
        p_chunks = split_batch(passage, self.p_chunk_size)
        calls = [(chunk, None) for chunk in q_chunks[:-1]] + [(None, chunk) for chunk in p_chunks[:-1]]
        calls.append((q_chunks[-1], p_chunks[-1]))
        return calls

    def __call__(self, model: torch.nn.Module, query: dict, passage: dict, loss_scale: float = 1.0,
                 check_replay: bool = False, **loss_inputs) -> Tensor:
        """Accumulate the gradients of ``loss_scale * loss_fn`` into ``model``; return the unscaled loss.

        ``check_replay`` asserts that the re-forward reproduces phase 1's representations (tests);
        ``loss_inputs`` (the batch's passage keys) go to ``loss_fn`` as they are.
        """
        calls = self._calls(query, passage)
        states, q_parts, p_parts = [], [], []
        with torch.no_grad():
            for q_chunk, p_chunk in calls:
                states.append(RandState())
                with self.forward_context():
                    out = model(query=q_chunk, passage=p_chunk)
                if q_chunk is not None:
                    q_parts.append(out.q_reps.detach().float())
                if p_chunk is not None:
                    p_parts.append(out.p_reps.detach().float())
        q_reps = torch.cat(q_parts).requires_grad_()
        p_reps = torch.cat(p_parts).requires_grad_()
        loss = self.loss_fn(q_reps, p_reps, **loss_inputs)
        (loss * loss_scale).backward()
        q_grads = q_reps.grad.split([part.size(0) for part in q_parts])
        p_grads = p_reps.grad.split([part.size(0) for part in p_parts])

        qi = pi = 0
        for n, ((q_chunk, p_chunk), state) in enumerate(zip(calls, states)):
            last = n == len(calls) - 1
            sync = contextlib.nullcontext() if last else self.no_sync(model)
            with sync:
                with state.replay(), self.forward_context():
                    out = model(query=q_chunk, passage=p_chunk)
                surrogate = 0.0
                if q_chunk is not None:
                    if check_replay:
                        torch.testing.assert_close(out.q_reps.float(), q_parts[qi], rtol=1e-4, atol=1e-5)
                    surrogate = surrogate + (out.q_reps.float() * q_grads[qi]).sum()
                    qi += 1
                if p_chunk is not None:
                    if check_replay:
                        torch.testing.assert_close(out.p_reps.float(), p_parts[pi], rtol=1e-4, atol=1e-5)
                    surrogate = surrogate + (out.p_reps.float() * p_grads[pi]).sum()
                    pi += 1
                self.backward(surrogate)
        return loss.detach()
