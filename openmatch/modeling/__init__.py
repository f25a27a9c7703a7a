"""Dense-retrieval model (``DRModel``), its configuration, the contrastive loss and the gradient-keeping gather."""

from .config import DRModelConfig
from .dr_model import DRModel, DROutput, LinearHead, load_model_and_tokenizer
from .loss import ContrastiveLoss, gather_with_grad

__all__ = [
    "ContrastiveLoss",
    "DRModel",
    "DRModelConfig",
    "DROutput",
    "LinearHead",
    "gather_with_grad",
    "load_model_and_tokenizer",
]
