"""Running a DRModel over padded batches: device, precision and the inference loop."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable, Iterator, Optional

import numpy as np
import torch

from ..errors import OpenMatchWarning, UsageError

logger = logging.getLogger(__name__)


def pick_device(device: Optional[str | torch.device] = None) -> torch.device:
    """``device`` if given, else this rank's GPU when there is one, else the CPU."""
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        import os

        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    return torch.device("cpu")


def device_from_args(infer_args) -> Optional[str]:
    """The device ``--use_cpu`` asks for: the CPU, or ``None`` (this rank's GPU when there is one)."""
    return "cpu" if getattr(infer_args, "use_cpu", False) else None


class Precision:
    """How the model runs: fp32, fp16 (autocast, GPU only) or bf16 (weights cast, any device).

    fp16 uses autocast rather than casting the weights because T5's feed-forward activations overflow
    float16; autocast keeps the numerically sensitive ops in float32. Without a GPU fp16 falls back to
    float32 with a warning (CPU float16 kernels are slow or missing). bf16 has float32's range, so the
    weights themselves are cast, which is faster; it runs on the CPU too.
    """

    def __init__(self, device: torch.device, fp16: bool = False, bf16: bool = False):
        if fp16 and bf16:
            raise UsageError("--fp16 and --bf16 are mutually exclusive")
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        self.device = device
        if fp16 and device.type != "cuda":
            warnings.warn(
                f"fp16 needs a GPU; encoding in float32 on {device} (bf16 runs on the CPU)", OpenMatchWarning, stacklevel=2
            )
        self.fp16 = fp16 and device.type == "cuda"
        self.bf16 = bf16

    @property
    def name(self) -> str:
        return "fp16" if self.fp16 else "bf16" if self.bf16 else "fp32"

    @contextlib.contextmanager
    def prepared(self, model: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """The model to encode with: in eval mode, on ``self.device``, with bfloat16 weights under bf16.

        The caller's model is left as it was (device, dtype, weights, training mode): a notebook may go on
        training it. When the device or dtype differs, a converted copy runs instead (the caller's weights
        are never cast there and back, which would round them); otherwise the model itself runs in eval
        mode and each submodule's training flag is restored on exit.
        """
        dtype = torch.bfloat16 if self.bf16 else None
        if _needs_copy(model, self.device, dtype):
            yield _converted_copy(model, self.device, dtype).eval()
            return
        modes = [(module, module.training) for module in model.modules()]
        model.eval()
        try:
            yield model
        finally:
            for module, training in modes:
                module.training = training

    def context(self):
        if self.fp16:
            return torch.autocast(device_type=self.device.type, dtype=torch.float16)
        return contextlib.nullcontext()


def _tensors(model: torch.nn.Module) -> Iterator[torch.Tensor]:
    yield from model.parameters()
    yield from model.buffers()


def _needs_copy(model: torch.nn.Module, device: torch.device, dtype: Optional[torch.dtype]) -> bool:
    return any(
        t.device != device or (dtype is not None and t.is_floating_point() and t.dtype != dtype)
        for t in _tensors(model)
    )


def _converted_copy(model: torch.nn.Module, device: torch.device, dtype: Optional[torch.dtype]) -> torch.nn.Module:
    """A deep copy of ``model`` whose tensors are on ``device`` (floating ones in ``dtype`` if given).

    Each tensor is converted straight into the copy (through deepcopy's memo), so the peak memory is the
    model plus its converted copy, and weights tied in the model stay tied in the copy.
    """
    memo: dict[int, Any] = {}
    for t in _tensors(model):
        if id(t) in memo:
            continue
        cast = dtype is not None and t.is_floating_point()
        converted = t.detach().to(device=device, dtype=dtype if cast else t.dtype)
        if isinstance(t, torch.nn.Parameter):
            converted = torch.nn.Parameter(converted, requires_grad=t.requires_grad)
        memo[id(t)] = converted
    return copy.deepcopy(model, memo)


FINGERPRINT_SCHEME = "sha256"


def model_fingerprint(model: torch.nn.Module) -> str:
    """A hash of all of a model's weights: ``"sha256:<hex>"`` over each state-dict entry's name, shape and values.

    Stored in the index manifest so that retrieve can refuse a query encoder that is not the model the
    index was built with. Floating-point values are hashed as float32 (exact for fp16/bf16 weights), so a
    model agrees with its float32 copy; float32 tensors on the CPU are hashed in place, without a copy. A
    tensor shared under several names (tied embeddings) is hashed once. Tensors are hashed on several
    threads (hashlib releases the GIL): SHA-256 runs at about 1.7 GB/s per core, so a BERT-base (110M
    weights) costs about 0.3 s of CPU time. A model with ``fingerprint_items()`` (``DRModel``) gives the
    tensors itself, sorted by name: a LoRA model's as merged, so that merging it for speed (``--merge_lora``)
    does not make it another model.
    """
    entries, tensors, first_name = [], [], {}
    for name, tensor in _fingerprint_items(model):
        tensor = tensor.detach()
        key = (tensor.device, tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tensor.dtype,
               tuple(tensor.shape), tensor.stride())
        if tensor.numel() and key in first_name:
            entries.append((name, tensor.shape, first_name[key]))
            continue
        first_name[key] = name
        entries.append((name, tensor.shape, len(tensors)))
        tensors.append(tensor)
    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
        digests = list(pool.map(_tensor_digest, tensors))
    digest = hashlib.sha256()
    for name, shape, ref in entries:
        digest.update(name.encode())
        digest.update(str(tuple(shape)).encode())
        digest.update(f"=same as {ref}".encode() if isinstance(ref, str) else digests[ref])
    return f"{FINGERPRINT_SCHEME}:{digest.hexdigest()}"


def _fingerprint_items(model: torch.nn.Module):
    return model.fingerprint_items() if hasattr(model, "fingerprint_items") else sorted(model.state_dict().items())


def _tensor_digest(tensor: torch.Tensor) -> bytes:
    if tensor.is_floating_point() and tensor.dtype != torch.float32:
        tensor = tensor.float()
    flat = tensor.to("cpu").contiguous().reshape(-1)
    return hashlib.sha256(memoryview(flat.numpy()).cast("B")).digest()


def _legacy_fingerprint(model: torch.nn.Module, sample: int = 4096) -> str:
    # What indexes built before the full-weight hash stored: the first ``sample`` values of each tensor.
    digest = hashlib.sha256()
    for name, tensor in _fingerprint_items(model):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        flat = tensor.detach().reshape(-1)[:sample].to("cpu", torch.float32).numpy()
        digest.update(flat.tobytes())
    return digest.hexdigest()


def fingerprint_matches(model: torch.nn.Module, stored: str) -> bool:
    """Whether ``model`` has the weights an index manifest's fingerprint ``stored`` was computed from (the
    sampled fingerprint of older indexes is compared the old way)."""
    if stored.startswith(f"{FINGERPRINT_SCHEME}:"):
        return model_fingerprint(model) == stored
    return _legacy_fingerprint(model) == stored


def encode_batches(
    model,
    batches: Iterable[dict],
    precision: Precision,
    side: str = "passage",
) -> Iterator[tuple[dict, np.ndarray]]:
    """Yield ``(batch, float32 embeddings [B, D])`` for each batch; NaN/inf outputs are an error."""
    encode = model.encode_passage if side == "passage" else model.encode_query
    device = precision.device
    non_blocking = device.type == "cuda"
    with torch.inference_mode(), precision.context():
        for batch in batches:
            inputs = {
                "input_ids": batch["input_ids"].to(device, non_blocking=non_blocking),
                "attention_mask": batch["attention_mask"].to(device, non_blocking=non_blocking),
            }
            reps = encode(inputs).float()
            out = reps.cpu().numpy()
            if not np.isfinite(out).all():
                raise FloatingPointError(
                    f"the model produced NaN/inf embeddings in {precision.name}"
                    + ("; float16 overflows with some models (T5): try --bf16 or float32" if precision.fp16 else "")
                )
            yield batch, out
