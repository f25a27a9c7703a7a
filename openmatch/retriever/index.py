"""An embedding index folder: ``.npy`` shards, id files and a manifest, built resumably and never mixed.

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
world_size``) goes to shard ``j // shard_size`` where ``shard_size = max_inmem_docs // world_size``, so
memory holds one shard of embeddings (one preallocated array, filled batch by batch at each row's place)
plus the rows of the next shard that arrive early, whatever the corpus size.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch

from ..dataset.inference_dataset import InferenceDataset, make_loader
from ..dataset.records import DataFormatError, check_not_empty, count_lines, find_duplicate
from ..errors import InputError, MissingInputError, OpenMatchError, UsageError
from ..utils import atomic_output, write_json_atomic
from .encode import Precision, encode_batches, model_fingerprint

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


def complete_shards(output_dir: str, rank: int, shard_size: int) -> dict[int, dict]:
    """``{shard: meta}`` of rank ``rank``'s verified shards; broken ones are deleted (they will be redone)."""
    done = {}
    for path in glob.glob(os.path.join(output_dir, f"shard.rank{rank}.shard*.json")):
        shard = int(re.search(r"shard(\d+)\.json$", path).group(1))
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


def _raise_unless_all_ok(error: BaseException | None, other_rank_failed: str) -> None:
    """Agree across ranks on success; re-raise this rank's error, or report another rank's failure."""
    if not _all_ok(error is None):
        if error is not None:
            raise error
        raise RuntimeError(other_rank_failed)


