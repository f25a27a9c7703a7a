"""Running a DRModel over padded batches: device, precision and the inference loop."""

from __future__ import annotations

import contextlib
import hashlib
import logging
from typing import Iterable, Iterator, Optional

import numpy as np
import torch

from ..errors import UsageError

logger = logging.getLogger(__name__)


def pick_device(device: Optional[str | torch.device] = None) -> torch.device:
    """``device`` if given, else this rank's GPU when there is one, else the CPU."""
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        import os

        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    return torch.device("cpu")


class Precision:
    """How the model runs: fp32, fp16 (autocast) or bf16 (weights cast), float32 on CPU in any case.

    fp16 uses autocast rather than casting the weights because T5's feed-forward activations overflow
    float16; autocast keeps the numerically sensitive ops in float32. bf16 has float32's range, so the
    weights themselves are cast, which is faster.
    """

    def __init__(self, device: torch.device, fp16: bool = False, bf16: bool = False):
        if fp16 and bf16:
            raise UsageError("--fp16 and --bf16 are mutually exclusive")
        self.device = device
        on_gpu = device.type == "cuda"
        if (fp16 or bf16) and not on_gpu:
            logger.info("half precision needs a GPU; encoding in float32 on %s", device)
        self.fp16 = fp16 and on_gpu
        self.bf16 = bf16 and on_gpu

    @property
    def name(self) -> str:
        return "fp16" if self.fp16 else "bf16" if self.bf16 else "fp32"

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        model = model.to(self.device)
        if self.bf16:
            model = model.to(torch.bfloat16)
        return model.eval()

    def context(self):
        if self.fp16:
            return torch.autocast(device_type=self.device.type, dtype=torch.float16)
        return contextlib.nullcontext()


def model_fingerprint(model: torch.nn.Module, sample: int = 4096) -> str:
    """A cheap hash of a model's weights (names, shapes and the first ``sample`` values of each tensor).

    Stored in the index manifest so that retrieve can refuse a query encoder that is not the model the
    index was built with; computed before any precision cast so that fp16/bf16 runs agree.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        flat = tensor.detach().reshape(-1)[:sample].to("cpu", torch.float32).numpy()
        digest.update(flat.tobytes())
    return digest.hexdigest()


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
