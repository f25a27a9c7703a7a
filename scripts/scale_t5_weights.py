#!/usr/bin/env python
"""Rescale a T5 checkpoint so that its residual stream is 100x smaller while the function stays the same.

Usage (OpenMatch's flags)::

    python scripts/scale_t5_weights.py --input_model_path t5-base --output_model_path t5-base-scaled \
        [--num_layers 12] [--overwrite] [--keep_layer_norm_epsilon]

What is scaled, and why the model computes the same function afterwards
-----------------------------------------------------------------------
T5 is a pre-norm transformer: every sub-layer reads ``RMSNorm(h)`` of the residual stream ``h`` and adds its
output back to ``h``; the stacks end with a final RMSNorm. ``RMSNorm(c*h) = RMSNorm(h)`` for any ``c > 0``
(up to the epsilon, see below), so a residual stream that is *uniformly* 100x smaller gives the same sub-layer
inputs, and the same final output. It is made uniformly smaller by dividing

* the shared token embedding by 100 (the stream starts 100x smaller),
* each attention output projection ``SelfAttention.o`` and ``EncDecAttention.o`` by 100: queries, keys and
  values come from normalised inputs (cross-attention keys/values from the encoder's *normalised* output), so
  the attention output scales with ``o`` alone; the relative position bias is added to unchanged
  logits and must NOT be scaled,
* each feed-forward by 100 in total:
  - ReLU T5 (v1.0, ``wi``/``wo``): ``wo(relu(wi x / 10)) / 10 = wo(relu(wi x)) / 100`` because ReLU is
    positively homogeneous (``relu(a*z) = a*relu(z)`` for ``a > 0``);
  - gated-GELU T5 (v1.1, Flan, mT5: ``wi_0``, ``wi_1``, ``wo``): GELU is not homogeneous, so ``wi_0`` (the
    GELU branch) must stay unchanged; the product ``gelu(wi_0 x) * (wi_1 x)`` is linear in ``wi_1``, so ``wi_1``
    and ``wo`` are divided by 10 each. (OpenMatch's script looks for ``wi`` and fails on these models.)

Layer norm weights are not touched. RMSNorm computes ``h / sqrt(mean(h^2) + eps)``; with ``h`` 100x smaller the
epsilon weighs 10^4 times more, which changes the output noticeably when the stream is small (e.g. randomly
initialised models). We therefore also divide ``layer_norm_epsilon`` by 10^4, which makes the rescaled model
exactly equivalent (``--keep_layer_norm_epsilon`` reproduces OpenMatch's file, where it is only approximately so).

T5ForConditionalGeneration: the LM head reads the normalised decoder output, so it must keep its *original*
weights, while a tied head would follow the scaled embedding and give 100x smaller logits. The head is
therefore untied and saved with the effective original weights (with T5 v1.0's ``d_model**-0.5`` output
factor folded in), so the logits are unchanged too. T5Model / T5EncoderModel have no head.

Why bother: the smaller stream keeps T5's activations away from the float16 overflow it is known for, and the
smaller weights make the same optimiser steps relatively larger, which OpenMatch found gives smoother dense-
retrieval training. See docs/scale-t5-weights.md.

Output: ``model.safetensors`` + config (+ generation config) + the tokenizer files, written into a temporary
folder and moved into place at the end. Weight files already in the output folder are refused unless
``--overwrite``, and then deleted first, so that an unscaled ``pytorch_model.bin`` / ``model.safetensors`` can
never sit beside the scaled weights and win on load.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

logger = logging.getLogger("scale_t5_weights")

EMBEDDING_FACTOR = 100.0
ATTENTION_OUTPUT_FACTOR = 100.0
FFN_FACTOR = 10.0  # applied twice per feed-forward (in and out): 100 in total
EPSILON_FACTOR = EMBEDDING_FACTOR**2  # RMSNorm's epsilon is added to the mean *square*

SUPPORTED_MODEL_TYPES = ("t5", "mt5")
SUPPORTED_ARCHITECTURES = ("Model", "EncoderModel", "ForConditionalGeneration")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json", ".h5", ".msgpack", ".ckpt")
TOKENIZER_FILE_MARKERS = ("tokenizer", "spiece", "sentencepiece", "special_tokens_map", "added_tokens", "vocab", "merges")
MARKER_FILE = "scale_t5_weights.json"


class ScaleError(Exception):
    """A problem with the input or output folder, reported as one line."""


def is_weight_file(name: str) -> bool:
    return name.endswith(WEIGHT_SUFFIXES) or name.startswith(("pytorch_model", "model.safetensors", "tf_model", "flax_model"))


def model_class_for(config):
    """The transformers class named by the config's ``architectures`` (T5Model, T5EncoderModel, ...)."""
    import transformers

    prefix = "MT5" if config.model_type == "mt5" else "T5"
    architectures = list(getattr(config, "architectures", None) or [])
    if not architectures:
        # Original Google checkpoints are seq2seq models; loading checks that no weight is missing.
        name = f"{prefix}ForConditionalGeneration"
        logger.warning("config has no 'architectures'; loading it as %s", name)
    else:
        name = architectures[0]
    if name not in {prefix + suffix for suffix in SUPPORTED_ARCHITECTURES}:
        raise ScaleError(
            f"architecture {name} is not supported; expected one of "
            f"{', '.join(prefix + s for s in SUPPORTED_ARCHITECTURES)}"
        )
    return getattr(transformers, name)


