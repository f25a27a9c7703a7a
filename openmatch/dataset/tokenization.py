"""Special tokens and padding for pre-tokenised ids.

The training JSONL holds token ids without special tokens (OpenMatch's format); they are added at load
time, with truncation so that the sequence, special tokens included, fits ``max_len``. transformers 5
tokenizers no longer expose ``prepare_for_model``, so the layout (e.g. ``[CLS] … [SEP]`` for BERT,
``… </s>`` for T5) is read once from the tokenizer itself.
"""

from __future__ import annotations

from typing import Iterator, Optional, Sequence

import torch

from ..errors import InputError, UsageError


def require_pad_id(tokenizer, source: Optional[str] = None) -> int:
    """The tokenizer's pad id; an ``InputError`` (naming ``source`` when given) if it has none."""
    if tokenizer.pad_token_id is None:
        where = f"{source}: tokenizer" if source else f"tokenizer {type(tokenizer).__name__}"
        raise InputError(f"{where} has no pad token; batches cannot be padded (set one in its tokenizer_config.json)")
    return tokenizer.pad_token_id


class SpecialTokenLayout:
    """The ids a tokenizer puts before and after a single sequence."""

    def __init__(self, tokenizer):
        probe = "hello"
        plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
        full = tokenizer(probe, add_special_tokens=True)["input_ids"]
        for start in range(len(full) - len(plain) + 1):
            if full[start : start + len(plain)] == plain:
                self.prefix = list(full[:start])
                self.suffix = list(full[start + len(plain) :])
                break
        else:  # pragma: no cover - every known tokenizer keeps the plain ids contiguous
            raise InputError(f"cannot find where {type(tokenizer).__name__} adds its special tokens")
        self.pad_id = require_pad_id(tokenizer)
        self.num_special = len(self.prefix) + len(self.suffix)

    def wrap(self, ids: Sequence[int], max_len: int) -> list[int]:
        """Add special tokens, truncating the content so that the result has at most ``max_len`` ids."""
        room = max_len - self.num_special
        if room < 1:
            raise UsageError(f"max length {max_len} leaves no room beside {self.num_special} special tokens")
        return self.prefix + list(ids[:room]) + self.suffix


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int, pad_to_multiple_of: int | None = None) -> dict:
    """Right-pad to the longest sequence of the batch (not to max length): same math, less compute."""
    if not sequences:
        raise ValueError("cannot pad an empty batch")
    longest = max(len(seq) for seq in sequences)
    if pad_to_multiple_of:
        longest = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, seq in enumerate(sequences):
        input_ids[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        attention_mask[row, : len(seq)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def length_sorted_batches(
    tokenizer, texts: Sequence[str], max_len: int, batch_size: int, sort_by_length: bool = True
) -> Iterator[tuple[list[int], dict]]:
    """Tokenise ``texts`` in one call (truncated to ``max_len``, special tokens included) and yield
    ``(rows, batch)``: the indices into ``texts`` of each batch and their ids padded to the batch's longest.

    Sorting by length (longest first, ties in input order) puts texts of similar length together, so little
    compute goes into padding; longest first makes a batch too large for the device fail at once.
    """
    pad_id = require_pad_id(tokenizer)
    encoded = tokenizer(
        list(texts), truncation=True, max_length=max_len, add_special_tokens=True, return_attention_mask=False
    )["input_ids"]
    order = list(range(len(encoded)))
    if sort_by_length:
        order.sort(key=lambda i: -len(encoded[i]))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        yield rows, pad_batch([encoded[i] for i in rows], pad_id)
