"""One way to do each thing in indexing and retrieval: the index format in one module and its building in
another, one ``build_index``, options made from the flags in one call, and the query encoder checked
against the index wherever queries are encoded (``api.retrieve`` and the ``retrieve`` command)."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from openmatch import api
from openmatch.errors import InputError, UsageError

from tests import REPO
DRIVERS = sorted((REPO / "openmatch" / "driver").glob("*.py"))


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    """``(level, module)`` of every import in a source file (level 0 for absolute imports)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            out.append((node.level, node.module or ""))
        elif isinstance(node, ast.Import):
            out += [(0, alias.name) for alias in node.names]
    return out


@pytest.fixture(scope="module")
def indexed(tiny_bert, tmp_path_factory):
    """A tiny corpus, its query file and an index of the corpus built by a mean-pooling tiny BERT."""
    work = tmp_path_factory.mktemp("retrieve")
    (work / "corpus.tsv").write_text("".join(f"d{i}\tt{i}\tkaka loka {'mimi ' * i}nene\n" for i in range(12)))
    (work / "queries.tsv").write_text("q1\tkaka mimi mimi\nq2\tnene loka\nq3\truru\n")
    model, tokenizer = api.load_model(tiny_bert, pooling="mean")
    api.build_index(model, tokenizer, work / "corpus.tsv", work / "index", template="<title> <text>",
                    column_names="id,title,text", max_len=32, device="cpu", progress=False)
    return work, model, tokenizer


# --------------------------------------------------------------------------------- item 1: index format


def test_index_format_module_does_not_build_or_search():
    """The format (names, spec, shards, manifest, reader) is one module that needs neither the corpus
    readers nor the builder nor the search; the builder writes through it."""
    from openmatch.retriever import builder, index

    imports = _imported_modules(REPO / "openmatch" / "retriever" / "index.py")
    assert not [m for level, m in imports if m.split(".")[0] in ("builder", "search", "dataset") or "dataset" in m]
    for name in ("shard_names", "IndexSpec", "write_shard", "write_manifest", "load_manifest", "EmbeddingIndex",
                 "check_compatible"):
        assert getattr(index, name).__module__ == "openmatch.retriever.index", name
    for name in ("BuildOptions", "build_index", "write_index", "_ShardWriter", "_encode_rank", "_finalize"):
        assert getattr(builder, name).__module__ == "openmatch.retriever.builder", name
    assert not hasattr(index, "build_index") and not hasattr(index, "_ShardWriter")


def test_retrieve_checks_the_query_encoder_against_the_index(indexed, tiny_bert):
    work, model, tokenizer = indexed
    flags = dict(depth=5, template="<text>", column_names="id,text", max_len=16, device="cpu")
    hits = api.retrieve(model, tokenizer, work / "queries.tsv", work / "index", **flags)
    qids, vectors = api.encode_file(model, tokenizer, work / "queries.tsv", template="<text>", column_names="id,text",
                                    max_len=16, device="cpu")
    assert hits == api.search(work / "index", vectors, qids, depth=5)
    assert list(hits) == ["q1", "q2", "q3"] and all(len(ranked) == 5 for ranked in hits.values())

    other, _ = api.load_model(tiny_bert, pooling="first")  # same weights, another embedding
    with pytest.raises(InputError, match="not the model that built the index"):
        api.retrieve(other, tokenizer, work / "queries.tsv", work / "index", **flags)
    assert api.retrieve(other, tokenizer, work / "queries.tsv", work / "index", allow_model_mismatch=True, **flags).keys() == hits.keys()
    # api.search gets embeddings: a query-encoding option there would do nothing, so it is refused.
    with pytest.raises(UsageError, match="allow_model_mismatch"):
        api.search(work / "index", vectors, qids, allow_model_mismatch=True)


