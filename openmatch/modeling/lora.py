"""LoRA adapters (through ``peft``) on a frozen backbone: attaching, saving, loading, merging, fingerprints.

A LoRA checkpoint folder holds the adapter only (``adapter_model.safetensors`` and peft's
``adapter_config.json``, loadable with ``peft.PeftModel.from_pretrained`` too) beside our
``openmatch_config.json``, whose ``lora`` entry names the base model and records a fingerprint of its
weights: an adapter is refused on any other base, since it would silently produce different embeddings.

``peft`` is an optional dependency (``pip install "openmatch[lora]"``); it is imported only when a model
uses LoRA.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterator
import torch
from torch import nn

from ..errors import DependencyError, InputError, MissingInputError
from ..utils import atomic_output, write_json_atomic
from .config import LoraSettings

ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER = "default"  # peft's name for a model's only adapter


def require_peft():
    """The ``peft`` module, or a ``DependencyError`` saying how to install it."""
    try:
        import peft
    except ImportError:
        raise DependencyError(
            "LoRA needs the peft package, which is not installed: pip install 'openmatch[lora]' (or pip install peft)"
        ) from None
    return peft


def is_lora(module: nn.Module) -> bool:
    """True when ``module`` is a backbone wrapped by peft (adapters attached and not merged)."""
    return hasattr(module, "peft_config") and hasattr(module, "get_base_model")


def weights_fingerprint(module: nn.Module, sample: int = 4096) -> str:
    """A cheap hash of a module's weights: names, shapes and the first ``sample`` values of each tensor.

    The same rule as the index's model fingerprint (``openmatch.retriever.model_fingerprint``), applied to the
    base model alone; computed on the float32 weights as loaded.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().reshape(-1)[:sample].to("cpu", torch.float32).numpy().tobytes())
    return digest.hexdigest()


def parse_target_modules(text: str) -> list[str] | str:
    """``--lora_target_modules``: ``all-linear`` (peft's every linear layer but an output head) or a name list."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    return "all-linear" if names == ["all-linear"] else names


def attach(lm: nn.Module, settings: LoraSettings) -> nn.Module:
    """``lm`` wrapped with fresh LoRA adapters (the base frozen, the adapters trainable)."""
    peft = require_peft()
    config = peft.LoraConfig(
        r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
        target_modules=settings.target_modules, bias="none",
    )
    try:
        return _wrap(lm, config)
    except ValueError as err:  # e.g. target modules that the backbone does not have
        raise InputError(f"cannot attach LoRA adapters to {type(lm).__name__}: {err}") from None


def _wrap(lm: nn.Module, config) -> nn.Module:
    import warnings

    peft = require_peft()
    with warnings.catch_warnings():
        # peft asks the backbone for transformers 4's `is_gradient_checkpointing`, which warns on every call.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return peft.get_peft_model(lm, config)


def save_adapter(lm: nn.Module, folder: str | os.PathLike, base_model: str) -> None:
    """Write the adapter of a peft-wrapped ``lm`` (weights and ``adapter_config.json``) into ``folder``.

    Only the adapter's tensors are written, each file renamed into place once complete; ``base_model`` goes
    into peft's config so that peft alone can load the adapter too.
    """
    from safetensors.torch import save as safetensors_bytes

    peft = require_peft()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = peft.get_peft_model_state_dict(lm, adapter_name=ADAPTER)
    state = {name: tensor.detach().to("cpu", copy=True).contiguous() for name, tensor in state.items()}
    with atomic_output(folder / ADAPTER_WEIGHTS_NAME, "wb") as handle:
        handle.write(safetensors_bytes(state))
    config = lm.peft_config[ADAPTER].to_dict()
    config.update(inference_mode=True, base_model_name_or_path=base_model)  # as peft's own save_pretrained writes it
    # peft keeps resolved module names as a set, which JSON has no type for.
    write_json_atomic(folder / ADAPTER_CONFIG_NAME,
                      {key: sorted(value) if isinstance(value, set) else value for key, value in config.items()})


def check_adapter_folder(folder: Path) -> None:
    """``MissingInputError`` naming the first adapter file ``folder`` lacks."""
    for name in (ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME):
        if not (folder / name).is_file():
            raise MissingInputError(f"{folder}: LoRA checkpoint is missing {name}")


def load_adapter(base: nn.Module, folder: str | os.PathLike) -> nn.Module:
    """``base`` wrapped with the adapter saved in ``folder`` (trainable, so that training can go on)."""
    peft = require_peft()
    folder = Path(folder)
    check_adapter_folder(folder)
    try:
        config = peft.LoraConfig.from_pretrained(str(folder))
    except (OSError, ValueError, TypeError) as err:
        raise InputError(f"{folder / ADAPTER_CONFIG_NAME}: not a LoRA adapter config ({err})") from None
    config.inference_mode = False
    # Where the base was at training does not matter once its fingerprint matched (peft would warn about it).
    config.base_model_name_or_path = getattr(base, "name_or_path", None)
    lm = _wrap(base, config)
    load_adapter_weights(lm, folder)
    return lm


def load_adapter_weights(lm: nn.Module, folder: str | os.PathLike) -> None:
    """Copy the adapter tensors of ``folder`` into the adapters of the peft-wrapped ``lm``; every adapter
    tensor must be there and fit (a missing one would keep its random initialisation)."""
    from safetensors.torch import load_file

    peft = require_peft()
    path = Path(folder) / ADAPTER_WEIGHTS_NAME
    state = load_file(str(path))
    expected = peft.get_peft_model_state_dict(lm, adapter_name=ADAPTER)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(name for name in set(expected) & set(state) if expected[name].shape != state[name].shape)
    if missing or unexpected or wrong:
        problems = [f"{what} {names[:3]}" for what, names in
                    (("missing", missing), ("unexpected", unexpected), ("shape mismatch in", wrong)) if names]
        raise InputError(f"{path}: adapter does not fit the model ({'; '.join(problems)})")
    peft.set_peft_model_state_dict(lm, state, adapter_name=ADAPTER)


def merge(lm: nn.Module) -> nn.Module:
    """The base model with the adapter folded into its weights (``W + B·A·alpha/r``): a plain backbone."""
    return lm.merge_and_unload()


def effective_items(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` of ``model``'s state as the merged model would have it, sorted by name: adapter tensors
    left out, each adapted weight replaced by ``W + delta`` and peft's name parts removed.

    Merging adds peft's own delta to the weight in float32, the same operation as here, so an index built with
    ``--merge_lora`` and queries encoded without it (or the reverse) get the same fingerprint. Each adapted
    weight is computed when its turn comes, so no more than one extra weight is in memory at a time.
    """
    from peft.tuners.lora import LoraLayer

    adapted = {
        f"{name}.base_layer.weight": module
        for name, module in model.named_modules()
        if isinstance(module, LoraLayer) and ADAPTER in module.lora_A and not module.merged
    }
    state = model.state_dict()
    names = {key.replace("base_model.model.", "").replace(".base_layer.", "."): key for key in state if ".lora_" not in key}
    for name in sorted(names):
        key = names[name]
        value = state[key]
        if key in adapted:
            value = value + adapted[key].get_delta_weight(ADAPTER).to(value.dtype)
        yield name, value
