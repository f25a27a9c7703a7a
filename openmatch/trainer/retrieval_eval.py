"""Retrieval validation: rank every validation query against the pool of all validation passages.

OpenMatch validates with the contrastive loss only, which "may not correlate with retrieval performance".
Here the validation file (same JSONL as training) also becomes a small retrieval task: the pool is every
positive and negative passage of every validation query (identical token lists counted once), a query's
relevant passages are its positives, and MRR@k / Recall@k are computed by ``openmatch.evaluation.metrics``.
Under DDP each rank encodes a contiguous block of the queries and of the pool; the blocks are gathered.
"""

from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, Sequence

import torch
from torch import Tensor

from ..dataset.tokenization import pad_batch
from ..dataset.train_dataset import TrainDataset
from ..distributed import dist_context, gather_with_grad
from ..errors import UsageError
from ..evaluation.metrics import evaluate


class RetrievalValidation:
    """The query set, passage pool and qrels of a validation ``TrainDataset``, built once."""

    def __init__(self, dataset: TrainDataset, ks: Sequence[int]):
        if not ks or any(k < 1 for k in ks):
            raise ValueError(f"retrieval cut-offs must be positive integers, got {list(ks)}")
        self.ks = list(ks)
        wrap = dataset.layout.wrap
        pool_index: dict[tuple, int] = {}
        self.queries: list[list[int]] = []
        self.pool: list[list[int]] = []
        self.qrels: dict[str, dict[str, int]] = {}

        def pool_id(ids) -> int:
            key = tuple(ids)
            if key not in pool_index:
                pool_index[key] = len(self.pool)
                self.pool.append(wrap(ids, dataset.p_max_len))
            return pool_index[key]

        for index in range(len(dataset)):
            record = dataset.raw(index)
            self.queries.append(wrap(record["query"], dataset.q_max_len))
            relevant = {f"p{pool_id(p)}": 1 for p in record["positives"]}
            for negative in record["negatives"]:
                pool_id(negative)
            self.qrels[f"q{index}"] = relevant
        self.pad_id = dataset.layout.pad_id

    def metric_names(self) -> list[str]:
        return [f"mrr@{self.ks[0]}"] + [f"recall@{k}" for k in self.ks]

    def _encode(self, sequences: list[list[int]], encode: Callable[[dict], Tensor], batch_size: int,
                device, autocast: Callable[[], ContextManager], desc: str = "", show_progress: bool = False) -> Tensor:
        from tqdm.auto import tqdm

        rank, world = dist_context()
        block = -(-len(sequences) // world)
        mine = list(range(rank * block, min((rank + 1) * block, len(sequences))))
        # Length-sorted batches pad little; results go back to their original rows.
        order = sorted(mine, key=lambda i: len(sequences[i]))
        reps = None
        starts = range(0, len(order), batch_size)
        for start in tqdm(starts, desc=desc, unit="batch", leave=False, disable=not show_progress or rank != 0):
            rows = order[start : start + batch_size]
            batch = {k: v.to(device) for k, v in pad_batch([sequences[i] for i in rows], self.pad_id).items()}
            with autocast():
                out = encode(batch).float()
            if reps is None:
                reps = out.new_zeros((len(mine), out.size(1)))
            reps[torch.as_tensor([i - rank * block for i in rows], device=out.device)] = out
        if reps is None:  # this rank has no rows (more ranks than rows): take part in the gather anyway
            probe = {k: v.to(device) for k, v in pad_batch([sequences[0]], self.pad_id).items()}
            with autocast():
                reps = encode(probe).float()[:0]
        return gather_with_grad(reps.contiguous()) if world > 1 else reps

    @torch.no_grad()
    def run(self, model, batch_size: int, device, autocast: Callable[[], ContextManager] = contextlib.nullcontext,
            show_progress: bool = False) -> dict[str, float]:
        """Encode, rank the whole pool for each query, and return ``{"mrr@10": ..., "recall@100": ...}``."""
        was_training = model.training
        model.eval()
        try:
            q_reps = self._encode(self.queries, model.encode_query, batch_size, device, autocast,
                                  "validation queries", show_progress)
            p_reps = self._encode(self.pool, model.encode_passage, batch_size, device, autocast,
                                  f"validation pool ({len(self.pool)} passages)", show_progress)
        finally:
            model.train(was_training)
        depth = min(max(self.ks), p_reps.size(0))
        run: dict[str, dict[str, float]] = {}
        for start in range(0, q_reps.size(0), 1024):
            scores, ids = (q_reps[start : start + 1024] @ p_reps.T).topk(depth, dim=1)
            for row, (s, i) in enumerate(zip(scores.tolist(), ids.tolist())):
                run[f"q{start + row}"] = {f"p{pid}": score for pid, score in zip(i, s)}
        return evaluate(self.qrels, run, metrics=self.metric_names())


def parse_ks(text: str) -> list[int]:
    """``"10,100"`` -> ``[10, 100]`` (for ``--eval_retrieval_k``)."""
    try:
        ks = [int(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"--eval_retrieval_k must be comma-separated integers, got {text!r}") from None
    if not ks or any(k < 1 for k in ks):
        raise UsageError(f"--eval_retrieval_k must be positive integers, got {text!r}")
    return ks
