"""A Python API for notebooks: load a model, encode texts, build and search an index, evaluate a run.

    from openmatch import api
    model, tokenizer = api.load_model("path/to/model", pooling="mean", normalize=True)
    q = api.encode(model, tokenizer, ["what is a dense retriever?"], max_len=32, side="query")
    api.build_index(model, tokenizer, "corpus.tsv", "index/", column_names="id,title,text",
                    template="Title: <title> Text: <text>")
    hits = api.search("index/", q, ["q1"], depth=10)          # {"q1": [(pid, score), ...]}
    hits = api.retrieve(model, tokenizer, "queries.tsv", "index/", template="<text>", column_names="id,text")
    api.evaluate_run("qrels.tsv", "run.trec", ["mrr@10"])
    bm25 = api.bm25_index("corpus.tsv", column_names="id,title,text", template="<title> <text>")
    hits = api.bm25_search(bm25, "queries.tsv", depth=100, template="<text>", column_names="id,text")
    negatives, stats = api.mine_negatives(hits, "qrels.tsv", depth=100, first_rank=4, relative_margin=0.05)

The drivers ``build_index``, ``retrieve`` and ``bm25`` are thin compositions of these functions.
"""

from __future__ import annotations

import logging
import os
from typing import Mapping, Optional, Sequence

import numpy as np

from .arguments import ModelArguments
from .dataset.inference_dataset import InferenceDataset, make_loader
from .dataset.records import check_unique, no_records
from .dataset.tokenization import length_sorted_batches
from .errors import InputError, UsageError
from .retriever.builder import build_index  # noqa: F401  (the one build_index, for notebooks too)
from .retriever.ann import check_factory
from .retriever.encode import Precision, encode_batches, pick_device
from .retriever.index import EmbeddingIndex, check_compatible
from .retriever.search import QUERY_ENCODING_FIELDS, SearchOptions, check_search_resources, search_index

logger = logging.getLogger(__name__)


def load_model(path_or_args: str | os.PathLike | ModelArguments, **model_kwargs):
    """``(DRModel, tokenizer)`` from a model folder (with ``ModelArguments`` fields as keywords) or arguments.

    With a ``train_dr`` checkpoint its ``openmatch_config.json`` decides the architecture: a keyword that
    contradicts it (``pooling="mean"`` for a checkpoint trained with ``first``) is an error.
    """
    from .modeling import load_model_and_tokenizer

    if isinstance(path_or_args, ModelArguments):
        args = path_or_args
    else:
        args = ModelArguments(model_name_or_path=os.fspath(path_or_args), **model_kwargs)
        args.given_flags = frozenset(model_kwargs)
    return load_model_and_tokenizer(args)


def encode(
    model,
    tokenizer,
    texts: Sequence[str],
    max_len: int = 128,
    batch_size: int = 64,
    side: str = "passage",
    device: Optional[str] = None,
    fp16: bool = False,
    bf16: bool = False,
) -> np.ndarray:
    """Embeddings ``[len(texts), dim]`` (float32, input order) of ``texts`` encoded as passages or queries.

    Texts are batched by length and padded per batch, like ``build_index``. ``bf16`` runs on any device,
    ``fp16`` only on a GPU (float32 with a warning elsewhere). ``model`` is left as it was (device, dtype,
    weights and training mode): a cast or moved copy encodes when needed.
    """
    if side not in ("passage", "query"):
        raise ValueError(f"side must be 'passage' or 'query', got {side!r}")
    if isinstance(texts, str):
        raise TypeError("encode takes a list of texts, not one string")
    texts = list(texts)
    if not texts:
        return np.zeros((0, int(model.embedding_dim)), dtype=np.float32)
    def batches():
        for rows, batch in length_sorted_batches(tokenizer, texts, max_len, batch_size):
            batch["rows"] = rows
            yield batch

    precision = Precision(pick_device(device), fp16, bf16)
    out = np.zeros((len(texts), int(model.embedding_dim)), dtype=np.float32)
    with precision.prepared(model) as runner:
        for batch, reps in encode_batches(runner, batches(), precision, side=side):
            out[batch["rows"]] = reps
    return out


