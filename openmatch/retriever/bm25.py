"""BM25 over a corpus file with `bm25s <https://github.com/xhluca/bm25s>`_: the index, its folder, and search.

**Text.** Each passage is its record filled into ``--doc_template`` (as ``build_index`` does; ``"<text>"``
when none is given), each query its record filled into ``--query_template`` (``"<text>"`` by default); the
records are read by the project's readers (TSV with ``--doc_column_names`` / a header, JSONL, gzip).

**Tokens** (``bm25s.tokenize``, the same for passages and queries): the text is lower-cased and split into
the words of the regular expression ``(?u)\\b\\w\\w+\\b`` (runs of two or more letters, digits or
underscores; single characters and punctuation are dropped, as in scikit-learn's ``CountVectorizer``); then
English stopwords are removed (``stopwords="en"``: bm25s's English list; ``"none"`` keeps every word); then
each word is stemmed with PyStemmer (``stemmer="english"``: Snowball's English stemmer, Porter2;
``"porter"``: the original Porter stemmer, as Lucene's ``PorterStemFilter``; ``"none"``). Query words absent
from the corpus are ignored; a repeated query word counts each time (as a Lucene bag-of-words query).

**Scores** (bm25s's eager BM25, computed at indexing time): ``score(q, d) = Σ_{t in q} idf(t) · tf(t, d) /
(tf(t, d) + k1 · (1 - b + b · |d| / avgdl))`` with ``method="lucene"`` (Lucene 8's form: without the constant
factor ``k1 + 1``, and ``idf(t) = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5))``), ``|d|`` the passage's token
count and ``avgdl`` the mean over the corpus; ``robertson``, ``atire``, ``bm25l`` and ``bm25+`` are bm25s's
other variants. ``k1 = 0.9, b = 0.4`` by default (Anserini's defaults, used for the BEIR BM25 figures).
Scores are float32.

**Hits.** A query's hits are the passages that share at least one token with it (as in Lucene; the others
are not listed), best first: score descending, ties broken by passage id descending — trec_eval's order, so
a run written from them reads back in the same order — at most ``depth`` of them.

**Folder** (``output_dir``; no pickle: arrays are ``.npy``, the rest JSON or text):

- ``bm25.json``: what the index is (``settings``: corpus path, size and mtime, template, columns, k1, b,
  method, stemmer, stopwords, token pattern) and facts about it (passages, vocabulary, bm25s version);
  written last, so an index is complete exactly when it exists. A rerun with the same settings loads the
  index instead of rebuilding it; other settings are refused unless ``overwrite`` (only these files are
  ever replaced, never the rest of the folder);
- ``ids.txt``: the passage ids, one per line, in corpus order (row ``i`` of the index is line ``i``);
- bm25s's own files, written by ``bm25s.BM25.save`` with ``allow_pickle=False``: ``data.csc.index.npy``,
  ``indices.csc.index.npy``, ``indptr.csc.index.npy`` (the score matrix, tokens x passages, CSC),
  ``vocab.index.json`` (token -> row), ``params.index.json`` (k1, b, method, ...) and, for ``bm25l``/``bm25+``,
  ``nonoccurrence_array.index.npy``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Mapping, Optional, Sequence

import numpy as np

from ..dataset.inference_dataset import DEFAULT_TEMPLATE, resolve_template
from ..dataset.readers import iter_id_records, no_records, parse_column_names
from ..dataset.records import check_unique
from ..errors import DependencyError, InputError, MissingInputError, OpenMatchWarning, UsageError
from ..utils import atomic_output, write_json_atomic
from .index import IndexFolderError, file_fingerprint

logger = logging.getLogger(__name__)

FORMAT = "openmatch-bm25-v1"
CONFIG_FILE = "bm25.json"
IDS_FILE = "ids.txt"
# What bm25s.BM25.save writes (without a corpus); the last one only for the methods that need it.
BM25S_FILES = ("data.csc.index.npy", "indices.csc.index.npy", "indptr.csc.index.npy", "vocab.index.json",
               "params.index.json", "nonoccurrence_array.index.npy")
TOKEN_PATTERN = r"(?u)\b\w\w+\b"
METHODS = ("lucene", "robertson", "atire", "bm25l", "bm25+")
STEMMERS = ("english", "porter", "none")
STOPWORDS = ("en", "none")
_INSTALL_HINT = "pip install 'bm25s>=0.2' 'PyStemmer>=2.2' (or pip install -e '.[bm25]')"


def _bm25s():
    try:
        import bm25s
    except ImportError as err:
        raise DependencyError(f"BM25 needs bm25s: {_INSTALL_HINT}") from err
    return bm25s


@dataclass
class BM25Options:
    """How passages and queries become tokens and how they are scored (see the module docstring)."""

    k1: float = 0.9
    b: float = 0.4
    method: str = "lucene"
    stemmer: str = "english"
    stopwords: str = "en"
    template: Optional[str] = None
    column_names: Optional[str] = None

    def __post_init__(self):
        if not (np.isfinite(self.k1) and self.k1 >= 0):
            raise UsageError(f"--k1 must be a non-negative number, got {self.k1}")
        if not (np.isfinite(self.b) and 0 <= self.b <= 1):
            raise UsageError(f"--b must be in [0, 1], got {self.b}")
        for name, value, choices in (("method", self.method, METHODS), ("stemmer", self.stemmer, STEMMERS),
                                     ("stopwords", self.stopwords, STOPWORDS)):
            if value not in choices:
                raise UsageError(f"--{name} {value!r}: use one of {', '.join(choices)}")

    @classmethod
    def from_args(cls, data_args, bm25_args) -> "BM25Options":
        """The options of the ``bm25`` command's flags (``TextArguments``, ``BM25Arguments``)."""
        return cls(k1=bm25_args.k1, b=bm25_args.b, method=bm25_args.method, stemmer=bm25_args.stemmer,
                   stopwords=bm25_args.stopwords, template=data_args.doc_template,
                   column_names=data_args.doc_column_names)

    def settings(self, corpus_path: str | os.PathLike) -> dict:
        """What determines the index built from ``corpus_path`` with these options (``bm25.json``'s ``settings``)."""
        options = asdict(self)
        options["template"] = self.template or DEFAULT_TEMPLATE
        options["column_names"] = parse_column_names(self.column_names)
        return {"corpus": file_fingerprint(os.fspath(corpus_path)), **options, "token_pattern": TOKEN_PATTERN,
                "lowercase": True}


