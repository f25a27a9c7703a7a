"""One tokenise-sort-pad path and one pad-token check, shared by api.encode, the encoding stream and training."""

from __future__ import annotations

import copy

import pytest
from transformers import AutoTokenizer

from openmatch import api
from openmatch.dataset.inference_dataset import InferenceDataset
from openmatch.dataset.tokenization import length_sorted_batches, require_pad_id
from openmatch.dataset.train_dataset import TrainCollator
from openmatch.errors import InputError
from tests.tiny_models import synthetic_words

WORDS = synthetic_words(50)
TEXTS = [" ".join(WORDS[: n % 9 + 1]) for n in range(23)]


def test_length_sorted_batches(tiny_bert):
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    batches = list(length_sorted_batches(tokenizer, TEXTS, max_len=6, batch_size=5))
    rows = [row for batch_rows, _ in batches for row in batch_rows]
    assert sorted(rows) == list(range(len(TEXTS)))  # every text exactly once
    lengths = [len(tokenizer(TEXTS[i], truncation=True, max_length=6)["input_ids"]) for i in rows]
    assert lengths == sorted(lengths, reverse=True)  # longest first
    # equal lengths keep input order, so the batches are the same whatever the hash seed or run
    assert all(a < b for a, b, la, lb in zip(rows, rows[1:], lengths, lengths[1:]) if la == lb)
    for batch_rows, batch in batches:
        want = [tokenizer(TEXTS[i], truncation=True, max_length=6)["input_ids"] for i in batch_rows]
        assert batch["input_ids"].shape == (len(batch_rows), max(map(len, want)))  # padded to the batch's longest
        for row, ids in enumerate(want):
            assert batch["input_ids"][row, : len(ids)].tolist() == ids
            assert batch["attention_mask"][row].sum().item() == len(ids)
    unsorted = [r for batch_rows, _ in length_sorted_batches(tokenizer, TEXTS, 6, 5, sort_by_length=False) for r in batch_rows]
    assert unsorted == list(range(len(TEXTS)))


def test_every_user_of_a_tokenizer_refuses_one_without_pad_token_alike(tiny_bert, tmp_path):
    tokenizer = copy.deepcopy(AutoTokenizer.from_pretrained(tiny_bert))
    tokenizer.pad_token = None
    assert tokenizer.pad_token_id is None
    corpus = tmp_path / "corpus.tsv"
    corpus.write_text("1\tkaka\n")
    model, _ = api.load_model(tiny_bert)
    attempts = {
        "require_pad_id": lambda: require_pad_id(tokenizer),
        "api.encode": lambda: api.encode(model, tokenizer, ["kaka"]),
        "InferenceDataset": lambda: InferenceDataset(corpus, tokenizer, 8, 2, column_names="id,text"),
        "TrainCollator": lambda: TrainCollator.for_tokenizer(tokenizer),
    }
    messages = set()
    for name, attempt in attempts.items():
        with pytest.raises(InputError, match="has no pad token") as info:
            attempt()
        messages.add(str(info.value))
    assert len(messages) == 1, messages
