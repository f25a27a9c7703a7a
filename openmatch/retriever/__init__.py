"""Encoding a corpus into a resumable ``.npy`` index folder, and exact/approximate faiss search over it.

``index``: the folder's format (file names, spec, shards, manifest) and :class:`EmbeddingIndex`, its reader;
``builder``: :func:`build_index` and :func:`write_index`, which write it; ``encode``: running a model over
batches; ``search`` and ``torch_search``: exact and approximate top-k over an index.
"""

from .builder import BuildOptions, build_index, write_index
from .encode import Precision, encode_batches, model_fingerprint, pick_device
from .index import EmbeddingIndex, IndexFolderError, check_compatible, load_manifest
from .search import SearchOptions, merge_topk, search_embeddings, search_index

__all__ = [
    "BuildOptions",
    "EmbeddingIndex",
    "IndexFolderError",
    "Precision",
    "SearchOptions",
    "build_index",
    "check_compatible",
    "encode_batches",
    "load_manifest",
    "merge_topk",
    "model_fingerprint",
    "pick_device",
    "search_embeddings",
    "search_index",
    "write_index",
]
