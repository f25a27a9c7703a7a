"""Approximate (faiss) indexes saved in the embedding folder: trained once, reused while they match it.

An approximate search (``--faiss_index`` other than ``Flat``: ``IVF4096,Flat``, ``IVF4096,PQ64``, ``HNSW32``,
any faiss factory string) needs an index trained on the corpus and filled with all of it, which takes minutes
at MS MARCO's size. The first search builds it and writes it into the embedding folder, with
``faiss.write_index`` (faiss's own format, not pickle), beside a json saying what it was built from:

- ``ann.<name>.faiss``: the index; faiss id ``i`` is the folder's row ``first + i`` (rows in corpus order).
- ``ann.<name>.json``: ``key``: the format, the factory string as asked and as built (an IVF's list count is
  lowered for a corpus too small to train it), the metric (inner product), the training sample's size and
  seed, the rows covered, and the index's total, dimension and each shard's embeddings sha256 from the
  manifest (which search verified); ``file``: the faiss file's size, sha256 and stat; the faiss version, the
  creation time and the seconds the build took.

``<name>`` is the factory string with every run of other characters than letters and digits replaced by
``_``, plus ``.rows<first>-<last>`` for the share of one rank of a distributed search.

A later search uses the saved index only when the key it would build is the key saved and the file matches
its recorded size and sha256 (hashed again only when its stat changed). Anything else (another manifest, a
repaired shard with other bytes, another factory string or training setting, a damaged, missing or
unreadable file) is built again, with a log line saying why, and saved over it; the stale one is never
used. Saving writes a temporary file and renames it (the faiss file first, the json last), so a crash
leaves no file that looks complete. A folder that cannot be written (read-only, full) still searches: the
index is built for that search only, with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
import warnings
from typing import Optional

import numpy as np

from ..errors import OpenMatchWarning, UsageError
from ..utils import atomic_output, write_json_atomic
from .faiss_loader import import_faiss
from .index import EmbeddingIndex, _stat_key, sha256_file

logger = logging.getLogger(__name__)

ANN_FORMAT = "openmatch-ann-v1"
METRIC = "inner_product"
# How the parts of a key are named in the line that says why a saved index is built again.
_KEY_PARTS = {
    "format": "the file format",
    "factory": "the factory string",
    "built": "the index built for it",
    "metric": "the metric",
    "training": "the training sample",
    "rows": "the rows covered",
    "embeddings": "the shards' checksums",
}


def is_exact(factory: str) -> bool:
    """Whether a ``--faiss_index`` value asks for exact search (``Flat``, the default)."""
    return factory.replace(" ", "").lower() in ("flat", "flatip", "")


def ann_names(factory: str, first: int, last: int, total: int) -> tuple[str, str]:
    """``(faiss file, json file)`` names of the saved index for ``factory`` over rows ``[first, last)`` of an
    index of ``total`` rows."""
    name = re.sub(r"[^A-Za-z0-9]+", "_", factory).strip("_") or "index"
    if (first, last) != (0, total):
        name += f".rows{first}-{last}"
    return f"ann.{name}.faiss", f"ann.{name}.json"


def adjust_nlist(spec: str, total: int, min_points_per_list: int = 39) -> str:
    """Lower an ``IVF<n>`` list count that the corpus cannot train (faiss wants ≥ 39 points per list)."""
    match = re.search(r"IVF(\d+)", spec)
    if not match:
        return spec
    nlist = int(match.group(1))
    limit = max(1, total // min_points_per_list)
    if nlist <= limit:
        return spec
    logger.warning("%s: %d lists need at least %d vectors, the corpus has %d; using IVF%d", spec, nlist, nlist * min_points_per_list, total, limit)
    return spec[: match.start(1)] + str(limit) + spec[match.end(1) :]


def train_sample(index: EmbeddingIndex, size: int, seed: int, first: int = 0, last: Optional[int] = None) -> np.ndarray:
    """A deterministic sample (``seed``) of ``size`` rows of ``[first, last)`` as float32, in row order."""
    last = index.total if last is None else last
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(last - first, size=min(size, last - first), replace=False)) + first
    parts = []
    for shard, offset in zip(index.shards, index.offsets):
        lo, hi = np.searchsorted(chosen, [offset, offset + shard["count"]])
        if lo < hi:
            parts.append(np.asarray(index.embeddings(shard)[chosen[lo:hi] - offset], dtype=np.float32))
    return np.ascontiguousarray(np.concatenate(parts))


def check_factory(factory: str, dim: int) -> None:
    """Refuse (:class:`UsageError` naming ``--faiss_index``) a factory string faiss cannot build for ``dim``."""
    if not is_exact(factory):
        _new_index(import_faiss(), factory.replace(" ", ""), dim)


def _new_index(faiss, built: str, dim: int):
    try:
        return faiss.index_factory(dim, built, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as err:
        raise UsageError(f"--faiss_index {built!r}: faiss cannot build it for dimension {dim}: {str(err).splitlines()[0]}") from None


def ann_key(index: EmbeddingIndex, factory: str, built: str, trained: bool, options, first: int, last: int) -> dict:
    """What a saved index must have been built from to be used: see the module docstring."""
    return {
        "format": ANN_FORMAT,
        "factory": factory,
        "built": built,
        "metric": METRIC,
        # Indexes that need no training (HNSW, flat codes) do not depend on the sample.
        "training": None if trained else {"sample": min(options.train_sample, last - first), "seed": options.seed},
        "rows": [first, last],
        "embeddings": {
            "total": index.total,
            "dim": index.dim,
            "sha256": [shard["embeddings_sha256"] for shard in index.shards],
        },
    }


def open_ann_index(index: EmbeddingIndex, factory: str, options, first: int = 0, last: Optional[int] = None):
    """The faiss index of ``factory`` over rows ``[first, last)`` of ``index`` (faiss id ``i`` is row
    ``first + i``): the one saved in the folder when it matches (module docstring), else one built now, trained
    on a deterministic sample (``options.train_sample`` rows, ``options.seed``), filled in row order
    (``options.block_rows`` at a time) and saved."""
    faiss = import_faiss()
    last = index.total if last is None else last
    built = adjust_nlist(factory, last - first)
    fresh = _new_index(faiss, built, index.dim)
    key = ann_key(index, factory, built, fresh.is_trained, options, first, last)
    faiss_name, json_name = ann_names(factory, first, last, index.total)
    saved = _load_saved(faiss, index.index_dir, faiss_name, json_name, key)
    if saved is not None:
        return saved
    started = time.perf_counter()
    if not fresh.is_trained:
        sample = train_sample(index, options.train_sample, options.seed, first, last)
        logger.info("training %s on %d vectors", built, len(sample))
        try:
            fresh.train(sample)
        except RuntimeError as err:
            raise UsageError(f"--faiss_index {built!r}: training on {len(sample)} vectors failed: {str(err).splitlines()[0]}") from None
        del sample
    logger.info("adding %d vectors to %s", last - first, built)
    for _offset, block in index.iter_blocks(options.block_rows, first, last):
        fresh.add(block)
    seconds = time.perf_counter() - started
    logger.info("built %s over %d vectors in %.1f s", built, last - first, seconds)
    _save(faiss, fresh, index.index_dir, faiss_name, json_name, key, seconds)
    return fresh


def _load_saved(faiss, folder: str, faiss_name: str, json_name: str, key: dict):
    """The saved index when its json's key is ``key`` and its file is intact, else None (with a log line)."""
    faiss_path, json_path = os.path.join(folder, faiss_name), os.path.join(folder, json_name)
    if not os.path.exists(json_path):
        if os.path.exists(faiss_path):
            logger.warning("%s: no %s says what it was built from; building it again", faiss_path, json_name)
        else:
            logger.info("no saved %s index in %s; building it (later searches reuse it)", key["factory"], folder)
        return None
    try:
        with open(json_path, encoding="utf-8") as handle:
            record = json.load(handle)
    except (OSError, ValueError) as err:
        logger.warning("%s: unreadable (%s); building the approximate index again", json_path, err)
        return None
    old = record.get("key") if isinstance(record, dict) else None
    if old != key:
        changed = [text for part, text in _KEY_PARTS.items() if not isinstance(old, dict) or old.get(part) != key.get(part)]
        logger.info(
            "%s was built from another index or with other settings (%s differ); building it again",
            faiss_path, ", ".join(changed) or "its key",
        )
        return None
    recorded = record.get("file") if isinstance(record.get("file"), dict) else {}
    try:
        stat = os.stat(faiss_path)
    except FileNotFoundError:
        logger.warning("%s: missing (its %s is there); building it again", faiss_path, json_name)
        return None
    if stat.st_size != recorded.get("bytes"):
        logger.warning("%s: %d bytes, %s when it was saved; building it again", faiss_path, stat.st_size, recorded.get("bytes"))
        return None
    if _stat_key(stat) != recorded.get("stat"):
        # Touched, copied or moved since it was saved: its bytes decide.
        if sha256_file(faiss_path) != recorded.get("sha256"):
            logger.warning(
                "%s: its content does not match the sha256 recorded when it was saved (changed or damaged); building it again",
                faiss_path,
            )
            return None
        record["file"]["stat"] = _stat_key(stat)
        try:
            write_json_atomic(json_path, record)
        except OSError:
            pass  # a read-only folder: the file is hashed again next time
    try:
        loaded = faiss.read_index(faiss_path)
    except RuntimeError as err:
        logger.warning("%s: faiss cannot read it (%s); building it again", faiss_path, str(err).splitlines()[0])
        return None
    first, last = key["rows"]
    if loaded.ntotal != last - first or loaded.d != key["embeddings"]["dim"]:
        logger.warning(
            "%s: holds %d vectors of dimension %d, the index %d of dimension %d; building it again",
            faiss_path, loaded.ntotal, loaded.d, last - first, key["embeddings"]["dim"],
        )
        return None
    logger.info("using the approximate index saved in %s (built %s)", faiss_path, record.get("created"))
    return loaded


