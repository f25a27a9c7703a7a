"""Training JSONL dataset: deterministic sampling, special tokens, padding, exactly-once loading, errors."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from torch.utils.data import DataLoader

from openmatch.dataset.readers import DataFormatError
from openmatch.dataset.train_dataset import TrainCollator, TrainDataset, resolve_train_files, scan_training_file


class FakeLayout:
    """BERT-like layout: [CLS]=101 … [SEP]=102, pad 0."""

    prefix, suffix, pad_id, num_special = [101], [102], 0, 2

    def wrap(self, ids, max_len):
        return self.prefix + list(ids[: max_len - 2]) + self.suffix


def write_jsonl(path, records):
    with open(path, "w") as handle:
        for record in records:
            handle.write((record if isinstance(record, str) else json.dumps(record)) + "\n")
    return path


def example(i, n_pos=2, n_neg=10):
    # Token ids encode (example, kind, number) so the test can tell every passage apart.
    return {
        "query": [1000 + i, 7],
        "positives": [[2000 + i * 10 + j, 5, 5] for j in range(n_pos)],
        "negatives": [[3000 + i * 100 + j] * (1 + j % 4) for j in range(n_neg)],
    }


def make(tmp_path, records, **kwargs):
    path = write_jsonl(tmp_path / "train.jsonl", records)
    kwargs.setdefault("train_n_passages", 4)
    return TrainDataset([path], layout=FakeLayout(), **kwargs)


def test_deterministic_sampling_by_seed_epoch_index(tmp_path):
    ds = make(tmp_path, [example(i) for i in range(20)], seed=3)
    again = make(tmp_path, [example(i) for i in range(20)], seed=3)
    first = [ds[i] for i in range(20)]
    assert first == [again[i] for i in range(20)]
    assert first == [ds[i] for i in reversed(range(20))][::-1]  # independent of access order
    ds.set_epoch(1)
    second = [ds[i] for i in range(20)]
    assert sum(a != b for a, b in zip(first, second)) >= 15
    other_seed = make(tmp_path, [example(i) for i in range(20)], seed=4)
    assert [other_seed[i] for i in range(20)] != first
    for i, item in enumerate(second):
        raw = ds.raw(i)
        assert item["query"] == [101, 1000 + i, 7, 102]
        assert item["passages"][0][1:-1] in raw["positives"]
        negs = [p[1:-1] for p in item["passages"][1:]]
        assert all(n in raw["negatives"] for n in negs) and len({tuple(n) for n in negs}) == 3


def test_negative_windows_cover_all_negatives_before_repeating(tmp_path):
    ds = make(tmp_path, [example(0, n_neg=9)], train_n_passages=4)  # 3 negatives per epoch, 9 in total
    seen = []
    for epoch in range(3):
        ds.set_epoch(epoch)
        seen += [tuple(p) for p in ds[0]["passages"][1:]]
    assert len(set(seen)) == 9


def test_no_shuffle_flags(tmp_path):
    ds = make(tmp_path, [example(i) for i in range(5)], positive_passage_no_shuffle=True,
              negative_passage_no_shuffle=True)
    for epoch in range(3):
        ds.set_epoch(epoch)
        for i in range(5):
            raw = ds.raw(i)
            assert [p[1:-1] for p in ds[i]["passages"]] == [raw["positives"][0]] + raw["negatives"][:3]
    shuffled = make(tmp_path, [example(i) for i in range(30)])
    firsts = {shuffled[i]["passages"][0][1] % 10 for i in range(30)}
    assert firsts == {0, 1}  # both positives get picked


def test_too_few_negatives_sample_with_replacement_logged_once(tmp_path, caplog):
    ds = make(tmp_path, [example(i, n_neg=2) for i in range(4)], train_n_passages=6)
    with caplog.at_level(logging.WARNING):
        items = [ds[i] for i in range(4)]
    assert all(len(item["passages"]) == 6 for item in items)
    assert sum("with replacement" in r.message for r in caplog.records) == 1
    assert "train.jsonl:1" in caplog.text
    for i, item in enumerate(items):
        assert all(p[1:-1] in ds.raw(i)["negatives"] for p in item["passages"][1:])
    only_pos = make(tmp_path, [example(0, n_neg=0)], train_n_passages=1)
    assert len(only_pos[0]["passages"]) == 1


def test_special_tokens_and_truncation_with_real_tokenizer(tmp_path, tiny_bert):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_bert)
    words = "kaka kalo kami kane karu kasa kati kavo"
    ids = tok(words, add_special_tokens=False)["input_ids"]
    rec = {"query": ids, "positives": [ids * 3], "negatives": [ids[:2]]}
    path = write_jsonl(tmp_path / "t.jsonl", [rec])
    ds = TrainDataset([path], tok, train_n_passages=2, q_max_len=6, p_max_len=64)
    item = ds[0]
    assert item["query"] == tok(words, max_length=6, truncation=True)["input_ids"]
    assert item["passages"][0] == tok(" ".join([words] * 3), max_length=64, truncation=True)["input_ids"]
    assert item["passages"][1] == [tok.cls_token_id] + ids[:2] + [tok.sep_token_id]


def test_collator_pads_to_longest_in_batch(tmp_path):
    ds = make(tmp_path, [example(i) for i in range(3)], train_n_passages=3, p_max_len=128)
    items = [ds[i] for i in range(3)]
    batch = TrainCollator(pad_id=0)(items)
    flat = [p for item in items for p in item["passages"]]
    longest = max(len(p) for p in flat)
    assert batch["passage"]["input_ids"].shape == (9, longest) and longest < 128
    assert batch["query"]["input_ids"].shape == (3, 4)
    for row, seq in enumerate(flat):
        assert batch["passage"]["input_ids"][row, : len(seq)].tolist() == seq
        assert batch["passage"]["attention_mask"][row].sum().item() == len(seq)
        assert (batch["passage"]["input_ids"][row, len(seq):] == 0).all()
    # query i's positive is row i * n
    assert batch["passage"]["input_ids"][3, 1].item() // 10 == 201
    assert TrainCollator(0, pad_to_multiple_of=8)(items)["passage"]["input_ids"].shape[1] == 8


def test_two_workers_exactly_once(tmp_path):
    ds = make(tmp_path, [example(i) for i in range(37)])
    ds.set_epoch(2)
    expected = [ds[i] for i in range(37)]
    loader = DataLoader(ds, batch_size=4, shuffle=True, num_workers=2, collate_fn=lambda b: b,
                        generator=torch.Generator().manual_seed(0))
    got = [item for batch in loader for item in batch]
    assert len(got) == 37
    assert sorted(item["query"][1] for item in got) == list(range(1000, 1037))
    by_query = {item["query"][1]: item for item in got}
    # workers see the epoch set before the loader started
    assert all(by_query[1000 + i] == expected[i] for i in range(37))


def test_train_dir_reads_sorted_jsonl_files(tmp_path):
    write_jsonl(tmp_path / "split01.jsonl", [example(1)])
    write_jsonl(tmp_path / "split00.jsonl", [example(0), ""])
    (tmp_path / "notes.txt").write_text("ignored")
    files = resolve_train_files(train_dir=str(tmp_path))
    assert [f.rsplit("/", 1)[1] for f in files] == ["split00.jsonl", "split01.jsonl"]
    ds = TrainDataset(files, layout=FakeLayout(), train_n_passages=2)
    assert len(ds) == 2 and ds[1]["query"][1] == 1001
    assert ds.location(1)[0].endswith("split01.jsonl")
    with pytest.raises(ValueError, match="exactly one"):
        resolve_train_files("a", str(tmp_path))


@pytest.mark.parametrize(
    "bad, message",
    [
        ('{"query": [1, 2], "positives": [], "negatives": [[3]]}', "no positive"),
        ('{"query": [1, 2], "negatives": [[3]]}', "no positive"),
        ('{"query": [], "positives": [[4]], "negatives": [[3]]}', '"query" must be a non-empty'),
        ('{"query": [1], "positives": [[]], "negatives": [[3]]}', '"positives"\\[0\\]'),
        ('{"query": [1], "positives": [[4]], "negatives": [[3], []]}', '"negatives"\\[1\\]'),
        ('{"query": [1], "positives": [["a"]], "negatives": [[3]]}', "integer token ids"),
        ('{"query": [1], "positives": [[4]], "negatives": []}', "no negatives"),
        ('{"query": [1, 2], "positives": [[4]]', "invalid JSON"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path, bad, message):
    ds = make(tmp_path, [example(0), "", bad], train_n_passages=2)
    ds[0]
    with pytest.raises(DataFormatError, match=rf"train\.jsonl:3: .*{message}"):
        ds[1]


def test_empty_file_is_an_error(tmp_path):
    with pytest.raises(DataFormatError, match=r"train\.jsonl: no records: the file is empty$"):
        make(tmp_path, [""])


# --- checking every line before training ------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, message",
    [
        ('{"query": [1, 2], "positives": [], "negatives": [[3]]}',
         'no positive passages ("positives" is missing or empty)'),
        ('{"query": [], "positives": [[4]], "negatives": [[3]]}', '"query" must be a non-empty list of token ids'),
        ('{"query": [1], "positives": [[4]], "negatives": [[3], []]}', '"negatives"[1] must be a non-empty list of token ids'),
        ('{"query": [1], "positives": [[4, true]], "negatives": [[3]]}', '"positives"[0] must hold non-negative integer token ids'),
        ('{"query": [1], "positives": [[4]], "negatives": [[3, 2.0]]}', '"negatives"[0] must hold non-negative integer token ids'),
        ('{"query": [1], "positives": [[4]], "negatives": [[-3]]}', '"negatives"[0] must hold non-negative integer token ids'),
        ('{"query": [1], "positives": [[4]], "negatives": {"a": [3]}}', '"negatives" must be a list of token-id lists'),
        ('{"query": [1], "positives": [[4]], "negatives": [[3, 5000]]}',
         '"negatives"[0] holds token id 5000, beyond the vocabulary of 4096 tokens (was the file tokenised with another tokenizer?)'),
        ('{"query": [1], "positives": [[4]], "negatives": []}', "no negatives, but --train_n_passages 2 needs 1"),
        ('{"query": [1, 2], "positives": [[4]]', "invalid JSON: Expecting ',' delimiter"),
        # Each of these gets past some of the quick checks of a line: the thorough ones word it.
        ('{"query": ["1"], "positives": [["4"]], "negatives": [["3"]]}', '"query" must hold non-negative integer token ids'),
        ('{"query": [1], "positives": [[4]], "negatives": [[3e2]]}', '"negatives"[0] must hold non-negative integer token ids'),
        ('{"query": [1], "positives": [[[4]]], "negatives": [[3]]}', '"positives"[0] must hold non-negative integer token ids'),
        ('{"query": [1], "positives": [[{"4": 4}]], "negatives": [[3]]}', '"positives"[0] must hold non-negative integer token ids'),
        ('{"query": [1], "positives": [[4, null]], "negatives": [[3]]}', '"positives"[0] must hold non-negative integer token ids'),
        ('{"query": [1], "positives": {"a": [4]}, "negatives": [[3]]}', 'no positive passages ("positives" is missing or empty)'),
    ],
)
def test_every_line_is_checked_before_training(tmp_path, bad, message):
    path = write_jsonl(tmp_path / "train.jsonl", [example(i) for i in range(5)] + ["", bad, example(9)])
    with pytest.raises(DataFormatError) as scanned:
        scan_training_file(path, vocab_size=4096, train_n_passages=2)
    assert str(scanned.value) == f"{path}:7: {message}"
    # The dataset checks while it indexes (as train_dr's from_args asks), in the same words.
    with pytest.raises(DataFormatError) as indexed:
        TrainDataset([str(path)], layout=FakeLayout(), train_n_passages=2, check_lines=True, vocab_size=4096)
    assert str(indexed.value) == str(scanned.value)


def test_a_good_file_passes_the_check(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [example(i) for i in range(5)] + ["  "])
    assert scan_training_file(path, vocab_size=4096, train_n_passages=2) == 5
    assert scan_training_file(path) == 5  # no vocabulary: types and emptiness only
    with pytest.raises(DataFormatError, match="beyond the vocabulary of 3000 tokens"):
        scan_training_file(path, vocab_size=3000)


def test_a_byte_order_mark_is_skipped(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join(json.dumps(example(i)) for i in range(3)).encode() + b"\n")
    ds = TrainDataset([str(path)], layout=FakeLayout(), train_n_passages=2, check_lines=True)
    assert [ds.raw(i) for i in range(3)] == [example(i) for i in range(3)]


def test_a_bad_line_read_in_a_loader_worker_is_raised_as_itself(tmp_path):
    ds = make(tmp_path, [example(0), example(1), '{"query": [1], "positives": [[]]}', example(3)], train_n_passages=2)
    loader = DataLoader(ds, batch_size=2, num_workers=1, collate_fn=TrainCollator(0))
    with pytest.raises(DataFormatError) as info:
        list(loader)
    assert type(info.value) is DataFormatError
    assert str(info.value) == f"{tmp_path / 'train.jsonl'}:3: \"positives\"[0] must be a non-empty list of token ids"
    assert (info.value.path, info.value.line) == (str(tmp_path / "train.jsonl"), 3)
