"""The Milvus backend of the store interface (:class:`facial_search.index.base.Store`): Milvus Lite or a server.

One code path, pymilvus' ``MilvusClient``, for both:

- ``milvus-lite://PATH.db``: Milvus Lite, embedded (``MilvusClient("PATH.db")``; PATH relative to the working
  folder, or absolute as in ``milvus-lite:///data/memes.db``; Milvus Lite keeps a folder at PATH.db). The
  collection is ``facial_search``, or the one named by ``?collection=NAME``.
- ``milvus://HOST:PORT/COLLECTION``: a Milvus server or cluster (``MilvusClient(uri="http://HOST:PORT")``);
  COLLECTION defaults to ``facial_search``.

A store named C is three collections:

- ``C``: one row per face. ``id`` INT64 primary key (ours, not auto_id: taken from a persistent ``next_id``, so
  an id is never reused after removal), ``embedding`` FLOAT_VECTOR (D = the embedder's dimension), ``source``
  VARCHAR, ``face`` INT64, ``box`` ARRAY<INT64>[4] (x, y, w, h in pixels), ``title`` VARCHAR, ``picture_hash``
  VARCHAR (nullable), ``group`` VARCHAR: the picture group a grouping search folds on. For now the group is the
  source, so one picture = one source file; folding one template saved under two names into one group (what
  the file backend's :func:`facial_search.index.dedupe.merge_duplicates` does) is left for later.
  Vector index: ``FLAT`` with metric ``L2`` (exact on Lite and on a server: results equal the file backend's).
- ``C_files``: one row per processed source file (:class:`~facial_search.index.store.FileRecord`), keyed by
  source.
- ``C_meta``: one row, ``{"format", "version", "embedder": {name, version, dim}, "next_id"}`` as JSON; its
  presence marks a complete store, and reopening checks the embedder against it.

Milvus VARCHAR holds valid UTF-8 only, but a file name need not be (Python gives such names as str with
surrogate escapes, ``b"caf\\xe9.jpg"`` -> ``"caf\\udce9.jpg"``): text fields are stored percent-escaped
(:func:`escape_text`: ``%``, quotes, backslashes, control characters and surrogates become ``%XX`` or
``%uXXXX``), which is reversible, so :meth:`MilvusStore.entry` gives back the exact str, and which keeps
filter expressions free of quoting problems.

Searches are ``consistency_level="Strong"``: a search right after :meth:`MilvusStore.add` sees the new faces.
The store assumes one writer at a time (Milvus has no transactions; two processes adding to one collection
could take the same ids).
"""

from __future__ import annotations

import json
import logging
import os
import re
import urllib.parse
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import MappingProxyType

import numpy as np

from facial_search.errors import (
    EmbedderMismatchError,
    IndexBackendError,
    IndexFormatError,
    IndexVersionError,
    InputNotFoundError,
    MissingDependencyError,
    OptionError,
    OutputError,
)
from facial_search.index.store import MAX_K, EmbedderInfo, Entry, FileRecord

#: ``format`` and ``version`` recorded in a store's meta collection.
FORMAT_NAME = "facial-search-milvus"
FORMAT_VERSION = 1
DEFAULT_COLLECTION = "facial_search"
INDEX_TYPE = "FLAT"
METRIC = "L2"
_TEXT_MAX = 65_535  # bytes, Milvus' largest VARCHAR
_BATCH = 5_000  # rows per insert / ids per delete
_ITER_BATCH = 5_000  # rows per query_iterator page (a query returns at most 16,384 rows on a server)
_COLLECTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,200}")

_ESCAPED_ASCII = frozenset("%\"\\'") | {chr(c) for c in range(0x20)} | {"\x7f"}
_UNESCAPE = re.compile(r"%u([0-9A-F]{4})|%([0-9A-F]{2})")

