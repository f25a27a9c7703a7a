"""``DRModel``: one bi-encoder class for training and inference, compatible with OpenMatch v2 checkpoints."""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.utils import ModelOutput

from ..arguments import ModelArguments
from ..utils import atomic_output, write_json_atomic
from .config import DECODER_BACKBONES, T5_ENCODER_BACKBONES, DRModelConfig

logger = logging.getLogger(__name__)

CONFIG_NAME = "openmatch_config.json"
HEAD_CONFIG_NAME = "head_config.json"
HEAD_WEIGHTS_NAME = "linear.safetensors"
OPENMATCH_HEAD_WEIGHTS_NAME = "linear.pt"
HEAD_WEIGHT_KEY = "linear.weight"  # OpenMatch's LinearHead wraps nn.Linear as `.linear`
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")

# (encoder-decoder class, encoder-only class) for config.model_type of the T5 family.
T5_FAMILY = {
    "t5": ("T5Model", "T5EncoderModel"),
    "mt5": ("MT5Model", "MT5EncoderModel"),
    "umt5": ("UMT5Model", "UMT5EncoderModel"),
}


@dataclass
class DROutput(ModelOutput):
    """Query and passage representations (``None`` for a side not given); ``loss`` when a caller sets it."""

    q_reps: Optional[Tensor] = None
    p_reps: Optional[Tensor] = None
    loss: Optional[Tensor] = None


class LinearHead(nn.Module):
    """Bias-free projection; state dict key ``linear.weight`` as in OpenMatch's ``LinearHead``."""

    def __init__(self, input_dim: int, output_dim: int):
        super().__init__()
        self.linear = nn.Linear(input_dim, output_dim, bias=False)
        self.input_dim, self.output_dim = input_dim, output_dim

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x)

    def save(self, folder: str | os.PathLike) -> None:
        """Write ``linear.safetensors``, ``linear.pt`` and ``head_config.json`` into ``folder``.

        ``linear.pt`` is what OpenMatch's ``LinearHead.load`` reads: a plain ``{"linear.weight": tensor}``
        state dict (loadable with ``weights_only=True``). Each file is renamed into place once complete.
        """
        from safetensors.torch import save as safetensors_bytes

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        # A copy: torch.save writes a tensor's whole storage, which for a view could be more than the weight.
        state = {HEAD_WEIGHT_KEY: self.linear.weight.detach().to("cpu", copy=True).contiguous()}
        with atomic_output(folder / HEAD_WEIGHTS_NAME, "wb") as handle:
            handle.write(safetensors_bytes(state))
        with atomic_output(folder / OPENMATCH_HEAD_WEIGHTS_NAME, "wb") as handle:
            torch.save(state, handle)
        write_json_atomic(folder / HEAD_CONFIG_NAME, {"input_dim": self.input_dim, "output_dim": self.output_dim})

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "LinearHead":
        """Load ``linear.safetensors`` (ours) or ``linear.pt`` (OpenMatch's, read with weights_only)."""
        folder = Path(folder)
        if (folder / HEAD_WEIGHTS_NAME).exists():
            from safetensors.torch import load_file

            state = load_file(str(folder / HEAD_WEIGHTS_NAME))
        elif (folder / OPENMATCH_HEAD_WEIGHTS_NAME).exists():
            state = torch.load(folder / OPENMATCH_HEAD_WEIGHTS_NAME, map_location="cpu", weights_only=True)
        else:
            raise FileNotFoundError(
                f"{folder}: checkpoint has a linear head but neither {HEAD_WEIGHTS_NAME} nor "
                f"{OPENMATCH_HEAD_WEIGHTS_NAME} is there"
            )
        weight = state.get(HEAD_WEIGHT_KEY, state.get("weight"))
        if weight is None or weight.dim() != 2:
            raise ValueError(f"{folder}: head weights have no 2-D '{HEAD_WEIGHT_KEY}' tensor (keys: {sorted(state)})")
        output_dim, input_dim = weight.shape
        if (folder / HEAD_CONFIG_NAME).exists():
            head_cfg = json.loads((folder / HEAD_CONFIG_NAME).read_text())
            if (head_cfg.get("input_dim"), head_cfg.get("output_dim")) != (input_dim, output_dim):
                raise ValueError(
                    f"{folder / HEAD_CONFIG_NAME}: says {head_cfg.get('input_dim')}->{head_cfg.get('output_dim')} "
                    f"but the weights are {input_dim}->{output_dim}"
                )
        head = cls(input_dim, output_dim)
        with torch.no_grad():
            head.linear.weight.copy_(weight.float())
        return head


