"""Building an embedding index folder: a corpus encoded by a model, resumably, on one or many ranks.

:func:`build_index` encodes a corpus with ``model.encode_passage``; :func:`write_index` stores embeddings
computed elsewhere. Both write the folder through :mod:`openmatch.retriever.index`, which owns its format.

Rank ``r`` encodes the corpus lines ``g`` with ``g % world_size == r`` into shards of ``shard_size =
max_inmem_docs // world_size`` rows, so memory holds one shard of embeddings (one preallocated array, filled
batch by batch at each row's place) plus the rows of the next shard that arrive early, whatever the corpus
size.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..dataset.inference_dataset import InferenceDataset, make_loader
from ..dataset.records import check_not_empty, count_lines, find_duplicate, no_records
from ..distributed import all_ok, dist_context, raise_unless_all_ok
from ..errors import InputError, MissingInputError, OpenMatchWarning, ResourceError, UsageError
from ..utils import dataclasses_to_dict
from .encode import Precision, device_from_args, encode_batches, model_fingerprint
from .index import (
    IndexFolderError,
    IndexSpec,
    file_fingerprint,
    first_repeated_id,
    index_files,
    load_manifest,
    manifest_shards,
    prepare_output_dir,
    read_id_table,
    read_shard_meta,
    remove_manifest,
    remove_shards,
    scan_shards,
    shard_numbers,
    write_manifest,
    write_shard,
)

logger = logging.getLogger(__name__)


@dataclass
class BuildOptions:
    """How to build an index; see :func:`build_index`. ``model_path`` is recorded in the manifest."""

    corpus_path: str
    output_dir: str
    model_path: str = ""
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

    @classmethod
    def from_args(cls, model_args, data_args, infer_args, index_args) -> "BuildOptions":
        """The options that ``build_index``'s flags (its four argument dataclasses) ask for; the manifest's
        ``arguments`` records the flags."""
        if not data_args.corpus_path:
            raise UsageError("--corpus_path is required: the passages to encode (TSV/JSONL, optionally .gz)")
        return cls(
            corpus_path=data_args.corpus_path,
            output_dir=infer_args.output_dir,
            model_path=model_args.model_name_or_path,
            max_len=data_args.p_max_len,
            batch_size=infer_args.per_device_eval_batch_size,
            template=data_args.doc_template,
            column_names=data_args.doc_column_names,
            num_workers=infer_args.dataloader_num_workers,
            max_inmem_docs=infer_args.max_inmem_docs,
            dtype=index_args.embedding_dtype,
            fp16=infer_args.fp16,
            bf16=infer_args.bf16,
            overwrite=infer_args.overwrite_output_dir,
            device=device_from_args(infer_args),
            extra_manifest=_argument_snapshot(model_args, data_args, infer_args, index_args),
        )


# The fields of InferenceArguments that concern an index; the rest of TrainingArguments says nothing about it.
_SNAPSHOT_INFERENCE_FIELDS = (
    "output_dir", "per_device_eval_batch_size", "fp16", "bf16", "dataloader_num_workers", "max_inmem_docs", "use_cpu"
)


def _argument_snapshot(*args) -> dict:
    snap = dataclasses_to_dict(*args)
    for name in list(snap):
        if name == "InferenceArguments":
            snap[name] = {key: snap[name].get(key) for key in _SNAPSHOT_INFERENCE_FIELDS}
    return snap


def build_index(
    model,
    tokenizer,
    corpus_path: Optional[str | os.PathLike] = None,
    output_dir: Optional[str | os.PathLike] = None,
    *,
    options: Optional[BuildOptions] = None,
    **fields,
) -> dict:
    """Encode a corpus with ``model.encode_passage`` into an index folder; returns its manifest.

    Either ``corpus_path`` and ``output_dir`` with :class:`BuildOptions` fields as keywords
    (``build_index(model, tokenizer, "corpus.tsv", "index/", max_len=128)``), or ``options=``, a whole
    :class:`BuildOptions` (as :meth:`BuildOptions.from_args` makes from the command's flags).

    Runs on every rank of a distributed job (each encodes its share); rank 0 checks the folder first and
    writes the manifest last. Resumes a crashed build of the same spec, and repairs a finished one: a shard
    that is missing or fails its checks (size, rows, sha256) is encoded again, and only that shard; see the
    module docstring.
    """
    options = _options(options, corpus_path, output_dir, fields)
    rank, world_size = dist_context()
    if options.dtype not in ("float32", "float16"):
        raise UsageError(f"embedding dtype must be float32 or float16, got {options.dtype!r}")
    corpus_path = os.fspath(options.corpus_path)
    if not os.path.exists(corpus_path):
        raise MissingInputError(f"{corpus_path}: no such file (--corpus_path)")
    check_not_empty(corpus_path, options.column_names)
    from ..dataset.inference_dataset import check_first_record, resolve_template

    template = resolve_template(options.template, "passage")
    check_first_record(corpus_path, options.column_names, template)  # a template typo, before the folder is touched
    from .encode import pick_device

    precision = Precision(pick_device(options.device), options.fp16, options.bf16)
    shard_size = max(1, options.max_inmem_docs // world_size)
    spec = IndexSpec(
        model_path=os.path.abspath(options.model_path) if options.model_path else "",
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
    error = None
    try:
        # Counted once, without parsing: an upper bound of the records (every line might be one), for the
        # memory check, the progress bar and the size of each rank's last shard.
        corpus_lines = count_lines(corpus_path)
        check_shard_fits_memory(corpus_path, spec.dim, options.dtype, shard_size, world_size, lines=corpus_lines)
    except ResourceError as err:
        error = err
    raise_unless_all_ok(error, "another rank has not the memory for one shard; see its log")
    out = options.output_dir
    error = None
    if rank == 0:
        try:
            prepare_output_dir(out, spec, options.overwrite)
        except Exception as err:  # reported on rank 0, the others stop cleanly
            error = err
    if not all_ok(error is None):
        if error is not None:
            raise error
        raise IndexFolderError(f"rank 0 refused {out}; see its log")

    expected, done, damaged, error = None, {}, {}, None
    try:
        expected = manifest_shards(out, rank)  # a finished index: the shards this rank must have
        done, damaged = scan_shards(out, rank, shard_size, expected or ())
    except Exception as err:
        error = err
    raise_unless_all_ok(error, "another rank failed while checking its shards; see its log")
    if not all_ok(not damaged):
        # Some rank deletes a shard to encode it again: the manifest goes first, so that it never lists a
        # file that is gone (and a crash meanwhile leaves an unfinished build, which a rerun completes).
        error = None
        if rank == 0:
            try:
                remove_manifest(out)
            except Exception as err:
                error = err
        raise_unless_all_ok(error, "rank 0 could not remove the manifest; see its log")
    for shard, problem in sorted(damaged.items()):
        warnings.warn(
            f"shard {shard} of rank {rank} is damaged ({problem}); encoding it again", OpenMatchWarning, stacklevel=2
        )

    error = None
    try:
        remove_shards(out, rank, damaged)
        if done:
            logger.info("rank %d: %d complete shard(s) found in %s; skipping them", rank, len(done), out)
        if not _rank_complete(done, damaged, expected, shard_size):
            with precision.prepared(model) as runner:  # the caller's model is left as it was
                _encode_rank(runner, tokenizer, options, precision, template, rank, world_size, shard_size, done,
                             corpus_lines)
    except BaseException as err:
        error = err
    raise_unless_all_ok(error, "another rank failed while encoding; see its log")

    manifest, error = None, None
    if rank == 0:
        try:
            manifest = _finalize(out, spec, options, world_size, shard_size)
        except BaseException as err:
            error = err
    raise_unless_all_ok(error, "rank 0 failed to finalise the index; see its log")
    if rank != 0:
        manifest = load_manifest(out)
    return manifest


# Memory per row besides its embedding: the id's string object and its slot, and the filled flag.
_ROW_OVERHEAD_BYTES = 72


def available_memory() -> int:
    """Bytes of memory this machine can give without swapping (psutil's ``available``)."""
    import psutil

    return int(psutil.virtual_memory().available)


def check_shard_fits_memory(corpus_path: str, dim: int, dtype: str, shard_size: int, world_size: int,
                            lines: Optional[int] = None) -> None:
    """Refuse, before anything is encoded, a shard size whose shards cannot be held in this machine's memory.

    Each process holds the shard it is filling (``shard_size`` rows, fewer when its share of the corpus is
    smaller), and the processes of this machine (``LOCAL_WORLD_SIZE``) hold one each. OpenMatch's default of
    10,000,000 passages per shard is MS MARCO's 8.8M passages × 768 float32 in one 27 GB shard: a run that
    would be killed for memory hours into encoding gets this one line instead, with a size that fits.
    ``lines``: the corpus's line count, when the caller has it (else it is counted here).
    """
    rows = min(shard_size, -(-(count_lines(corpus_path) if lines is None else lines) // world_size))
    row_bytes = dim * np.dtype(dtype).itemsize + _ROW_OVERHEAD_BYTES
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    needed, available = rows * row_bytes * local, available_memory()
    if needed <= available:
        return
    fitting = max(1, available // 2 // (local * row_bytes)) * world_size  # half: the model, batches, the page cache
    if fitting >= 100_000:
        fitting -= fitting % 100_000
    processes = f" ({local} processes on this machine, one shard each)" if local > 1 else ""
    raise ResourceError(
        f"{corpus_path}: shards of {rows:,} passages × {dim} {dtype} need about {needed / 1e9:.1f} GB of memory"
        f"{processes}, more than the {available / 1e9:.1f} GB available; pass --max_inmem_docs {fitting} or less "
        "(passages per shard, over all processes)"
    )


def _options(options, corpus_path, output_dir, fields) -> BuildOptions:
    """The one :class:`BuildOptions` of a :func:`build_index` call, given whole or as the corpus, folder and fields."""
    if options is None:
        if corpus_path is None or output_dir is None:
            raise TypeError("build_index needs corpus_path and output_dir, or options=BuildOptions(...)")
        return BuildOptions(corpus_path=os.fspath(corpus_path), output_dir=os.fspath(output_dir), **fields)
    if corpus_path is not None or output_dir is not None or fields:
        raise TypeError("build_index takes options=BuildOptions(...) or the corpus, folder and fields, not both")
    return options


def _rank_complete(done: dict[int, dict], damaged: dict, expected: Optional[list[int]], shard_size: int) -> bool:
    """Whether this rank has nothing to encode: every shard the manifest lists is intact, or (no manifest)
    shards 0..K-1 are, the last one short (so nothing follows it)."""
    if damaged:
        return False
    if expected is not None:
        return set(expected) <= set(done)
    if not done:
        return False
    last = max(done)
    return sorted(done) == list(range(last + 1)) and done[last]["count"] < shard_size


def _encode_rank(model, tokenizer, options, precision, template, rank, world_size, shard_size, done,
                 corpus_lines: int) -> None:
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
    max_rows = -(-corpus_lines // world_size)  # an upper bound of this rank's records
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
    try:
        for batch, embeddings in encode_batches(model, loader, precision, side="passage"):
            writer.add(batch["positions"].numpy(), batch["ids"], embeddings)
            bar.update(len(batch["ids"]))
        writer.finish()
    finally:
        bar.close()  # ends the bar's line, so that an error is printed on a line of its own
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
        metas = {shard: read_shard_meta(out, rank, shard) for shard in shard_numbers(out, rank)}
        if metas and sorted(metas) != list(range(len(metas))):
            raise RuntimeError(f"{out}: rank {rank}'s shards are not contiguous ({sorted(metas)}); rerun build_index")
        for shard in sorted(metas):
            meta = metas[shard]
            if shard < len(metas) - 1 and meta["count"] != shard_size:
                raise RuntimeError(f"{out}: shard {shard} of rank {rank} holds {meta['count']} rows, not {shard_size}")
            shards.append(meta)
    total = sum(meta["count"] for meta in shards)
    if total == 0:
        raise no_records(options.corpus_path)
    # Repeats are found in a sorted table of the ids (bytes for ASCII ids: 7 bytes a passage for MS MARCO), not
    # a set of 8.8M Python strings.
    repeated = first_repeated_id(read_id_table(out, shards))
    if repeated is not None:
        err = find_duplicate(options.corpus_path, options.column_names, repeated)
        for name in index_files(out):  # an index with a repeated id is unusable
            os.unlink(os.path.join(out, name))
        raise err
    manifest = write_manifest(out, spec, shards, options.extra_manifest)
    logger.info("index complete: %d passages, dim %d, %d shard(s) in %s", total, spec.dim, len(shards), out)
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
