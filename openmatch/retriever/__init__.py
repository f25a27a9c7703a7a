"""Encoding a corpus into a resumable ``.npy`` index folder, and exact/approximate faiss search over it."""

from .encode import Precision, encode_batches, model_fingerprint, pick_device
from .index import BuildOptions, IndexFolderError, build_index, load_manifest
from .search import EmbeddingIndex, SearchOptions, merge_topk, search_embeddings, search_index

__all__ = [
    "BuildOptions",
    "EmbeddingIndex",
    "IndexFolderError",
    "Precision",
    "SearchOptions",
    "build_index",
    "encode_batches",
    "load_manifest",
    "merge_topk",
    "model_fingerprint",
    "pick_device",
    "search_embeddings",
    "search_index",
]
