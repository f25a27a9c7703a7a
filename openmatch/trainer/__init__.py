"""Training: ``DRTrainer`` (a thin Hugging Face ``Trainer`` subclass), gradient caching, retrieval validation."""

from .dr_trainer import DRTrainer
from .gradcache import GradCache, RandState, split_batch
from .retrieval_eval import RetrievalValidation, parse_ks

__all__ = ["DRTrainer", "GradCache", "RandState", "RetrievalValidation", "parse_ks", "split_batch"]
