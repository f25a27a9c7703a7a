"""Contrastive loss with in-batch and hard negatives, and the mask that keeps a query's positives out of its
negatives (the cross-device gather is in :mod:`openmatch.distributed`)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..distributed import gather_with_grad


def false_negative_mask(passage_keys: Tensor, positive_keys: Tensor) -> Tensor:
    """``[B, P]`` bool: ``True`` where passage ``c`` (key ``passage_keys[c]``) is one of query ``i``'s positives
    (keys ``positive_keys[i]``, ``[B, k]``). Each query's own positive column is ``True`` too; the loss keeps
    that one as the target."""
    if passage_keys.dim() != 1 or positive_keys.dim() != 2:
        raise ValueError(
            f"false_negative_mask expects passage_keys [P] and positive_keys [B, k], got {tuple(passage_keys.shape)} "
            f"and {tuple(positive_keys.shape)}"
        )
    return (positive_keys.unsqueeze(-1) == passage_keys.view(1, 1, -1)).any(dim=1)


def batch_false_negative_mask(passage_keys: Tensor, positive_keys: Tensor, across_ranks: bool = False) -> Tensor:
    """:func:`false_negative_mask` of the batch the loss sees: this process's, or with ``across_ranks``
    (``--negatives_x_device``) every rank's queries against every rank's passages, rows and columns in rank
    order like :func:`~openmatch.distributed.gather_with_grad`'s reps. The number of positives per query
    differs between ranks, so each rank masks its own queries against all passages and the rows are gathered."""
    if not across_ranks:
        return false_negative_mask(passage_keys, positive_keys)
    mask = false_negative_mask(gather_with_grad(passage_keys), positive_keys)
    return gather_with_grad(mask.to(torch.uint8)).bool()


class ContrastiveLoss(nn.Module):
    """Softmax cross-entropy over ``q @ p.T / temperature`` (OpenMatch/Tevatron's DR loss).

    ``p_reps`` holds ``n = P / B`` passages per query, grouped: query ``i``'s positive is row ``i * n``,
    followed by its ``n - 1`` hard negatives; every other passage in the batch is an in-batch negative.
    The loss is the mean over queries. Scores are computed in at least float32 so that fp16/bf16 reps do
    not lose precision in the softmax.

    ``mask`` (bool ``[B, P]``, e.g. :func:`false_negative_mask`) removes passages from a query's softmax: a
    ``True`` entry scores ``-inf``, so that passage is neither a negative of the query nor gets a gradient
    through it, exactly as if its column were not there for that query. A query's target column is never
    masked. OpenMatch and Tevatron mask nothing, so a positive shared by two queries of a batch (or repeated,
    or another positive of the same query) is pushed away from the query it answers.
    """

    def __init__(self, temperature: float = 1.0):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = float(temperature)

    def forward(self, q_reps: Tensor, p_reps: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        if q_reps.dim() != 2 or p_reps.dim() != 2:
            raise ValueError(
                f"ContrastiveLoss expects 2-D q_reps [B, D] and p_reps [B*n, D], got {tuple(q_reps.shape)} "
                f"and {tuple(p_reps.shape)}"
            )
        n_queries, n_passages = q_reps.size(0), p_reps.size(0)
        if q_reps.size(1) != p_reps.size(1):
            raise ValueError(
                f"ContrastiveLoss: query dim {q_reps.size(1)} != passage dim {p_reps.size(1)}"
            )
        if n_queries == 0 or n_passages == 0 or n_passages % n_queries:
            raise ValueError(
                f"ContrastiveLoss: the number of passages ({n_passages}) must be a positive multiple of the "
                f"number of queries ({n_queries}): each query needs one positive followed by its negatives"
            )
        group = n_passages // n_queries
        if mask is not None and (mask.shape != (n_queries, n_passages) or mask.dtype != torch.bool):
            raise ValueError(
                f"ContrastiveLoss: the mask must be bool [{n_queries}, {n_passages}], got {mask.dtype} {tuple(mask.shape)}"
            )
        dtype = torch.promote_types(torch.promote_types(q_reps.dtype, p_reps.dtype), torch.float32)
        # Autocast would otherwise run the matmul in half precision again.
        with torch.autocast(device_type=q_reps.device.type, enabled=False):
            scores = q_reps.to(dtype) @ p_reps.to(dtype).T
            if self.temperature != 1.0:
                scores = scores / self.temperature
            target = torch.arange(n_queries, device=scores.device) * group
            if mask is not None:
                mask = mask.to(scores.device).clone()
                mask[torch.arange(n_queries, device=scores.device), target] = False
                scores = scores.masked_fill(mask, float("-inf"))
            return F.cross_entropy(scores, target)

