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
  ``shard.rank{r}.shard{k}.json`` (count, first position, sha256 and size of both files). Each file is
  written under a temporary name and renamed; the shard json comes last, so a shard is complete exactly
  when its json exists and the checksums match. A shard that fails its check on a rerun is encoded again.
- ``manifest.json``: ``build.json``'s content plus the shard list, the total and an argument snapshot;
  written by rank 0 once every rank has finished, and removed before a rerun deletes a damaged shard, so it
  never lists a file that is gone. Search reads only indexes that have one.
- ``verified.json``: which files search found intact (:func:`verify_index`), keyed to their size, mtime,
  ctime and inode, so that the next search does not hash them again; kept in the user's cache folder when
  the index folder is read-only.
- ``ann.<name>.faiss`` and ``ann.<name>.json``: a trained approximate (faiss) index and what it was built
  from, written by search (:mod:`openmatch.retriever.ann`); part of the index (``--overwrite_output_dir``
  removes them with the rest).

Rank ``r`` owns the corpus lines ``g`` with ``g % world_size == r``; its ``j``-th line (``j = g //
world_size``) goes to shard ``j // shard_size`` where ``shard_size = max_inmem_docs // world_size``.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Optional

import numpy as np

from ..errors import InputError, MissingInputError, OpenMatchError, ResourceError
from ..utils import atomic_output, write_json_atomic

logger = logging.getLogger(__name__)

FORMAT = "openmatch-index-v1"
BUILD_FILE = "build.json"
MANIFEST_FILE = "manifest.json"
VERIFIED_FILE = "verified.json"
VERIFIED_FORMAT = "openmatch-verified-v1"
# The end of every message about a damaged index: the command that repairs it.
REPAIR_HINT = "rerun build_index with the same arguments to repair it"
_OUR_FILES = re.compile(r"^(embeddings|ids|shard)\.rank\d+\.shard\d+\.(npy|txt|json)$")
_OUR_TEMP = re.compile(
    r"^\.((embeddings|ids|shard)\.rank\d+\.shard\d+\.(npy|txt|json)|build\.json|manifest\.json|verified\.json"
    r"|ann\.[^/]+\.(faiss|json))\..*\.tmp$"
)
# Saved approximate indexes (openmatch.retriever.ann): derived from the shards, so they go with them.
_ANN_FILES = re.compile(r"^ann\.[^/]+\.(faiss|json)$")
_OPENMATCH_PICKLES = re.compile(r"^embeddings\.(corpus|query)\.rank\.\d+")


class IndexFolderError(OpenMatchError, FileExistsError):
    """The output folder holds something this build must not touch or merge with."""


def shard_names(rank: int, shard: int) -> dict[str, str]:
    stem = f"rank{rank}.shard{shard}"
    return {"embeddings": f"embeddings.{stem}.npy", "ids": f"ids.{stem}.txt", "meta": f"shard.{stem}.json"}


def sha256_file(path: str) -> str:
    """The hex sha256 of a file's bytes."""
    return _digest(path)[0]


def _digest(path: str, count_lines: bool = False, block: int = 1 << 16) -> tuple[str, int]:
    """``(hex sha256, number of newline bytes or 0)`` of a file, in one pass of small reads (beside a shard
    held in memory, the hash should cost next to nothing). Counting costs as much as hashing, so it is
    done for id files only, whose rows it gives."""
    digest = hashlib.sha256()
    newlines = 0
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(block), b""):
            digest.update(chunk)
            if count_lines:
                newlines += chunk.count(b"\n")
    return digest.hexdigest(), newlines


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
            name in (BUILD_FILE, MANIFEST_FILE, VERIFIED_FILE)
            or _OUR_FILES.match(name)
            or _ANN_FILES.match(name)
            or _OUR_TEMP.match(name)
            or _OPENMATCH_PICKLES.match(name)
        ):
            names.append(name)
    return sorted(names)


