"""Search an embedding index folder with faiss: exact by default, block by block with an exact top-k merge.

Exact search (``faiss_index="Flat"``) runs ``faiss.knn`` (inner product) over blocks of rows read at their
offset (:meth:`EmbeddingIndex.iter_blocks`, no memory map) and merges each block's top-k into the running
top-k, so memory holds one block of passages plus ``n_queries × k`` results, whatever the index's size. The result does not depend on the block size or the sharding:

- **Scores**: on its BLAS path faiss multiplies tiles of 1024 corpus rows (``distance_compute_blas_database_bs``)
  and the last bit of a score depends on the tile. Blocks start at multiples of that tile in the whole
  corpus and run across shard boundaries, so every row is scored in the tile one ``IndexFlatIP`` over the
  corpus would use. Fewer queries than faiss threads are padded with zero rows: that keeps faiss off its
  database-parallel path, which scores with another kernel depending on the block's length.
- **Order**: score descending, then corpus row descending, which is how one ``IndexFlatIP`` lists equal
  scores. As one total order it also decides which of equal scores straddling the k-th place are kept
  (the latest rows), and the top ``k`` is a prefix of the top ``k + 1``. One ``IndexFlatIP`` keeps the
  latest rows there as well for a few duplicates, but which members of a large cut group it keeps depends
  on ``k`` and on its code path (a heap below k = 100, a reservoir above).
- faiss lists a block's best scores exactly, but which members of an equal-score group reach its last
  place is its own choice. Each block is searched ``_TIE_MARGIN`` deeper than ``k``; where the group at the
  k-th place still reaches the end of that list, its latest members are found by rescoring the block's
  tiles from the end, with the same query tiles so with the same scores (checked). With ``--use_gpu`` this
  step is skipped and GPU faiss's choice stands for such groups.

Any other factory string (``IVF4096,Flat``, ``HNSW32``, ``IVF256,PQ16`` …) is an approximate index: trained
on a deterministic sample of the corpus (an IVF's list count is lowered, with a warning, when the corpus is
too small to train it) and filled block by block the first time, saved in the index folder and reused by
later searches while it matches the folder (:mod:`openmatch.retriever.ann`), then searched in query batches.
``check_recall`` measures its recall@k against exact search on a sample of the queries (:func:`measure_recall`).

**Across processes** (``distributed``: every rank of a torch.distributed group calls the search): the rows are
split into one contiguous range per rank, cut at multiples of faiss's 1024-row tile (:func:`rank_rows`), so
every row is scored in the same tile as in one process. Every rank searches rank 0's query embeddings
(broadcast) over its range (exact, or its own saved approximate index of that range); the ranks' top-k lists
(scores and global rows) are all-gathered and merged in the order above, so the exact result is the one
process's, bit for bit, when each process runs faiss with as many threads (``OMP_NUM_THREADS``; BLAS rounds
differently with another thread count).

faiss reports fewer than ``k`` hits with index ``-1``; such slots are dropped, never mapped to a passage.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Optional, Sequence

import numpy as np

from ..distributed import all_gather_arrays, broadcast_array, dist_context, in_process_group, raise_unless_all_ok
from ..errors import InputError, ResourceError, UsageError
from .ann import adjust_nlist, is_exact, open_ann_index  # noqa: F401  (adjust_nlist: part of this module's API)
from .encode import device_from_args
from .faiss_loader import import_faiss
from .index import EmbeddingIndex

logger = logging.getLogger(__name__)


def merge_topk(
    scores_a: np.ndarray, idx_a: np.ndarray, scores_b: np.ndarray, idx_b: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` of two candidate lists per query in search order: score descending, then index
    descending (how one ``IndexFlatIP`` lists equal scores). Missing hits (index -1) sort last with score
    ``-inf``, whatever faiss put in their score."""
    scores = np.concatenate([scores_a, scores_b], axis=1)
    idx = np.concatenate([idx_a, idx_b], axis=1)
    keyed = np.where(idx >= 0, scores, -np.inf)
    order = np.lexsort((-idx, -keyed), axis=-1)[:, :k]
    return np.take_along_axis(keyed, order, axis=1), np.take_along_axis(idx, order, axis=1)


