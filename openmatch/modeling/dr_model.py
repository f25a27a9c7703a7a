"""``DRModel``: one bi-encoder class for training and inference: how a text becomes a vector.

Its checkpoint folders (ours, OpenMatch v2's, plain Hugging Face ones) are read and written by
:mod:`openmatch.modeling.checkpoint`.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.utils import ModelOutput

from ..arguments import ModelArguments
from .config import DRModelConfig
from .lora import is_lora


@dataclass
class DROutput(ModelOutput):
    """Query and passage representations (``None`` for a side not given); ``loss`` when a caller sets it."""

    q_reps: Optional[Tensor] = None
    p_reps: Optional[Tensor] = None
    loss: Optional[Tensor] = None


class LinearHead(nn.Module):
    """Bias-free projection; state dict key ``linear.weight`` as in OpenMatch's ``LinearHead``.

    Its files are written and read by :func:`openmatch.modeling.checkpoint.save_head` / ``load_head``.
    """

    def __init__(self, input_dim: int, output_dim: int):
        super().__init__()
        self.linear = nn.Linear(input_dim, output_dim, bias=False)
        self.input_dim, self.output_dim = input_dim, output_dim

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x)


def _position_limit(lm: nn.Module) -> Optional[int]:
    """Input positions a backbone's learned position table covers (BERT: ``max_position_embeddings``; RoBERTa-
    style tables, whose positions start after the padding index, cover that many fewer); ``None`` without one."""
    for name, module in lm.named_modules():
        if isinstance(module, nn.Embedding) and name.rsplit(".", 1)[-1] in ("position_embeddings", "wpe"):
            reserved = module.padding_idx + 1 if module.padding_idx is not None else 0
            return module.num_embeddings - reserved
    return None


def last_token_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """[B, D] hidden state of each row's last real token (the highest position its mask marks).

    The same position whichever side the padding is on: ``len - 1`` under right padding, the last column
    under left padding.
    """
    positions = torch.arange(attention_mask.size(1), device=attention_mask.device)
    last = (positions * attention_mask.to(positions.dtype)).argmax(dim=1)
    return hidden[torch.arange(hidden.size(0), device=hidden.device), last]


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Positions counted over real tokens only (0 for left padding), so that a left-padded row gets the
    positions it has alone; under right padding they equal the default ``0 .. L-1``."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


def insert_instruction(input_ids: Tensor, attention_mask: Tensor, instruction: list[int], offset: int) -> tuple[Tensor, Tensor]:
    """Rows with ``instruction`` inserted after their first ``offset`` real tokens, right-padded.

    Rows may come padded on either side: their real tokens are first moved to the front (in order), then
    the instruction goes in, so every row reads ``real[:offset] + instruction + real[offset:]`` and its mask
    stays one contiguous run.
    """
    real = attention_mask.bool()
    if bool((real.sum(dim=1) < offset).any()):
        raise ValueError(f"a row has fewer than the {offset} leading special token(s) its instruction follows")
    order = torch.argsort((~real).to(torch.int8), dim=1, stable=True)  # real tokens first, in their order
    ids, mask = input_ids.gather(1, order), attention_mask.gather(1, order)
    rows = ids.size(0)
    inserted = torch.as_tensor(instruction, dtype=ids.dtype, device=ids.device).expand(rows, len(instruction))
    ids = torch.cat([ids[:, :offset], inserted, ids[:, offset:]], dim=1)
    mask = torch.cat([mask[:, :offset], torch.ones_like(inserted, dtype=mask.dtype), mask[:, offset:]], dim=1)
    return ids, mask


def _forward_parameters(lm: nn.Module) -> set[str]:
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm  # peft's wrapper forwards **kwargs
    return set(inspect.signature(base.forward).parameters)


class DRModel(nn.Module):
    """Dense-retrieval bi-encoder: backbone -> pooling -> optional linear head -> optional L2 norm.

    * T5-family ``T5Model`` backbones: the encoder reads the input, the decoder is fed only its start token,
      and the representation is the decoder's last hidden state at that position (pooling is ignored).
    * Other backbones (BERT, MiniLM, ``T5EncoderModel`` for ``--encoder_only``, decoder LLMs such as Llama,
      Mistral, Qwen2/3): ``first`` token, attention-masked ``mean`` or ``last`` real token of
      ``last_hidden_state``. With ``last`` the tokenizer appends its EOS token (see
      :func:`openmatch.modeling.checkpoint.prepare_tokenizer`), positions are counted over real tokens and
      the pooled token is found from the mask, so left and right padding give the same vector.
    * ``config.instructions`` (``--query_prefix`` / ``--passage_prefix``): token ids the model itself inserts
      after the tokenizer's leading special tokens of every text, whoever calls it.
    * LoRA (``config.lora``): the backbone is a peft model (frozen base plus adapters), see
      :mod:`openmatch.modeling.lora`.
    * Tied (default): one backbone and head for queries and passages; untied: two copies initialised
      from the same weights.

    Build with :meth:`build` (from arguments) or :meth:`load` (from a checkpoint folder); scores are plain
    dot products (:meth:`score`); ``config.training`` holds the loss's settings, which no embedding depends on.
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
        # Last-token pooling is the decoder LLMs' path: positions from the mask (left padding) and no key/value
        # cache (built by default, read by nobody), where the backbone takes them.
        accepted = _forward_parameters(lm_q) if config.pooling == "last" else set()
        self._position_ids = "position_ids" in accepted
        self._no_cache = "use_cache" in accepted

    # Submodules: lm_p / head_p resolve to the query side when tied.
    @property
    def lm_p(self) -> nn.Module:
        return self.lm_q if self.config.tied else self._lm_p

    @property
    def head_p(self) -> Optional[LinearHead]:
        return self.head_q if self.config.tied else self._head_p

    def _backbones(self) -> list[nn.Module]:
        return [self.lm_q] if self.config.tied else [self.lm_q, self._lm_p]

    @property
    def max_input_length(self) -> Optional[int]:
        """The longest input (special tokens included) that the backbones' absolute position embeddings cover,
        or ``None`` when positions are relative (T5) or computed (rotary): then no length is out of range."""
        limits = [limit for limit in map(_position_limit, self._backbones()) if limit is not None]
        return min(limits) if limits else None

    # ------------------------------------------------------------------ encoding
    def _encode(self, lm: nn.Module, head: Optional[LinearHead], batch: dict[str, Tensor], side: str) -> Tensor:
        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
        instructions = self.config.instructions
        instruction = getattr(instructions, f"{side}_ids") if instructions is not None else None
        if instruction:
            input_ids, attention_mask = insert_instruction(input_ids, attention_mask, instruction, instructions.offset)
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
                token_type_ids = batch["token_type_ids"]
                if instruction:  # the instruction belongs to the text's segment (0)
                    token_type_ids = torch.zeros_like(input_ids)
                inputs["token_type_ids"] = token_type_ids
            if self._position_ids:
                inputs["position_ids"] = position_ids_from_mask(attention_mask)
            if self._no_cache:
                inputs["use_cache"] = False
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
            elif self.config.pooling == "last":
                reps = last_token_pool(hidden, attention_mask)
            else:
                raise ValueError(f"unknown pooling {self.config.pooling!r} (first, mean or last)")
        if head is not None:
            reps = head(reps)
        if self.config.normalize:
            reps = F.normalize(reps, p=2, dim=-1)
        return reps

    def encode_query(self, batch: dict[str, Tensor]) -> Tensor:
        """[B, D] query representations from a batch with ``input_ids`` and ``attention_mask``."""
        return self._encode(self.lm_q, self.head_q, batch, "query")

    def encode_passage(self, batch: dict[str, Tensor]) -> Tensor:
        """[B, D] passage representations from a batch with ``input_ids`` and ``attention_mask``."""
        return self._encode(self.lm_p, self.head_p, batch, "passage")

    def forward(self, query: Optional[dict] = None, passage: Optional[dict] = None) -> DROutput:
        return DROutput(
            q_reps=self.encode_query(query) if query is not None else None,
            p_reps=self.encode_passage(passage) if passage is not None else None,
        )

    @staticmethod
    def score(q_reps: Tensor, p_reps: Tensor) -> Tensor:
        """Dot-product scores [Q, P] (no temperature: the ranking does not depend on it)."""
        return q_reps @ p_reps.T

    def fingerprint_items(self) -> Iterator[tuple[str, Tensor]]:
        """``(name, tensor)`` pairs, sorted by name, that an index fingerprints
        (``openmatch.retriever.model_fingerprint``): the state dict, with LoRA adapters folded in as merging
        would, so merged and unmerged copies of a model are the same model to an index."""
        if any(is_lora(lm) for lm in self._backbones()):
            from .lora import effective_items

            return effective_items(self)
        return iter(sorted(self.state_dict().items()))

    supports_gradient_checkpointing = True

    def activation_checkpointing_enable(
        self, activation_checkpointing_kwargs: Optional[dict] = None, every_n_layers: int = 1, offload: bool = False
    ) -> None:
        """Forwarded to the backbone(s); the Hugging Face Trainer calls it for --gradient_checkpointing."""
        reentrant = (activation_checkpointing_kwargs or {}).get("use_reentrant", False)
        for lm in self._backbones():
            if reentrant and is_lora(lm):
                # Reentrant checkpointing back-propagates only into blocks whose inputs require a gradient; with
                # the embeddings frozen nothing would reach the adapters inside the blocks.
                lm.get_base_model().enable_input_require_grads()
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

    # ------------------------------------------------------------------ checkpoints
    # The folder format lives in openmatch.modeling.checkpoint, which imports this module: hence the local imports.
    def save(self, output_dir: str | os.PathLike, tokenizer=None) -> None:
        """Write a checkpoint folder that :meth:`load` (and, when tied, OpenMatch) can read; see
        :func:`openmatch.modeling.checkpoint.save_model`."""
        from .checkpoint import save_model

        save_model(self, output_dir, tokenizer)

    @classmethod
    def load(cls, path: str | os.PathLike, **overrides) -> "DRModel":
        """Load a checkpoint folder (ours or OpenMatch's) with its stored settings; a plain HF folder
        gets the default flags. ``overrides`` are ``ModelArguments`` fields (one that contradicts a checkpoint's
        stored configuration is an error)."""
        model_args = ModelArguments(model_name_or_path=str(path), **overrides)
        model_args.given_flags = frozenset(overrides)
        return cls.build(model_args)

    @classmethod
    def build(cls, model_args: ModelArguments) -> "DRModel":
        """Build from ``--model_name_or_path`` (a checkpoint folder or a Hugging Face model); see
        :func:`openmatch.modeling.checkpoint.build_model`."""
        from .checkpoint import build_model

        return build_model(model_args, cls)