def load_t5(path: str | os.PathLike):
    """Load a T5 checkpoint with the class its config names; refuses non-T5 models and incomplete checkpoints."""
    from transformers import AutoConfig

    path = Path(path)
    if not (path / "config.json").is_file():
        raise ScaleError(f"{path}: no config.json (expected a Hugging Face model folder)")
    config = AutoConfig.from_pretrained(path)
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise ScaleError(
            f"{path}: model_type {config.model_type!r} is not T5 (supported: {', '.join(SUPPORTED_MODEL_TYPES)}); "
            "the rescaling relies on T5's pre-norm RMSNorm layout"
        )
    cls = model_class_for(config)
    model, info = cls.from_pretrained(path, config=config, dtype="auto", output_loading_info=True)
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
    missing = [k for k in info.get("missing_keys", []) if k not in tied and not k.endswith("embed_tokens.weight")]
    if missing:
        raise ScaleError(
            f"{path}: checkpoint lacks weights {missing[:5]}{' ...' if len(missing) > 5 else ''} for {cls.__name__}; "
            "is 'architectures' in config.json right?"
        )
    return model.eval()


@torch.no_grad()
def _divide(param: torch.nn.Parameter, factor: float) -> None:
    # Divide in float32 so that half-precision checkpoints lose no more than one rounding.
    param.copy_((param.float() / factor).to(param.dtype))


def _stacks(model):
    stacks = [("encoder", model.encoder, model.config.num_layers)]
    if getattr(model, "decoder", None) is not None:
        stacks.append(("decoder", model.decoder, model.config.num_decoder_layers))
    return stacks


@torch.no_grad()
def scale_t5_model(model, num_layers: int | None = None, keep_layer_norm_epsilon: bool = False) -> list[str]:
    """Rescale ``model`` in place (see the module docstring); returns the names of the parameters changed.

    ``num_layers``, if given, must equal the encoder's layer count: scaling only some blocks would leave the
    residual stream non-uniformly scaled and change the function.
    """
    config = model.config
    if num_layers is not None:
        if num_layers < 1:
            raise ScaleError(f"--num_layers must be positive, got {num_layers}")
        if num_layers != config.num_layers:
            raise ScaleError(
                f"--num_layers {num_layers} but the model has {config.num_layers} encoder layers "
                f"({config.num_decoder_layers} decoder layers); scaling only some layers would change the function"
            )
    gated = bool(getattr(config, "is_gated_act", False))
    names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    changed: list[str] = []

    def divide(param, factor):
        _divide(param, factor)
        changed.append(names[id(param)])

    head = getattr(model, "lm_head", None)
    if head is not None:
        # The head reads the normalised (unchanged) decoder output: keep its effective original weights,
        # untied from the embedding that is about to shrink, with v1.0's output factor folded in.
        effective = head.weight.detach().float().clone()
        if getattr(config, "scale_decoder_outputs", getattr(config, "tie_word_embeddings", True)):
            effective *= config.d_model**-0.5
        model.lm_head.weight = torch.nn.Parameter(effective.to(head.weight.dtype))
        config.tie_word_embeddings = False
        config.scale_decoder_outputs = False
        if hasattr(model, "all_tied_weights_keys"):
            model.all_tied_weights_keys.pop("lm_head.weight", None)

    divide(model.shared.weight, EMBEDDING_FACTOR)
    for stack_name, stack, expected in _stacks(model):
        if stack.embed_tokens.weight is not model.shared.weight:
            # Untied stack embeddings would otherwise start an unscaled stream.
            divide(stack.embed_tokens.weight, EMBEDDING_FACTOR)
        if len(stack.block) != expected:
            raise ScaleError(f"{stack_name} has {len(stack.block)} blocks but the config says {expected}")
        for block in stack.block:
            for layer in block.layer:
                for attn_name in ("SelfAttention", "EncDecAttention"):
                    attn = getattr(layer, attn_name, None)
                    if attn is not None:
                        divide(attn.o.weight, ATTENTION_OUTPUT_FACTOR)
                ffn = getattr(layer, "DenseReluDense", None)
                if ffn is None:
                    continue
                if hasattr(ffn, "wi_0"):
                    if not gated:
                        raise ScaleError("feed-forward has wi_0/wi_1 but the config is not gated")
                    # gelu(wi_0 x) * (wi_1 x): linear in wi_1 only; wi_0 feeds a non-homogeneous GELU.
                    divide(ffn.wi_1.weight, FFN_FACTOR)
                else:
                    if gated:
                        raise ScaleError("config is gated but the feed-forward has no wi_0/wi_1")
                    if config.dense_act_fn != "relu":
                        raise ScaleError(
                            f"activation {config.dense_act_fn!r} is not positively homogeneous; only ReLU "
                            "(ungated) or gated feed-forwards can be rescaled without changing the function"
                        )
                    divide(ffn.wi.weight, FFN_FACTOR)
                divide(ffn.wo.weight, FFN_FACTOR)
    if not keep_layer_norm_epsilon:
        config.layer_norm_epsilon = config.layer_norm_epsilon / EPSILON_FACTOR
        for module in model.modules():
            if hasattr(module, "variance_epsilon"):
                module.variance_epsilon = config.layer_norm_epsilon
    return changed


