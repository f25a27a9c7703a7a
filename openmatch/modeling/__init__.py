"""Dense-retrieval model (``DRModel``), its configuration, the contrastive loss and the gradient-keeping gather.

Names are imported lazily so that ``ContrastiveLoss``/``gather_with_grad`` (torch only) do not pull in
transformers, which keeps spawned worker processes quick to start.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "DRModelConfig": ".config",
    "DRModel": ".dr_model",
    "DROutput": ".dr_model",
    "LinearHead": ".dr_model",
    "load_model_and_tokenizer": ".dr_model",
    "ContrastiveLoss": ".loss",
    "gather_with_grad": ".loss",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from .config import DRModelConfig
    from .dr_model import DRModel, DROutput, LinearHead, load_model_and_tokenizer
    from .loss import ContrastiveLoss, gather_with_grad


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
