"""The embedding index folder: its file names, what it records, its shards and manifest, and reading it.

This module is the format, in one place: :mod:`openmatch.retriever.builder` writes folders through it and
:mod:`openmatch.retriever.search` reads them through :class:`EmbeddingIndex`.

Layout of ``output_dir`` (all JSON, text and ``.npy``; no pickle, because loading a pickle runs code):

- ``build.json``: what is being built (model path, resolved model config, weight fingerprint, dimension;
  corpus path, size and mtime; template, columns, max length, precision, dtype; world size and shard size).
  Written first. A rerun with the same description resumes; any difference is refused unless
  ``--overwrite_output_dir`` is given, so shards of two models or corpora are never merged.
- per rank ``r`` and shard ``k``: ``embeddings.rank{r}.shard{k}.npy`` ([n, dim], float32 or float16,
  ``np.load(mmap_mode="r")``-able), ``ids.rank{r}.shard{k}.txt`` (one id per line, row order) and
  ``shard.rank{r}.shard{k}.json`` (count, first position, sha256 of both files). Each file is written under
  a temporary name and renamed; the shard json comes last, so a shard is complete exactly when its json
  exists and the checksums match.
- ``manifest.json``: ``build.json``'s content plus the shard list, the total and an argument snapshot;
  written by rank 0 once every rank has finished. Search reads only indexes that have one.

Rank ``r`` owns the corpus lines ``g`` with ``g % world_size == r``; its ``j``-th line (``j = g //
world_size``) goes to shard ``j // shard_size`` where ``shard_size = max_inmem_docs // world_size``.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import numpy as np

from ..errors import InputError, MissingInputError, OpenMatchError
from ..utils import atomic_output, write_json_atomic

logger = logging.getLogger(__name__)

FORMAT = "openmatch-index-v1"
BUILD_FILE = "build.json"
MANIFEST_FILE = "manifest.json"
_OUR_FILES = re.compile(r"^(embeddings|ids|shard)\.rank\d+\.shard\d+\.(npy|txt|json)$")
_OUR_TEMP = re.compile(r"^\.((embeddings|ids|shard)\.rank\d+\.shard\d+\.(npy|txt|json)|build\.json|manifest\.json)\..*\.tmp$")
_OPENMATCH_PICKLES = re.compile(r"^embeddings\.(corpus|query)\.rank\.\d+")


class IndexFolderError(OpenMatchError, FileExistsError):
    """The output folder holds something this build must not touch or merge with."""


def shard_names(rank: int, shard: int) -> dict[str, str]:
    stem = f"rank{rank}.shard{shard}"
    return {"embeddings": f"embeddings.{stem}.npy", "ids": f"ids.{stem}.txt", "meta": f"shard.{stem}.json"}


def sha256_file(path: str, block: int = 1 << 16) -> str:
    # Small reads: beside a shard held in memory, the hash should cost next to nothing.
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(block), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_fingerprint(path: str) -> dict[str, Any]:
    stat = os.stat(path)
    return {"path": os.path.abspath(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


@dataclass
class IndexSpec:
    """Everything that determines the embeddings; two builds with equal specs may share shards."""

    model_path: str
    model_config: dict
    model_fingerprint: str
    dim: int
    corpus: dict
    template: str
    column_names: Optional[list]
    max_len: int
    precision: str
    dtype: str
    world_size: int
    shard_size: int
    format: str = FORMAT

    def to_dict(self) -> dict:
        return {
            "format": self.format,
            "model": {
                "path": self.model_path,
                "config": self.model_config,
                "fingerprint": self.model_fingerprint,
                "dim": self.dim,
            },
            "corpus": self.corpus,
            "encoding": {
                "template": self.template,
                "column_names": self.column_names,
                "max_len": self.max_len,
                "precision": self.precision,
                "dtype": self.dtype,
            },
            "layout": {"world_size": self.world_size, "shard_size": self.shard_size},
        }


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def index_files(output_dir: str) -> list[str]:
    """Names in ``output_dir`` that belong to an index (ours, temporaries, or OpenMatch's pickles)."""
    if not os.path.isdir(output_dir):
        return []
    names = []
    for name in os.listdir(output_dir):
        if (
            name in (BUILD_FILE, MANIFEST_FILE)
            or _OUR_FILES.match(name)
            or _OUR_TEMP.match(name)
            or _OPENMATCH_PICKLES.match(name)
        ):
            names.append(name)
    return sorted(names)


def prepare_output_dir(output_dir: str, spec: IndexSpec, overwrite: bool = False) -> str:
    """Check (rank 0) that ``output_dir`` is empty of index files, or resumable, or may be replaced.

    Returns ``"fresh"``, ``"resume"`` or ``"complete"``. Only index files are ever deleted, never the rest
    of the folder (it may be a checkpoint folder).
    """
    os.makedirs(output_dir, exist_ok=True)
    existing = index_files(output_dir)
    if existing and overwrite:
        logger.info("--overwrite_output_dir: removing %d index file(s) from %s", len(existing), output_dir)
        for name in existing:
            os.unlink(os.path.join(output_dir, name))
        existing = []
    for name in existing:
        if _OUR_TEMP.match(name):  # left by a crash; never complete
            os.unlink(os.path.join(output_dir, name))
    existing = index_files(output_dir)
    if not existing:
        write_json_atomic(os.path.join(output_dir, BUILD_FILE), spec.to_dict())
        return "fresh"
    pickles = [name for name in existing if _OPENMATCH_PICKLES.match(name)]
    if pickles:
        raise IndexFolderError(
            f"{output_dir} holds OpenMatch pickled embeddings ({pickles[0]}, ...), which are not read (unpickling "
            "runs code); use --overwrite_output_dir to replace them or choose another --output_dir"
        )
    build_path = os.path.join(output_dir, BUILD_FILE)
    if not os.path.exists(build_path):
        raise IndexFolderError(
            f"{output_dir} holds index files ({existing[0]}, ...) but no {BUILD_FILE} saying what they are; "
            "use --overwrite_output_dir to replace them or choose another --output_dir"
        )
    with open(build_path, encoding="utf-8") as handle:
        old = json.load(handle)
    diffs = _differences(old, spec.to_dict())
    if diffs:
        raise IndexFolderError(
            f"{output_dir} holds an index of another model, corpus or configuration ({'; '.join(diffs[:4])}"
            f"{'; ...' if len(diffs) > 4 else ''}); refusing to mix them. Use --overwrite_output_dir to replace "
            "it or choose another --output_dir"
        )
    return "complete" if os.path.exists(os.path.join(output_dir, MANIFEST_FILE)) else "resume"


def read_shard_meta(output_dir: str, rank: int, shard: int) -> Optional[dict]:
    path = os.path.join(output_dir, shard_names(rank, shard)["meta"])
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def verify_shard(output_dir: str, meta: dict) -> bool:
    """True when both files of a shard exist and match the checksums in its json."""
    for key in ("embeddings", "ids"):
        path = os.path.join(output_dir, meta[key])
        if not os.path.exists(path) or sha256_file(path) != meta[f"{key}_sha256"]:
            return False
    return True


def shard_numbers(output_dir: str, rank: int) -> list[int]:
    """The numbers of the shards of rank ``rank`` whose json is in ``output_dir``, ascending."""
    pattern = os.path.join(output_dir, f"shard.rank{rank}.shard*.json")
    return sorted(int(re.search(r"shard(\d+)\.json$", path).group(1)) for path in glob.glob(pattern))


def complete_shards(output_dir: str, rank: int, shard_size: int) -> dict[int, dict]:
    """``{shard: meta}`` of rank ``rank``'s verified shards; broken ones are deleted (they will be redone)."""
    done = {}
    for shard in shard_numbers(output_dir, rank):
        meta = read_shard_meta(output_dir, rank, shard)
        if meta is not None and meta.get("count", 0) <= shard_size and verify_shard(output_dir, meta):
            done[shard] = meta
        else:
            logger.warning("shard %d of rank %d is incomplete or corrupt; encoding it again", shard, rank)
            for name in shard_names(rank, shard).values():
                target = os.path.join(output_dir, name)
                if os.path.exists(target):
                    os.unlink(target)
    return done


def write_shard(output_dir: str, rank: int, shard: int, positions, ids, embeddings: np.ndarray, dtype: str) -> dict:
    """Write one complete shard (rows in corpus order); its json is renamed into place last.

    Rows given out of order are sorted by ``positions`` first (a copy); rows already in order are written
    as they are, so a shard in ``dtype`` is never copied.
    """
    positions = np.asarray(positions)
    if not (np.diff(positions) > 0).all():
        order = np.argsort(positions, kind="stable")
        positions = positions[order]
        ids = [ids[i] for i in order]
        embeddings = embeddings[order]
    embeddings = embeddings.astype(dtype, copy=False)
    names = shard_names(rank, shard)
    with atomic_output(os.path.join(output_dir, names["embeddings"]), "wb") as handle:
        np.save(handle, np.ascontiguousarray(embeddings), allow_pickle=False)
    with atomic_output(os.path.join(output_dir, names["ids"])) as handle:
        handle.write("".join(f"{rid}\n" for rid in ids))
    meta = {
        "rank": rank,
        "shard": shard,
        "count": len(ids),
        "first_position": int(positions[0]),
        "dim": int(embeddings.shape[1]),
        "dtype": dtype,
        "embeddings": names["embeddings"],
        "ids": names["ids"],
        "embeddings_sha256": sha256_file(os.path.join(output_dir, names["embeddings"])),
        "ids_sha256": sha256_file(os.path.join(output_dir, names["ids"])),
    }
    write_json_atomic(os.path.join(output_dir, names["meta"]), meta)
    return meta


def write_manifest(output_dir: str, spec: IndexSpec, shards: list[dict], arguments: dict) -> dict:
    """Write ``manifest.json`` (which makes the folder a complete index) for ``shards``, in search order."""
    manifest = spec.to_dict()
    manifest.update(
        {
            "total": sum(meta["count"] for meta in shards),
            "shards": shards,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "arguments": arguments,
        }
    )
    write_json_atomic(os.path.join(output_dir, MANIFEST_FILE), manifest)
    return manifest


def load_manifest(index_dir: str) -> dict:
    """The manifest of a complete index, or a clear error when the folder holds none."""
    path = os.path.join(index_dir, MANIFEST_FILE)
    if not os.path.exists(path):
        hint = " (a build was started there but did not finish; rerun build_index)" if os.path.exists(
            os.path.join(index_dir, BUILD_FILE)
        ) else ""
        raise MissingInputError(f"{path}: no index manifest{hint}; build the index with openmatch.driver.build_index first")
    with open(path, encoding="utf-8") as handle:
        manifest = json.load(handle)
    if manifest.get("format") != FORMAT:
        raise IndexFolderError(f"{path}: unknown index format {manifest.get('format')!r} (expected {FORMAT})")
    return manifest


def check_compatible(model, manifest: dict, index_dir: str, allow_mismatch: bool = False) -> None:
    """Refuse a query encoder whose dimension, configuration or weights differ from the index's model.

    ``allow_mismatch`` keeps only the dimension check (the configuration and weights may differ).
    """
    from .encode import fingerprint_matches  # torch's side; reading an index needs none of it

    built = manifest["model"]
    if int(model.embedding_dim) != int(built["dim"]):
        raise InputError(
            f"the query encoder gives {model.embedding_dim}-dimensional embeddings but the index in {index_dir} holds "
            f"{built['dim']}-dimensional ones (built with {built['path'] or 'another model'}); encode queries and "
            "passages with the same model"
        )
    if allow_mismatch:
        return
    config = model.config.encoding_json() if hasattr(model.config, "encoding_json") else {}
    if config != built.get("config", config) or not fingerprint_matches(model, built["fingerprint"]):
        raise InputError(
            f"the query encoder is not the model that built the index in {index_dir} (built with "
            f"{built['path'] or 'another model'}); rebuild the index or pass --allow_model_mismatch"
        )


class EmbeddingIndex:
    """Read access to a complete index folder (the layout in this module's docstring)."""

    def __init__(self, index_dir: str | os.PathLike):
        self.index_dir = os.fspath(index_dir)
        self.manifest = load_manifest(self.index_dir)
        self.dim = int(self.manifest["model"]["dim"])
        self.total = int(self.manifest["total"])
        self.shards = self.manifest["shards"]
        self.offsets = np.cumsum([0] + [s["count"] for s in self.shards])

    def embeddings(self, shard: dict) -> np.ndarray:
        path = os.path.join(self.index_dir, shard["embeddings"])
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        if array.shape != (shard["count"], self.dim):
            raise IndexFolderError(f"{path}: shape {array.shape} does not match the manifest ({shard['count']}, {self.dim})")
        return array

    def iter_blocks(self, block_rows: int) -> Iterator[tuple[int, np.ndarray]]:
        """``(global_offset, float32 block)`` over the whole corpus: rows ``[i·block_rows, (i+1)·block_rows)``.

        Blocks run across shard boundaries, so which rows share a block does not depend on the sharding.
        """
        arrays: dict[int, np.ndarray] = {}
        for start in range(0, self.total, block_rows):
            stop = min(start + block_rows, self.total)
            block = np.empty((stop - start, self.dim), dtype=np.float32)
            for number, (shard, offset) in enumerate(zip(self.shards, self.offsets)):
                lo, hi = max(start, int(offset)), min(stop, int(offset) + shard["count"])
                if lo >= hi:
                    continue
                if number not in arrays:
                    arrays = {number: self.embeddings(shard)}  # earlier shards are done with
                block[lo - start : hi - start] = arrays[number][lo - offset : hi - offset]
            yield start, block

    def lookup_ids(self, indices: np.ndarray) -> dict[int, str]:
        """``{global_index: id}`` for the given indices, reading the id files once (no full id table in memory)."""
        wanted = np.unique(indices[indices >= 0])
        return dict(zip(wanted.tolist(), self.ids_of(wanted).tolist()))

    def ids_of(self, indices: np.ndarray) -> np.ndarray:
        """An object array shaped like ``indices`` holding the id of each global index (``None`` for -1).

        Each needed id file is read once, in chunks of ``_ID_CHUNK_CHARS`` characters, so memory holds a
        chunk of one shard's ids, never the whole id table; the hits are found with one sort instead of a
        Python test per line or per hit.
        """
        indices = np.asarray(indices)
        out = np.full(indices.shape, None, dtype=object)
        flat = indices.reshape(-1)
        rows = np.flatnonzero(flat >= 0)
        if not len(rows):
            return out
        if int(flat[rows].max()) >= self.total:
            raise IndexError(f"index {int(flat[rows].max())} is beyond the {self.total} passages of {self.index_dir}")
        order = rows[np.argsort(flat[rows], kind="stable")]
        targets = flat[order]  # ascending global indices (repeats allowed)
        names = np.empty(len(order), dtype=object)
        for shard, offset in zip(self.shards, self.offsets):
            lo, hi = np.searchsorted(targets, [offset, offset + shard["count"]])
            if lo < hi:
                names[lo:hi] = self._read_ids(shard, targets[lo:hi] - offset)
        out.reshape(-1)[order] = names
        return out

    def _read_ids(self, shard: dict, local: np.ndarray) -> list[str]:
        """The ids at the ascending row numbers ``local`` of one shard."""
        path = os.path.join(self.index_dir, shard["ids"])
        found: list[str] = []
        start, pos = 0, 0
        for lines in _id_chunks(path):
            end = start + len(lines)
            stop = int(np.searchsorted(local, end, side="left"))
            if stop > pos:
                pick = (local[pos:stop] - start).tolist()
                found.extend([lines[i] for i in pick])
                pos = stop
            start = end
            if pos == len(local):
                break
        if pos < len(local):
            raise IndexFolderError(f"{path}: holds {start} ids, the manifest says {shard['count']}")
        return found


_ID_CHUNK_CHARS = 1 << 24


def _id_chunks(path: str) -> Iterator[list[str]]:
    """Lists of consecutive lines (without their newline) of an id file, a bounded chunk at a time."""
    with open(path, encoding="utf-8") as handle:
        rest = ""
        while True:
            data = handle.read(_ID_CHUNK_CHARS)
            if not data:
                break
            data = rest + data
            cut = data.rfind("\n")
            if cut < 0:
                rest = data
                continue
            rest = data[cut + 1 :]
            yield data[:cut].split("\n")
        if rest:
            yield [rest]