def prepare_output_dir(output_dir: str, spec: IndexSpec, overwrite: bool = False) -> str:
    """Check (rank 0) that ``output_dir`` is empty of index files, or resumable, or may be replaced.

    Returns ``"fresh"``, ``"resume"`` or ``"complete"``. Only index files are ever deleted, never the rest
    of the folder (it may be a checkpoint folder). A folder whose earlier build finished no shard holds
    nothing to mix with, so it is started over whatever that build described (a corpus fixed after a
    failed build, say).
    """
    os.makedirs(output_dir, exist_ok=True)
    existing = index_files(output_dir)
    if existing and overwrite:
        logger.info("--overwrite_output_dir: removing %d index file(s) from %s", len(existing), output_dir)
        _remove(output_dir, existing)
        existing = []
    _remove(output_dir, [name for name in existing if _OUR_TEMP.match(name)])  # left by a crash; never complete
    existing = index_files(output_dir)
    if not existing:
        _write_build_file(output_dir, spec)
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
    try:
        with open(build_path, encoding="utf-8") as handle:
            old = json.load(handle)
        diffs = _differences(old, spec.to_dict()) if isinstance(old, dict) else [f"{BUILD_FILE} is not a JSON object"]
    except ValueError as err:
        diffs = [f"{BUILD_FILE} is unreadable ({err})"]
    if diffs:
        finished = [name for name in existing if name == MANIFEST_FILE or name.startswith("shard.")]
        if not finished:
            logger.info(
                "%s: the earlier build finished no shard; starting over (%s)", output_dir, "; ".join(diffs[:4])
            )
            _remove(output_dir, existing)
            _write_build_file(output_dir, spec)
            return "fresh"
        raise IndexFolderError(
            f"{output_dir} holds an index of another model, corpus or configuration ({'; '.join(diffs[:4])}"
            f"{'; ...' if len(diffs) > 4 else ''}); refusing to mix them. Use --overwrite_output_dir to replace "
            "it or choose another --output_dir"
        )
    return "complete" if os.path.exists(os.path.join(output_dir, MANIFEST_FILE)) else "resume"


def _remove(output_dir: str, names: Iterable[str]) -> None:
    for name in names:
        try:
            os.unlink(os.path.join(output_dir, name))
        except FileNotFoundError:
            pass


def _write_build_file(output_dir: str, spec: IndexSpec) -> None:
    path = os.path.join(output_dir, BUILD_FILE)
    with _disk_full_is_user_error(path):
        write_json_atomic(path, spec.to_dict())


@contextlib.contextmanager
def _disk_full_is_user_error(path: str, what: str = "") -> Iterator[None]:
    """Turn a full disk (or quota) while writing ``path`` into one :class:`ResourceError` line naming it.

    The operating system reports ``ENOSPC`` from ``write``, so its error names no file; this message does.
    """
    try:
        yield
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ResourceError(
                f"{path}: no space left on device{what}; free some space and rerun build_index (finished shards "
                "are kept)"
            ) from err
        raise


def read_shard_meta(output_dir: str, rank: int, shard: int) -> Optional[dict]:
    path = os.path.join(output_dir, shard_names(rank, shard)["meta"])
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def shard_numbers(output_dir: str, rank: int) -> list[int]:
    """The numbers of the shards of rank ``rank`` whose json is in ``output_dir``, ascending."""
    pattern = os.path.join(output_dir, f"shard.rank{rank}.shard*.json")
    return sorted(int(re.search(r"shard(\d+)\.json$", path).group(1)) for path in glob.glob(pattern))


def _stat_key(stat: os.stat_result) -> list[int]:
    # Any write changes mtime and ctime, and ctime cannot be set back; a replaced file has another inode.
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]


def _npy_problem(path: str, size: int, rows: int, dim: int, dtype: str) -> Optional[str]:
    """What is wrong with a ``.npy`` file's header or length for ``rows × dim`` of ``dtype``, if anything."""
    try:  # maps the file (reads its header only); a file shorter than its header says fails here
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, EOFError, OSError) as err:
        return f"{path}: not a readable .npy file ({err})"
    shape, found, data_start = array.shape, array.dtype, array.offset
    del array
    if shape != (rows, dim) or found != np.dtype(dtype):
        return f"{path}: holds a {found} array of shape {shape}, the index records {dtype} ({rows}, {dim})"
    expected = data_start + rows * dim * np.dtype(dtype).itemsize
    if size != expected:
        return f"{path}: {size} bytes where a ({rows}, {dim}) {dtype} array takes {expected} (truncated or extended)"
    return None


