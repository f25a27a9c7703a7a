"""torch.distributed helpers: this process's rank, joining and leaving a launcher's process group, the
all-gather that keeps the local slice's gradient (for --negatives_x_device and the in-training evaluation),
and the exchange of numpy arrays between ranks (distributed search)."""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel


def dist_context() -> tuple[int, int]:
    """(rank, world_size) of the current process; (0, 1) when torch.distributed is not initialised.

    Falls back to the launcher's environment variables so that code running before
    ``init_process_group`` (e.g. data readers in a DataLoader) still splits work correctly.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def in_process_group() -> bool:
    """Whether this process has joined a torch.distributed process group (``dist_context`` may still read
    a launcher's environment when it has not)."""
    return dist.is_available() and dist.is_initialized()


def raise_unless_all_ok(error: BaseException | None, other_rank_failed: str) -> None:
    """Agree across ranks on success; re-raise this rank's error, or report another rank's failure."""
    if not all_ok(error is None):
        if error is not None:
            raise error
        raise RuntimeError(other_rank_failed)


def _collective_device() -> torch.device:
    """Where tensors must be for the group's backend: this process's GPU under NCCL, else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_ok(ok: bool) -> bool:
    """Whether every rank succeeded (True when not distributed); lets the others stop instead of hanging."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return ok
    device = _collective_device()
    flag = torch.tensor([1 if ok else 0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def init_distributed() -> None:
    """Join the process group a launcher (torchrun, torch.distributed.launch) describes, if any.

    NCCL with this process's GPU when there is one, else gloo; nothing when the launch has one process or
    the group already exists (the Hugging Face Trainer forms its own).
    """
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1 or dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
        dist.init_process_group(backend="nccl")
    else:
        dist.init_process_group(backend="gloo")


def teardown_distributed(*models: torch.nn.Module) -> None:
    """Leave the process group, if one was formed, once every rank is done with it.

    Without it a rank's gloo threads can still be running when the interpreter exits ("terminate called
    without an active exception", SIGABRT); without the barrier a fast rank leaves while a slow one still
    talks to it, and the slow one waits forever.

    ``models``: the ``DistributedDataParallel`` wrappers still alive (the trainer's); their Reducer is released
    first, while the group is still registered. Otherwise the Reducer can be the group's last owner when the
    wrapper is freed, and destroys the gloo group with the GIL held: the destructor joins gloo's threads while
    one of them waits for the GIL to free a finished collective's tensors, and the rank never exits (seen in a
    test run: the model saved, both ranks' work done, rank 0 stuck in ``~ProcessGroupGloo``; PyTorch issue
    56297). The group's Python objects release the GIL when they destroy it, so they are left to be its last
    owners.
    """
    for model in models:
        if isinstance(model, DistributedDataParallel):
            # dist.Logger holds the Reducer too. The wrapper's group is the training's, done with here.
            model.logger = model.reducer = model.process_group = None
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


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


def broadcast_array(array: np.ndarray, src: int = 0) -> np.ndarray:
    """Rank ``src``'s ``array`` on every rank (each passes an array of the same shape and dtype, which is
    checked); the array itself when not distributed."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return array
    device = _collective_device()
    shape = torch.tensor(list(array.shape), dtype=torch.long, device=device)
    shapes = [torch.zeros_like(shape) for _ in range(dist.get_world_size())]
    dist.all_gather(shapes, shape)
    if any(not torch.equal(s, shapes[src]) for s in shapes):
        raise RuntimeError(f"broadcast_array: the ranks hold arrays of different shapes {[s.tolist() for s in shapes]}")
    tensor = torch.from_numpy(np.array(array, order="C")).to(device)  # a copy: the caller's array stays as it was
    dist.broadcast(tensor, src=src)
    return tensor.cpu().numpy()


def all_gather_arrays(array: np.ndarray) -> list[np.ndarray]:
    """Every rank's ``array``, in rank order (all of the same shape and dtype); ``[array]`` when not distributed."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [array]
    tensor = torch.from_numpy(np.ascontiguousarray(array)).to(_collective_device())
    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, tensor)
    return [t.cpu().numpy() for t in gathered]