@dataclass
class SearchOptions:
    """How to retrieve: how the index is searched (:func:`search_index`) and, when the queries are encoded
    on the way (``openmatch.api.retrieve``), how they are encoded and whether the query encoder may differ
    from the index's model (:func:`openmatch.retriever.index.check_compatible`)."""

    depth: int = 100
    faiss_index: str = "Flat"
    use_gpu: bool = False
    starting_gpu: int = 0
    block_rows: int = 1 << 18  # exact search; rounded up to a multiple of faiss's 1024-row tile
    query_batch_size: int = 8192  # queries per faiss call
    nprobe: int = 32
    ef_search: int = 128
    train_sample: int = 262_144
    seed: int = 0
    # Encoding the queries, as ``openmatch.api.encode_file`` does.
    max_len: int = 32
    batch_size: int = 64  # queries per encoding batch
    template: Optional[str] = None
    column_names: Optional[str] = None
    num_workers: int = 0
    device: Optional[str] = None
    fp16: bool = False
    bf16: bool = False
    allow_model_mismatch: bool = False
    # Approximate search only: recall@depth against exact search on this many sampled queries (0: off).
    check_recall: int = 0
    # Every rank of the torch.distributed group searches its share of the rows (set by retrieve under a launcher).
    distributed: bool = False

    def __post_init__(self):
        if self.check_recall < 0:
            raise UsageError(f"--check_recall must be 0 (off) or a number of queries, got {self.check_recall}")
        if self.check_recall and is_exact(self.faiss_index):
            raise UsageError(
                f"--check_recall compares an approximate --faiss_index with exact search; --faiss_index "
                f"{self.faiss_index!r} is exact already"
            )

    @classmethod
    def from_args(cls, data_args, infer_args, search_args) -> "SearchOptions":
        """The options that ``retrieve``'s flags (its argument dataclasses but the model's) ask for."""
        return cls(
            depth=infer_args.retrieve_depth,
            faiss_index=infer_args.faiss_index,
            use_gpu=infer_args.use_gpu,
            starting_gpu=infer_args.faiss_starting_gpu,
            query_batch_size=search_args.search_batch_size,
            nprobe=search_args.faiss_nprobe,
            ef_search=search_args.faiss_ef_search,
            train_sample=search_args.faiss_train_sample,
            max_len=data_args.q_max_len,
            batch_size=infer_args.per_device_eval_batch_size,
            template=data_args.query_template,
            column_names=data_args.query_column_names,
            num_workers=infer_args.dataloader_num_workers,
            device=device_from_args(infer_args),
            fp16=infer_args.fp16,
            bf16=infer_args.bf16,
            allow_model_mismatch=search_args.allow_model_mismatch,
            check_recall=search_args.check_recall,
            distributed=in_process_group() and dist_context()[1] > 1,
        )


# The fields of SearchOptions that concern encoding the queries, not searching.
QUERY_ENCODING_FIELDS = (
    "max_len", "batch_size", "template", "column_names", "num_workers", "device", "fp16", "bf16", "allow_model_mismatch"
)


def _gpu_list(faiss, starting_gpu: int) -> list[int]:
    if not hasattr(faiss, "StandardGpuResources"):
        raise ResourceError(
            "--use_gpu needs faiss with GPU support (faiss-gpu); the installed faiss "
            f"{getattr(faiss, '__version__', '?')} is CPU-only"
        )
    count = faiss.get_num_gpus()
    if count <= starting_gpu:
        raise ResourceError(f"--use_gpu: faiss sees {count} GPU(s), --faiss_starting_gpu is {starting_gpu}")
    return list(range(starting_gpu, count))


def search_gpus(faiss, options: "SearchOptions") -> list[int]:
    """The GPUs one process searches on: all from ``starting_gpu`` on, or under a launcher (``distributed``)
    the one of its local rank, ``starting_gpu + LOCAL_RANK``."""
    gpus = _gpu_list(faiss, options.starting_gpu)
    if not options.distributed:
        return gpus
    local = int(os.environ.get("LOCAL_RANK", 0))
    if local >= len(gpus):
        raise ResourceError(
            f"--use_gpu under a launcher: local rank {local} searches on GPU {options.starting_gpu + local} "
            f"(--faiss_starting_gpu + LOCAL_RANK), faiss sees {options.starting_gpu + len(gpus)}"
        )
    return [gpus[local]]