def test_retrieve_command_runs_the_library_retrieve(indexed, tiny_bert, tmp_path, monkeypatch):
    from openmatch.driver import retrieve as driver
    from openmatch.retriever import SearchOptions

    work, _, _ = indexed
    calls = []
    library = api.retrieve

    def spy(model, tokenizer, queries_path, index, *, options):
        calls.append(options)
        return library(model, tokenizer, queries_path, index, options=options)

    monkeypatch.setattr(api, "retrieve", spy)
    args = ["--output_dir", str(work / "index"), "--model_name_or_path", str(tiny_bert), "--pooling", "first",
            "--query_path", str(work / "queries.tsv"), "--query_template", "<text>", "--query_column_names", "id,text",
            "--q_max_len", "16", "--trec_save_path", str(tmp_path / "run.trec"), "--use_cpu"]
    with pytest.raises(SystemExit):  # the index was built with mean pooling
        driver.main(args)
    assert len(calls) == 1 and not (tmp_path / "run.trec").exists()
    assert driver.main([*args, "--allow_model_mismatch", "--retrieve_depth", "2"]) == 0
    assert calls[1] == SearchOptions(depth=2, template="<text>", column_names="id,text", max_len=16, batch_size=8,
                                     device="cpu", allow_model_mismatch=True)
    assert len((tmp_path / "run.trec").read_text().splitlines()) == 3 * 2


# ------------------------------------------------------------------------- item 3: one way to get options


BUILD_ARGV = [
    "--output_dir", "emb", "--model_name_or_path", "ckpt", "--corpus_path", "corpus.tsv", "--p_max_len", "64",
    "--per_device_eval_batch_size", "32", "--doc_template", "<title> <text>", "--doc_column_names", "id,title,text",
    "--dataloader_num_workers", "2", "--max_inmem_docs", "1000", "--embedding_dtype", "float16", "--bf16",
    "--overwrite_output_dir", "--use_cpu",
]
# BuildOptions fields no flag sets: the encoder's look-ahead window and the progress bar.
BUILD_NOT_FLAGS = {"window_batches", "progress", "fp16"}


def test_build_options_from_args_maps_every_flag():
    from openmatch.arguments import IndexArguments, parse_args
    from openmatch.driver import build_index as driver
    from openmatch.retriever import BuildOptions

    assert IndexArguments in driver.ARGUMENT_CLASSES
    args = parse_args(driver.ARGUMENT_CLASSES, BUILD_ARGV)
    options = BuildOptions.from_args(*args)
    expected = dict(corpus_path="corpus.tsv", output_dir="emb", model_path="ckpt", max_len=64, batch_size=32,
                    template="<title> <text>", column_names="id,title,text", num_workers=2, max_inmem_docs=1000,
                    dtype="float16", bf16=True, overwrite=True, device="cpu")
    assert {name: getattr(options, name) for name in expected} == expected
    defaults = BuildOptions(corpus_path="", output_dir="")
    for field in dataclasses.fields(BuildOptions):  # a new option must be given its flag here
        if field.name not in BUILD_NOT_FLAGS:
            assert getattr(options, field.name) != getattr(defaults, field.name), field.name
    snapshot = options.extra_manifest
    assert snapshot["IndexArguments"] == {"embedding_dtype": "float16"}
    assert snapshot["ModelArguments"]["model_name_or_path"] == "ckpt"
    assert snapshot["InferenceArguments"] == {"output_dir": "emb", "per_device_eval_batch_size": 32, "fp16": False,
                                              "bf16": True, "dataloader_num_workers": 2, "max_inmem_docs": 1000,
                                              "use_cpu": True}
    with pytest.raises(UsageError, match="--corpus_path is required"):
        BuildOptions.from_args(*parse_args(driver.ARGUMENT_CLASSES, ["--output_dir", "emb", "--model_name_or_path", "m"]))


