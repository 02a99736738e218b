"""The meme index: the store (:mod:`.store`: add, search -> (distances, ids), save/load), the search kernels
(:mod:`.kernels`), the file format and its checks (:mod:`.fileformat`), the writer lock (:mod:`.lock`),
duplicate pictures (:mod:`.dedupe`)."""

from facial_search.index.kernels import group_layout, group_min, top_k
from facial_search.index.lock import IndexWriter
from facial_search.index.store import EmbedderInfo, Entry, FileRecord, MemeIndex

__all__ = ["EmbedderInfo", "Entry", "FileRecord", "IndexWriter", "MemeIndex", "group_layout", "group_min", "top_k"]