def tokenize(texts, stemmer: str = "english", stopwords: str = "en", as_ids: bool = False):
    """bm25s's tokens of ``texts`` (an iterable of strings): lists of stems, or with ``as_ids`` a
    ``bm25s.tokenization.Tokenized`` (ids and vocabulary), which is what indexing a large corpus needs."""
    bm25s = _bm25s()
    stem = None
    if stemmer != "none":
        try:
            import Stemmer
        except ImportError as err:
            raise DependencyError(f"--stemmer {stemmer} needs PyStemmer: {_INSTALL_HINT}") from err
        stem = Stemmer.Stemmer(stemmer)
    return bm25s.tokenize(texts, lower=True, token_pattern=TOKEN_PATTERN,
                          stopwords="en" if stopwords == "en" else None, stemmer=stem, return_ids=as_ids,
                          show_progress=False)


def read_texts(path: str | os.PathLike, template: Optional[str], column_names: Optional[str], kind: str,
               flag: str) -> tuple[list[str], list[str]]:
    """``(ids, texts)`` of every record of a TSV/JSONL file, in file order, each filled into ``template``."""
    if not os.path.exists(path):
        raise MissingInputError(f"{path}: no such file ({flag})")
    fill = resolve_template(template, kind)
    ids, texts = [], []
    for _, rid, record in iter_id_records(path, column_names):
        ids.append(rid)
        texts.append(fill(record))
    if not ids:
        raise no_records(path)
    check_unique(ids, path, column_names)
    return ids, texts