def _prepare_output(input_path: Path, output_path: Path, overwrite: bool) -> None:
    if output_path.exists() and not output_path.is_dir():
        raise ScaleError(f"{output_path}: exists and is not a folder")
    if output_path.is_dir():
        weights = sorted(p.name for p in output_path.iterdir() if is_weight_file(p.name))
        if weights and not overwrite:
            raise ScaleError(
                f"{output_path}: already holds weight files ({', '.join(weights)}); pass --overwrite to replace them"
            )


def _install(tmp: Path, output_path: Path) -> None:
    """Move the finished files from ``tmp`` into ``output_path``; old weight files are deleted first."""
    if not output_path.exists():
        os.replace(tmp, output_path)
        return
    for old in output_path.iterdir():
        if old.is_file() and is_weight_file(old.name):
            old.unlink()  # an unscaled weight file left here could win on load
    for new in sorted(tmp.iterdir(), key=lambda p: is_weight_file(p.name)):  # weights last
        os.replace(new, output_path / new.name)
    tmp.rmdir()


def scale_checkpoint(
    input_model_path: str | os.PathLike,
    output_model_path: str | os.PathLike,
    num_layers: int | None = None,
    overwrite: bool = False,
    keep_layer_norm_epsilon: bool = False,
) -> Path:
    """Load, rescale and save a T5 checkpoint folder; returns the output folder."""
    input_path, output_path = Path(input_model_path), Path(output_model_path)
    if not input_path.is_dir():
        raise ScaleError(f"{input_path}: no such model folder")
    _prepare_output(input_path, output_path, overwrite)
    if (input_path / MARKER_FILE).exists():
        logger.warning("%s was already rescaled by this script; its stream will be 10^4 times smaller", input_path)
    model = load_t5(input_path)
    eps_before = model.config.layer_norm_epsilon
    changed = scale_t5_model(model, num_layers, keep_layer_norm_epsilon)
    logger.info("scaled %d weight matrices of a %s", len(changed), type(model).__name__)

    output_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output_path.name}.", suffix=".tmp", dir=output_path.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        if input_path.resolve() != output_path.resolve():
            for item in input_path.iterdir():
                lower = item.name.lower()
                if item.is_file() and not is_weight_file(item.name) and any(m in lower for m in TOKENIZER_FILE_MARKERS):
                    shutil.copy2(item, tmp / item.name)
        record = {
            "input_model_path": str(input_path.resolve()),
            "architecture": type(model).__name__,
            "gated": bool(getattr(model.config, "is_gated_act", False)),
            "embedding_divided_by": EMBEDDING_FACTOR,
            "attention_output_divided_by": ATTENTION_OUTPUT_FACTOR,
            "feed_forward_in_and_out_divided_by": FFN_FACTOR,
            "layer_norm_epsilon": {"before": eps_before, "after": model.config.layer_norm_epsilon},
            "scaled_parameters": changed,
        }
        (tmp / MARKER_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        _install(tmp, output_path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return output_path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # argparse's own errors as one line, as openmatch's commands print them (this script runs without openmatch)
    parser.error = lambda message: parser.exit(2, f"error: {message} (its flags: --help)\n")
    parser.add_argument("--input_model_path", required=True, help="Hugging Face T5 folder")
    parser.add_argument("--output_model_path", required=True, help="folder for the rescaled model")
    parser.add_argument(
        "--num_layers", type=int, default=None, help="encoder layers (default: from the config; must match it)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace weight files already in the output folder")
    parser.add_argument(
        "--keep_layer_norm_epsilon",
        action="store_true",
        help="leave layer_norm_epsilon unchanged as OpenMatch does (the function then changes slightly)",
    )
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    try:
        out = scale_checkpoint(
            args.input_model_path, args.output_model_path, args.num_layers, args.overwrite, args.keep_layer_norm_epsilon
        )
    except (ScaleError, OSError) as err:
        print(f"scale_t5_weights: error: {err}", file=sys.stderr)
        return 2
    logger.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
