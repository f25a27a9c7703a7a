"""Dense-retrieval model (``DRModel``), its configuration, checkpoint folders and the contrastive loss.

Names are imported lazily so that ``ContrastiveLoss`` (torch only) does not pull in transformers, which keeps
spawned worker processes quick to start. ``gather_with_grad`` lives in :mod:`openmatch.distributed` and is
re-exported here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "DRModelConfig": ".config",
    "TrainingSettings": ".config",
    "DRModel": ".dr_model",
    "DROutput": ".dr_model",
    "LinearHead": ".dr_model",
    "load_model_and_tokenizer": ".checkpoint",
    "ContrastiveLoss": ".loss",
    "false_negative_mask": ".loss",
    "batch_false_negative_mask": ".loss",
    "gather_with_grad": "..distributed",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from ..distributed import gather_with_grad
    from .checkpoint import load_model_and_tokenizer
    from .config import DRModelConfig, TrainingSettings
    from .dr_model import DRModel, DROutput, LinearHead
    from .loss import ContrastiveLoss, batch_false_negative_mask, false_negative_mask


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
