"""Special tokens and padding for pre-tokenised ids.

The training JSONL holds token ids without special tokens (OpenMatch's format); they are added at load
time, with truncation so that the sequence, special tokens included, fits ``max_len``. transformers 5
tokenizers no longer expose ``prepare_for_model``, so the layout (e.g. ``[CLS] … [SEP]`` for BERT,
``… </s>`` for T5) is read once from the tokenizer itself.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..errors import InputError, UsageError


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
        if tokenizer.pad_token_id is None:
            raise InputError(f"tokenizer {type(tokenizer).__name__} has no pad token; set one before use")
        self.pad_id = tokenizer.pad_token_id
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
