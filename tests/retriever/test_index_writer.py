"""build_index's shard writer: rows land in corpus order in one preallocated shard, memory about one shard."""

from __future__ import annotations

import json
import random
import tracemalloc

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from openmatch import api
from openmatch.retriever import builder
from openmatch.retriever.builder import BuildOptions
from openmatch.retriever.index import verify_shard
from tests.tiny_models import synthetic_words

N_DOCS, SHARD, DIM = 2000, 1200, 8192


class TokenEcho(torch.nn.Module):
    """A stand-in encoder whose embedding of a passage is a function of its own tokens only.

    The first 8 columns are its first 8 token ids, the rest its length, so each row names its passage and
    padding changes nothing; no weights to run, so the test measures the writer, not a model.
    """

    config = None

    def __init__(self, dim: int):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # a state_dict for the index's model fingerprint
        self.embedding_dim = dim

    def encode_passage(self, inputs: dict) -> torch.Tensor:
        ids = (inputs["input_ids"] * inputs["attention_mask"]).float()
        head = torch.zeros(len(ids), 8)
        head[:, : min(8, ids.shape[1])] = ids[:, :8]
        length = inputs["attention_mask"].sum(1, keepdim=True).float()
        return torch.cat([head, length.expand(-1, self.embedding_dim - 8)], dim=1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Passages of 2 to 20 words, each opening with its own pair, so length sorting reorders every window."""
    rng = random.Random(3)
    words = synthetic_words()
    texts = [" ".join([words[i % 1000], words[i // 1000]] + rng.choices(words, k=rng.randint(0, 18))) for i in range(N_DOCS)]
    path = tmp_path_factory.mktemp("corpus") / "corpus.tsv"
    path.write_text("".join(f"d{i:04d}\t{text}\n" for i, text in enumerate(texts)), encoding="utf-8")
    return path, texts


def build(tok, corpus_path, out, dtype, **kw):
    options = dict(max_len=32, batch_size=8, window_batches=2, template="<text>", column_names="id,text",
                   max_inmem_docs=SHARD, dtype=dtype, progress=False)
    options.update(kw)
    return api.build_index(TokenEcho(DIM), tok, corpus_path, out, **options)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_build_index_holds_one_shard(tiny_bert, corpus, tmp_path, monkeypatch, dtype):
    corpus_path, texts = corpus
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    build(tok, corpus_path, tmp_path / "warm", dtype, max_inmem_docs=10)  # imports and caches outside the count
    shard_bytes = SHARD * DIM * np.dtype(dtype).itemsize
    start = []
    real_count = builder.count_lines

    def count_then_start(path):
        # The line count reads 16 MiB blocks, a constant beside the shard: the measurement starts after it.
        lines = real_count(path)
        tracemalloc.reset_peak()
        start.append(tracemalloc.get_traced_memory()[0])
        return lines

    monkeypatch.setattr(builder, "count_lines", count_then_start)
    tracemalloc.start()  # numpy reports its arrays to tracemalloc; torch's tensors are not counted
    try:
        manifest = build(tok, corpus_path, tmp_path / "idx", dtype)
        growth = tracemalloc.get_traced_memory()[1] - start[-1]
    finally:
        tracemalloc.stop()
    # One shard, the next one's early rows, the batches in flight and a few buffers: about one shard.
    # (Keeping the batch list, concatenating it and reordering the result held three.)
    assert growth <= 1.2 * shard_bytes, f"peak growth {growth / shard_bytes:.2f} × the shard"

    # Rows are in corpus order, in the shard's dtype, exactly what the encoder gives each passage alone.
    enc = tok(texts, truncation=True, max_length=32, padding=True, return_tensors="pt")
    expected = TokenEcho(DIM).encode_passage(enc).numpy().astype(dtype)
    shards = manifest["shards"]
    assert [(s["count"], s["first_position"]) for s in shards] == [(SHARD, 0), (N_DOCS - SHARD, SHARD)]
    rows, ids = [], []
    for meta in shards:
        assert verify_shard(str(tmp_path / "idx"), meta)
        array = np.load(tmp_path / "idx" / meta["embeddings"])
        assert array.dtype == np.dtype(dtype) and array.shape == (meta["count"], DIM)
        rows.append(array)
        ids += (tmp_path / "idx" / meta["ids"]).read_text().split("\n")[:-1]
    assert ids == [f"d{i:04d}" for i in range(N_DOCS)]
    np.testing.assert_array_equal(np.concatenate(rows), expected)


def test_shard_writer_order_early_rows_and_resume(tmp_path, monkeypatch):
    """Batches out of order across shards (a later shard's rows first, a finished shard skipped)."""
    options = BuildOptions(corpus_path="", output_dir=str(tmp_path), dtype="float32")
    written = []
    real = builder.write_shard
    monkeypatch.setattr(builder, "write_shard", lambda *a, **k: written.append(a[2]) or real(*a, **k))
    writer = builder._ShardWriter(options, 0, 4, 11, done={1: {"count": 4}})  # positions 4..7 already built
    positions = np.array([9, 2, 0, 8, 10, 3, 1])  # shard 2 (8..10) comes partly first; shard 0 completes
    embeddings = np.repeat(positions[:, None].astype(np.float32), 3, axis=1)
    writer.add(positions[:2], [f"p{j}" for j in positions[:2]], embeddings[:2])
    assert written == [] and writer.current.shard == 0
    writer.add(positions[2:], [f"p{j}" for j in positions[2:]], embeddings[2:])
    assert written == [0]  # shard 0 complete; shard 2 (short) only at the end
    writer.finish()
    assert written == [0, 2]
    for shard, wanted in [(0, [0, 1, 2, 3]), (2, [8, 9, 10])]:
        meta = json.loads((tmp_path / f"shard.rank0.shard{shard}.json").read_text())
        assert meta["count"] == len(wanted) and meta["first_position"] == wanted[0]
        np.testing.assert_array_equal(np.load(tmp_path / meta["embeddings"])[:, 0], wanted)
        assert (tmp_path / meta["ids"]).read_text().split() == [f"p{j}" for j in wanted]
    # A position seen twice is an error, not a silently overwritten row.
    writer = builder._ShardWriter(options, 0, 4, 11, done={})
    writer.add(np.array([1]), ["p1"], embeddings[:1])
    with pytest.raises(RuntimeError, match="encoded twice"):
        writer.add(np.array([1]), ["p1"], embeddings[:1])


def test_the_memory_check_counts_every_process_of_this_machine(tmp_path, monkeypatch):
    """Under a launcher each process of the machine holds a shard of its own: 4 processes of shards that each
    fit alone do not fit together, and the size named fits all of them (per process, times the world size)."""
    from openmatch.errors import ResourceError

    corpus = tmp_path / "corpus.tsv"
    corpus.write_text("".join(f"d{i}\tt\ttext\n" for i in range(800)))
    row_bytes = 16 * 4 + builder._ROW_OVERHEAD_BYTES
    monkeypatch.setattr(builder, "available_memory", lambda: 300 * row_bytes)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    builder.check_shard_fits_memory(str(corpus), 16, "float32", 200, world_size=4)  # one shard of 200 rows fits
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    with pytest.raises(ResourceError, match=r"4 processes on this machine.*--max_inmem_docs 148 or less"):
        builder.check_shard_fits_memory(str(corpus), 16, "float32", 200, world_size=4)
    builder.check_shard_fits_memory(str(corpus), 16, "float32", 148 // 4, world_size=4)  # the size named fits


def test_the_memory_check_counts_the_rows_a_shard_really_holds(tmp_path, monkeypatch):
    """A shard holds at most its rank's share of the corpus: OpenMatch's default of 10M passages per shard on a
    small corpus is a small shard, not one refused for the 10M rows (31 GB at 768 dimensions) it would never
    hold; and each process of this machine (LOCAL_WORLD_SIZE) holds a shard of its own."""
    from openmatch.errors import ResourceError

    corpus = tmp_path / "corpus.tsv"
    corpus.write_text("".join(f"d{i}\ttext {i}\n" for i in range(1000)))
    row = 768 * 4 + builder._ROW_OVERHEAD_BYTES
    monkeypatch.setattr(builder, "available_memory", lambda: 1000 * row)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    builder.check_shard_fits_memory(str(corpus), 768, "float32", 10_000_000, 1)  # 1,000 rows fit exactly
    with pytest.raises(ResourceError, match=r"shards of 1,000 passages .* --max_inmem_docs 499 or less"):
        monkeypatch.setattr(builder, "available_memory", lambda: 999 * row)
        builder.check_shard_fits_memory(str(corpus), 768, "float32", 10_000_000, 1)
    monkeypatch.setattr(builder, "available_memory", lambda: 1000 * row)
    builder.check_shard_fits_memory(str(corpus), 768, "float32", 5_000_000, 2)  # two ranks of 500 rows, two nodes
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    builder.check_shard_fits_memory(str(corpus), 768, "float32", 5_000_000, 2)  # both on this machine: 1,000 rows
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setattr(builder, "available_memory", lambda: 999 * row)
    builder.check_shard_fits_memory(str(corpus), 768, "float16", 10_000_000, 4)  # 4 x 250 float16 rows fit
    with pytest.raises(ResourceError, match=r"shards of 250 passages .*\(4 processes on this machine, one shard each\)"
                       r".* --max_inmem_docs 496 or less"):
        builder.check_shard_fits_memory(str(corpus), 768, "float32", 10_000_000, 4)


def test_build_index_counts_the_corpus_lines_once(tiny_bert, tmp_path, monkeypatch):
    """One pass over the corpus for its line count (the memory check, the progress bar and the last shard's
    size share it): a full pass over MS MARCO's corpus is seconds."""
    corpus_path = tmp_path / "corpus.tsv"
    corpus_path.write_text("".join(f"d{i}\tpassage number {i}\n" for i in range(7)), encoding="utf-8")
    calls = []
    real_count = builder.count_lines
    monkeypatch.setattr(builder, "count_lines", lambda path: calls.append(path) or real_count(path))
    manifest = api.build_index(TokenEcho(16), AutoTokenizer.from_pretrained(tiny_bert), corpus_path, tmp_path / "idx",
                               max_len=16, batch_size=4, template="<text>", column_names="id,text", max_inmem_docs=5,
                               progress=False)
    assert manifest["total"] == 7 and [s["count"] for s in manifest["shards"]] == [5, 2]
    assert calls == [str(corpus_path)]
