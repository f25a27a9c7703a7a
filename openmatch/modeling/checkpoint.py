"""Checkpoint folders: writing ours, reading ours, OpenMatch v2's and plain Hugging Face model folders.

Layout (docs/formats.md#checkpoint-folder): the backbone's Hugging Face files, an optional linear head
(``linear.safetensors``, OpenMatch's ``linear.pt`` and ``head_config.json``) and ``openmatch_config.json``,
written last as the completion marker. Untied models keep one tower per side in ``query_model/`` and
``passage_model/``; OpenMatch puts untied heads in ``query_head/`` and ``passage_head/``, which load too.
A LoRA model's folder holds its adapter instead of the backbone's files (:mod:`openmatch.modeling.lora`);
the base is loaded from where ``openmatch_config.json`` says (or ``--lora_base_model``) and checked by
fingerprint.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import tempfile
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers.utils import CONFIG_NAME as HF_CONFIG_NAME
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, WEIGHTS_INDEX_NAME, WEIGHTS_NAME

from ..arguments import ModelArguments
from ..dataset.tokenization import require_pad_id
from ..errors import InputError, MissingInputError, UsageError
from ..utils import atomic_output, write_json_atomic
from . import lora
from .config import DECODER_BACKBONES, T5_ENCODER_BACKBONES, DRModelConfig, Instructions, LoraSettings, TrainingSettings
from .dr_model import DRModel, LinearHead

logger = logging.getLogger(__name__)

CONFIG_NAME = "openmatch_config.json"
# Written first by the trainer's save (openmatch.trainer): beside it, a missing CONFIG_NAME means the save was cut off.
TRAINER_ARGS_NAME = "openmatch_args.json"
HEAD_CONFIG_NAME = "head_config.json"
HEAD_WEIGHTS_NAME = "linear.safetensors"
OPENMATCH_HEAD_WEIGHTS_NAME = "linear.pt"
HEAD_WEIGHT_KEY = "linear.weight"  # OpenMatch's LinearHead wraps nn.Linear as `.linear`
QUERY_MODEL_DIR = "query_model"
PASSAGE_MODEL_DIR = "passage_model"
# Where OpenMatch's saver puts the heads of an untied model (query side first).
OPENMATCH_HEAD_DIRS = ("query_head", "passage_head")
WEIGHT_FILES = (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_NAME, WEIGHTS_INDEX_NAME)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "spiece.model")

# (encoder-decoder class, encoder-only class) for config.model_type of the T5 family.
T5_FAMILY = {
    "t5": ("T5Model", "T5EncoderModel"),
    "mt5": ("MT5Model", "MT5EncoderModel"),
    "umt5": ("UMT5Model", "UMT5EncoderModel"),
}


# ---------------------------------------------------------------------- linear head files
def save_head(head: LinearHead, folder: str | os.PathLike) -> None:
    """Write ``linear.safetensors``, ``linear.pt`` and ``head_config.json`` into ``folder``.

    ``linear.pt`` is what OpenMatch's ``LinearHead.load`` reads: a plain ``{"linear.weight": tensor}``
    state dict (loadable with ``weights_only=True``). Each file is renamed into place once complete.
    """
    from safetensors.torch import save as safetensors_bytes

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # A copy: torch.save writes a tensor's whole storage, which for a view could be more than the weight.
    state = {HEAD_WEIGHT_KEY: head.linear.weight.detach().to("cpu", copy=True).contiguous()}
    with atomic_output(folder / HEAD_WEIGHTS_NAME, "wb") as handle:
        handle.write(safetensors_bytes(state))
    with atomic_output(folder / OPENMATCH_HEAD_WEIGHTS_NAME, "wb") as handle:
        torch.save(state, handle)
    write_json_atomic(folder / HEAD_CONFIG_NAME, {"input_dim": head.input_dim, "output_dim": head.output_dim})


def load_head(folder: str | os.PathLike) -> LinearHead:
    """Load ``linear.safetensors`` (ours) or ``linear.pt`` (OpenMatch's, read with weights_only)."""
    folder = Path(folder)
    if (folder / HEAD_WEIGHTS_NAME).exists():
        from safetensors.torch import load_file

        check_safetensors_file(folder / HEAD_WEIGHTS_NAME)
        state = load_file(str(folder / HEAD_WEIGHTS_NAME))
    elif (folder / OPENMATCH_HEAD_WEIGHTS_NAME).exists():
        import pickle

        try:
            state = torch.load(folder / OPENMATCH_HEAD_WEIGHTS_NAME, map_location="cpu", weights_only=True)
        except (RuntimeError, EOFError, pickle.UnpicklingError) as err:
            # torch reports a cut-off zip archive as a RuntimeError ("failed finding central directory").
            reason = " ".join(str(err).split("\n")[0].split())
            raise InputError(f"{folder / OPENMATCH_HEAD_WEIGHTS_NAME}: truncated or corrupt ({reason})") from None
    else:
        raise MissingInputError(
            f"{folder}: checkpoint has a linear head but neither {HEAD_WEIGHTS_NAME} nor "
            f"{OPENMATCH_HEAD_WEIGHTS_NAME} is there"
        )
    weight = state.get(HEAD_WEIGHT_KEY, state.get("weight"))
    if weight is None or weight.dim() != 2:
        raise InputError(f"{folder}: head weights have no 2-D '{HEAD_WEIGHT_KEY}' tensor (keys: {sorted(state)})")
    output_dim, input_dim = weight.shape
    if (folder / HEAD_CONFIG_NAME).exists():
        head_cfg = json.loads((folder / HEAD_CONFIG_NAME).read_text())
        if (head_cfg.get("input_dim"), head_cfg.get("output_dim")) != (input_dim, output_dim):
            raise InputError(
                f"{folder / HEAD_CONFIG_NAME}: says {head_cfg.get('input_dim')}->{head_cfg.get('output_dim')} "
                f"but the weights are {input_dim}->{output_dim}"
            )
    head = LinearHead(input_dim, output_dim)
    with torch.no_grad():
        head.linear.weight.copy_(weight.float())
    return head


def check_safetensors_file(path: str | os.PathLike) -> None:
    """Refuse a ``.safetensors`` file that is truncated or corrupt before anything is loaded from it.

    Opening it is enough: safetensors reads the header and checks that its tensors cover the file exactly
    (a file cut short fails there); no tensor is read.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt"):
            pass
    except SafetensorError as err:
        raise InputError(f"{path}: truncated or corrupt safetensors file ({err})") from None


def _check_weight_files(folder: Path) -> None:
    """Every safetensors file the backbone in ``folder`` would load, checked by :func:`check_safetensors_file`."""
    shards = [SAFE_WEIGHTS_NAME] if (folder / SAFE_WEIGHTS_NAME).exists() else []
    index_path = folder / SAFE_WEIGHTS_INDEX_NAME
    if not shards and index_path.exists():
        try:
            weight_map = json.loads(index_path.read_text())["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise InputError(f"{index_path}: truncated or corrupt (no JSON object with a weight_map)") from None
    for name in shards:
        if not (folder / name).exists():
            raise MissingInputError(f"{folder / name}: weights shard listed in {SAFE_WEIGHTS_INDEX_NAME} is missing")
        check_safetensors_file(folder / name)


def _has_head(folder: Path) -> bool:
    return (folder / HEAD_WEIGHTS_NAME).exists() or (folder / OPENMATCH_HEAD_WEIGHTS_NAME).exists()


# ---------------------------------------------------------------------- writing
def save_model(model: DRModel, output_dir: str | os.PathLike, tokenizer=None) -> None:
    """Write a checkpoint of ``model`` that :func:`build_model` (and, when tied, OpenMatch) can load.

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
        _write(model, output_dir, tokenizer)
        return
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", suffix=".tmp", dir=output_dir.parent))
    try:
        _write(model, tmp, tokenizer)
        os.replace(tmp, output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write(model: DRModel, folder: Path, tokenizer) -> None:
    if model.config.tied:
        towers = [(folder, model.lm_q, model.head_q)]
    else:
        towers = [
            (folder / QUERY_MODEL_DIR, model.lm_q, model.head_q),
            (folder / PASSAGE_MODEL_DIR, model.lm_p, model.head_p),
        ]
    for tower, lm, head in towers:
        if model.config.lora is not None and lora.is_lora(lm):
            lora.save_adapter(lm, tower, model.config.lora.base_model)
        else:
            lm.save_pretrained(tower)
        if head is not None:
            save_head(head, tower)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    write_json_atomic(folder / CONFIG_NAME, model.config.to_openmatch_json())


# ---------------------------------------------------------------------- reading
def build_model(model_args: ModelArguments, model_class: type[DRModel] = DRModel) -> DRModel:
    """Build from ``--model_name_or_path``: our/OpenMatch's checkpoint folder (its stored architecture decides:
    a flag that contradicts it is an error; its loss temperature is kept unless ``--temperature`` is given) or a
    plain Hugging Face model (flags decide; temperature 1 by default)."""
    check_model_source(model_args)
    path = Path(model_args.model_name_or_path)
    if (path / CONFIG_NAME).exists():
        return _build_from_checkpoint(model_class, path, model_args)
    if (path / TRAINER_ARGS_NAME).exists():
        raise InputError(
            f"{path}: incomplete checkpoint: it has {TRAINER_ARGS_NAME} but not {CONFIG_NAME}, which a save writes "
            "last (was the save cut off?); use a complete checkpoint"
        )
    return _build_from_hf(model_class, str(model_args.model_name_or_path), model_args)


def check_model_source(model_args: ModelArguments) -> None:
    """Fail fast, naming the flag, when ``--model_name_or_path``, ``--tokenizer_name`` or ``--config_name`` is
    neither a local folder nor a possible Hugging Face hub name (those are looked up where they are loaded)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    for flag, value in (
        ("--model_name_or_path", model_args.model_name_or_path),
        ("--tokenizer_name", model_args.tokenizer_name),
        ("--config_name", model_args.config_name),
    ):
        if not value or Path(value).is_dir():
            continue
        if Path(value).exists():
            raise InputError(f"{flag} {value}: not a folder (a Hugging Face model folder or a train_dr checkpoint)")
        try:
            validate_repo_id(str(value))
        except HFValidationError:
            raise MissingInputError(f"{flag} {value}: no such folder") from None


def _hf_config(source: str, flag: str, model_args: ModelArguments):
    """``AutoConfig`` of a local folder or hub name; a name that cannot be loaded is an error naming ``flag``."""
    from transformers import AutoConfig

    kwargs = {"cache_dir": model_args.cache_dir} if model_args.cache_dir else {}
    try:
        return AutoConfig.from_pretrained(source, **kwargs)
    except OSError as err:
        reason = " ".join(str(err).split("\n")[0].split())
        if Path(source).is_dir():
            raise InputError(f"{flag} {source}: cannot read its {HF_CONFIG_NAME} ({reason})") from None
        # Offline, or no such model on the hub: transformers' message spans lines, its first one says which.
        raise MissingInputError(
            f"{flag} {source}: no such folder, and not a model in the Hugging Face cache or hub ({reason})"
        ) from None


def backbone_config(model_args: ModelArguments):
    """The Hugging Face config of the (query) backbone that :func:`build_model` loads, read without its weights
    (e.g. its ``vocab_size``, to check training data before the model is loaded)."""
    check_model_source(model_args)
    path = Path(model_args.model_name_or_path)
    if (path / CONFIG_NAME).exists():
        folder = path if read_config(path).tied else path / QUERY_MODEL_DIR
        return _hf_config(str(folder), "--model_name_or_path", model_args)
    if model_args.config_name:
        return _hf_config(model_args.config_name, "--config_name", model_args)
    return _hf_config(str(path), "--model_name_or_path", model_args)


def _check_backbone_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise MissingInputError(f"{folder}: checkpoint folder not found")
    if not (folder / HF_CONFIG_NAME).exists():
        raise MissingInputError(f"{folder}: checkpoint is missing {HF_CONFIG_NAME}")
    if not any((folder / name).exists() for name in WEIGHT_FILES):
        raise MissingInputError(
            f"{folder}: checkpoint is missing its weights file (one of {', '.join(WEIGHT_FILES)})"
        )
    _check_weight_files(folder)


def _backbone_class(name: str):
    import transformers

    cls = getattr(transformers, name, None)
    if cls is None or not hasattr(cls, "from_pretrained"):
        raise InputError(f"unknown backbone type {name!r} in {CONFIG_NAME} (not a transformers model class)")
    return cls


def _load_backbone(class_name: str, folder: str, model_args: ModelArguments, config=None) -> nn.Module:
    kwargs: dict[str, Any] = {"dtype": torch.float32}  # fp32 master weights; mixed precision is autocast's job
    if model_args.cache_dir:
        kwargs["cache_dir"] = model_args.cache_dir
    if config is not None:
        kwargs["config"] = config
    try:
        model, info = _backbone_class(class_name).from_pretrained(folder, output_loading_info=True, **kwargs)
    except OSError as err:
        if Path(folder).is_dir() or getattr(err, "filename", None):
            raise
        # A hub name whose config was found (cached) but whose weights cannot be fetched (offline).
        reason = " ".join(str(err).split("\n")[0].split())
        raise MissingInputError(f"--model_name_or_path {folder}: cannot load its weights ({reason})") from None
    # Hugging Face would initialise missing weights randomly and only log it: for a retriever that silently
    # ruins every score, so it is an error. The BERT-style pooler is exempt (never used, see DRModel).
    missing = sorted(k for k in info.get("missing_keys", ()) if not k.startswith("pooler."))
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise InputError(
            f"{folder}: checkpoint has no weights for {len(missing)} parameter(s) of {type(model).__name__} "
            f"({shown}); is it really a {type(model).__name__} checkpoint?"
        )
    return model


def _build_from_hf(model_class: type[DRModel], path: str, model_args: ModelArguments) -> DRModel:
    if os.path.isdir(path):
        _check_backbone_folder(Path(path))
    if model_args.config_name:
        hf_config = _hf_config(model_args.config_name, "--config_name", model_args)
    else:
        hf_config = _hf_config(path, "--model_name_or_path", model_args)
    model_type = getattr(hf_config, "model_type", "")
    if model_type in T5_FAMILY:
        class_name = T5_FAMILY[model_type][1 if model_args.encoder_only else 0]
    elif getattr(hf_config, "is_encoder_decoder", False):
        raise InputError(
            f"{path}: encoder-decoder model type {model_type!r} is not supported (T5-family or encoder models only)"
        )
    else:
        class_name = "AutoModel"
    if model_args.feature not in ("last_hidden_state", "pooler_output"):
        raise UsageError(f"--feature must be last_hidden_state or pooler_output, got {model_args.feature!r}")
    if model_args.pooling == "first" and _is_decoder_only(hf_config):
        raise UsageError(
            f"{path} is a decoder-only model ({model_type}): with --pooling first every text would be represented "
            "by its first token, which attends to nothing after it; use --pooling last (or mean)"
        )
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
        training=TrainingSettings(temperature=1.0 if model_args.temperature is None else model_args.temperature),
    )
    if model_args.query_prefix or model_args.passage_prefix:
        config.instructions = tokenize_instructions(
            _load_tokenizer(model_args.tokenizer_name or path, model_args), model_args, config.pooling
        )
    if model_args.lora:
        lm_q = _attach_lora(lm_q, path, model_args, config)
    elif model_args.merge_lora:
        logger.warning("%s is not a LoRA checkpoint: --merge_lora has no adapter to merge", path)
    head_q = None
    if model_args.add_linear_head:
        hidden = getattr(lm_q.config, "d_model", None) or lm_q.config.hidden_size
        if model_args.projection_in_dim != hidden:
            raise UsageError(
                f"--projection_in_dim {model_args.projection_in_dim} does not match the hidden size {hidden} of {path}"
            )
        head_q = LinearHead(model_args.projection_in_dim, model_args.projection_out_dim)
    lm_p = head_p = None
    if not config.tied:
        lm_p = copy.deepcopy(lm_q)
        head_p = copy.deepcopy(head_q)
    return model_class(config, lm_q, lm_p, head_q, head_p)


def read_config(path: str | os.PathLike) -> DRModelConfig:
    """The ``DRModelConfig`` (training settings included) stored in checkpoint folder ``path``."""
    config_path = Path(path) / CONFIG_NAME
    try:
        raw = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{config_path}:{err.lineno}: invalid JSON ({err.msg})") from None
    return DRModelConfig.from_openmatch_json(raw, source=str(config_path))


def _build_from_checkpoint(model_class: type[DRModel], path: Path, model_args: ModelArguments) -> DRModel:
    config = read_config(path)
    if model_args.temperature is not None:
        # A training setting, not the encoder: a flag given on purpose wins; otherwise the checkpoint's value
        # is kept, so resuming training from it optimises the same loss it was trained with.
        config.training.temperature = model_args.temperature
    _refuse_conflicts(path, config, model_args)
    if model_args.merge_lora and config.lora is None:
        logger.warning("%s is not a LoRA checkpoint: --merge_lora has no adapter to merge", path)
    if config.feature not in ("last_hidden_state", "pooler_output"):
        raise InputError(f"{path / CONFIG_NAME}: unsupported feature {config.feature!r}")
    towers = [path] if config.tied else [path / QUERY_MODEL_DIR, path / PASSAGE_MODEL_DIR]
    lms, heads = [], []
    for tower, openmatch_head_dir in zip(towers, OPENMATCH_HEAD_DIRS):
        if config.lora is not None:
            lms.append(_load_lora_tower(tower, config, model_args))
        else:
            _check_backbone_folder(tower)
            lms.append(_load_backbone(config.plm_backbone_type, str(tower), model_args))
            if model_args.lora:  # a fully trained checkpoint as the frozen base of new adapters
                lms[-1] = _attach_lora(lms[-1], str(path), model_args, config)
        if config.linear_head:
            head_dir = tower
            if not config.tied and not _has_head(tower) and _has_head(path / openmatch_head_dir):
                head_dir = path / openmatch_head_dir
            heads.append(load_head(head_dir))
        else:
            heads.append(None)
    if config.linear_head:
        config.projection_in_dim, config.projection_out_dim = heads[0].input_dim, heads[0].output_dim
    if config.tied:
        return model_class(config, lms[0], None, heads[0], None)
    return model_class(config, lms[0], lms[1], heads[0], heads[1])


def load_lora_weights(model: DRModel, path: str | os.PathLike) -> None:
    """Load the adapter (and head) of LoRA checkpoint ``path`` into ``model``, a LoRA model on the same base.

    What resuming a LoRA run needs: the frozen base is already in ``model`` and is not read again (for a 7B
    model that would double the memory), only the tensors the run trains.
    """
    path = Path(path)
    stored = read_config(path)
    mine = model.config.lora
    if stored.lora is None or mine is None or not model.config.tied:
        raise InputError(f"{path}: a LoRA checkpoint resumes only a LoRA model (tied) and the other way round")
    if stored.lora.base_fingerprint != mine.base_fingerprint:
        raise InputError(f"{path}: its adapter was trained on another base model than {mine.base_model}")
    lora.check_adapter_folder(path)
    lora.load_adapter_weights(model.lm_q, path)
    if stored.linear_head != (model.head_q is not None):
        raise InputError(f"{path}: checkpoint {'has' if stored.linear_head else 'has no'} linear head, the model "
                         f"{'has none' if stored.linear_head else 'has one'}")
    if model.head_q is not None:
        head = load_head(path)
        if head.linear.weight.shape != model.head_q.linear.weight.shape:
            raise InputError(f"{path}: linear head is {head.input_dim}->{head.output_dim}, the model's "
                             f"{model.head_q.input_dim}->{model.head_q.output_dim}")
        with torch.no_grad():
            model.head_q.linear.weight.copy_(head.linear.weight)


def _is_decoder_only(hf_config) -> bool:
    """A causal LM family (Llama, Mistral, Qwen, GPT-2, ...) and not an encoder that also has a causal head (BERT)."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    model_type = getattr(hf_config, "model_type", "")
    return (
        not getattr(hf_config, "is_encoder_decoder", False)
        and model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
    )


def _attach_lora(lm: nn.Module, base: str, model_args: ModelArguments, config: DRModelConfig) -> nn.Module:
    """Fresh adapters on ``lm`` (loaded from ``base``); ``config.lora`` records them and the base's fingerprint."""
    if not config.tied:
        raise UsageError("--lora trains one adapter for queries and passages; it cannot be combined with --untie_encoder")
    config.lora = LoraSettings(
        r=model_args.lora_r,
        alpha=model_args.lora_alpha,
        dropout=model_args.lora_dropout,
        target_modules=lora.parse_target_modules(model_args.lora_target_modules),
        # An absolute folder, so that the checkpoint finds its base from any working directory.
        base_model=str(Path(base).resolve()) if os.path.isdir(base) else base,
        base_fingerprint=lora.weights_fingerprint(lm),
    )
    return lora.attach(lm, config.lora)


def _load_lora_tower(folder: Path, config: DRModelConfig, model_args: ModelArguments) -> nn.Module:
    """The base model of a LoRA checkpoint with its adapter (merged into it under ``--merge_lora``)."""
    lora.check_adapter_folder(folder)
    settings = config.lora
    base = model_args.lora_base_model or settings.base_model
    if os.path.isdir(base):
        _check_backbone_folder(Path(base))
    elif os.path.isabs(base) or base.startswith("."):  # a folder, not a Hugging Face model name
        if model_args.lora_base_model:
            raise MissingInputError(f"{base}: no such folder (--lora_base_model)")
        raise MissingInputError(
            f"{folder}: its LoRA base model {base} is not there; pass the base's folder with --lora_base_model"
        )
    base_lm = _load_backbone(config.plm_backbone_type, base, model_args)
    found = lora.weights_fingerprint(base_lm)
    if found != settings.base_fingerprint:
        raise InputError(
            f"{folder}: its LoRA adapter was trained on another base model than {base} (weight fingerprint "
            f"{found[:12]}, expected {settings.base_fingerprint[:12]}); pass the right one with --lora_base_model"
        )
    lm = lora.load_adapter(base_lm, folder)
    if model_args.merge_lora:
        lm = lora.merge(lm)
        config.lora = None  # a plain backbone now: saving it writes the merged weights in full
    return lm


def tokenize_instructions(tokenizer, model_args: ModelArguments, pooling: str) -> Instructions:
    """``--query_prefix`` / ``--passage_prefix`` as token ids (no special tokens), and how many of the
    tokenizer's leading special tokens (e.g. ``<s>``, ``[CLS]``) they follow."""
    from ..dataset.tokenization import SpecialTokenLayout

    prepare_tokenizer(tokenizer, pooling, model_args.tokenizer_name or model_args.model_name_or_path)
    ids = {}
    for side in ("query", "passage"):
        text = getattr(model_args, f"{side}_prefix") or ""
        ids[side] = tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
        if text and not ids[side]:
            raise UsageError(f"--{side}_prefix {text!r} is no token at all for this tokenizer")
    return Instructions(
        query=model_args.query_prefix or "", passage=model_args.passage_prefix or "",
        query_ids=ids["query"], passage_ids=ids["passage"], offset=len(SpecialTokenLayout(tokenizer).prefix),
    )


def prepare_tokenizer(tokenizer, pooling: str, source: str) -> None:
    """Make ``tokenizer`` fit last-token pooling: it appends its EOS token to every text, and pads with EOS
    when it has no pad token (padding is masked, so the id does not matter).

    The EOS is added by the tokenizer's own post-processor, so every path that tokenises (training data
    through ``SpecialTokenLayout``, ``build_index``, ``retrieve``, the API) gets it, and truncation keeps room
    for it. A tokenizer that appends it already (Qwen3-Embedding's) is left as it is. Other poolings: unchanged.
    """
    if pooling != "last":
        return
    if tokenizer.eos_token_id is None:
        raise InputError(f"{source}: tokenizer has no EOS token, which last-token pooling appends to every text")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if _appends_eos(tokenizer):
        return
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise InputError(f"{source}: tokenizer {type(tokenizer).__name__} is not a fast tokenizer; cannot make it append EOS")
    from tokenizers import processors

    eos, eos_id = str(tokenizer.eos_token), tokenizer.eos_token_id
    append = processors.TemplateProcessing(single=f"$A {eos}", pair=f"$A $B:1 {eos}:1", special_tokens=[(eos, eos_id)])
    current = backend.post_processor
    backend.post_processor = append if current is None else processors.Sequence([current, append])
    if not _appends_eos(tokenizer):  # pragma: no cover - a post-processor the tokenizer does not run
        raise InputError(f"{source}: could not make tokenizer {type(tokenizer).__name__} append its EOS token")


def _appends_eos(tokenizer) -> bool:
    ids = tokenizer("hello", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[-1] == tokenizer.eos_token_id


def _load_tokenizer(source: str, model_args: ModelArguments):
    """The tokenizer of a model about to be built (its instructions are tokenised before the model exists)."""
    from transformers import AutoTokenizer

    kwargs = {"cache_dir": model_args.cache_dir} if model_args.cache_dir else {}
    try:
        return AutoTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as err:
        raise InputError(f"{source}: cannot load a tokenizer ({err}); pass --tokenizer_name") from None


def _refuse_conflicts(path: Path, config: DRModelConfig, model_args: ModelArguments) -> None:
    """An architecture flag that contradicts the checkpoint's stored configuration is an error naming the flag,
    its value and the stored one (all of them at once): the checkpoint's weights were trained for the stored
    architecture, so the flag can be neither honoured nor silently dropped.

    A flag counts when the user gave it (``model_args.given_flags``: command lines, ``.json`` files and
    ``api.load_model`` keywords record them, so ``--pooling first`` given on purpose is compared too); for
    arguments built in Python without that record, when it is set away from its default.
    """
    defaults = {f.name: f.default for f in fields(ModelArguments)}
    given = model_args.given_flags
    checks = [
        ("untie_encoder", not config.tied),
        ("pooling", config.pooling),
        ("add_linear_head", config.linear_head),
        ("normalize", config.normalize),
        ("feature", config.feature),
    ]
    if config.plm_backbone_type in DECODER_BACKBONES + T5_ENCODER_BACKBONES:
        checks.append(("encoder_only", config.plm_backbone_type in T5_ENCODER_BACKBONES))
    if config.linear_head:
        # OpenMatch's checkpoints do not store the sizes (None): their head files are checked when loaded.
        checks += [(name, getattr(config, name)) for name in ("projection_in_dim", "projection_out_dim")
                   if getattr(config, name) is not None]
    instructions = config.instructions or Instructions()
    checks += [("query_prefix", instructions.query), ("passage_prefix", instructions.passage)]
    if config.lora is not None:
        checks += [("lora_r", config.lora.r), ("lora_alpha", config.lora.alpha), ("lora_dropout", config.lora.dropout)]
    conflicts = []
    for name, stored in checks:
        flag = getattr(model_args, name)
        from_user = name in given if given is not None else flag != defaults[name]
        if from_user and flag != stored:
            conflicts.append(f"--{name} {flag} contradicts the checkpoint's {name} {stored}")
    if conflicts:
        raise UsageError(
            f"{'; '.join(conflicts)} ({path / CONFIG_NAME} decides the architecture the weights were trained "
            "for); drop the flag"
        )


def load_model_and_tokenizer(model_args: ModelArguments):
    """The ``(DRModel, tokenizer)`` pair every driver uses; the tokenizer comes from ``--tokenizer_name``
    or the model folder (for untied checkpoints without a root tokenizer, from ``query_model/``). Under
    last-token pooling it is made to append EOS (:func:`prepare_tokenizer`)."""
    from transformers import AutoTokenizer

    model = build_model(model_args)
    source = model_args.tokenizer_name or model_args.model_name_or_path
    kwargs = {"cache_dir": model_args.cache_dir} if model_args.cache_dir else {}
    if not model_args.tokenizer_name and not model.config.tied and not _has_tokenizer(Path(source)):
        source = str(Path(source) / QUERY_MODEL_DIR)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as err:
        reason = " ".join(str(err).split())
        if model_args.tokenizer_name:
            raise InputError(f"--tokenizer_name {source}: cannot load a tokenizer ({reason})") from None
        raise InputError(f"{source}: cannot load a tokenizer ({reason}); pass --tokenizer_name") from None
    prepare_tokenizer(tokenizer, model.config.pooling, source)
    require_pad_id(tokenizer, source)
    return model, tokenizer


def _has_tokenizer(folder: Path) -> bool:
    return folder.is_dir() and any((folder / name).exists() for name in TOKENIZER_FILES)


def check_max_len(model: DRModel, **lengths: int) -> None:
    """Refuse a maximum input length (``p_max_len=...``, ``q_max_len=...``, named as their flags) above what the
    backbone's absolute position embeddings cover, before anything is encoded or trained: a longer input would
    fail deep inside the model, hours into a run. Backbones with relative positions (T5) have no such limit."""
    limit = model.max_input_length
    if limit is None:
        return
    for name, value in lengths.items():
        if value is not None and value > limit:
            raise UsageError(
                f"--{name} {value} is above the {limit} input positions of the model's position embeddings "
                f"(max_position_embeddings in its config.json); use --{name} {limit} or less"
            )