def _check_backbone_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: checkpoint folder not found")
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"{folder}: checkpoint is missing config.json")
    if not any((folder / name).exists() for name in WEIGHT_FILES):
        raise FileNotFoundError(
            f"{folder}: checkpoint is missing its weights file (one of {', '.join(WEIGHT_FILES)})"
        )


def _backbone_class(name: str):
    import transformers

    cls = getattr(transformers, name, None)
    if cls is None or not hasattr(cls, "from_pretrained"):
        raise ValueError(f"unknown backbone type {name!r} in {CONFIG_NAME} (not a transformers model class)")
    return cls


def _load_backbone(class_name: str, folder: str, model_args: ModelArguments, config=None) -> nn.Module:
    kwargs: dict[str, Any] = {"dtype": torch.float32}  # fp32 master weights; mixed precision is autocast's job
    if model_args.cache_dir:
        kwargs["cache_dir"] = model_args.cache_dir
    if config is not None:
        kwargs["config"] = config
    model, info = _backbone_class(class_name).from_pretrained(folder, output_loading_info=True, **kwargs)
    # Hugging Face would initialise missing weights randomly and only log it: for a retriever that silently
    # ruins every score, so it is an error. The BERT-style pooler is exempt (never used, see DRModel).
    missing = sorted(k for k in info.get("missing_keys", ()) if not k.startswith("pooler."))
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise ValueError(
            f"{folder}: checkpoint has no weights for {len(missing)} parameter(s) of {type(model).__name__} "
            f"({shown}); is it really a {type(model).__name__} checkpoint?"
        )
    return model