# Milvus Lite answers no MVCC timestamp to a query iterator; pymilvus then warns on every listing (harmless).
logging.getLogger("pymilvus.client.iterator.query_iterator").addFilter(lambda r: "mvccTs" not in r.getMessage())
# pymilvus logs every failed call with its traceback before raising it; we raise each as a typed one-line error
# (IndexBackendError ...), so its log line would only repeat it on the user's terminal
logging.getLogger("pymilvus.decorators").addFilter(lambda r: "RPC error" not in r.getMessage())


def escape_text(s: str) -> str:
    """A str as valid UTF-8 text free of quotes and backslashes, reversibly (:func:`unescape_text`).

    ``%``, ``"``, ``'``, ``\\`` and control characters become ``%XX`` (their code point), the surrogate escapes
    of undecodable bytes (U+DC80..U+DCFF, ``os.fsdecode``) ``%XX`` of the byte (``XX`` >= 80), any other lone
    surrogate ``%uXXXX``; everything else is kept (``"café"`` stays ``"café"``).
    """
    out = []
    for ch in s:
        c = ord(ch)
        if ch in _ESCAPED_ASCII:
            out.append(f"%{c:02X}")
        elif 0xDC80 <= c <= 0xDCFF:
            out.append(f"%{c - 0xDC00:02X}")
        elif 0xD800 <= c <= 0xDFFF:
            out.append(f"%u{c:04X}")
        else:
            out.append(ch)
    return "".join(out)


def unescape_text(s: str) -> str:
    """The inverse of :func:`escape_text`."""

    def one(m: re.Match) -> str:
        if m.group(1):
            return chr(int(m.group(1), 16))
        b = int(m.group(2), 16)
        return chr(b) if b < 0x80 else chr(0xDC00 + b)

    return _UNESCAPE.sub(one, s)


def _literal(s: str) -> str:
    """An escaped text as a Milvus filter string literal (escaped text holds no quote or backslash)."""
    return f'"{escape_text(s)}"'


def parse_uri(uri: str) -> tuple[str, str, str]:
    """``(backend, client_uri, collection)`` of a store URI: backend ``"milvus-lite"`` (client_uri: the database
    path) or ``"milvus"`` (client_uri ``http://HOST:PORT``).

    Raises:
        OptionError: not a ``milvus-lite://PATH.db`` or ``milvus://HOST:PORT[/COLLECTION]`` URI, or a collection
            name Milvus does not allow (letters, digits, ``_``; not starting with a digit).
    """
    if uri.startswith("milvus-lite://"):
        rest = uri[len("milvus-lite://") :]
        path, _, query = rest.partition("?")
        collection = urllib.parse.parse_qs(query).get("collection", [DEFAULT_COLLECTION])[0]
        if not path.endswith(".db") or path == ".db":
            raise OptionError(f"{uri}: a Milvus Lite URI is milvus-lite://PATH.db (the path must end in .db)")
        backend, client_uri = "milvus-lite", path
    elif uri.startswith("milvus://"):
        parts = urllib.parse.urlsplit(uri)
        try:
            port = parts.port
        except ValueError:
            port = None
        if not parts.hostname or port is None:
            raise OptionError(f"{uri}: a Milvus server URI is milvus://HOST:PORT[/COLLECTION]")
        collection = parts.path.strip("/") or DEFAULT_COLLECTION
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        backend, client_uri = "milvus", f"http://{host}:{port}"
    else:
        raise OptionError(f"{uri}: not a Milvus URI (milvus-lite://PATH.db or milvus://HOST:PORT/COLLECTION)")
    if not _COLLECTION_NAME.fullmatch(collection):
        raise OptionError(f"{uri}: {collection!r} is not a valid Milvus collection name (letters, digits, _)")
    return backend, client_uri, collection


