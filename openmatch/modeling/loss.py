"""Contrastive loss with in-batch and hard negatives, and the autograd-preserving all-gather."""

from __future__ import annotations

import torch
import torch.distributed as dist
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


def gather_with_grad(t: Tensor) -> Tensor:
    """Concatenate ``t`` from every rank along dim 0, rank order; identity when not distributed.

    The other ranks' slices are constants; this rank's slice is ``t`` itself, so gradients flow into
    the local computation only. Each rank then holds the gradient of the *global* loss with respect to its
    own inputs; DDP averages over ranks, which is why callers multiply the loss by the world size.
    Ranks may hold different numbers of rows (a short last batch): slices are padded for the exchange
    and trimmed after.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    world_size, rank = dist.get_world_size(), dist.get_rank()
    t = t.contiguous()
    local_rows = torch.tensor([t.size(0)], device=t.device, dtype=torch.long)
    all_rows = [torch.zeros_like(local_rows) for _ in range(world_size)]
    dist.all_gather(all_rows, local_rows)
    rows = [int(r.item()) for r in all_rows]
    max_rows = max(rows)
    if max_rows != t.size(0):
        padded = t.new_zeros((max_rows, *t.shape[1:]))
        padded[: t.size(0)] = t.detach()
        send = padded
    else:
        send = t.detach()
    gathered = [torch.empty_like(send) for _ in range(world_size)]
    dist.all_gather(gathered, send)
    gathered = [g[:r] for g, r in zip(gathered, rows)]
    gathered[rank] = t
    return torch.cat(gathered, dim=0)