def _file_problem(folder: str, meta: dict, key: str, stamps: dict, fresh: dict) -> Optional[str]:
    """What is wrong with the ``key`` file (``embeddings`` or ``ids``) of a shard, or None when it is intact.

    A file with a stamp (``stamps[name]``) of the same size, mtime, ctime and inode, for the checksum and
    row count ``meta`` records, is not read again; one checked here is added to ``fresh``.
    """
    name = meta[key]
    path = os.path.join(folder, name)
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return f"{path}: missing"
    recorded = meta.get(f"{key}_bytes")  # indexes built before sizes were recorded have checksums only
    if recorded is not None and stat.st_size != recorded:
        return f"{path}: {stat.st_size} bytes, {recorded} when it was written"
    stamp = {"stat": _stat_key(stat), "sha256": meta[f"{key}_sha256"], "rows": meta["count"]}
    if stamps.get(name) == stamp:
        return None
    if key == "embeddings":
        problem = _npy_problem(path, stat.st_size, meta["count"], int(meta["dim"]), meta["dtype"])
        if problem:
            return problem
    digest, newlines = _digest(path, count_lines=key == "ids")
    if key == "ids" and newlines != meta["count"]:
        return f"{path}: holds {newlines} ids, the index records {meta['count']}"
    if digest != meta[f"{key}_sha256"]:
        return f"{path}: its content does not match the sha256 recorded when it was written (changed or damaged)"
    fresh[name] = stamp
    return None


def shard_problem(
    output_dir: str, meta: dict, stamps: Optional[dict] = None, fresh: Optional[dict] = None, record: str = "its record"
) -> Optional[str]:
    """What is wrong with one shard's two files (missing, wrong size or rows, checksum), or None.

    ``stamps`` and ``fresh`` as for :func:`verify_index`; ``record`` names where ``meta`` was read (the
    manifest or the shard's json), for a record that lacks a field.
    """
    stamps = {} if stamps is None else stamps
    fresh = {} if fresh is None else fresh
    try:
        for key in ("embeddings", "ids"):
            problem = _file_problem(output_dir, meta, key, stamps, fresh)
            if problem:
                return problem
    except (KeyError, TypeError, ValueError) as err:
        return f"{record}: a shard record is malformed ({type(err).__name__}: {err})"
    return None


def verify_shard(output_dir: str, meta: dict) -> bool:
    """True when both files of a shard exist and match the sizes, rows and checksums in its json."""
    return shard_problem(output_dir, meta) is None


def manifest_shards(output_dir: str, rank: int) -> Optional[list[int]]:
    """The shard numbers the manifest lists for ``rank``, or None when there is no readable manifest."""
    try:
        with open(os.path.join(output_dir, MANIFEST_FILE), encoding="utf-8") as handle:
            manifest = json.load(handle)
        return [int(meta["shard"]) for meta in manifest["shards"] if int(meta["rank"]) == rank]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def scan_shards(output_dir: str, rank: int, shard_size: int, expected: Iterable[int] = ()) -> tuple[dict[int, dict], dict[int, str]]:
    """``({shard: meta}, {shard: problem})``: rank ``rank``'s intact shards, and its damaged ones with what is
    wrong with each. A shard in ``expected`` (the manifest's) without its json is damaged too (missing).

    Deletes nothing; :func:`remove_shards` does, once no manifest lists them (see ``builder.build_index``).
    """
    stamps = read_stamps(output_dir)
    done: dict[int, dict] = {}
    damaged: dict[int, str] = {}
    for shard in sorted(set(shard_numbers(output_dir, rank)) | set(expected)):
        meta_path = os.path.join(output_dir, shard_names(rank, shard)["meta"])
        try:
            meta = read_shard_meta(output_dir, rank, shard)
        except (OSError, ValueError) as err:
            damaged[shard] = f"{meta_path}: unreadable ({err})"
            continue
        if meta is None:
            damaged[shard] = f"{meta_path}: missing"
        elif not isinstance(meta, dict) or not isinstance(meta.get("count"), int) or meta["count"] > shard_size:
            damaged[shard] = f"{meta_path}: not a shard record of at most {shard_size} rows"
        else:
            problem = shard_problem(output_dir, meta, stamps, record=meta_path)
            if problem:
                damaged[shard] = problem
            else:
                done[shard] = meta
    return done, damaged


def remove_shards(output_dir: str, rank: int, shards: Iterable[int]) -> None:
    """Delete the files of rank ``rank``'s ``shards``, the json first (so none is left looking complete)."""
    for shard in shards:
        names = shard_names(rank, shard)
        _remove(output_dir, [names["meta"], names["embeddings"], names["ids"]])


def remove_manifest(output_dir: str) -> None:
    """Make the folder an unfinished build: search refuses it until a build writes the manifest again."""
    _remove(output_dir, [MANIFEST_FILE])


