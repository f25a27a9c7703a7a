"""Shared inputs of the fault matrix: one small collection and one index built from it, made once per session.
A case that damages the index works on its own copy (:func:`copy_index`)."""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.faults import run_command, write_lines
from tests.tiny_models import synthetic_words

N_PASSAGES = 300
N_QUERIES = 12


@dataclass(frozen=True)
class Collection:
    """A collection in the recipe's layouts: ``corpus.tsv`` (id, title, text), ``queries.tsv`` (id, text),
    ``qrels.tsv`` (TREC qrels), and the flags that read them."""

    root: Path
    corpus: Path
    queries: Path
    qrels: Path

    corpus_flags = ("--doc_template", "<title> <text>", "--doc_column_names", "id,title,text", "--p_max_len", "32")
    query_flags = ("--query_template", "<text>", "--query_column_names", "id,text", "--q_max_len", "16")


@pytest.fixture(scope="session")
def collection(tmp_path_factory) -> Collection:
    rng = random.Random(0)
    words = synthetic_words()
    root = tmp_path_factory.mktemp("fault_collection")
    passages = [(f"d{i}", " ".join(rng.choices(words, k=3)), " ".join(rng.choices(words, k=20))) for i in range(N_PASSAGES)]
    corpus = write_lines(root / "corpus.tsv", ["\t".join(p) for p in passages])
    picked = rng.sample(passages, N_QUERIES)
    queries = write_lines(root / "queries.tsv", [f"q{i}\t{p[2].split(' ', 3)[-1][:40]}" for i, p in enumerate(picked)])
    qrels = write_lines(root / "qrels.tsv", [f"q{i} 0 {p[0]} 1" for i, p in enumerate(picked)])
    return Collection(root, corpus, queries, qrels)


@pytest.fixture(scope="session")
def built_index(tiny_bert, collection, tmp_path_factory) -> Path:
    """An index of the collection by the tiny BERT, in two shards, built by the build_index command."""
    from openmatch.cli import run
    from openmatch.driver import build_index

    folder = tmp_path_factory.mktemp("fault_index") / "emb"
    status = run(build_index.main, [
        "--output_dir", str(folder), "--model_name_or_path", str(tiny_bert), "--corpus_path", str(collection.corpus),
        *collection.corpus_flags, "--per_device_eval_batch_size", "64", "--max_inmem_docs", str(N_PASSAGES // 2),
    ])
    assert status == 0
    return folder


@pytest.fixture
def copy_index(built_index, tmp_path):
    """A private copy of the shared index, for a case that damages it."""

    def copy(name: str = "emb") -> Path:
        target = tmp_path / name
        shutil.copytree(built_index, target)
        return target

    return copy


@pytest.fixture
def retrieve_argv(tiny_bert, collection):
    """The retrieve command's arguments for an index folder and an output run path."""

    def argv(index: Path, run: Path, *extra: str) -> list:
        return ["--output_dir", index, "--model_name_or_path", tiny_bert, "--query_path", collection.queries,
                *collection.query_flags, "--retrieve_depth", "10", "--trec_save_path", run, *extra]

    return argv


@pytest.fixture
def build_index_argv(tiny_bert, collection):
    def argv(index: Path, *extra: str) -> list:
        return ["--output_dir", index, "--model_name_or_path", tiny_bert, "--corpus_path", collection.corpus,
                *collection.corpus_flags, "--per_device_eval_batch_size", "64", "--max_inmem_docs",
                str(N_PASSAGES // 2), *extra]

    return argv


__all__ = ["Collection", "run_command"]