def check_search_resources(options: SearchOptions) -> None:
    """Refuse, before any query is encoded, a search this machine cannot run: no faiss (or two builds), or
    ``use_gpu`` without a faiss build with GPU support or without the GPUs ``starting_gpu`` asks for."""
    faiss = import_faiss()
    if options.use_gpu:
        search_gpus(faiss, options)


def _to_gpus(faiss, index, gpus: list[int]):
    options = faiss.GpuMultipleClonerOptions()
    options.shard = True  # split the vectors over the GPUs rather than copying them to each
    return faiss.index_cpu_to_gpus_list(index, co=options, gpus=gpus)


def _effective_k(depth: int, total: int) -> int:
    if depth > total:
        logger.warning("--retrieve_depth %d exceeds the corpus size %d; each query gets at most %d hits", depth, total, total)
    return min(depth, total)


def rank_rows(total: int, rank: int, world_size: int, tile: int) -> tuple[int, int]:
    """Rows ``[first, last)`` that rank ``rank`` of ``world_size`` searches: contiguous ranges in rank order,
    cut at multiples of ``tile`` (faiss's tile of corpus rows, so that every row is scored as in one
    process) and as even as whole tiles allow. A rank may get none (fewer tiles than ranks)."""
    tiles = -(-total // tile)
    return min(total, tiles * rank // world_size * tile), min(total, tiles * (rank + 1) // world_size * tile)


def _tile(faiss) -> int:
    return max(1, int(faiss.cvar.distance_compute_blas_database_bs))


def search_embeddings(
    index: EmbeddingIndex, queries: np.ndarray, options: SearchOptions
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k ``(scores, global_indices)`` of each query row; missing hits have index -1.

    With ``options.distributed`` every rank of the process group must call it (with the same options and
    queries of the same shape): each searches its rows (:func:`rank_rows`) with rank 0's queries, and every
    rank returns the merged result.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if queries.ndim != 2 or queries.shape[1] != index.dim:
        raise InputError(
            f"query embeddings have dimension {queries.shape[-1]} but the index in {index.index_dir} has {index.dim}: "
            "queries and passages must be encoded by the same model"
        )
    k = _effective_k(options.depth, index.total)
    spec = options.faiss_index.replace(" ", "")
    if not options.distributed:
        return _search_rows(index, queries, k, spec, options, 0, index.total)
    if not in_process_group():
        raise RuntimeError("SearchOptions.distributed needs a torch.distributed process group (run under torchrun)")
    rank, world_size = dist_context()
    queries = broadcast_array(queries)  # the ranks score the same vectors, whatever each one encoded
    first, last = rank_rows(index.total, rank, world_size, _tile(import_faiss()))
    logger.info("rank %d of %d searches rows [%d, %d) of %d", rank, world_size, first, last, index.total)
    scores, idx, error = None, None, None
    try:
        scores, idx = _search_rows(index, queries, k, spec, options, first, last)
    except Exception as err:  # reported on this rank; the others stop instead of waiting for its list
        error = err
    raise_unless_all_ok(error, "another rank failed while searching its share of the index; see its log")
    # Each rank's list is the exact top k of its rows in the search order, so the merged top k is the whole one.
    all_scores, all_idx = all_gather_arrays(scores), all_gather_arrays(idx)
    scores, idx = all_scores[0], all_idx[0]
    for part_scores, part_idx in zip(all_scores[1:], all_idx[1:]):
        scores, idx = merge_topk(scores, idx, part_scores, part_idx, k)
    return scores, idx


def _search_rows(index, queries, k, spec, options, first, last):
    """Top-k over rows ``[first, last)`` (global row numbers)."""
    if first >= last:
        return np.full((len(queries), k), -np.inf, dtype=np.float32), np.full((len(queries), k), -1, dtype=np.int64)
    if is_exact(spec):
        return _search_exact(index, queries, k, options, first, last)
    return _search_approximate(index, queries, k, spec, options, first, last)


# Each block is searched this much deeper than k, so that a group of equal scores at the k-th place is
# usually seen whole and needs no rescoring.
_TIE_MARGIN = 16


def _search_exact(index, queries, k, options, first, last):
    faiss = import_faiss()
    nq = len(queries)
    gpus = search_gpus(faiss, options) if options.use_gpu else None
    if gpus is None and nq < faiss.omp_get_max_threads():
        # With fewer queries than threads faiss splits the block between threads and scores with a kernel
        # chosen by the block's length; zero queries up to the thread count keep it on its usual paths,
        # whose scores do not depend on the block (with blocks aligned to its tiles).
        queries = np.concatenate([queries, np.zeros((faiss.omp_get_max_threads() - nq, queries.shape[1]), np.float32)])
    tile = _tile(faiss)
    if first % tile:
        raise ValueError(f"rows from {first}: exact search starts at a multiple of faiss's {tile}-row tile")
    block_rows = -(-max(1, options.block_rows) // tile) * tile
    best_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_idx = np.full((len(queries), k), -1, dtype=np.int64)
    for offset, block in index.iter_blocks(block_rows, first, last):
        kb = min(k, len(block))
        fetch = min(kb + _TIE_MARGIN, len(block))
        if gpus is None:
            scores, idx = faiss.knn(queries, block, fetch, metric=faiss.METRIC_INNER_PRODUCT)
            scores, idx = _settle_cut_ties(faiss, queries, block, scores, idx, kb, tile)
        else:
            cpu = faiss.IndexFlatIP(index.dim)
            cpu.add(block)
            gpu_index = _to_gpus(faiss, cpu, gpus)
            scores, idx = _batched_search(gpu_index, queries, fetch, options.query_batch_size)
            del gpu_index
        idx = np.where(idx >= 0, idx + offset, -1)
        # The list may run past the block's first kb (up to fetch); what follows them ranks below all of them,
        # so it can never displace one of them from the merged top k.
        best_scores, best_idx = merge_topk(best_scores, best_idx, scores, idx, k)
    return best_scores[:nq], best_idx[:nq]


def _settle_cut_ties(faiss, queries, block, scores, idx, kb, tile):
    """Make each row's first ``kb`` hits in search order exact where faiss may have cut an equal-score group.

    ``scores, idx`` are faiss's ``fetch`` best hits of ``block`` (block-local indices). Every hit scoring
    above the ``kb``-th score is among them; the group equal to it is whole unless it reaches the list's
    last place. For such rows the group's members are found from the block's end, tile by tile, with the
    scores faiss gives those rows in the main search; the rows returned hold every hit above the group and
    the group's last members, from which :func:`merge_topk` picks the exact first ``kb``.
    """
    fetch = scores.shape[1]
    if fetch == len(block) or kb == 0:
        return scores, idx
    cut = np.flatnonzero(scores[:, fetch - 1] == scores[:, kb - 1])
    if not len(cut):
        return scores, idx
    level = scores[cut, kb - 1]
    above = scores[cut] > level[:, None]
    wanted = kb - above.sum(axis=1)
    members: list[list[int]] = [[] for _ in cut]
    for start in range(((len(block) - 1) // tile) * tile, -1, -tile):
        open_rows = np.flatnonzero(wanted > np.array([len(m) for m in members]))
        if not len(open_rows):
            break
        chunk = block[start : start + tile]
        chunk_scores = _same_scores(faiss, queries, cut[open_rows], chunk)
        # The hits faiss listed in this tile must score the same here, or the rescoring is not the search's.
        listed = (idx[cut[open_rows]] >= start) & (idx[cut[open_rows]] < start + len(chunk))
        rows, cols = np.nonzero(listed)
        if not np.array_equal(chunk_scores[rows, idx[cut[open_rows]][rows, cols] - start], scores[cut[open_rows]][rows, cols]):
            raise RuntimeError(
                "faiss scored the same rows differently when rescoring a block; cannot break ties exactly "
                f"(faiss {getattr(faiss, '__version__', '?')}): please report this"
            )
        for j, r in enumerate(open_rows):
            hits = np.flatnonzero(chunk_scores[j] == level[r])[::-1] + start
            members[r].extend(hits[: wanted[r] - len(members[r])].tolist())
    settled_scores, settled_idx = scores.copy(), idx.copy()
    for r, row in enumerate(cut):
        keep = np.flatnonzero(above[r])
        found = np.asarray(members[r], dtype=np.int64)
        settled_scores[row], settled_idx[row] = -np.inf, -1
        settled_scores[row, : len(keep)], settled_idx[row, : len(keep)] = scores[row, keep], idx[row, keep]
        settled_scores[row, len(keep) : len(keep) + len(found)] = level[r]
        settled_idx[row, len(keep) : len(keep) + len(found)] = found
    return settled_scores, settled_idx


def _same_scores(faiss, queries, rows, chunk):
    """Scores ``[len(rows), len(chunk)]`` of ``queries[rows]`` against one tile of a block, bit for bit as a
    ``faiss.knn`` of all ``queries`` against the block computes them.

    faiss scores each pair alone when ``n_queries × dim`` is below its BLAS threshold; above it, a matrix
    product per tile of queries, whose rounding depends on the tile. So either the rows themselves are
    rescored, or the whole query tiles that hold them (with neighbouring tiles when one is too small for
    faiss to take the same path).
    """
    nq, dim = queries.shape
    threshold = int(faiss.cvar.distance_compute_blas_threshold)
    out = np.empty((len(rows), len(chunk)), dtype=np.float32)
    if nq * dim < threshold:
        spans = [(rows, np.arange(len(rows)), None)]
    else:
        q_tile = max(1, int(faiss.cvar.distance_compute_blas_query_bs))
        spans = []
        for tile_number in np.unique(rows // q_tile):
            a = int(tile_number) * q_tile
            b = min(a + q_tile, nq)
            while (b - a) * dim < threshold and a > 0:
                a -= q_tile
            while (b - a) * dim < threshold and b < nq:
                b = min(b + q_tile, nq)
            inside = np.flatnonzero(rows // q_tile == tile_number)
            spans.append((slice(a, b), inside, a))
    for which, inside, base in spans:
        block_queries = queries[which]
        scores, idx = faiss.knn(block_queries, chunk, len(chunk), metric=faiss.METRIC_INNER_PRODUCT)
        full = np.empty_like(scores)
        np.put_along_axis(full, idx, scores, axis=1)
        out[inside] = full if base is None else full[rows[inside] - base]
    return out


def _batched_search(faiss_index, queries, k, batch_size):
    scores, idx = [], []
    for start in range(0, len(queries), batch_size):
        s, i = faiss_index.search(queries[start : start + batch_size], k)
        scores.append(s)
        idx.append(i)
    return np.concatenate(scores), np.concatenate(idx)


def _search_approximate(index, queries, k, spec, options, first, last):
    faiss = import_faiss()
    cpu_index = open_ann_index(index, spec, options, first, last)
    params = faiss.ParameterSpace()
    if "IVF" in spec:
        params.set_index_parameter(cpu_index, "nprobe", options.nprobe)
    if "HNSW" in spec:
        params.set_index_parameter(cpu_index, "efSearch", max(options.ef_search, k))
    search_index = cpu_index
    if options.use_gpu:
        search_index = _to_gpus(faiss, cpu_index, search_gpus(faiss, options))
    scores, idx = _batched_search(search_index, queries, k, options.query_batch_size)
    scores = np.where(idx >= 0, scores, -np.inf).astype(np.float32)
    return scores, np.where(idx >= 0, idx + first, -1)


class SearchResults(Mapping):
    """``{qid: [(pid, score), ...]}`` best first, in query order, and ``recall``: :func:`measure_recall`'s report
    when ``check_recall`` asked for one, else None.

    A read-only mapping over the search's arrays (12 bytes a hit): a query's hits become Python objects only
    when it is read, as a new list each time, in any order, from the index's id table
    (:meth:`EmbeddingIndex.id_table`, about 7 bytes a passage for MS MARCO's ids). So writing the run of MS
    MARCO's 502,939 train queries at depth 200 holds 1.2 GB of arrays and one query's tuples, not 100M
    tuples (about 11 GB). ``dict(results)`` makes a plain dict (for ``json.dumps`` or to edit it).
    """

    def __init__(self, index: EmbeddingIndex, query_ids: Sequence[str], scores: np.ndarray, idx: np.ndarray,
                 recall: Optional[dict] = None):
        self.index, self.query_ids = index, list(query_ids)
        self.scores, self.idx, self.recall = scores, idx, recall
        self._row: Optional[dict[str, int]] = None

    def __len__(self) -> int:
        return len(self.query_ids)

    def __iter__(self):
        return iter(self.query_ids)

    def __contains__(self, qid) -> bool:
        return qid in self._rows()

    def __getitem__(self, qid: str) -> list[tuple[str, float]]:
        row = self._rows()[qid]  # KeyError for an unknown query, as a dict
        found = self.idx[row]
        # Missing hits (-1: an approximate index found fewer) are left out, wherever they are.
        keep = found >= 0
        names = self.index.id_table()[found[keep]].astype(str).tolist()
        return list(zip(names, self.scores[row][keep].tolist()))

    def __repr__(self) -> str:
        return f"SearchResults({len(self)} queries, depth {self.idx.shape[1] if self.idx.ndim == 2 else 0})"

    def _rows(self) -> dict[str, int]:
        if self._row is None:
            self._row = {qid: row for row, qid in enumerate(self.query_ids)}
        return self._row


def measure_recall(
    index: EmbeddingIndex, queries: np.ndarray, query_ids: Sequence[str], found: np.ndarray, options: SearchOptions
) -> dict:
    """Recall@k of an approximate search against exact search, on a deterministic sample of the queries.

    ``found`` holds the approximate search's rows (``[len(queries), k]``, -1 for none); ``options.check_recall``
    queries are drawn with ``options.seed`` (all of them when there are fewer), searched exactly, and each
    query's recall is the share of its exact top k that ``found`` lists. Logs the mean at INFO and returns
    the report (the mean, the lowest, each sampled query's value and the search settings).
    """
    count = min(options.check_recall, len(queries))
    sample = np.sort(np.random.default_rng(options.seed).choice(len(queries), size=count, replace=False))
    exact_options = replace(options, faiss_index="Flat", check_recall=0)
    _, exact = search_embeddings(index, np.asarray(queries)[sample], exact_options)
    k = exact.shape[1]
    per_query = {}
    for row, query in enumerate(sample.tolist()):
        truth = set(exact[row][exact[row] >= 0].tolist())
        listed = set(found[query][found[query] >= 0].tolist())
        per_query[query_ids[query]] = len(truth & listed) / len(truth) if truth else 1.0
    values = list(per_query.values())
    recall = float(np.mean(values)) if values else 1.0
    settings = {}
    if "IVF" in options.faiss_index:
        settings["nprobe"] = options.nprobe
    if "HNSW" in options.faiss_index:
        settings["ef_search"] = max(options.ef_search, k)
    logger.info(
        "recall@%d of --faiss_index %s%s against exact search: %.4f (mean over %d of %d queries, sampled with seed %d; "
        "lowest %.4f)",
        k, options.faiss_index, "".join(f" {name} {value}" for name, value in settings.items()), recall, count,
        len(queries), options.seed, min(values, default=1.0),
    )
    return {
        "index": os.path.abspath(index.index_dir),
        "faiss_index": options.faiss_index,
        **settings,
        "k": k,
        "recall": recall,
        "min_recall": min(values, default=1.0),
        "queries": len(queries),
        "sampled": count,
        "seed": options.seed,
        "per_query": per_query,
    }


def search_index(
    index_dir: str | os.PathLike | EmbeddingIndex,
    query_embeddings: np.ndarray,
    query_ids: Sequence[str],
    options: Optional[SearchOptions] = None,
) -> SearchResults:
    """``{qid: [(pid, score), ...]}`` best first, in query order; missing hits are left out. With
    ``options.check_recall`` its ``recall`` holds :func:`measure_recall`'s report; with
    ``options.distributed`` every rank calls it and gets the whole result (:func:`search_embeddings`)."""
    options = options or SearchOptions()
    index = index_dir if isinstance(index_dir, EmbeddingIndex) else EmbeddingIndex(index_dir)
    if len(query_ids) != len(query_embeddings):
        raise ValueError(f"{len(query_ids)} query ids for {len(query_embeddings)} query embeddings")
    if len(set(query_ids)) != len(query_ids):
        raise ValueError("query ids must be unique")
    scores, idx = search_embeddings(index, query_embeddings, options)
    recall = measure_recall(index, query_embeddings, list(query_ids), idx, options) if options.check_recall else None
    return SearchResults(index, query_ids, scores, idx, recall)