def write_shard(output_dir: str, rank: int, shard: int, positions, ids, embeddings: np.ndarray, dtype: str) -> dict:
    """Write one complete shard (rows in corpus order); its json is renamed into place last.

    Rows given out of order are sorted by ``positions`` first (a copy); rows already in order are written
    as they are, so a shard in ``dtype`` is never copied. When a write fails (a full disk: one
    :class:`ResourceError` line naming the file), the shard's files written so far are removed.
    """
    positions = np.asarray(positions)
    if not (np.diff(positions) > 0).all():
        order = np.argsort(positions, kind="stable")
        positions = positions[order]
        ids = [ids[i] for i in order]
        embeddings = embeddings[order]
    embeddings = embeddings.astype(dtype, copy=False)
    names = shard_names(rank, shard)
    paths = {key: os.path.join(output_dir, name) for key, name in names.items()}
    where = f" while writing shard {shard} of rank {rank}"
    try:
        with _disk_full_is_user_error(paths["embeddings"], where):
            with atomic_output(paths["embeddings"], "wb") as handle:
                np.save(handle, np.ascontiguousarray(embeddings), allow_pickle=False)
        with _disk_full_is_user_error(paths["ids"], where):
            with atomic_output(paths["ids"]) as handle:
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
            "embeddings_sha256": sha256_file(paths["embeddings"]),
            "ids_sha256": sha256_file(paths["ids"]),
            "embeddings_bytes": os.path.getsize(paths["embeddings"]),
            "ids_bytes": os.path.getsize(paths["ids"]),
        }
        with _disk_full_is_user_error(paths["meta"], where):
            write_json_atomic(paths["meta"], meta)
    except BaseException:
        with contextlib.suppress(OSError):  # the write's own error is the one to report
            remove_shards(output_dir, rank, [shard])
        raise
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
    path = os.path.join(output_dir, MANIFEST_FILE)
    with _disk_full_is_user_error(path):
        write_json_atomic(path, manifest)
    return manifest