def encode_file(
    model,
    tokenizer,
    path: str | os.PathLike,
    max_len: int = 32,
    batch_size: int = 64,
    template: Optional[str] = None,
    column_names: Optional[str] = None,
    side: str = "query",
    num_workers: int = 0,
    device: Optional[str] = None,
    fp16: bool = False,
    bf16: bool = False,
) -> tuple[list[str], np.ndarray]:
    """``(ids, embeddings)`` of every record of a TSV/JSONL file, in file order (one process).

    A repeated id is an error naming its two lines.
    """
    dataset = InferenceDataset(
        path, tokenizer, max_len=max_len, batch_size=batch_size, template=template, column_names=column_names,
        kind=side, rank=0, world_size=1,
    )
    precision = Precision(pick_device(device), fp16, bf16)
    positions, ids, parts = [], [], []
    loader = make_loader(dataset, num_workers, pin_memory=precision.device.type == "cuda")
    with precision.prepared(model) as runner:
        for batch, reps in encode_batches(runner, loader, precision, side=side):
            positions.append(batch["positions"].numpy())
            ids.extend(batch["ids"])
            parts.append(reps)
    if not ids:
        raise no_records(path)
    order = np.argsort(np.concatenate(positions), kind="stable")
    ids = [ids[i] for i in order]
    check_unique(ids, path, column_names)
    return ids, np.concatenate(parts)[order]


def search(
    index_dir: str | os.PathLike | EmbeddingIndex,
    query_embeddings: np.ndarray,
    query_ids: Sequence[str],
    depth: int = 100,
    **options,
) -> Mapping[str, list[tuple[str, float]]]:
    """``{qid: [(pid, score), ...]}`` best first (see :class:`openmatch.retriever.SearchOptions`), as
    :func:`retrieve` returns it: a read-only mapping whose ``recall`` holds the ``check_recall`` report.

    The embeddings are taken as they are: only their dimension is checked against the index. To have the
    query encoder checked against the index's model, let :func:`retrieve` encode the queries. An approximate
    ``faiss_index`` is trained once and saved in the index folder (reused while it matches the folder);
    ``check_recall=N`` puts its recall against exact search on N sampled queries in the result's ``recall``.
    """
    encoding = sorted(set(options) & set(QUERY_ENCODING_FIELDS))
    if encoding:
        raise UsageError(f"api.search takes query embeddings; {', '.join(encoding)} apply where api.retrieve encodes queries")
    return search_index(index_dir, query_embeddings, list(query_ids), SearchOptions(depth=depth, **options))


def retrieve(
    model,
    tokenizer,
    queries_path: str | os.PathLike,
    index_dir: str | os.PathLike | EmbeddingIndex,
    *,
    options: Optional[SearchOptions] = None,
    **fields,
) -> Mapping[str, list[tuple[str, float]]]:
    """Encode the queries of a TSV/JSONL file with ``model`` and search the index: ``{qid: [(pid, score), ...]}``.

    Options are :class:`openmatch.retriever.SearchOptions` fields as keywords (``depth``, ``faiss_index``, ...,
    and for the queries ``max_len``, ``template``, ``column_names``, ``batch_size``, ``fp16``, ``bf16``, ...), or
    ``options=`` a whole ``SearchOptions`` (as ``SearchOptions.from_args`` makes from the command's flags).
    ``model`` must be the model the index was built with (dimension, configuration and weights, from the
    manifest); ``allow_model_mismatch=True`` checks the dimension only. The result is a read-only mapping
    (:class:`~openmatch.retriever.search.SearchResults`: hits become Python objects as they are read) whose
    ``recall`` holds the ``check_recall`` report (else None). With ``distributed=True`` (``SearchOptions.from_args`` sets
    it under a launcher) every rank of the process group calls it and gets the whole result, each having
    searched its share of the index.
    """
    if options is None:
        options = SearchOptions(**fields)
    elif fields:
        raise TypeError("retrieve takes options=SearchOptions(...) or its fields as keywords, not both")
    check_search_resources(options)  # before the queries are encoded
    index = index_dir if isinstance(index_dir, EmbeddingIndex) else EmbeddingIndex(index_dir)
    check_compatible(model, index.manifest, index.index_dir, options.allow_model_mismatch)
    check_factory(options.faiss_index, index.dim)  # before the queries are encoded
    qids, q_reps = encode_file(
        model,
        tokenizer,
        queries_path,
        max_len=options.max_len,
        batch_size=options.batch_size,
        template=options.template,
        column_names=options.column_names,
        side="query",
        num_workers=options.num_workers,
        device=options.device,
        fp16=options.fp16,
        bf16=options.bf16,
    )
    logger.info("encoded %d queries; searching %d passages (%s)", len(qids), index.total, options.faiss_index)
    return search_index(index, q_reps, qids, options)


