"""The meme index: one store interface (:mod:`.base`: :class:`Store`) opened by URI (:func:`open`), the default
file store (:mod:`.store`: :class:`MemeIndex`, exact search through FAISS or HNSW segments (:mod:`.segments`,
:mod:`.ann`), its columns (:mod:`.table`), commits appended to one file), the Milvus store (:mod:`.milvus`,
imported only for a ``milvus-lite://`` or ``milvus://`` URI), the search kernels (:mod:`.kernels`), the file
format and its checks (:mod:`.fileformat`; versions 1-2: :mod:`.zipformat`), the writer lock (:mod:`.lock`),
duplicate pictures (:mod:`.dedupe`).

>>> import numpy as np
>>> import facial_search.index as fsi
>>> with fsi.open("memes.fsindex") as store:  # or "file:///abs/memes.fsindex", "milvus-lite://memes.db"
...     queries = np.eye(store.embedder.dim, dtype=np.float32)[:2]  # (Q, D) unit-norm
...     distances, ids = store.search(queries, k=3)  # (Q, 3) each, nearest first
>>> distances.shape, ids.shape, store.describe()["backend"]
((2, 3), (2, 3), 'file (exact)')
"""

from facial_search.index.base import Store
from facial_search.index.kernels import group_layout, group_min, top_k
from facial_search.index.lock import IndexWriter
from facial_search.index.store import EmbedderInfo, Entry, FileRecord, MemeIndex, file_path
from facial_search.index.store import open_store as open  # noqa: A004 - facial_search.index.open(uri), as asked

__all__ = ["EmbedderInfo", "Entry", "FileRecord", "IndexWriter", "MemeIndex", "Store", "file_path", "group_layout",
           "group_min", "open", "top_k"]  # fmt: skip