class BM25Index:
    """A bm25s index of a corpus with its passage ids; :meth:`search` lists each query's best passages."""

    def __init__(self, retriever, ids: Sequence[str], config: dict):
        self.retriever = retriever
        self.ids = list(ids)
        self.config = config
        self.settings = config["settings"]
        # Each passage's place in descending id order: the second sort key (trec_eval's tie rule).
        by_id = np.argsort(np.array(self.ids, dtype=object), kind="stable")[::-1]
        self._id_rank = np.empty(len(self.ids), dtype=np.int64)
        self._id_rank[by_id] = np.arange(len(self.ids))

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def build(cls, corpus_path: str | os.PathLike, options: Optional[BM25Options] = None) -> "BM25Index":
        """Read, tokenise and index ``corpus_path`` in memory."""
        options = options or BM25Options()
        if not os.path.exists(corpus_path):
            raise MissingInputError(f"{corpus_path}: no such file (--corpus_path)")
        settings = options.settings(corpus_path)
        start = time.perf_counter()
        ids, texts = read_texts(corpus_path, options.template, options.column_names, "passage", "--corpus_path")
        tokens = tokenize(texts, options.stemmer, options.stopwords, as_ids=True)
        del texts
        retriever = _bm25s().BM25(k1=options.k1, b=options.b, method=options.method)
        retriever.index(tokens, show_progress=False)
        config = {"format": FORMAT, "settings": settings, "num_passages": len(ids),
                  "vocabulary_size": len(retriever.vocab_dict), "bm25s_version": _bm25s().__version__}
        logger.info("BM25 index of %d passages (%d tokens in the vocabulary) built in %.1f s", len(ids),
                    len(retriever.vocab_dict), time.perf_counter() - start)
        return cls(retriever, ids, config)

    def save(self, output_dir: str | os.PathLike) -> None:
        """Write the folder (module docstring): files under temporary names first, ``bm25.json`` last."""
        output_dir = os.fspath(output_dir)
        os.makedirs(output_dir, exist_ok=True)
        remove_index_files(output_dir)
        staging = tempfile.mkdtemp(prefix=".bm25-", suffix=".tmp", dir=output_dir)
        try:
            self.retriever.save(staging, corpus=None, allow_pickle=False, show_progress=False)
            with atomic_output(os.path.join(staging, IDS_FILE)) as handle:
                handle.writelines(f"{pid}\n" for pid in self.ids)
            for name in os.listdir(staging):
                os.replace(os.path.join(staging, name), os.path.join(output_dir, name))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        write_json_atomic(os.path.join(output_dir, CONFIG_FILE), self.config)

    @classmethod
    def load(cls, output_dir: str | os.PathLike) -> "BM25Index":
        """Read a folder :meth:`save` wrote (never unpickling anything)."""
        output_dir = os.fspath(output_dir)
        config = read_config(output_dir)
        if config is None:
            raise MissingInputError(f"{output_dir}: no BM25 index ({CONFIG_FILE} missing)")
        try:
            retriever = _bm25s().BM25.load(output_dir, allow_pickle=False, load_corpus=False, show_progress=False)
            with open(os.path.join(output_dir, IDS_FILE), encoding="utf-8") as handle:
                ids = handle.read().splitlines()
        except (OSError, ValueError, KeyError) as err:
            raise InputError(f"{output_dir}: cannot read the BM25 index ({err}); rebuild it with --overwrite_output_dir") from err
        if len(ids) != config.get("num_passages") or retriever.scores["num_docs"] != len(ids):
            raise InputError(
                f"{output_dir}: the BM25 index holds {retriever.scores['num_docs']} passages, {IDS_FILE} {len(ids)} and "
                f"{CONFIG_FILE} {config.get('num_passages')}; rebuild it with --overwrite_output_dir"
            )
        return cls(retriever, ids, config)

    def query_tokens(self, texts: Sequence[str]) -> list[list[int]]:
        """Each query's token ids in this index's vocabulary (unknown tokens dropped, repeats kept)."""
        settings = self.settings
        vocab = self.retriever.vocab_dict
        tokens = tokenize(list(texts), settings["stemmer"], settings["stopwords"]) if texts else []
        return [[vocab[t] for t in words if t in vocab] for words in tokens]

    def search(self, texts: Sequence[str], qids: Sequence[str], depth: int = 100) -> dict[str, list[tuple[str, float]]]:
        """``{qid: [(pid, score), ...]}`` best first, at most ``depth`` passages sharing a token with the query."""
        if depth < 1:
            raise UsageError(f"the search depth must be at least 1, got {depth}")
        if len(texts) != len(qids):
            raise ValueError(f"{len(qids)} query ids for {len(texts)} queries")
        indptr, indices = self.retriever.scores["indptr"], self.retriever.scores["indices"]
        results: dict[str, list[tuple[str, float]]] = {}
        for qid, token_ids in zip(qids, self.query_tokens(texts)):
            if not token_ids:
                results[qid] = []
                continue
            scores = np.asarray(self.retriever.get_scores_from_ids(token_ids), dtype=np.float32)
            matched = np.unique(np.concatenate([indices[indptr[t]:indptr[t + 1]] for t in set(token_ids)]))
            if matched.size > depth:
                # Everything scoring at least the depth-th best score may be in the top depth (ties included).
                kth = np.partition(scores[matched], matched.size - depth)[matched.size - depth]
                matched = matched[scores[matched] >= kth]
            order = matched[np.lexsort((self._id_rank[matched], -scores[matched]))][:depth]
            results[qid] = [(self.ids[i], float(scores[i])) for i in order]
        return results