def bm25_index(
    corpus_path: str | os.PathLike,
    output_dir: Optional[str | os.PathLike] = None,
    *,
    options=None,
    overwrite: bool = False,
    **fields,
):
    """A BM25 index (:class:`openmatch.retriever.bm25.BM25Index`) of a TSV/JSONL corpus.

    Options are :class:`openmatch.retriever.bm25.BM25Options` fields as keywords (``k1``, ``b``, ``method``,
    ``stemmer``, ``stopwords``, and for the passages ``template``, ``column_names``) or ``options=`` a whole
    ``BM25Options``. Without ``output_dir`` the index lives in memory only; with it, the folder's index is
    reused when it has the same corpus and settings, else built and saved there (as the ``bm25`` command does;
    an index of other settings is refused unless ``overwrite``).
    """
    from .retriever.bm25 import BM25Index, BM25Options, open_index

    if options is None:
        options = BM25Options(**fields)
    elif fields:
        raise TypeError("bm25_index takes options=BM25Options(...) or its fields as keywords, not both")
    if output_dir is None:
        return BM25Index.build(corpus_path, options)
    return open_index(output_dir, corpus_path, options, overwrite=overwrite)


def bm25_search(
    index,
    queries,
    depth: int = 100,
    template: Optional[str] = None,
    column_names: Optional[str] = None,
) -> dict[str, list[tuple[str, float]]]:
    """``{qid: [(pid, score), ...]}`` best first (ties by passage id descending) of BM25 over ``index`` — a
    :func:`bm25_index` result or a folder the ``bm25`` command wrote — for the queries of a TSV/JSONL file
    (``template``, ``column_names`` as for ``retrieve``) or a ``{qid: text}`` mapping. Only passages sharing
    a token with the query are listed, at most ``depth``."""
    from .retriever.bm25 import BM25Index, search_queries

    if not isinstance(index, BM25Index):
        index = BM25Index.load(index)
    return search_queries(index, queries, depth, template=template, column_names=column_names)


def evaluate_run(qrels_path, run_path, metrics: Sequence[str] = ("mrr@10", "recall@100", "ndcg@10", "map")) -> dict:
    """Mean metrics of a TREC run file against a qrels file (``openmatch.evaluation``)."""
    from .dataset.qrels import load_qrels, load_run
    from .evaluation.metrics import evaluate

    return evaluate(load_qrels(qrels_path), load_run(run_path), metrics=tuple(metrics))