def load_manifest(index_dir: str) -> dict:
    """The manifest of a complete index, or a clear error when the folder holds none."""
    path = os.path.join(index_dir, MANIFEST_FILE)
    if not os.path.exists(path):
        hint = " (a build was started there but did not finish; rerun build_index)" if os.path.exists(
            os.path.join(index_dir, BUILD_FILE)
        ) else ""
        raise MissingInputError(f"{path}: no index manifest{hint}; build the index with openmatch.driver.build_index first")
    try:
        with open(path, encoding="utf-8") as handle:
            manifest = json.load(handle)
    except ValueError as err:
        raise IndexFolderError(f"{path}: unreadable ({err}); {REPAIR_HINT}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise IndexFolderError(f"{path}: unknown index format {found!r} (expected {FORMAT})")
    return manifest


def _stamp_paths(index_dir: str) -> list[str]:
    """Where the stamp of ``index_dir`` may be: in the folder, else (read-only folder) in the user's cache."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    key = hashlib.sha256(os.path.realpath(index_dir).encode("utf-8")).hexdigest()[:32]
    return [os.path.join(index_dir, VERIFIED_FILE), os.path.join(cache, "openmatch", "verified", f"{key}.json")]


def read_stamps(index_dir: str) -> dict:
    """``{file name: stamp}`` of the files of ``index_dir`` found intact before; an unreadable stamp is none.

    A stamp vouches for a file only while its size, mtime, ctime and inode are the ones recorded and it
    records the checksum and row count the manifest (or shard json) expects, so a stale one is harmless.
    """
    stamps: dict = {}
    for path in reversed(_stamp_paths(index_dir)):  # the folder's own last: it wins
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("format") == VERIFIED_FORMAT and isinstance(data.get("files"), dict):
            stamps.update(data["files"])
    return stamps


def _write_stamps(index_dir: str, stamps: dict) -> None:
    data = {"format": VERIFIED_FORMAT, "index": os.path.realpath(index_dir), "files": stamps}
    for path in _stamp_paths(index_dir):
        try:
            write_json_atomic(path, data)
            return
        except OSError:
            continue
    logger.info("%s: could not record which files were verified; the next search checks them again", index_dir)


def verify_index(index_dir: str, manifest: dict) -> None:
    """Refuse an index whose shard files do not match the manifest: each embedding and id file must exist
    with the recorded size, rows and sha256, and the counts must add up to the total.

    Files checked once are stamped (:func:`read_stamps`), so a repeated search reads only their metadata.
    The error is one line naming the damaged file and how to repair it.
    """
    shards = manifest.get("shards")
    path = os.path.join(index_dir, MANIFEST_FILE)
    try:
        counted = sum(int(meta["count"]) for meta in shards)
    except (KeyError, TypeError, ValueError):
        raise IndexFolderError(f"{path}: its shard list is malformed; {REPAIR_HINT}") from None
    if counted != manifest.get("total"):
        raise IndexFolderError(f"{path}: the shards hold {counted} rows, the total says {manifest.get('total')}; {REPAIR_HINT}")
    stamps = read_stamps(index_dir)
    fresh: dict = {}
    started = time.perf_counter()
    kept = {}
    for meta in shards:
        problem = shard_problem(index_dir, meta, stamps, fresh, record=path)
        if problem:
            raise IndexFolderError(f"{problem}; {REPAIR_HINT}")
        for key in ("embeddings", "ids"):
            kept[meta[key]] = fresh.get(meta[key], stamps.get(meta[key]))
    if fresh:
        size = sum(stamp["stat"][0] for stamp in fresh.values())
        logger.info(
            "verified %d file(s) of %s (%.2f GB) against their checksums in %.1f s",
            len(fresh), index_dir, size / 1e9, time.perf_counter() - started,
        )
        _write_stamps(index_dir, kept)


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
    settings = _differences(built.get("config", config), config)
    if settings or not fingerprint_matches(model, built["fingerprint"]):
        # The same weights with other encoding settings (--pooling, --normalize, ...) is the usual mistake:
        # name them (index -> query encoder), since the paths may well be the same.
        what = f"its encoding settings differ ({'; '.join(settings)})" if settings else "its weights differ"
        raise InputError(
            f"the query encoder is not the model that built the index in {index_dir} (built with "
            f"{built['path'] or 'another model'}): {what}; use the index's settings, rebuild the index or pass "
            "--allow_model_mismatch"
        )


def read_id_table(folder: str, shards: list[dict]) -> np.ndarray:
    """The ids of ``shards`` (shard records, in order) as one numpy string array, without a Python object per id.

    ASCII ids are kept as bytes (one byte a character), others as unicode; each shard's id file is read whole,
    one at a time, and its line count checked against its record.
    """
    parts = []
    for shard in shards:
        path = os.path.join(folder, shard["ids"])
        with open(path, "rb") as handle:
            data = handle.read()
        lines = data.split(b"\n") if data.isascii() else data.decode("utf-8").split("\n")
        if lines and not lines[-1]:
            lines.pop()
        if len(lines) != shard["count"]:
            raise IndexFolderError(f"{path}: holds {len(lines)} ids, the manifest says {shard['count']}")
        parts.append(np.array(lines) if lines else np.empty(0, dtype="S1"))
        del data, lines
    return np.concatenate(parts) if parts else np.empty(0, dtype="S1")


def first_repeated_id(table: np.ndarray) -> Optional[str]:
    """An id that occurs twice in an id table (:func:`read_id_table`), or None: found by sorting the table."""
    if len(table) < 2:
        return None
    ordered = np.sort(table)
    repeats = np.flatnonzero(ordered[1:] == ordered[:-1])
    if not len(repeats):
        return None
    repeated = ordered[repeats[0]]
    return repeated.decode() if isinstance(repeated, bytes) else str(repeated)


class EmbeddingIndex:
    """Read access to a complete index folder (the layout in this module's docstring)."""

    def __init__(self, index_dir: str | os.PathLike):
        self.index_dir = os.fspath(index_dir)
        self.manifest = load_manifest(self.index_dir)
        verify_index(self.index_dir, self.manifest)  # searched data is verified data
        self.dim = int(self.manifest["model"]["dim"])
        self.total = int(self.manifest["total"])
        self.shards = self.manifest["shards"]
        self.offsets = np.cumsum([0] + [s["count"] for s in self.shards])
        self._id_table: Optional[np.ndarray] = None

    def embeddings(self, shard: dict) -> np.ndarray:
        path = os.path.join(self.index_dir, shard["embeddings"])
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        if array.shape != (shard["count"], self.dim):
            raise IndexFolderError(f"{path}: shape {array.shape} does not match the manifest ({shard['count']}, {self.dim})")
        return array

    def iter_blocks(self, block_rows: int, first: int = 0, last: Optional[int] = None) -> Iterator[tuple[int, np.ndarray]]:
        """``(global_offset, float32 block)`` over rows ``[first, last)`` (default: the whole corpus), in blocks
        ``[first + i·block_rows, first + (i+1)·block_rows)``.

        Blocks run across shard boundaries, so which rows share a block does not depend on the sharding; only
        the shards holding rows of the range are opened. Rows are read into the block with ``readinto``, not
        through a memory map: mapped pages stay in the process's resident set until the kernel reclaims them,
        so searching an index larger than memory would look (and be accounted) as large as the page cache;
        read this way the process holds one block whatever the index's size. The block is reused: a caller
        that keeps it past the next iteration copies it.
        """
        last = self.total if last is None else min(last, self.total)
        block: Optional[np.ndarray] = None
        reader: Optional[_ShardReader] = None
        try:
            for start in range(first, last, block_rows):
                stop = min(start + block_rows, last)
                if block is None or len(block) != stop - start:
                    block = np.empty((stop - start, self.dim), dtype=np.float32)
                for number, (shard, offset) in enumerate(zip(self.shards, self.offsets)):
                    lo, hi = max(start, int(offset)), min(stop, int(offset) + shard["count"])
                    if lo >= hi:
                        continue
                    if reader is None or reader.number != number:
                        if reader is not None:
                            reader.close()  # earlier shards are done with
                        reader = _ShardReader(self, number)
                    reader.read_rows(lo - int(offset), hi - int(offset), block[lo - start : hi - start])
                yield start, block
        finally:
            if reader is not None:
                reader.close()

    def id_table(self) -> np.ndarray:
        """Every row's id as one numpy string array (row order), read once and kept.

        ASCII ids (MS MARCO's) are stored as bytes, one byte a character (62 MB for 8.8M ids of up to 7
        digits), others as unicode; ``id_table()[rows].astype(str)`` gives them as Python strings. For many
        lookups in any order (:class:`~openmatch.retriever.search.SearchResults`).
        """
        if self._id_table is None:
            self._id_table = read_id_table(self.index_dir, self.shards)
        return self._id_table


class _ShardReader:
    """Reads rows of one shard's ``.npy`` into a float32 buffer at their byte offset (no memory map)."""

    _CHUNK_ROWS = 1 << 16  # float16 rows are converted through a buffer of this many rows

    def __init__(self, index: EmbeddingIndex, number: int):
        self.number = number
        shard = index.shards[number]
        self.path = os.path.join(index.index_dir, shard["embeddings"])
        self.dim = index.dim
        self.handle = open(self.path, "rb")
        try:
            version = np.lib.format.read_magic(self.handle)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(self.handle)
        except ValueError as error:
            self.handle.close()
            raise IndexFolderError(f"{self.path}: not a .npy file ({error}); {REPAIR_HINT}") from None
        if shape != (shard["count"], self.dim) or fortran or dtype not in (np.float32, np.float16):
            self.handle.close()
            raise IndexFolderError(
                f"{self.path}: shape {shape} {dtype} does not match the manifest ({shard['count']}, {self.dim}); "
                f"{REPAIR_HINT}"
            )
        self.dtype = np.dtype(dtype)
        self.data_offset = self.handle.tell()

    def read_rows(self, lo: int, hi: int, out: np.ndarray) -> None:
        """Rows ``[lo, hi)`` of the shard into ``out`` (float32, C-contiguous, ``hi - lo`` rows)."""
        row_bytes = self.dim * self.dtype.itemsize
        if self.dtype == np.float32:
            self._read_exactly(lo * row_bytes, memoryview(out).cast("B"))
            return
        buffer = np.empty((min(self._CHUNK_ROWS, hi - lo), self.dim), dtype=self.dtype)
        for first in range(lo, hi, self._CHUNK_ROWS):
            n = min(self._CHUNK_ROWS, hi - first)
            self._read_exactly(first * row_bytes, memoryview(buffer[:n]).cast("B"))
            out[first - lo : first - lo + n] = buffer[:n]

    def _read_exactly(self, position: int, view: memoryview) -> None:
        self.handle.seek(self.data_offset + position)
        done = 0
        while done < len(view):
            n = self.handle.readinto(view[done:])
            if not n:
                raise IndexFolderError(f"{self.path}: ends before the manifest's {self.dim}-wide rows; {REPAIR_HINT}")
            done += n

    def close(self) -> None:
        self.handle.close()