def read_config(output_dir: str) -> Optional[dict]:
    path = os.path.join(output_dir, CONFIG_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            config = json.load(handle)
    except ValueError as err:
        raise InputError(f"{path}: not a BM25 index description ({err}); rebuild it with --overwrite_output_dir") from err
    if not isinstance(config, dict) or config.get("format") != FORMAT or "settings" not in config:
        raise InputError(f"{path}: not a BM25 index description of format {FORMAT}")
    return config


def remove_index_files(output_dir: str) -> None:
    """Delete this module's files (and leftover temporaries) from ``output_dir``; nothing else is touched."""
    if not os.path.isdir(output_dir):
        return
    # The description goes first: until the new one is written, no half-replaced index claims to be complete.
    for name in (CONFIG_FILE, IDS_FILE, *BM25S_FILES):
        path = os.path.join(output_dir, name)
        if os.path.exists(path):
            os.unlink(path)
    for name in os.listdir(output_dir):
        if name.startswith(".bm25-") and name.endswith(".tmp"):
            shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)
        elif name.startswith(f".{IDS_FILE}.") or name.startswith(f".{CONFIG_FILE}."):
            os.unlink(os.path.join(output_dir, name))


def open_index(output_dir: str | os.PathLike, corpus_path: str | os.PathLike, options: Optional[BM25Options] = None,
               overwrite: bool = False) -> BM25Index:
    """The BM25 index of ``corpus_path`` with ``options`` in ``output_dir``: loaded when the folder holds one
    with the same settings, built and saved there when it holds none (or ``overwrite``); an index of other
    settings is refused."""
    options = options or BM25Options()
    output_dir = os.fspath(output_dir)
    if not os.path.exists(corpus_path):
        raise MissingInputError(f"{corpus_path}: no such file (--corpus_path)")
    settings = options.settings(corpus_path)
    config = None if overwrite else read_config(output_dir)
    if config is not None:
        if config["settings"] != settings:
            old = config["settings"]
            diffs = [f"{key}: {old.get(key)!r} -> {settings.get(key)!r}" for key in sorted(set(old) | set(settings))
                     if old.get(key) != settings.get(key)]
            raise IndexFolderError(
                f"{output_dir} holds a BM25 index of other settings ({'; '.join(diffs[:4])}); use "
                "--overwrite_output_dir to replace it or choose another --output_dir"
            )
        missing = [name for name in (IDS_FILE, *BM25S_FILES[:5]) if not os.path.exists(os.path.join(output_dir, name))]
        if not missing:
            logger.info("reusing the BM25 index in %s (same corpus and settings)", output_dir)
            return BM25Index.load(output_dir)
        warnings.warn(f"{output_dir}: the BM25 index lacks {', '.join(missing)}; building it again", OpenMatchWarning,
                      stacklevel=2)
    index = BM25Index.build(corpus_path, options)
    index.save(output_dir)
    logger.info("saved the BM25 index to %s", output_dir)
    return index


def search_queries(index: BM25Index, queries: str | os.PathLike | Mapping[str, str], depth: int = 100,
                   template: Optional[str] = None, column_names: Optional[str] = None) -> dict[str, list[tuple[str, float]]]:
    """Search ``index`` for the queries of a TSV/JSONL file (or a ``{qid: text}`` mapping), in their order."""
    if isinstance(queries, Mapping):
        qids, texts = [str(q) for q in queries], [str(t) for t in queries.values()]
    else:
        qids, texts = read_texts(queries, template, column_names, "query", "--query_path")
    start = time.perf_counter()
    results = index.search(texts, qids, depth)
    logger.info("searched %d queries over %d passages in %.1f s", len(qids), len(index), time.perf_counter() - start)
    return results