def load_index_model(index_dir: str | os.PathLike | EmbeddingIndex, model_name_or_path: Optional[str | os.PathLike] = None):
    """``(DRModel, tokenizer)`` of the model an embedding index was built with: the model folder and encoder
    configuration (pooling, head, normalisation) its manifest records, or ``model_name_or_path`` when the folder
    has moved. The weights are checked against the index's, so query embeddings match the index's passages."""
    from .modeling.checkpoint import CONFIG_NAME

    index = index_dir if isinstance(index_dir, EmbeddingIndex) else EmbeddingIndex(index_dir)
    built = index.manifest["model"]
    path = model_name_or_path or built.get("path")
    if not path:
        raise InputError(f"{index.index_dir}: the index records no model folder (api.build_index without model_path); "
                         "pass model_name_or_path")
    fields = {}
    if not os.path.exists(os.path.join(path, CONFIG_NAME)):
        # A plain Hugging Face folder: the manifest's encoder configuration gives the flags it was built with (a
        # checkpoint folder decides its own architecture).
        config = built.get("config") or {}
        fields = {
            "pooling": config.get("pooling", "first"),
            "normalize": bool(config.get("normalize", False)),
            "untie_encoder": not config.get("tied", True),
            "encoder_only": bool(config.get("encoder_only", False)),
            "feature": (config.get("plm_backbone") or {}).get("feature", "last_hidden_state"),
            "add_linear_head": bool(config.get("linear_head", False)),
        }
        if fields["add_linear_head"]:
            fields.update(projection_in_dim=config["projection_in_dim"], projection_out_dim=config["projection_out_dim"])
        instructions = config.get("instructions") or {}
        if instructions.get("query"):
            fields["query_prefix"] = instructions["query"]
        if instructions.get("passage"):
            fields["passage_prefix"] = instructions["passage"]
    model, tokenizer = load_model(os.fspath(path), **fields)
    check_compatible(model, index.manifest, index.index_dir)
    return model, tokenizer


def mine_negatives(
    hits: dict[str, Sequence[tuple[str, float]]],
    qrels,
    *,
    depth: int = 200,
    first_rank: int = 1,
    relative_margin: Optional[float] = None,
    absolute_margin: Optional[float] = None,
    index_dir: Optional[str | os.PathLike | EmbeddingIndex] = None,
    queries: Optional[dict[str, str]] = None,
    q_max_len: int = 32,
) -> tuple[dict[str, list[str]], dict]:
    """Hard negatives of a run with build_hn's false-negative control: ``({qid: [pid, ...]}, stats)``.

    ``hits`` is ``{qid: [(pid, score), ...]}`` best first (what :func:`search`, :func:`retrieve` and
    :func:`bm25_search` return), ``qrels`` a qrels file or ``{qid: {pid: relevance}}``. For each judged query,
    the hits ranked ``first_rank`` to ``depth`` that are not judged positive and, with a margin, do not score
    above ``s+ - relative_margin * |s+|`` or ``s+ - absolute_margin`` (``s+`` the query's lowest positive
    score), in rank order; the rules are :mod:`openmatch.negatives`'. A positive missing from ``hits`` is scored
    with the model of the index ``index_dir`` (``queries``: ``{qid: text}``, encoded with ``q_max_len``).
    ``stats`` counts what each rule removed (build_hn's ``build_hn.stats.json``).
    """
    from .dataset.qrels import load_qrels, relevant_ids
    from .negatives import IndexScorer, MiningOptions, mine

    options = MiningOptions(depth=depth, first_rank=first_rank, relative_margin=relative_margin,
                            absolute_margin=absolute_margin)
    if not isinstance(qrels, dict):
        qrels = load_qrels(qrels)
    scorer, index_name = None, None
    if index_dir is not None:
        index = index_dir if isinstance(index_dir, EmbeddingIndex) else EmbeddingIndex(index_dir)
        model, tokenizer = load_index_model(index)
        scorer = IndexScorer(index, lambda texts: encode(model, tokenizer, texts, max_len=q_max_len, side="query"))
        index_name = index.index_dir
    negatives, stats = mine(hits, relevant_ids(qrels), options, queries=queries, scorer=scorer)
    return negatives, stats.to_json(options, "hits", index_name)