class DRModel(nn.Module):
    """Dense-retrieval bi-encoder: backbone -> pooling -> optional linear head -> optional L2 norm.

    * T5-family ``T5Model`` backbones: the encoder reads the input, the decoder is fed only its start token,
      and the representation is the decoder's last hidden state at that position (pooling is ignored).
    * Other backbones (BERT, MiniLM, ``T5EncoderModel`` for ``--encoder_only``): ``first`` token or
      attention-masked ``mean`` of ``last_hidden_state``.
    * Tied (default): one backbone and head for queries and passages; untied: two copies initialised
      from the same weights.

    Build with :meth:`build` (from arguments) or :meth:`load` (from a checkpoint folder); scores are plain
    dot products (:meth:`score`); the temperature in ``config`` is the loss's.
    """

    def __init__(
        self,
        config: DRModelConfig,
        lm_q: nn.Module,
        lm_p: Optional[nn.Module] = None,
        head_q: Optional[LinearHead] = None,
        head_p: Optional[LinearHead] = None,
    ):
        super().__init__()
        self.config = config
        self.lm_q = lm_q
        self.head_q = head_q
        if config.tied:
            # Not registered twice: a shared module under two names would duplicate it in state_dict.
            self._lm_p, self._head_p = None, None
        else:
            if lm_p is None:
                raise ValueError("an untied DRModel needs a passage backbone")
            self._lm_p = lm_p
            self._head_p = head_p
        if config.linear_head != (head_q is not None) or (not config.tied and (head_p is None) != (head_q is None)):
            raise ValueError("config.linear_head does not match the heads given")
        if config.feature != "pooler_output":
            # The pooler (BERT-style) is not part of the representation; frozen so that DDP does not wait for
            # gradients that never come. Its weights are still saved, keeping checkpoints complete.
            for lm in self._backbones():
                pooler = getattr(lm, "pooler", None)
                if isinstance(pooler, nn.Module):
                    pooler.requires_grad_(False)
        hidden = getattr(lm_q.config, "d_model", None) or getattr(lm_q.config, "hidden_size")
        self.hidden_size = int(hidden)
        self.embedding_dim = head_q.output_dim if head_q is not None else self.hidden_size
        start = getattr(lm_q.config, "decoder_start_token_id", None)
        self.decoder_start_token_id = int(start if start is not None else (lm_q.config.pad_token_id or 0))

    # Submodules: lm_p / head_p resolve to the query side when tied.
    @property
    def lm_p(self) -> nn.Module:
        return self.lm_q if self.config.tied else self._lm_p

    @property
    def head_p(self) -> Optional[LinearHead]:
        return self.head_q if self.config.tied else self._head_p

    def _backbones(self) -> list[nn.Module]:
        return [self.lm_q] if self.config.tied else [self.lm_q, self._lm_p]

    # ------------------------------------------------------------------ encoding
    def _encode(self, lm: nn.Module, head: Optional[LinearHead], batch: dict[str, Tensor]) -> Tensor:
        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.config.uses_decoder:
            # One decoder step: [B, 1] start tokens, no cache; cross-attention over the encoder output.
            decoder_input_ids = torch.full(
                (input_ids.size(0), 1), self.decoder_start_token_id, dtype=torch.long, device=input_ids.device
            )
            out = lm(**inputs, decoder_input_ids=decoder_input_ids, use_cache=False, return_dict=True)
            reps = out[self.config.feature][:, 0]
        else:
            if "token_type_ids" in batch and not self.config.plm_backbone_type.startswith(("T5", "MT5", "UMT5")):
                inputs["token_type_ids"] = batch["token_type_ids"]
            out = lm(**inputs, return_dict=True)
            hidden = out[self.config.feature]
            if hidden.dim() == 2:  # e.g. pooler_output: already one vector per sequence
                reps = hidden
            elif self.config.pooling == "first":
                reps = hidden[:, 0]
            elif self.config.pooling == "mean":
                # Summed in float32: a long fp16 sequence's sum can overflow.
                mask = attention_mask.unsqueeze(-1).float()
                reps = ((hidden.float() * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)).to(hidden.dtype)
            else:
                raise ValueError(f"unknown pooling {self.config.pooling!r} (first or mean)")
        if head is not None:
            reps = head(reps)
        if self.config.normalize:
            reps = F.normalize(reps, p=2, dim=-1)
        return reps

    def encode_query(self, batch: dict[str, Tensor]) -> Tensor:
        """[B, D] query representations from a batch with ``input_ids`` and ``attention_mask``."""
        return self._encode(self.lm_q, self.head_q, batch)

    def encode_passage(self, batch: dict[str, Tensor]) -> Tensor:
        """[B, D] passage representations from a batch with ``input_ids`` and ``attention_mask``."""
        return self._encode(self.lm_p, self.head_p, batch)

    def forward(self, query: Optional[dict] = None, passage: Optional[dict] = None) -> DROutput:
        return DROutput(
            q_reps=self.encode_query(query) if query is not None else None,
            p_reps=self.encode_passage(passage) if passage is not None else None,
        )

    @staticmethod
    def score(q_reps: Tensor, p_reps: Tensor) -> Tensor:
        """Dot-product scores [Q, P] (no temperature: the ranking does not depend on it)."""
        return q_reps @ p_reps.T

    supports_gradient_checkpointing = True

    def activation_checkpointing_enable(
        self, activation_checkpointing_kwargs: Optional[dict] = None, every_n_layers: int = 1, offload: bool = False
    ) -> None:
        """Forwarded to the backbone(s); the Hugging Face Trainer calls it for --gradient_checkpointing."""
        for lm in self._backbones():
            lm.activation_checkpointing_enable(
                activation_checkpointing_kwargs=activation_checkpointing_kwargs,
                every_n_layers=every_n_layers,
                offload=offload,
            )

    def activation_checkpointing_disable(self) -> None:
        for lm in self._backbones():
            lm.activation_checkpointing_disable()

    @property
    def is_activation_checkpointing(self) -> bool:
        return any(lm.is_activation_checkpointing for lm in self._backbones())

    # transformers 4 names, still used by some callers.
    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: Optional[dict] = None, **kwargs) -> None:
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, **kwargs)

    def gradient_checkpointing_disable(self) -> None:
        self.activation_checkpointing_disable()

    @property
    def is_gradient_checkpointing(self) -> bool:
        return self.is_activation_checkpointing

    # ------------------------------------------------------------------ saving
    def save(self, output_dir: str | os.PathLike, tokenizer=None) -> None:
        """Write a checkpoint that :meth:`build` (and, when tied, OpenMatch) can load.

        Tied: the backbone's ``save_pretrained`` files at the root; untied: ``query_model/`` and
        ``passage_model/``. Heads as ``linear.safetensors``, OpenMatch's ``linear.pt`` and ``head_config.json``
        (inside each tower folder when untied). ``openmatch_config.json`` is written last and marks the
        checkpoint complete: a new folder is written as a temporary sibling and renamed at the end; in an
        existing folder the old marker is removed first, so an interrupted save never looks complete.
        """
        output_dir = Path(output_dir)
        if output_dir.exists():
            # Other processes (e.g. Trainer ranks writing RNG states) may be using the folder: write in place.
            (output_dir / CONFIG_NAME).unlink(missing_ok=True)
            self._write(output_dir, tokenizer)
            return
        output_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", suffix=".tmp", dir=output_dir.parent))
        try:
            self._write(tmp, tokenizer)
            os.replace(tmp, output_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _write(self, folder: Path, tokenizer) -> None:
        if self.config.tied:
            self.lm_q.save_pretrained(folder)
            if self.head_q is not None:
                self.head_q.save(folder)
        else:
            for name, lm, head in (("query_model", self.lm_q, self.head_q), ("passage_model", self._lm_p, self._head_p)):
                lm.save_pretrained(folder / name)
                if head is not None:
                    head.save(folder / name)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)
        write_json_atomic(folder / CONFIG_NAME, self.config.to_openmatch_json())

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path: str | os.PathLike, **overrides) -> "DRModel":
        """Load a checkpoint folder (ours or OpenMatch's) with its stored settings; a plain HF folder
        gets the default flags. ``overrides`` are ``ModelArguments`` fields."""
        return cls.build(ModelArguments(model_name_or_path=str(path), **overrides))

    @classmethod
    def build(cls, model_args: ModelArguments) -> "DRModel":
        """Build from ``--model_name_or_path``: our/OpenMatch's checkpoint folder (its stored architecture wins
        over flags, with a warning naming each conflicting flag; its loss temperature is kept unless
        ``--temperature`` is given) or a plain Hugging Face model (flags decide; temperature 1 by default)."""
        path = Path(model_args.model_name_or_path)
        if (path / CONFIG_NAME).exists():
            return cls._build_from_checkpoint(path, model_args)
        return cls._build_from_hf(str(model_args.model_name_or_path), model_args)

    @classmethod
    def _build_from_hf(cls, path: str, model_args: ModelArguments) -> "DRModel":
        from transformers import AutoConfig

        if os.path.isdir(path):
            _check_backbone_folder(Path(path))
        config_kwargs = {"cache_dir": model_args.cache_dir} if model_args.cache_dir else {}
        hf_config = AutoConfig.from_pretrained(model_args.config_name or path, **config_kwargs)
        model_type = getattr(hf_config, "model_type", "")
        if model_type in T5_FAMILY:
            class_name = T5_FAMILY[model_type][1 if model_args.encoder_only else 0]
        elif getattr(hf_config, "is_encoder_decoder", False):
            raise ValueError(
                f"{path}: encoder-decoder model type {model_type!r} is not supported (T5-family or encoder models only)"
            )
        else:
            class_name = "AutoModel"
        if model_args.feature not in ("last_hidden_state", "pooler_output"):
            raise ValueError(f"--feature must be last_hidden_state or pooler_output, got {model_args.feature!r}")
        lm_q = _load_backbone(class_name, path, model_args, config=hf_config)
        if class_name == "AutoModel":
            class_name = type(lm_q).__name__
        config = DRModelConfig(
            tied=not model_args.untie_encoder,
            plm_backbone_type=class_name,
            feature=model_args.feature,
            pooling=model_args.pooling,
            linear_head=model_args.add_linear_head,
            projection_in_dim=model_args.projection_in_dim if model_args.add_linear_head else None,
            projection_out_dim=model_args.projection_out_dim if model_args.add_linear_head else None,
            normalize=model_args.normalize,
            temperature=1.0 if model_args.temperature is None else model_args.temperature,
            encoder_only=class_name not in DECODER_BACKBONES,
        )
        head_q = None
        if model_args.add_linear_head:
            hidden = getattr(lm_q.config, "d_model", None) or lm_q.config.hidden_size
            if model_args.projection_in_dim != hidden:
                raise ValueError(
                    f"--projection_in_dim {model_args.projection_in_dim} does not match the hidden size {hidden} of {path}"
                )
            head_q = LinearHead(model_args.projection_in_dim, model_args.projection_out_dim)
        lm_p = head_p = None
        if not config.tied:
            lm_p = copy.deepcopy(lm_q)
            head_p = copy.deepcopy(head_q)
        return cls(config, lm_q, lm_p, head_q, head_p)

    @classmethod
    def _build_from_checkpoint(cls, path: Path, model_args: ModelArguments) -> "DRModel":
        try:
            raw = json.loads((path / CONFIG_NAME).read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path / CONFIG_NAME}:{err.lineno}: invalid JSON ({err.msg})") from None
        config = DRModelConfig.from_openmatch_json(raw, source=str(path / CONFIG_NAME))
        if model_args.temperature is not None:
            # A loss setting, not architecture: a flag given on purpose wins; otherwise the checkpoint's value
            # is kept, so resuming training from it optimises the same loss it was trained with.
            config.temperature = model_args.temperature
        _warn_conflicts(path, config, model_args)
        if config.feature not in ("last_hidden_state", "pooler_output"):
            raise ValueError(f"{path / CONFIG_NAME}: unsupported feature {config.feature!r}")
        if config.tied:
            towers = [path]
        else:
            towers = [path / "query_model", path / "passage_model"]
        lms, heads = [], []
        for tower, side in zip(towers, ("query", "passage")):
            _check_backbone_folder(tower)
            lms.append(_load_backbone(config.plm_backbone_type, str(tower), model_args))
            if config.linear_head:
                # OpenMatch writes untied heads to query_head/ and passage_head/; we write them in the tower.
                head_dir = tower
                if not config.tied and not _has_head(tower) and _has_head(path / f"{side}_head"):
                    head_dir = path / f"{side}_head"
                heads.append(LinearHead.load(head_dir))
            else:
                heads.append(None)
        if config.linear_head:
            config.projection_in_dim, config.projection_out_dim = heads[0].input_dim, heads[0].output_dim
        if config.tied:
            return cls(config, lms[0], None, heads[0], None)
        return cls(config, lms[0], lms[1], heads[0], heads[1])


