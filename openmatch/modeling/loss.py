"""Contrastive loss with in-batch and hard negatives (the cross-device gather is in :mod:`openmatch.distributed`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ContrastiveLoss(nn.Module):
    """Softmax cross-entropy over ``q @ p.T / temperature`` (OpenMatch/Tevatron's DR loss).

    ``p_reps`` holds ``n = P / B`` passages per query, grouped: query ``i``'s positive is row ``i * n``,
    followed by its ``n - 1`` hard negatives; every other passage in the batch is an in-batch negative.
    The loss is the mean over queries. Scores are computed in at least float32 so that fp16/bf16 reps do
    not lose precision in the softmax.
    """

    def __init__(self, temperature: float = 1.0):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = float(temperature)

    def forward(self, q_reps: Tensor, p_reps: Tensor) -> Tensor:
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
        dtype = torch.promote_types(torch.promote_types(q_reps.dtype, p_reps.dtype), torch.float32)
        # Autocast would otherwise run the matmul in half precision again.
        with torch.autocast(device_type=q_reps.device.type, enabled=False):
            scores = q_reps.to(dtype) @ p_reps.to(dtype).T
            if self.temperature != 1.0:
                scores = scores / self.temperature
            target = torch.arange(n_queries, device=scores.device) * group
            return F.cross_entropy(scores, target)