def _all_ok(ok: bool) -> bool:
    """Whether every rank succeeded (True when not distributed); lets the others stop instead of hanging."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return ok
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    flag = torch.tensor([1 if ok else 0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


@dataclass
class BuildOptions:
    """How to build an index; see :func:`build_index`."""

    corpus_path: str
    output_dir: str
    max_len: int = 128
    batch_size: int = 256
    template: Optional[str] = None
    column_names: Optional[str] = None
    num_workers: int = 0
    max_inmem_docs: int = 10_000_000
    dtype: str = "float32"
    fp16: bool = False
    bf16: bool = False
    overwrite: bool = False
    device: Optional[str] = None
    window_batches: int = 50
    extra_manifest: dict = field(default_factory=dict)
    progress: bool = True


def build_index(model, tokenizer, options: BuildOptions, model_path: str = "") -> dict:
    """Encode ``options.corpus_path`` with ``model.encode_passage`` into ``options.output_dir``; returns the manifest.

    Runs on every rank of a distributed job (each encodes its share); rank 0 checks the folder first and
    writes the manifest last. Resumes a crashed build of the same spec; see the module docstring.
    """
    import torch.distributed as dist

    from ..utils import dist_context

    rank, world_size = dist_context()
    distributed = dist.is_available() and dist.is_initialized() and world_size > 1
    if options.dtype not in ("float32", "float16"):
        raise UsageError(f"embedding dtype must be float32 or float16, got {options.dtype!r}")
    corpus_path = os.fspath(options.corpus_path)
    if not os.path.exists(corpus_path):
        raise MissingInputError(f"{corpus_path}: no such file (--corpus_path)")
    check_not_empty(corpus_path, options.column_names)
    from ..dataset.inference_dataset import resolve_template

    template = resolve_template(options.template, "passage")
    from .encode import pick_device

    precision = Precision(pick_device(options.device), options.fp16, options.bf16)
    shard_size = max(1, options.max_inmem_docs // world_size)
    spec = IndexSpec(
        model_path=os.path.abspath(model_path) if model_path else "",
        model_config=model.config.encoding_json() if hasattr(model.config, "encoding_json") else {},
        model_fingerprint=model_fingerprint(model),
        dim=int(model.embedding_dim),
        corpus=file_fingerprint(corpus_path),
        template=template.template,
        column_names=list(options.column_names.split(",")) if isinstance(options.column_names, str) else options.column_names,
        max_len=options.max_len,
        precision=precision.name,
        dtype=options.dtype,
        world_size=world_size,
        shard_size=shard_size,
    )
    out = options.output_dir
    state, error = None, None
    if rank == 0:
        try:
            state = prepare_output_dir(out, spec, options.overwrite)
        except Exception as err:  # reported on rank 0, the others stop cleanly
            error = err
    if not _all_ok(error is None):
        if error is not None:
            raise error
        raise IndexFolderError(f"rank 0 refused {out}; see its log")

    error = None
    try:
        done = complete_shards(out, rank, shard_size)
        if done:
            logger.info("rank %d: %d complete shard(s) found in %s; skipping them", rank, len(done), out)
        finished = bool(done) and any(meta["count"] < shard_size for meta in done.values())
        if not (state == "complete" or finished and _rank_complete(done, shard_size)):
            with precision.prepared(model) as runner:  # the caller's model is left as it was
                _encode_rank(runner, tokenizer, options, precision, template, rank, world_size, shard_size, done)
    except BaseException as err:
        error = err
    _raise_unless_all_ok(error, "another rank failed while encoding; see its log")

    manifest, error = None, None
    if rank == 0:
        try:
            manifest = _finalize(out, spec, options, world_size, shard_size)
        except BaseException as err:
            error = err
    _raise_unless_all_ok(error, "rank 0 failed to finalise the index; see its log")
    if rank != 0:
        manifest = load_manifest(out)
    return manifest


def _rank_complete(done: dict[int, dict], shard_size: int) -> bool:
    """Shards 0..K-1 all present, the last one short (so nothing follows it)."""
    last = max(done)
    return sorted(done) == list(range(last + 1)) and done[last]["count"] < shard_size


def _encode_rank(model, tokenizer, options, precision, template, rank, world_size, shard_size, done) -> None:
    from tqdm.auto import tqdm

    skip = (lambda j: (j // shard_size) in done) if done else None
    dataset = InferenceDataset(
        options.corpus_path,
        tokenizer,
        max_len=options.max_len,
        batch_size=options.batch_size,
        template=template,
        column_names=options.column_names,
        rank=rank,
        world_size=world_size,
        skip=skip,
        window_batches=options.window_batches,
    )
    loader = make_loader(dataset, options.num_workers, pin_memory=precision.device.type == "cuda")
    # An upper bound of this rank's records (every line might be one), counted without parsing: for the
    # progress bar and to size the last shard.
    max_rows = -(-count_lines(options.corpus_path) // world_size)
    estimate = max_rows - sum(meta["count"] for meta in done.values())
    bar = tqdm(
        total=max(estimate, 0),
        unit="passages",
        unit_scale=True,
        desc=f"encoding (rank {rank})",
        disable=not options.progress or rank != 0,
        smoothing=0.1,
    )
    writer = _ShardWriter(options, rank, shard_size, max_rows, done)
    for batch, embeddings in encode_batches(model, loader, precision, side="passage"):
        writer.add(batch["positions"].numpy(), batch["ids"], embeddings)
        bar.update(len(batch["ids"]))
    writer.finish()
    bar.close()
    logger.info("rank %d: wrote %d shard(s) to %s", rank, writer.written, options.output_dir)


class _ShardArray:
    """One shard's rows, each written straight to its place (its position minus the shard's first)."""

    def __init__(self, shard: int, first: int, rows: int, dim: int, dtype: str):
        self.shard, self.first = shard, first
        self.embeddings = np.empty((rows, dim), dtype=dtype)
        self.ids = np.empty(rows, dtype=object)
        self.filled = np.zeros(rows, dtype=bool)
        self.count = 0

    def put(self, positions: np.ndarray, ids: list, embeddings: np.ndarray) -> None:
        places = positions - self.first
        if places.min() < 0 or places.max() >= len(self.filled):
            raise InputError(
                f"shard {self.shard}: corpus position {int(positions.max())} is beyond the {len(self.filled)} rows "
                "counted for it; did the corpus file change while encoding?"
            )
        if self.filled[places].any() or len(np.unique(places)) != len(places):
            raise RuntimeError(f"shard {self.shard}: a corpus position was encoded twice")
        self.filled[places] = True
        self.embeddings[places] = embeddings  # cast to the shard's dtype here, row by row
        self.ids[places] = ids
        self.count += len(places)


class _ShardWriter:
    """Gathers one rank's embeddings into shards and writes each one, in shard order, once complete.

    Batches come length-sorted within a window of lines, so their rows are out of corpus order and a
    window can straddle a shard boundary. The shard being filled is one array of its final size and dtype
    (``shard_size`` rows, fewer for the last shard: at most ``max_rows`` minus the rows before it), and each
    batch's rows go straight to their places in it, so it is written without a copy. Rows of a later shard
    that arrive early wait in their batch slices until its turn. Memory thus holds one shard plus about a
    window of rows, not the batch list, its concatenation and its reordered copy (three shards).
    """

    def __init__(self, options, rank: int, shard_size: int, max_rows: int, done):
        self.options, self.rank, self.shard_size, self.max_rows = options, rank, shard_size, max_rows
        self.done = set(done)
        self.next = self._skip_done(0)  # the shard being filled (or the first to come)
        self.current: Optional[_ShardArray] = None
        self.early: dict[int, list[tuple[np.ndarray, list, np.ndarray]]] = {}
        self.written = 0

    def _skip_done(self, shard: int) -> int:
        while shard in self.done:
            shard += 1
        return shard

    def add(self, positions: np.ndarray, ids: list, embeddings: np.ndarray) -> None:
        """File one batch's rows (``positions``: this rank's corpus positions ``j``)."""
        shards = positions // self.shard_size
        for shard in np.unique(shards).tolist():
            rows = np.flatnonzero(shards == shard)
            part = (positions[rows], [ids[i] for i in rows], embeddings[rows])
            if shard == self.next:
                self._open(embeddings.shape[1]).put(*part)
                self._write_complete()
            elif shard > self.next:
                self.early.setdefault(shard, []).append(part)
            else:
                raise RuntimeError(f"rank {self.rank}: rows of shard {shard} arrived after it was written or skipped")

    def finish(self) -> None:
        """Write what is left: the shard being filled (the last one, short) and any shard after it."""
        while self.current is not None or self.early:
            if self.current is None:
                self.next = min(self.early)
                self._open(self.early[self.next][0][2].shape[1])
            self._write(self.current)
            self.current = None

    def _open(self, dim: int) -> _ShardArray:
        """The array of shard ``next``, created (with the rows that came early) on first use."""
        if self.current is None:
            first = self.next * self.shard_size
            rows = min(self.shard_size, self.max_rows - first)
            if rows <= 0:
                raise InputError(
                    f"rank {self.rank}: shard {self.next} starts beyond the {self.max_rows} rows the corpus's line "
                    "count allows; did the corpus file change while encoding?"
                )
            self.current = _ShardArray(self.next, first, rows, dim, self.options.dtype)
            for part in self.early.pop(self.next, []):
                self.current.put(*part)
        return self.current

    def _write_complete(self) -> None:
        while self.current is not None and self.current.count == self.shard_size:
            self._write(self.current)
            self.current = None
            self.next = self._skip_done(self.next + 1)
            if self.next in self.early:
                self._open(self.early[self.next][0][2].shape[1])

    def _write(self, array: _ShardArray) -> None:
        count = array.count
        if not array.filled[:count].all():
            raise RuntimeError(f"rank {self.rank}: shard {array.shard} misses rows below its {count} rows")
        write_shard(
            self.options.output_dir,
            self.rank,
            array.shard,
            np.arange(array.first, array.first + count),
            array.ids[:count],
            array.embeddings[:count],
            self.options.dtype,
        )
        self.written += 1


def _finalize(out: str, spec: IndexSpec, options: BuildOptions, world_size: int, shard_size: int) -> dict:
    shards = []
    for rank in range(world_size):
        metas = {}
        for path in glob.glob(os.path.join(out, f"shard.rank{rank}.shard*.json")):
            shard = int(re.search(r"shard(\d+)\.json$", path).group(1))
            metas[shard] = read_shard_meta(out, rank, shard)
        if metas and sorted(metas) != list(range(len(metas))):
            raise RuntimeError(f"{out}: rank {rank}'s shards are not contiguous ({sorted(metas)}); rerun build_index")
        for shard in sorted(metas):
            meta = metas[shard]
            if shard < len(metas) - 1 and meta["count"] != shard_size:
                raise RuntimeError(f"{out}: shard {shard} of rank {rank} holds {meta['count']} rows, not {shard_size}")
            shards.append(meta)
    total = sum(meta["count"] for meta in shards)
    if total == 0:
        raise DataFormatError(options.corpus_path, None, "no records: the corpus is empty")
    seen: set[str] = set()
    for meta in shards:
        with open(os.path.join(out, meta["ids"]), encoding="utf-8") as handle:
            for line in handle:
                rid = line.rstrip("\n")
                if rid in seen:
                    err = find_duplicate(options.corpus_path, options.column_names, rid)
                    for name in index_files(out):  # an index with a repeated id is unusable
                        os.unlink(os.path.join(out, name))
                    raise err
                seen.add(rid)
    manifest = spec.to_dict()
    manifest.update(
        {
            "total": total,
            "shards": shards,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "arguments": options.extra_manifest,
        }
    )
    write_json_atomic(os.path.join(out, MANIFEST_FILE), manifest)
    logger.info("index complete: %d passages, dim %d, %d shard(s) in %s", total, spec.dim, len(shards), out)
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



def write_index(
    output_dir: str,
    ids: list[str],
    embeddings: np.ndarray,
    shard_size: int = 10_000_000,
    dtype: str = "float32",
    model: Optional[dict] = None,
) -> dict:
    """Write precomputed embeddings (e.g. from another encoder) as an index folder that search can read.

    ``model`` may carry ``path``/``config``/``fingerprint`` for the compatibility check; the folder must
    not hold another index.
    """
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2 or len(embeddings) != len(ids):
        raise ValueError(f"need one embedding row per id: {len(ids)} ids, array of shape {embeddings.shape}")
    if len(set(ids)) != len(ids):
        raise ValueError("ids must be unique")
    if index_files(output_dir):
        raise IndexFolderError(f"{output_dir} already holds an index; choose another folder")
    model = model or {}
    spec = IndexSpec(
        model_path=model.get("path", ""),
        model_config=model.get("config", {}),
        model_fingerprint=model.get("fingerprint", ""),
        dim=int(embeddings.shape[1]),
        corpus={"path": "", "size": len(ids), "mtime_ns": 0},
        template="",
        column_names=None,
        max_len=0,
        precision="external",
        dtype=dtype,
        world_size=1,
        shard_size=shard_size,
    )
    prepare_output_dir(output_dir, spec)
    for shard, start in enumerate(range(0, len(ids), shard_size)):
        stop = start + shard_size
        write_shard(output_dir, 0, shard, np.arange(start, min(stop, len(ids))), list(ids[start:stop]), embeddings[start:stop], dtype)
    options = BuildOptions(corpus_path="", output_dir=output_dir)
    return _finalize(output_dir, spec, options, 1, shard_size)