SEARCH_ARGV = [
    "--output_dir", "emb", "--model_name_or_path", "ckpt", "--query_path", "q.tsv", "--q_max_len", "20",
    "--per_device_eval_batch_size", "16", "--query_template", "<text>", "--query_column_names", "id,text",
    "--dataloader_num_workers", "1", "--retrieve_depth", "7", "--faiss_index", "HNSW32", "--use_gpu",
    "--faiss_starting_gpu", "1", "--search_batch_size", "99", "--faiss_nprobe", "3", "--faiss_ef_search", "40",
    "--faiss_train_sample", "500", "--allow_model_mismatch", "--use_cpu", "--bf16", "--check_recall", "25",
]
# SearchOptions fields no flag sets: the exact search's block size, the training sample's seed, and whether
# the ranks of a launcher share the search (set from the launch, not a flag).
SEARCH_NOT_FLAGS = {"block_rows", "seed", "fp16", "distributed"}


def test_search_options_from_args_maps_every_flag():
    from openmatch.arguments import SearchArguments, parse_args
    from openmatch.driver import retrieve as driver
    from openmatch.retriever import SearchOptions

    assert SearchArguments in driver.ARGUMENT_CLASSES
    _, data_args, infer_args, search_args = parse_args(driver.ARGUMENT_CLASSES, SEARCH_ARGV)
    options = SearchOptions.from_args(data_args, infer_args, search_args)
    assert options == SearchOptions(
        depth=7, faiss_index="HNSW32", use_gpu=True, starting_gpu=1, query_batch_size=99, nprobe=3, ef_search=40,
        train_sample=500, max_len=20, batch_size=16, template="<text>", column_names="id,text", num_workers=1,
        device="cpu", bf16=True, allow_model_mismatch=True, check_recall=25,
    )
    defaults = SearchOptions()
    for field in dataclasses.fields(SearchOptions):  # a new option must be given its flag here
        if field.name not in SEARCH_NOT_FLAGS:
            assert getattr(options, field.name) != getattr(defaults, field.name), field.name


def test_fp16_flag_reaches_both_options():
    """--fp16 becomes both options' fp16 (set after parsing: without a GPU the parser turns it off)."""
    from openmatch.arguments import parse_args
    from openmatch.driver import build_index, retrieve
    from openmatch.retriever import BuildOptions, SearchOptions

    build_args = parse_args(build_index.ARGUMENT_CLASSES, ["--output_dir", "e", "--model_name_or_path", "m",
                                                           "--corpus_path", "c.tsv"])
    build_args[2].fp16 = True
    assert BuildOptions.from_args(*build_args).fp16
    _, *search_args = parse_args(retrieve.ARGUMENT_CLASSES, ["--output_dir", "e", "--model_name_or_path", "m"])
    search_args[1].fp16 = True
    assert SearchOptions.from_args(*search_args).fp16


def test_no_driver_imports_another_driver():
    drivers = {path.stem for path in DRIVERS} - {"__init__"}
    for path in DRIVERS:
        for level, module in _imported_modules(path):
            first = module.split(".")[0]
            assert not (level == 1 and first in drivers), f"{path.name} imports driver {module}"
            assert not (level == 2 and first == "driver") and not module.startswith("openmatch.driver"), path.name


def test_one_build_index(indexed, tmp_path):
    """api.build_index is the library's build_index, which takes the options whole or as keywords."""
    from openmatch import retriever
    from openmatch.retriever import BuildOptions, builder

    assert api.build_index is retriever.build_index is builder.build_index
    work, model, tokenizer = indexed
    options = BuildOptions(corpus_path=str(work / "corpus.tsv"), output_dir=str(tmp_path / "whole"),
                           template="<title> <text>", column_names="id,title,text", max_len=32, device="cpu",
                           progress=False)
    whole = api.build_index(model, tokenizer, options=options)
    by_keywords = (work / "index" / "manifest.json").read_text()
    assert whole["shards"][0]["embeddings_sha256"] in by_keywords  # the same embeddings either way
    with pytest.raises(TypeError, match="not both"):
        api.build_index(model, tokenizer, work / "corpus.tsv", tmp_path / "x", options=options)