def _has_head(folder: Path) -> bool:
    return (folder / HEAD_WEIGHTS_NAME).exists() or (folder / OPENMATCH_HEAD_WEIGHTS_NAME).exists()


def _warn_conflicts(path: Path, config: DRModelConfig, model_args: ModelArguments) -> None:
    """One warning naming every flag (set away from its default) that the checkpoint overrides.

    Flags left at their defaults cannot be told apart from flags not given, so they are not reported.
    """
    defaults = {f.name: f.default for f in fields(ModelArguments)}
    checks = [
        ("untie_encoder", not config.tied),
        ("pooling", config.pooling),
        ("add_linear_head", config.linear_head),
        ("normalize", config.normalize),
        ("feature", config.feature),
    ]
    if config.plm_backbone_type in DECODER_BACKBONES + T5_ENCODER_BACKBONES:
        checks.append(("encoder_only", config.plm_backbone_type in T5_ENCODER_BACKBONES))
    conflicts = []
    for name, stored in checks:
        flag = getattr(model_args, name)
        if flag != defaults[name] and flag != stored:
            conflicts.append(f"--{name} {flag} (checkpoint: {stored})")
    if conflicts:
        logger.warning(
            "%s is a checkpoint whose %s decides the architecture; ignoring %s",
            path, CONFIG_NAME, "; ".join(conflicts),
        )


def load_model_and_tokenizer(model_args: ModelArguments):
    """The ``(DRModel, tokenizer)`` pair every driver uses; the tokenizer comes from ``--tokenizer_name``
    or the model folder (for untied checkpoints without a root tokenizer, from ``query_model/``)."""
    from transformers import AutoTokenizer

    model = DRModel.build(model_args)
    source = model_args.tokenizer_name or model_args.model_name_or_path
    kwargs = {"cache_dir": model_args.cache_dir} if model_args.cache_dir else {}
    if not model_args.tokenizer_name and not model.config.tied and not _has_tokenizer(Path(source)):
        source = str(Path(source) / "query_model")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as err:
        raise ValueError(f"{source}: cannot load a tokenizer ({err}); pass --tokenizer_name") from None
    if tokenizer.pad_token_id is None:
        raise ValueError(
            f"{source}: tokenizer has no pad token; batches cannot be padded (set one in its tokenizer_config.json)"
        )
    return model, tokenizer


def _has_tokenizer(folder: Path) -> bool:
    return folder.is_dir() and any(
        (folder / name).exists() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "spiece.model")
    )