def _save(faiss, built_index, folder: str, faiss_name: str, json_name: str, key: dict, seconds: float) -> None:
    """Write the index and then its json, each atomically; a folder that cannot take them gets a warning."""
    faiss_path, json_path = os.path.join(folder, faiss_name), os.path.join(folder, json_name)
    digest = hashlib.sha256()
    failed: list[OSError] = []

    try:
        # A json left from an earlier index must not stand beside the new file, even for a moment.
        if os.path.exists(json_path):
            os.unlink(json_path)
        with atomic_output(faiss_path, "wb") as handle:

            def write(chunk: bytes) -> None:
                # faiss turns an exception raised here into its own RuntimeError; keep the OSError to report it.
                if not failed:
                    try:
                        handle.write(chunk)
                        digest.update(chunk)
                    except OSError as err:
                        failed.append(err)

            faiss.write_index(built_index, faiss.PyCallbackIOWriter(write))
            if failed:
                raise failed[0]
        stat = os.stat(faiss_path)
        write_json_atomic(json_path, {
            "key": key,
            "file": {"name": faiss_name, "bytes": stat.st_size, "sha256": digest.hexdigest(), "stat": _stat_key(stat)},
            "faiss_version": getattr(faiss, "__version__", None),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "build_seconds": round(seconds, 3),
        })
    except OSError as err:
        warnings.warn(
            f"{faiss_path}: could not save the approximate index ({err.strerror or err}); it serves this search "
            "only and the next search builds it again",
            OpenMatchWarning,
            stacklevel=2,
        )
        return
    logger.info("saved %s (%.1f MB); later searches with the same --faiss_index reuse it", faiss_path, stat.st_size / 1e6)
