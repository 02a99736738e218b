"""The meme index: the store (:mod:`.store`: add, search -> (distances, ids), save/load), duplicate
pictures (:mod:`.dedupe`)."""

from facial_search.index.store import EmbedderInfo, Entry, FileRecord, MemeIndex, group_layout, group_min, top_k

__all__ = ["EmbedderInfo", "Entry", "FileRecord", "MemeIndex", "group_layout", "group_min", "top_k"]