class MilvusStore:
    """A :class:`~facial_search.index.base.Store` in a Milvus collection (Milvus Lite or a server).

    Open it with :meth:`open`. Attributes: ``uri`` (as given), ``embedder``
    (:class:`~facial_search.index.store.EmbedderInfo`), ``next_id`` (the id the next added face gets),
    ``backend`` (``"milvus-lite"`` or ``"milvus"``), ``collection``.
    """

    def __init__(self, uri: str, backend: str, client, collection: str, embedder: EmbedderInfo, next_id: int):
        self.uri = uri
        self.backend = backend
        self.collection = collection
        self.embedder = embedder
        self.next_id = next_id
        self._client = client
        self._files: dict[str, FileRecord] = {}

    # -- opening -------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, uri: str, *, embedder: EmbedderInfo | None = None, create: bool = False) -> MilvusStore:
        """Open the store at ``uri``, or create it (``create=True``, needs ``embedder``) where there is none.

        Args:
            uri: ``milvus-lite://PATH.db[?collection=NAME]`` or ``milvus://HOST:PORT[/COLLECTION]``.
            embedder: the embedder the caller adds and searches with; checked against the stored one.
            create: create the collections when missing (an existing store is opened, not emptied).

        Raises:
            OptionError: a malformed URI. ValueError: ``create`` without ``embedder``.
            InputNotFoundError: no such database file or collection (and not ``create``).
            OutputError: ``create`` in a folder that does not exist.
            IndexFormatError: the path is not a Milvus Lite database, or the collection is not a facial-search
                store (no meta record, another schema). IndexVersionError: written by a newer release.
            EmbedderMismatchError: the store was built by another embedder than ``embedder``.
            IndexBackendError: the Milvus server cannot be reached, or fails.
        """
        backend, client_uri, collection = parse_uri(uri)
        if create and embedder is None:
            raise ValueError("create=True needs the embedder (its dimension sets the schema)")
        if backend == "milvus-lite":
            path = Path(client_uri)
            if not path.exists() and not create:
                raise InputNotFoundError(f"{uri}: no Milvus Lite database at {path}")
            if not path.parent.is_dir():
                raise OutputError(f"{uri}: folder {path.parent} does not exist")
            client_uri = os.fspath(path.absolute())
        client = _connect(uri, backend, client_uri)
        try:
            with _backend_errors(uri):
                store = cls._open_collections(uri, backend, client, collection, embedder, create)
        except BaseException:
            client.close()
            raise
        return store

    @classmethod
    def _open_collections(cls, uri, backend, client, collection, embedder, create) -> MilvusStore:
        meta_name = f"{collection}_meta"
        names = set(client.list_collections())
        if meta_name not in names:
            if collection in names:
                raise IndexFormatError(f"{uri}: collection {collection!r} is not a facial-search store (no meta)")
            if not create:
                raise InputNotFoundError(f"{uri}: no collection {collection!r} (create it with `facial-search index`)")
            _create_collections(client, collection, embedder)
            meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "embedder": vars(embedder), "next_id": 0}
            client.upsert(meta_name, [{"key": "meta", "value": json.dumps(meta), "_v": [0.0, 0.0]}])
            client.flush(meta_name)
        present = set(client.list_collections())
        for name in (meta_name, collection, f"{collection}_files"):
            if name in present:
                client.load_collection(name)  # a store written by another process is opened released
        meta = _read_meta(uri, client, meta_name)
        if meta.get("format") != FORMAT_NAME or not isinstance(meta.get("version"), int):
            raise IndexFormatError(f"{uri}: collection {collection!r} is not a facial-search store")
        if meta["version"] > FORMAT_VERSION:
            raise IndexVersionError(
                f"{uri}: store format version {meta['version']} is newer than this release reads ({FORMAT_VERSION})"
            )
        try:
            info = EmbedderInfo(str(meta["embedder"]["name"]), str(meta["embedder"]["version"]),
                                int(meta["embedder"]["dim"]))  # fmt: skip
            next_id = int(meta["next_id"])
        except (KeyError, TypeError, ValueError) as e:
            raise IndexFormatError(f"{uri}: damaged meta record ({e!r})") from None
        if embedder is not None and info != embedder:
            raise EmbedderMismatchError(
                f"{uri}: store was built with embedder {info}, but the current embedder is {embedder}; "
                f"re-index into another collection with the current embedder"
            )
        missing = {collection, f"{collection}_files"} - set(client.list_collections())
        if missing:
            raise IndexFormatError(f"{uri}: store is incomplete (missing {', '.join(sorted(missing))})")
        store = cls(uri, backend, client, collection, info, next_id)
        store._files = {unescape_text(r["source"]): _file_record(r) for r in store._iterate(
            f"{collection}_files", ["source", "size", "mtime_ns", "faces", "skipped", "finder"])}  # fmt: skip
        return store

    # -- size and access ---------------------------------------------------------------------------------------
    @property
    def ntotal(self) -> int:
        """Faces in the store (a strong-consistency count)."""
        with _backend_errors(self.uri):
            rows = self._client.query(
                self.collection, filter="", output_fields=["count(*)"], consistency_level="Strong"
            )
        return int(rows[0]["count(*)"])

    def __len__(self) -> int:
        return self.ntotal

    @property
    def files(self) -> Mapping[str, FileRecord]:
        """``{source: FileRecord}`` of every processed file (read-only; read from Milvus when opened)."""
        return MappingProxyType(self._files)

    @property
    def skipped(self) -> dict[str, str]:
        """``{source: reason}`` for files recorded as skipped."""
        return {s: r.skipped for s, r in self._files.items() if r.skipped}

    def entry(self, id: int) -> Entry:
        """The entry with this id; ``KeyError`` if there is none."""
        with _backend_errors(self.uri):
            rows = self._client.query(self.collection, filter=f"id == {int(id)}", output_fields=_ENTRY_FIELDS,
                                      consistency_level="Strong")  # fmt: skip
        if not rows:
            raise KeyError(id)
        return _entry(rows[0])

    def entries(self) -> list[Entry]:
        """Every entry, in id order."""
        return sorted((_entry(r) for r in self._iterate(self.collection, _ENTRY_FIELDS)), key=lambda e: e.id)

    def embeddings(self, ids) -> np.ndarray:
        """``(n, D) float32`` stored embeddings of these ids, in their order; ``KeyError`` for an unknown id."""
        ids = [int(i) for i in ids]
        got = {}
        with _backend_errors(self.uri):
            for chunk in _chunks(ids, _BATCH):
                for r in self._client.get(self.collection, ids=chunk, output_fields=["embedding"]):
                    got[int(r["id"])] = np.asarray(r["embedding"], dtype=np.float32)
        missing = [i for i in ids if i not in got]
        if missing:
            raise KeyError(missing[0])
        return np.stack([got[i] for i in ids]) if ids else np.zeros((0, self.embedder.dim), np.float32)

    # -- mutation -------------------------------------------------------------------------------------------
    def add(self, embeddings: np.ndarray, entries: list[dict]) -> np.ndarray:
        """Add faces; returns their new ids ``(n,) int64`` (never reused, even after removal or a crash).

        Args:
            embeddings: ``(n, D) float32`` unit-norm rows, D = the embedder's dimension.
            entries: n dicts with ``source``, ``face``, ``box`` (x, y, w, h), ``title``, optionally ``picture_hash``.

        Raises:
            ValueError: as many embeddings as entries not given, or rows of another dimension, or a box that is
                not four numbers. IndexBackendError: Milvus fails.
        """
        emb = np.asarray(embeddings, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[1] != self.embedder.dim:
            emb = emb.reshape(-1, self.embedder.dim)
        if len(entries) != len(emb):
            raise ValueError(f"{len(emb)} embeddings but {len(entries)} entries")
        parsed = [Entry.from_dict(0, e) for e in entries]
        if any(len(e.box) != 4 for e in parsed):
            raise ValueError("every box must be (x, y, w, h)")
        ids = np.arange(self.next_id, self.next_id + len(parsed), dtype=np.int64)
        if not len(ids):
            return ids
        with _backend_errors(self.uri):
            self._write_meta(self.next_id + len(ids))  # ids taken before the rows land: never given out twice
            rows = [
                {"id": int(i), "embedding": v, "source": escape_text(e.source), "face": e.face, "box": list(e.box),
                 "title": escape_text(e.title), "picture_hash": e.picture_hash, "group": escape_text(e.source)}
                for i, v, e in zip(ids, emb, parsed, strict=True)
            ]  # fmt: skip
            for chunk in _chunks(rows, _BATCH):
                self._client.insert(self.collection, chunk)
        return ids

    def remove_ids(self, ids) -> int:
        """Remove entries by id; returns how many were removed (unknown ids are ignored)."""
        ids = sorted({int(i) for i in ids})
        removed = 0
        with _backend_errors(self.uri):
            for chunk in _chunks(ids, _BATCH):
                found = self._client.query(self.collection, filter=f"id in [{','.join(map(str, chunk))}]",
                                           output_fields=["id"], consistency_level="Strong")  # fmt: skip
                present = [int(r["id"]) for r in found]
                if present:
                    self._client.delete(self.collection, ids=present)
                removed += len(present)
        return removed

    def remove_source(self, source: str) -> int:
        """Remove every face of one source file and forget the file; returns the faces removed."""
        expr = f"source == {_literal(source)}"
        with _backend_errors(self.uri):
            rows = self._client.query(self.collection, filter=expr, output_fields=["count(*)"],
                                      consistency_level="Strong")  # fmt: skip
            n = int(rows[0]["count(*)"])
            if n:
                self._client.delete(self.collection, filter=expr)
            if self._files.pop(source, None) is not None:
                self._client.delete(f"{self.collection}_files", ids=[escape_text(source)])
        return n

    def record_file(self, source: str, record: FileRecord) -> None:
        """Remember that ``source`` was processed (an upsert into the files collection)."""
        row = {"source": escape_text(source), "size": int(record.size), "mtime_ns": int(record.mtime_ns),
               "faces": int(record.faces), "skipped": None if record.skipped is None else escape_text(record.skipped),
               "finder": record.finder, "_v": [0.0, 0.0]}  # fmt: skip
        with _backend_errors(self.uri):
            self._client.upsert(f"{self.collection}_files", [row])
        self._files[source] = record

    def commit(self) -> None:
        """Flush the three collections: what was added, removed or recorded so far is durable."""
        with _backend_errors(self.uri):
            for name in (self.collection, f"{self.collection}_files", f"{self.collection}_meta"):
                self._client.flush(name)

    # -- search ----------------------------------------------------------------------------------------------
    def search(
        self, queries: np.ndarray, k: int = 3, *, group_by_source: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact k-nearest neighbours by Euclidean distance (Milvus FLAT/L2, strong consistency).

        Args:
            queries: ``(Q, D) float32`` (or ``(D,)`` for one query).
            k: neighbours per query, 1 to :data:`~facial_search.index.store.MAX_K`.
            group_by_source: one neighbour per picture group at most (its nearest face), through Milvus'
                ``group_by_field`` on ``group`` (for now one group per source file).

        Returns:
            ``(distances, ids)``, both ``(Q, k)``: float32 Euclidean distances (the square root of Milvus' squared
            L2; range [0, 2] for unit-norm embeddings), ascending per row; int64 ids, ``-1`` with distance
            ``inf`` where fewer than k faces (or groups) answer.

        Raises:
            OptionError: k outside 1..MAX_K. ValueError: queries of another dimension.
            IndexBackendError: Milvus fails.
        """
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= MAX_K:
            raise OptionError(f"k: must be a whole number from 1 to {MAX_K:,} (got {k!r})")
        k = int(k)
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None]
        if q.ndim != 2 or q.shape[1] != self.embedder.dim:
            raise ValueError(f"queries have dimension {q.shape[-1]}, index has {self.embedder.dim}")
        dist = np.full((len(q), k), np.inf, dtype=np.float32)
        ids = np.full((len(q), k), -1, dtype=np.int64)
        extra = {"group_by_field": "group", "group_size": 1} if group_by_source else {}
        step = max(1, min(1024, 100_000 // k))
        with _backend_errors(self.uri):
            for start in range(0, len(q), step):
                res = self._client.search(
                    self.collection, data=[row for row in q[start : start + step]], limit=k, anns_field="embedding",
                    search_params={"metric_type": METRIC, "params": {}}, output_fields=[],
                    consistency_level="Strong", **extra,
                )  # fmt: skip
                for r, hits in enumerate(res, start):
                    n = min(len(hits), k)
                    if n:
                        d2 = np.asarray([h["distance"] for h in hits[:n]], dtype=np.float32)
                        dist[r, :n] = np.sqrt(np.maximum(d2, 0.0))
                        ids[r, :n] = [int(h["id"]) for h in hits[:n]]
        return dist, ids

    # -- the rest of the protocol ----------------------------------------------------------------------------
    def describe(self) -> dict:
        """``{"backend": "milvus-lite" | "milvus", "uri", "collection", "faces", "images", "skipped",
        "embedder" (name), "embedder_version", "dim", "index_type": "FLAT", "metric": "L2", "next_id"}``."""
        return {"backend": self.backend, "uri": self.uri, "collection": self.collection, "faces": self.ntotal,
                "images": len(self._files), "skipped": len(self.skipped), "embedder": self.embedder.name,
                "embedder_version": self.embedder.version, "dim": self.embedder.dim, "index_type": INDEX_TYPE,
                "metric": METRIC, "next_id": self.next_id}  # fmt: skip

    def close(self) -> None:
        """Release the connection (Milvus Lite: the database); idempotent."""
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def __enter__(self) -> MilvusStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MilvusStore({self.uri!r}, embedder={self.embedder}, next_id={self.next_id})"

    # -- internals -------------------------------------------------------------------------------------------
    def _write_meta(self, next_id: int) -> None:
        meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "embedder": vars(self.embedder), "next_id": next_id}
        self._client.upsert(f"{self.collection}_meta", [{"key": "meta", "value": json.dumps(meta), "_v": [0.0, 0.0]}])
        self.next_id = next_id

    def _iterate(self, collection: str, fields: list[str]) -> Iterator[dict]:
        """Every row of a collection, in pages (a server caps one query at 16,384 rows)."""
        with _backend_errors(self.uri):
            it = self._client.query_iterator(collection, batch_size=_ITER_BATCH, filter="", output_fields=fields,
                                             consistency_level="Strong")  # fmt: skip
            try:
                while page := it.next():
                    yield from page
            finally:
                it.close()


_ENTRY_FIELDS = ["id", "source", "face", "box", "title", "picture_hash"]


def _entry(r: dict) -> Entry:
    return Entry(int(r["id"]), unescape_text(r["source"]), int(r["face"]), tuple(int(v) for v in r["box"]),
                 unescape_text(r["title"]), r.get("picture_hash"))  # fmt: skip


def _file_record(r: dict) -> FileRecord:
    skipped = r.get("skipped")
    return FileRecord(int(r["size"]), int(r["mtime_ns"]), int(r["faces"]),
                      None if skipped is None else unescape_text(skipped), r.get("finder"))  # fmt: skip


def _chunks(seq: list, n: int) -> Iterator[list]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def _connect(uri: str, backend: str, client_uri: str):
    try:
        from pymilvus import MilvusClient
        from pymilvus.exceptions import MilvusException
    except ImportError:
        raise MissingDependencyError(
            f"{uri}: the Milvus backend needs pymilvus (and Milvus Lite): pip install 'facial-search[milvus]'"
        ) from None

    try:
        if backend == "milvus-lite":
            return MilvusClient(client_uri)
        return MilvusClient(uri=client_uri, timeout=10)
    except MilvusException as e:
        if backend == "milvus-lite":
            raise IndexFormatError(f"{uri}: not a Milvus Lite database, or in use ({e.message})") from None
        raise IndexBackendError(f"{uri}: cannot reach the Milvus server at {client_uri} ({e.message})") from None
    except OSError as e:  # Milvus Lite: a path it cannot create its folder at
        raise IndexFormatError(f"{uri}: cannot open a Milvus Lite database at {client_uri} ({e})") from None


@contextmanager
def _backend_errors(uri: str):
    """Milvus' own exceptions as :class:`IndexBackendError` (one line, naming the store)."""
    from pymilvus.exceptions import MilvusException

    try:
        yield
    except MilvusException as e:
        raise IndexBackendError(f"{uri}: Milvus failed: {e.message}") from None


def _read_meta(uri: str, client, meta_name: str) -> dict:
    rows = client.query(meta_name, filter='key == "meta"', output_fields=["value"], consistency_level="Strong")
    if not rows:
        raise IndexFormatError(f"{uri}: the store's meta record is missing")
    try:
        meta = json.loads(rows[0]["value"])
    except (TypeError, ValueError):
        raise IndexFormatError(f"{uri}: the store's meta record is not JSON") from None
    if not isinstance(meta, dict):
        raise IndexFormatError(f"{uri}: the store's meta record is not an object")
    return meta


def _create_collections(client, collection: str, embedder: EmbedderInfo) -> None:
    from pymilvus import DataType

    def flat(field: str):
        params = client.prepare_index_params()
        params.add_index(field, index_type=INDEX_TYPE, metric_type=METRIC)
        return params

    if not client.has_collection(collection):
        s = client.create_schema(auto_id=False, enable_dynamic_field=False)
        s.add_field("id", DataType.INT64, is_primary=True)
        s.add_field("embedding", DataType.FLOAT_VECTOR, dim=embedder.dim)
        s.add_field("source", DataType.VARCHAR, max_length=_TEXT_MAX)
        s.add_field("face", DataType.INT64)
        s.add_field("box", DataType.ARRAY, element_type=DataType.INT64, max_capacity=4)
        s.add_field("title", DataType.VARCHAR, max_length=_TEXT_MAX)
        s.add_field("picture_hash", DataType.VARCHAR, max_length=64, nullable=True)
        s.add_field("group", DataType.VARCHAR, max_length=_TEXT_MAX)
        client.create_collection(collection, schema=s, index_params=flat("embedding"), consistency_level="Strong")
    files = f"{collection}_files"
    if not client.has_collection(files):
        s = client.create_schema(auto_id=False, enable_dynamic_field=False)
        s.add_field("source", DataType.VARCHAR, is_primary=True, max_length=_TEXT_MAX)
        s.add_field("size", DataType.INT64)
        s.add_field("mtime_ns", DataType.INT64)
        s.add_field("faces", DataType.INT64)
        s.add_field("skipped", DataType.VARCHAR, max_length=_TEXT_MAX, nullable=True)
        s.add_field("finder", DataType.VARCHAR, max_length=64, nullable=True)
        s.add_field("_v", DataType.FLOAT_VECTOR, dim=2)  # Milvus wants a vector field in every collection
        client.create_collection(files, schema=s, index_params=flat("_v"), consistency_level="Strong")
    meta = f"{collection}_meta"
    s = client.create_schema(auto_id=False, enable_dynamic_field=False)
    s.add_field("key", DataType.VARCHAR, is_primary=True, max_length=64)
    s.add_field("value", DataType.VARCHAR, max_length=_TEXT_MAX)
    s.add_field("_v", DataType.FLOAT_VECTOR, dim=2)
    client.create_collection(meta, schema=s, index_params=flat("_v"), consistency_level="Strong")


__all__ = ["MilvusStore", "parse_uri", "escape_text", "unescape_text", "FORMAT_NAME", "FORMAT_VERSION"]
