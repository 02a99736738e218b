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
  VARCHAR (the face's 64-bit dHash as 16 hex digits, ``""`` for none), ``group`` VARCHAR: the picture the face
  belongs to, which a grouping search folds on (see *Pictures* below); ``extra`` VARCHAR: the optional entry
  fields (:data:`facial_search.index.store.OPTIONAL_FIELDS`) as compact JSON, only those a face has
  (``{"blendshapes": base64 of the 52 scores quantised to uint8 as the file store does, "t_start": s,
  "t_end": s, "t_frame": s, "track": n}``; times rounded to float32, so both backends give back the same
  values), ``""`` for none. A collection made before ``extra`` existed reads them as ``None`` and drops
  them on add (logged once: re-create the store to keep them; Milvus before 2.6 cannot add a field).
  Vector index: ``FLAT`` with metric ``L2`` by default, on Milvus Lite and on a server: exact, so results equal
  the file backend's; a search takes time linear in the faces (at 100,000: 28-59 ms on a Milvus 2.3.5 server,
  81-118 ms on Milvus Lite, FAISS flat 2-24 ms in the same runs; ``benchmarks/bench_milvus.py``). Past about a
  million faces a server wants an ANN index: the URI that creates the store may name one,
  ``?index=HNSW[&M=16][&efConstruction=80][&ef=64]`` or ``?index=IVF_FLAT[&nlist=1024][&nprobe=16]``
  (:data:`INDEX_OPTIONS`, :func:`parse_index_options`); it is recorded in the meta record, and a later URI
  may change only its search option (``ef``, ``nprobe``). Both are tested on the 2.3.5 server and on Milvus
  Lite 3.2 (which builds them with FAISS); Milvus Lite's cost per request (100-250 ms at 100,000 faces) stayed
  about the same with HNSW in a trial, so Lite is for small stores.
- ``C_files``: one row per processed source file (:class:`~facial_search.index.store.FileRecord`), keyed by
  source.
- ``C_meta``: one row, ``{"format", "version", "embedder": {name, version, dim}, "next_id"}`` as JSON; its
  presence marks a complete store, and reopening checks the embedder against it.

No field is nullable (Milvus has nullable fields from 2.5 on; a 2.3 or 2.4 server refuses them): ``""`` stands
for "none" in ``picture_hash`` and in the files' ``skipped`` and ``finder`` (a store written by the first
release, with nullable fields and nulls, reads the same).

*Pictures.* A face's group is decided when it is added, never by comparing all pairs: the faces of one source
file share a group, and a face joins the group of every stored face that is the same picture by
:data:`facial_search.index.dedupe.DUPLICATE_RULES` (embedding distance under a tier's ``distance`` and at most
its ``max_hamming`` dHash bits apart), so one template saved under two names is one group, as in the file
backend (the same groups on the tests' memes). The candidates of a new face are the nearest
:data:`DUPLICATE_CANDIDATES` stored faces with a picture hash within the largest tier distance (a range search
on a server; on Milvus Lite a plain search, the radius applied here) and the other faces of the same
:meth:`~MilvusStore.add` call. Where a face joins several existing groups, all but one (an existing group
before a new one, then the label that sorts first) are relabelled: an upsert of their rows (duplicates are
rare, so is this). The cost is one search per added face: linear in the store's size with the FLAT index,
sublinear with an ANN index; a region denser than ``DUPLICATE_CANDIDATES`` faces within the radius can hide a
duplicate of the loosest tier (5,000 faces added to 100,000 synthetic ones made dense on purpose,
``benchmarks/bench_milvus.py``: 0.7% more pictures than the file backend's merge over all faces finds with 64
candidates, 0.2% with 256, at 0.6 times the speed). A new
group's label is ``#`` and the id of its first face (ids are never reused, so neither are labels; a
first-release store keeps the escaped source as its groups' labels). Removing a file leaves the groups of the
others as they are, even where it was the only link between two of them.

*Grouping search.* Milvus' ``group_by_field`` (Milvus 2.4 and later, and Milvus Lite) on ``group``, one face per
group. A server older than 2.4 ignores ``group_by_field`` without an error (Milvus 2.3.5 returns plain hits),
so the server's version is asked when the store is opened (:attr:`MilvusStore.server_grouping`) and an older
one is searched plainly with an over-fetch and grouped here: a plain top-k' (k' = 4k, then 4 times more) with
each face's group, keeping each group's nearest face, until k groups are nearer than the k'-th face (then the
answer is exact, as :func:`facial_search.index.kernels.grouped_top_k` does for the file store) or k' reaches
Milvus' largest top-k (16,384 faces; beyond it, a query gets the groups found so far, padded with ``-1``).

Tested against Milvus Lite 3.2 and a Milvus 2.3.5 standalone server (the PyPI package ``milvus``, the newest
build there), with pymilvus 3.0 as the client: insert, upsert, delete by ids, query and ``count(*)``, query
iterators, range searches, Session and Strong consistency, flush.

Milvus VARCHAR holds valid UTF-8 only, but a file name need not be (Python gives such names as str with
surrogate escapes, ``b"caf\\xe9.jpg"`` -> ``"caf\\udce9.jpg"``): text fields are stored percent-escaped
(:func:`escape_text`: ``%``, quotes, backslashes, control characters and surrogates become ``%XX`` or
``%uXXXX``), which is reversible, so :meth:`MilvusStore.entry` gives back the exact str, and which keeps
filter expressions free of quoting problems.

Reads are ``consistency_level="Session"`` (:data:`READ_CONSISTENCY`): a process sees its own writes at once (a
search right after :meth:`MilvusStore.add` finds the new faces), and another process's within Milvus' time tick
(200 ms by default); opening a store reads its meta record and files with ``"Strong"``. On a server, a
``"Strong"`` request waits for the next time tick: measured on Milvus 2.3.5, 200 ms a search or query against
2-6 ms (``benchmarks/bench_milvus.py``); a ``"Session"`` one waits only right after this client wrote to the
collection (so indexing into a server waits about one tick per file: its duplicate search must see the file
before). Deletes are by primary key (a delete by filter waits a tick on a server too). The store assumes one
writer at a time (Milvus has no transactions; two processes adding to one collection could take the same ids).
"""

from __future__ import annotations

import base64
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
from facial_search.index.dedupe import DUPLICATE_RULES
from facial_search.index.store import MAX_K, OPTIONAL_FIELDS, EmbedderInfo, Entry, FileRecord, parse_optional
from facial_search.index.table import blendshape_scores

#: ``format`` and ``version`` recorded in a store's meta collection.
FORMAT_NAME = "facial-search-milvus"
FORMAT_VERSION = 1
DEFAULT_COLLECTION = "facial_search"
INDEX_TYPE = "FLAT"  # the default vector index (exact); others: INDEX_OPTIONS
METRIC = "L2"
#: The vector indexes a store can be made with (``?index=TYPE`` in its URI, Milvus' names), each with its build
#: parameters (set when the collection is created, recorded in the meta record) and its search parameter (per
#: open, from the URI), and their defaults: HNSW M 16, efConstruction 80 (as the file store's ``--ann hnsw``),
#: ef 64 (at least the top-k asked for is used); IVF_FLAT nlist 1024 (about 4 sqrt(n) at 65k faces: pass
#: ``4 * sqrt(faces)``, e.g. 4096 for 1M), nprobe 16.
INDEX_OPTIONS: Mapping[str, tuple[Mapping[str, int], Mapping[str, int]]] = MappingProxyType({
    "FLAT": ({}, {}),
    "HNSW": ({"M": 16, "efConstruction": 80}, {"ef": 64}),
    "IVF_FLAT": ({"nlist": 1024}, {"nprobe": 16}),
})  # fmt: skip
#: Bounds (inclusive) of each index option (Milvus' own; ef: a server's HNSW allows up to 32,768).
_INDEX_LIMITS = {
    "M": (2, 2048),
    "efConstruction": (1, 65_536),
    "ef": (1, 32_768),
    "nlist": (1, 65_536),
    "nprobe": (1, 65_536),
}
_TEXT_MAX = 65_535  # bytes, Milvus' largest VARCHAR
_EXTRA_MAX = 512  # bytes of the ``extra`` JSON (blendshapes: 72 of base64; each time up to ~30)
_BATCH = 5_000  # rows per insert / ids per delete
_ADD_BATCH = 2_048  # faces given their groups together (a range search each, and their pairs among themselves)
_SEARCH_LIMIT = 16_384  # Milvus' largest top-k (limit) of a search
# queries per duplicate-candidate search: Milvus Lite's cost per request grows with the store (~150-300 ms at
# 100,000 faces) and per query with many queries at once; 50-64 a request was the fastest (bench_milvus.py)
_CANDIDATE_STEP = 64
#: How many of the nearest stored faces within the loosest duplicate tier's distance are checked for each added
#: face (:data:`facial_search.index.dedupe.DUPLICATE_RULES`).
DUPLICATE_CANDIDATES = 64
_GROUP_BY_SINCE = (2, 4)  # the first Milvus server release with search group_by_field
_VERSION = re.compile(r"(\d+)\.(\d+)")
#: The consistency level of every read but those when opening (``"Strong"``): see the module's docstring.
READ_CONSISTENCY = "Session"
_ITER_BATCH = 5_000  # rows per query_iterator page (a query returns at most 16,384 rows on a server)
_COLLECTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,200}")

_ESCAPED_ASCII = frozenset("%\"\\'") | {chr(c) for c in range(0x20)} | {"\x7f"}
_UNESCAPE = re.compile(r"%u([0-9A-F]{4})|%([0-9A-F]{2})")

log = logging.getLogger(__name__)
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
    """A text as a Milvus filter string literal of its escaped form (escaped text holds no quote or backslash)."""
    return f'"{escape_text(s)}"'


def _literal_raw(stored: str) -> str:
    """A value as stored (already escaped: a group label) as a Milvus filter string literal."""
    return f'"{stored}"'


_HASH = re.compile(r"[0-9a-fA-F]{16}")


def _same_picture(distance: float, hamming: int) -> bool:
    """Whether two faces this far apart (Euclidean) with this many differing dHash bits are one picture
    (:data:`~facial_search.index.dedupe.DUPLICATE_RULES`)."""
    return any(distance < d and hamming <= bits for d, bits in DUPLICATE_RULES)


def _batch_pairs(emb: np.ndarray, bits: np.ndarray, radius: float) -> Iterator[tuple[int, int]]:
    """The pairs ``(a, b)``, a < b, of rows of ``emb`` ``(n, D)`` (unit-norm; ``bits``: their ``(n,) uint64``
    dHashes) that are one picture by :func:`_same_picture` (n is at most ``_ADD_BATCH``: all pairs of one call)."""
    if len(emb) < 2:
        return
    sq = np.maximum(2.0 - 2.0 * (emb @ emb.T), 0.0)
    a, b = np.nonzero(np.triu(sq < radius * radius, 1))
    if not len(a):
        return
    dist = np.sqrt(sq[a, b])
    ham = np.bitwise_count(bits[a] ^ bits[b])
    ok = np.zeros(len(a), dtype=bool)
    for d, max_bits in DUPLICATE_RULES:
        ok |= (dist < d) & (ham <= max_bits)
    yield from zip(a[ok].tolist(), b[ok].tolist(), strict=True)


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


class VectorIndex:
    """The vector index of a store's faces: ``index_type`` (a key of :data:`INDEX_OPTIONS`), ``build`` (its build
    parameters, e.g. ``{"M": 16, "efConstruction": 80}``) and ``search`` (its search parameters, e.g.
    ``{"ef": 64}``; ``{}`` for FLAT)."""

    def __init__(self, index_type: str = INDEX_TYPE, build: Mapping | None = None, search: Mapping | None = None):
        self.index_type = index_type
        self.build = dict(INDEX_OPTIONS[index_type][0]) | dict(build or {})
        self.search = dict(INDEX_OPTIONS[index_type][1]) | dict(search or {})
        if index_type == "IVF_FLAT" and not (search and "nprobe" in search):  # at most every list
            self.search["nprobe"] = min(self.search["nprobe"], self.build["nlist"])

    def search_params(self, limit: int) -> dict:
        """Milvus' ``search_params["params"]`` of a search for ``limit`` hits (HNSW's ``ef`` at least ``limit``)."""
        if self.index_type == "HNSW":
            return {"ef": max(self.search["ef"], limit)}
        return dict(self.search)

    def record(self) -> dict:
        """``{"type", "params"}``: what the meta record keeps."""
        return {"type": self.index_type, "params": dict(self.build)}

    def __eq__(self, other) -> bool:
        return isinstance(other, VectorIndex) and vars(self) == vars(other)

    def __repr__(self) -> str:
        return f"VectorIndex({self.index_type!r}, build={self.build}, search={self.search})"


def parse_index_options(uri: str) -> tuple[str | None, dict, dict]:
    """``(index type, build parameters, search parameters)`` given in a store URI's query: ``?index=FLAT|HNSW|
    IVF_FLAT``, ``M``, ``efConstruction``, ``ef`` (HNSW), ``nlist``, ``nprobe`` (IVF_FLAT), e.g.
    ``milvus://HOST:PORT/memes?index=HNSW&M=16&efConstruction=80&ef=64`` or
    ``milvus-lite://m.db?index=IVF_FLAT&nlist=256&nprobe=8`` (Milvus Lite also takes ``collection=NAME``). The
    type is the one the options belong to where ``index`` is not given; ``None`` where nothing is.

    Raises:
        OptionError: an unknown key or index type, a key given twice or for another index type than
            ``index`` names, a value that is no whole number within Milvus' bounds, ``nprobe`` above ``nlist``.
    """
    lite = uri.startswith("milvus-lite://")
    given: dict[str, str] = {}
    for key, value in urllib.parse.parse_qsl(urllib.parse.urlsplit(uri).query, keep_blank_values=True):
        if key in given:
            raise OptionError(f"{uri}: {key!r} given twice")
        given[key] = value
    if lite:
        given.pop("collection", None)
    index_type = given.pop("index", None)
    if index_type is not None:
        if index_type.upper() not in INDEX_OPTIONS:
            raise OptionError(f"{uri}: unknown index {index_type!r} (one of {', '.join(INDEX_OPTIONS)})")
        index_type = index_type.upper()
    unknown = sorted(set(given) - set(_INDEX_LIMITS))
    if unknown:
        keys = ", ".join(["index", *_INDEX_LIMITS] + (["collection"] if lite else []))
        raise OptionError(f"{uri}: unknown option {unknown[0]!r} (the URI takes {keys})")
    values = {}
    for key, text in given.items():
        low, high = _INDEX_LIMITS[key]
        if not text.isdigit() or not low <= int(text) <= high:
            raise OptionError(f"{uri}: {key} must be a whole number from {low} to {high}, not {text!r}")
        values[key] = int(text)
    kinds = {t for t, (b, s) in INDEX_OPTIONS.items() if set(values) & (set(b) | set(s))}
    if len(kinds) > 1 or (index_type is not None and kinds and kinds != {index_type}):
        raise OptionError(f"{uri}: {', '.join(values)}: not options of {index_type or 'one index type'} "
                          "(HNSW: M, efConstruction, ef; IVF_FLAT: nlist, nprobe; FLAT: none)")  # fmt: skip
    if values.get("nprobe", 0) > values.get("nlist", 1 << 30):
        raise OptionError(f"{uri}: nprobe ({values['nprobe']}) must be at most nlist ({values['nlist']})")
    index_type = index_type or next(iter(kinds), None)
    build_keys = INDEX_OPTIONS[index_type][0] if index_type else {}
    build = {k: v for k, v in values.items() if k in build_keys}
    return index_type, build, {k: v for k, v in values.items() if k not in build_keys}


def _index_of(uri: str, recorded: VectorIndex | None, given: tuple[str | None, dict, dict]) -> VectorIndex:
    """The index of a store: ``recorded`` (an existing collection's) with the URI's search parameters, or
    (``recorded`` ``None``: a collection to create) the URI's, FLAT where it names none.

    Raises:
        OptionError: build options (``index``, ``M``, ``efConstruction``, ``nlist``) other than an existing
            collection's (they are set when it is made), search options of another index type, or
            ``nprobe`` above ``nlist``.
    """
    index_type, build, search = given
    if recorded is None:
        index = VectorIndex(index_type or INDEX_TYPE, build, search)
    else:
        if (index_type or recorded.index_type) != recorded.index_type or any(
            recorded.build[k] != v for k, v in build.items()
        ):
            have = ", ".join(f"{k}={v}" for k, v in recorded.build.items())
            may = ", ".join(INDEX_OPTIONS[recorded.index_type][1]) or "none"
            raise OptionError(
                f"{uri}: the collection's index is {recorded.index_type}{f' ({have})' if have else ''}, set when it "
                f"was made; its URI may change only the search option ({may})"
            )
        index = VectorIndex(recorded.index_type, recorded.build, search)
    if index.index_type == "IVF_FLAT" and index.search["nprobe"] > index.build["nlist"]:
        raise OptionError(f"{uri}: nprobe ({index.search['nprobe']}) must be at most nlist ({index.build['nlist']})")
    return index


def _recorded_index(uri: str, meta: dict, client, collection: str) -> VectorIndex:
    """The index a store's meta record names (a store without one: FLAT), checked against the collection's."""
    rec = meta.get("index", {"type": INDEX_TYPE, "params": {}})
    ok = isinstance(rec, dict) and set(rec) == {"type", "params"} and rec["type"] in INDEX_OPTIONS
    ok = ok and isinstance(rec["params"], dict) and set(rec["params"]) == set(INDEX_OPTIONS[rec["type"]][0])
    if not ok or not all(isinstance(v, int) and not isinstance(v, bool) for v in rec["params"].values()):
        raise IndexFormatError(f"{uri}: damaged meta record (index {rec!r})")
    actual = (client.describe_index(collection, "embedding") or {}).get("index_type")
    if actual and actual != rec["type"]:
        raise IndexFormatError(f"{uri}: the collection's index is {actual}, but its meta record says {rec['type']}")
    return VectorIndex(rec["type"], rec["params"])


class MilvusStore:
    """A :class:`~facial_search.index.base.Store` in a Milvus collection (Milvus Lite or a server).

    Open it with :meth:`open`. Attributes: ``uri`` (as given), ``embedder``
    (:class:`~facial_search.index.store.EmbedderInfo`), ``next_id`` (the id the next added face gets),
    ``backend`` (``"milvus-lite"`` or ``"milvus"``), ``collection``, ``server_version`` (as the server gives
    it, e.g. ``"v2.3.5-lite"`` or ``"milvus_lite-3.2.2"``), ``server_grouping`` (``True`` where the server groups
    a search itself with ``group_by_field``: Milvus Lite, Milvus 2.4 and later; else the grouping is done here).
    """

    def __init__(self, uri: str, backend: str, client, collection: str, embedder: EmbedderInfo, next_id: int,
                 server_version: str = "", server_grouping: bool = True):  # fmt: skip
        self.uri = uri
        self.backend = backend
        self.collection = collection
        self.embedder = embedder
        self.next_id = next_id
        self.server_version = server_version
        self.server_grouping = server_grouping
        self._client = client
        self._files: dict[str, FileRecord] = {}
        self._has_extra = True  # the collection has the ``extra`` field (set when opened)
        self._warned_extra = False
        self.index = VectorIndex()  # the faces' vector index (set when opened)

    @property
    def _entry_fields(self) -> list[str]:
        return [*_ENTRY_FIELDS, "extra"] if self._has_extra else _ENTRY_FIELDS

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
        given = parse_index_options(uri)
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
                store = cls._open_collections(uri, backend, client, collection, embedder, create, given)
        except BaseException:
            client.close()
            raise
        return store

    @classmethod
    def _open_collections(cls, uri, backend, client, collection, embedder, create, given=(None, {}, {})):
        meta_name = f"{collection}_meta"
        names = set(client.list_collections())
        if meta_name not in names:
            if collection in names:
                raise IndexFormatError(f"{uri}: collection {collection!r} is not a facial-search store (no meta)")
            if not create:
                raise InputNotFoundError(f"{uri}: no collection {collection!r} (create it with `facial-search index`)")
            index = _index_of(uri, None, given)
            _create_collections(client, collection, embedder, index)
            meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "embedder": vars(embedder), "next_id": 0,
                    "index": index.record()}  # fmt: skip
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
        version = str(client.get_server_version())
        store = cls(uri, backend, client, collection, info, next_id, version, _groups_itself(backend, version))
        store.index = _index_of(uri, _recorded_index(uri, meta, client, collection), given)
        with _backend_errors(uri):
            names = {f["name"] for f in client.describe_collection(collection).get("fields", [])}
        store._has_extra = "extra" in names
        fields = ["source", "size", "mtime_ns", "faces", "skipped", "finder"]
        rows = store._iterate(f"{collection}_files", fields, "", "Strong")
        store._files = {unescape_text(r["source"]): _file_record(r) for r in rows}
        return store

    # -- size and access ---------------------------------------------------------------------------------------
    @property
    def ntotal(self) -> int:
        """Faces in the store (a strong-consistency count)."""
        with _backend_errors(self.uri):
            rows = self._client.query(
                self.collection, filter="", output_fields=["count(*)"], consistency_level=READ_CONSISTENCY
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
            rows = self._client.query(self.collection, filter=f"id == {int(id)}", output_fields=self._entry_fields,
                                      consistency_level=READ_CONSISTENCY)  # fmt: skip
        if not rows:
            raise KeyError(id)
        return _entry(rows[0])

    def entries(self) -> list[Entry]:
        """Every entry, in id order."""
        return sorted((_entry(r) for r in self._iterate(self.collection, self._entry_fields)), key=lambda e: e.id)

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
    def add(self, embeddings: np.ndarray, entries: list[dict], *, groups: list[str] | None = None) -> np.ndarray:
        """Add faces; returns their new ids ``(n,) int64`` (never reused, even after removal or a crash). Each face
        gets its picture group (the module's *Pictures*): its source's, joined with those of the stored faces
        and the faces of this call that are the same picture.

        Args:
            embeddings: ``(n, D) float32`` unit-norm rows, D = the embedder's dimension.
            entries: n dicts with ``source``, ``face``, ``box`` (x, y, w, h), ``title``, optionally
                ``picture_hash`` (:func:`~facial_search.index.dedupe.face_dhash`: 16 hex digits, or ``None``)
                and the optional fields of :meth:`MemeIndex.add <facial_search.index.store.MemeIndex.add>`
                (``blendshapes``, ``t_start``, ``t_end``, ``t_frame``, ``track``; checked the same way).
            groups: the n faces' group labels when the caller knows them already (a bulk copy of another
                store whose pictures were grouped, e.g. a file index's :meth:`MemeIndex.source_groups` as
                ``"#<number>"``): stored as given, without the duplicate search; the caller answers for them
                (faces of one source in one group, labels apart from the store's others).

        Raises:
            ValueError: as many embeddings as entries (and groups) not given, or rows of another dimension, or a
                box that is not four numbers, or a picture hash that is not 16 hex digits, or a group label that
                is empty or holds a quote or backslash; optional fields as ``MemeIndex.add`` refuses them.
                IndexBackendError: Milvus fails.
        """
        emb = np.asarray(embeddings, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[1] != self.embedder.dim:
            emb = emb.reshape(-1, self.embedder.dim)
        if len(entries) != len(emb):
            raise ValueError(f"{len(emb)} embeddings but {len(entries)} entries")
        extras = _extras(parse_optional(entries), len(entries))
        if not self._has_extra and any(extras):
            if not self._warned_extra:
                log.warning("%s: a collection made before optional entry fields: blendshapes and moments are not "
                            "stored (re-create the store to keep them)", self.uri)  # fmt: skip
                self._warned_extra = True
        parsed = [Entry.from_dict(0, e) for e in entries]
        if any(len(e.box) != 4 for e in parsed):
            raise ValueError("every box must be (x, y, w, h)")
        for e in parsed:
            if e.picture_hash is not None and not _HASH.fullmatch(e.picture_hash):
                raise ValueError(f"picture_hash must be 16 hex digits or None (got {e.picture_hash!r})")
        if groups is not None:
            groups = [str(g) for g in groups]
            if len(groups) != len(parsed):
                raise ValueError(f"{len(parsed)} entries but {len(groups)} groups")
            if any(not g or escape_text(g) != g for g in groups):
                raise ValueError("a group label must be non-empty text without quotes, backslashes, % or controls")
        ids = np.arange(self.next_id, self.next_id + len(parsed), dtype=np.int64)
        if not len(ids):
            return ids
        with _backend_errors(self.uri):
            self._write_meta(self.next_id + len(ids))  # ids taken before the rows land: never given out twice
            for start in range(0, len(ids), _ADD_BATCH):
                part = slice(start, start + _ADD_BATCH)
                labels = groups[part] if groups is not None else self._assign_groups(emb[part], parsed[part], ids[part])
                rows = [
                    {"id": int(i), "embedding": v, "source": escape_text(e.source), "face": e.face,
                     "box": list(e.box), "title": escape_text(e.title), "picture_hash": e.picture_hash or "",
                     "group": g, **({"extra": x} if self._has_extra else {})}
                    for i, v, e, g, x in zip(ids[part], emb[part], parsed[part], labels, extras[part], strict=True)
                ]  # fmt: skip
                for chunk in _chunks(rows, _BATCH):
                    self._client.insert(self.collection, chunk)
        return ids

    def _assign_groups(self, emb: np.ndarray, parsed: list[Entry], ids: np.ndarray) -> list[str]:
        """The group label of each face about to be added (see the module's *Pictures*), relabelling the stored
        groups that these faces join to one another."""
        sources = [e.source for e in parsed]
        first_id: dict[str, int] = {}
        for s, i in zip(sources, ids, strict=True):
            first_id.setdefault(s, int(i))
        stored = self._groups_of_sources(list(first_id))
        label = {s: stored.get(s, f"#{i}") for s, i in first_id.items()}
        existing = set(stored.values())
        parent: dict[str, str] = {}

        def root(g: str) -> str:
            while parent.get(g, g) != g:
                g = parent[g]
            return g

        def join(a: str, b: str) -> None:
            ra, rb = root(a), root(b)
            if ra != rb:
                keep, drop = sorted((ra, rb), key=lambda g: (g not in existing, g))
                parent[drop] = keep

        # a video's moments: each one result of its own (issue 18), not one per video
        face_label = [
            f"#{int(i)}" if e.t_start is not None else label[s] for s, e, i in zip(sources, parsed, ids, strict=True)
        ]
        hashed = [i for i, e in enumerate(parsed) if e.picture_hash]
        if hashed:
            bits = np.array([int(parsed[i].picture_hash, 16) for i in hashed], dtype=np.uint64)
            radius = max(d for d, _ in DUPLICATE_RULES)
            res = []
            for chunk in _chunks(hashed, _CANDIDATE_STEP):
                res += self._client.search(
                    self.collection, data=[emb[i] for i in chunk], limit=DUPLICATE_CANDIDATES,
                    anns_field="embedding", filter='picture_hash != ""', output_fields=["group", "picture_hash"],
                    search_params={"metric_type": METRIC, "params": self._candidate_params(radius)},
                    consistency_level=READ_CONSISTENCY,
                )  # fmt: skip
            for i, b, hits in zip(hashed, bits, res, strict=True):
                for h in hits:
                    other = h["entity"]
                    g = other["group"]
                    if root(g) != root(face_label[i]) and _same_picture(
                        float(np.sqrt(max(h["distance"], 0.0))), (int(b) ^ int(other["picture_hash"], 16)).bit_count()
                    ):
                        existing.add(g)
                        join(face_label[i], g)
            e = emb[hashed]
            for a, b in _batch_pairs(e, bits, radius):  # the faces of this call among themselves
                join(face_label[hashed[a]], face_label[hashed[b]])
        moved = {g: root(g) for g in existing if root(g) != g}
        if moved:
            self._relabel(moved)
        return [root(g) for g in face_label]

    def _candidate_params(self, radius: float) -> dict:
        """Search parameters of the duplicate candidates: a range search (squared L2 under ``radius``) on a server;
        on Milvus Lite a plain top-k, the radius applied here (its range search took 5-7x as long, measured); with
        the index's search parameter (HNSW ef, IVF_FLAT nprobe)."""
        params = self.index.search_params(DUPLICATE_CANDIDATES)
        return params if self.backend == "milvus-lite" else params | {"radius": radius * radius}

    def _groups_of_sources(self, sources: list[str]) -> dict[str, str]:
        """``{source: group}`` of the given sources that have stored faces."""
        out: dict[str, str] = {}
        for chunk in _chunks(sources, 256):
            expr = f"source in [{', '.join(_literal(s) for s in chunk)}]"
            rows = self._client.query(self.collection, filter=expr, output_fields=["source", "group"],
                                      consistency_level=READ_CONSISTENCY, limit=_SEARCH_LIMIT)  # fmt: skip
            for r in rows:
                out.setdefault(unescape_text(r["source"]), r["group"])
        return out

    def _relabel(self, moved: dict[str, str]) -> None:
        """Move every face of each group ``old`` to group ``moved[old]`` (one query and one upsert for a few
        hundred groups)."""
        fields = [*self._entry_fields, "embedding", "group"]
        for chunk in _chunks(sorted(moved), 256):
            expr = f"group in [{', '.join(_literal_raw(g) for g in chunk)}]"
            rows = self._client.query(self.collection, filter=expr, output_fields=fields, limit=_SEARCH_LIMIT,
                                      consistency_level=READ_CONSISTENCY)  # fmt: skip
            if len(rows) >= _SEARCH_LIMIT:
                rows = list(self._iterate(self.collection, fields, expr))
            rows = [{**r, "group": moved[r["group"]], "embedding": np.asarray(r["embedding"], dtype=np.float32),
                     "picture_hash": r.get("picture_hash") or ""} for r in rows]  # fmt: skip
            for part in _chunks(rows, _BATCH):
                self._client.upsert(self.collection, part)

    def remove_ids(self, ids) -> int:
        """Remove entries by id; returns how many were removed (unknown ids are ignored)."""
        ids = sorted({int(i) for i in ids})
        removed = 0
        with _backend_errors(self.uri):
            for chunk in _chunks(ids, _BATCH):
                found = self._client.query(self.collection, filter=f"id in [{','.join(map(str, chunk))}]",
                                           output_fields=["id"], consistency_level=READ_CONSISTENCY)  # fmt: skip
                present = [int(r["id"]) for r in found]
                if present:
                    self._client.delete(self.collection, ids=present)
                removed += len(present)
        return removed

    def remove_source(self, source: str) -> int:
        """Remove every face of one source file and forget the file; returns the faces removed."""
        expr = f"source == {_literal(source)}"
        with _backend_errors(self.uri):
            rows = self._client.query(self.collection, filter=expr, output_fields=["id"], limit=_SEARCH_LIMIT,
                                      consistency_level=READ_CONSISTENCY)  # fmt: skip
            if len(rows) >= _SEARCH_LIMIT:
                rows = list(self._iterate(self.collection, ["id"], expr))
            ids = [int(r["id"]) for r in rows]
            for chunk in _chunks(ids, _BATCH):  # by primary key: a delete by filter waits a time tick on a server
                self._client.delete(self.collection, ids=chunk)
            n = len(ids)
            if self._files.pop(source, None) is not None:
                self._client.delete(f"{self.collection}_files", ids=[escape_text(source)])
        return n

    def record_file(self, source: str, record: FileRecord) -> None:
        """Remember that ``source`` was processed (an upsert into the files collection)."""
        row = {"source": escape_text(source), "size": int(record.size), "mtime_ns": int(record.mtime_ns),
               "faces": int(record.faces), "skipped": escape_text(record.skipped) if record.skipped else "",
               "finder": record.finder or "", "_v": [0.0, 0.0]}  # fmt: skip
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
            group_by_source: one neighbour per picture at most (its nearest face): Milvus' ``group_by_field`` on
                ``group``, or on a server older than 2.4 an over-fetch grouped here (the module's *Grouping search*).

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
        with _backend_errors(self.uri):
            if group_by_source and not self.server_grouping:
                self._grouped_here(q, k, dist, ids)
                return dist, ids
            extra = {"group_by_field": "group", "group_size": 1} if group_by_source else {}
            for r, hits in enumerate(self._hits(q, k, [], **extra)):
                found = sorted((float(h["distance"]), int(h["id"])) for h in hits)[:k]  # ties: the lower id first
                if found:
                    d2, hit_ids = np.asarray(found, dtype=np.float64).T
                    dist[r, : len(found)] = np.sqrt(np.maximum(d2, 0.0))
                    ids[r, : len(found)] = hit_ids.astype(np.int64)
        return dist, ids

    def _hits(self, q: np.ndarray, limit: int, fields: list[str], **extra) -> Iterator[list]:
        """Milvus' hits of every query row, nearest first (several rows per request)."""
        step = max(1, min(1024, 100_000 // limit))
        for start in range(0, len(q), step):
            yield from self._client.search(
                self.collection, data=list(q[start : start + step]), limit=limit, anns_field="embedding",
                search_params={"metric_type": METRIC, "params": self.index.search_params(limit)}, output_fields=fields,
                consistency_level=READ_CONSISTENCY, **extra,
            )  # fmt: skip

    def _grouped_here(self, q: np.ndarray, k: int, dist: np.ndarray, ids: np.ndarray) -> None:
        """The k nearest groups of every query into ``dist`` and ``ids``, from plain searches (a server without
        ``group_by_field``): an over-fetch of 4k faces, then 4 times more for the queries that need it, until k
        groups are nearer than the last face fetched, or every face was fetched, or Milvus' largest top-k."""
        todo = np.arange(len(q))
        limit = min(_SEARCH_LIMIT, max(4 * k, k + 16))
        while len(todo):
            left = []
            for r, hits in zip(todo, self._hits(q[todo], limit, ["group"]), strict=True):
                best: dict[str, tuple[float, int]] = {}
                for h in hits:
                    key = (float(h["distance"]), int(h["id"]))
                    g = h["entity"]["group"]
                    if g not in best or key < best[g]:
                        best[g] = key
                found = sorted(best.values())
                if len(hits) >= limit and limit < _SEARCH_LIMIT:  # more faces than fetched: exact up to the last
                    last = max(float(h["distance"]) for h in hits)
                    found = [f for f in found if f[0] < last]
                    if len(found) < k:
                        left.append(r)
                        continue
                found = found[:k]
                if found:
                    d2, hit_ids = np.asarray(found, dtype=np.float64).T
                    dist[r, : len(found)] = np.sqrt(np.maximum(d2, 0.0))
                    ids[r, : len(found)] = hit_ids.astype(np.int64)
            todo = np.asarray(left, dtype=np.int64)
            limit = min(_SEARCH_LIMIT, limit * 4)

    # -- the rest of the protocol ----------------------------------------------------------------------------
    def picture_groups(self) -> dict[int, str]:
        """``{id: group label}`` of every stored face (a scan of the ``group`` field); faces of one picture share a
        label (the module's *Pictures*)."""
        return {int(r["id"]): r["group"] for r in self._iterate(self.collection, ["id", "group"])}

    @property
    def pictures(self) -> int:
        """Distinct pictures (picture groups) of the stored faces: a scan of the ``group`` field of every face."""
        return len({r["group"] for r in self._iterate(self.collection, ["group"])})

    def describe(self) -> dict:
        """``{"backend": "milvus-lite" | "milvus", "uri", "faces", "pictures" (:attr:`pictures`), "images"
        (files processed), "skipped", "embedder" (name), "embedder_version", "dim", "collection", "index_type":
        "FLAT" | "HNSW" | "IVF_FLAT", "index_params" (its build parameters: ``{"M", "efConstruction"}``,
        ``{"nlist"}``, ``{}``), "search_params" (``{"ef"}``, ``{"nprobe"}``, ``{}``), "metric": "L2", "grouping":
        "server" | "client" (:attr:`server_grouping`), "server_version",
        "next_id"}``."""
        return {"backend": self.backend, "uri": self.uri, "faces": self.ntotal, "pictures": self.pictures,
                "images": len(self._files), "skipped": len(self.skipped), "embedder": self.embedder.name,
                "embedder_version": self.embedder.version, "dim": self.embedder.dim, "collection": self.collection,
                "index_type": self.index.index_type, "index_params": dict(self.index.build),
                "search_params": dict(self.index.search), "metric": METRIC,
                "grouping": "server" if self.server_grouping else "client", "server_version": self.server_version,
                "next_id": self.next_id}  # fmt: skip

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
        meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "embedder": vars(self.embedder), "next_id": next_id,
                "index": self.index.record()}  # fmt: skip
        self._client.upsert(f"{self.collection}_meta", [{"key": "meta", "value": json.dumps(meta), "_v": [0.0, 0.0]}])
        self.next_id = next_id

    def _iterate(self, collection: str, fields: list[str], filter: str = "", consistency: str = "") -> Iterator[dict]:
        """Every row of a collection (that matches ``filter``), in pages (a server caps one query at 16,384 rows)."""
        with _backend_errors(self.uri):
            it = self._client.query_iterator(collection, batch_size=_ITER_BATCH, filter=filter, output_fields=fields,
                                             consistency_level=consistency or READ_CONSISTENCY)  # fmt: skip
            try:
                while page := it.next():
                    yield from page
            finally:
                it.close()


_ENTRY_FIELDS = ["id", "source", "face", "box", "title", "picture_hash"]


def _extras(cols: dict[str, np.ndarray], n: int) -> list[str]:
    """The ``extra`` field of n faces from :func:`~facial_search.index.store.parse_optional` columns: compact
    JSON of the fields each face has, ``""`` for none."""
    out = [{} for _ in range(n)]
    if "blendshapes" in cols:
        for i in np.flatnonzero(cols["has_blendshapes"]).tolist():
            out[i]["blendshapes"] = base64.b64encode(cols["blendshapes"][i].tobytes()).decode("ascii")
    for name in OPTIONAL_FIELDS[1:]:
        if name in cols:
            for i, v in enumerate(cols[name].tolist()):
                if (v >= 0) if name == "track" else (v == v):  # -1 / NaN: none
                    out[i][name] = v
    return [json.dumps(x, separators=(",", ":"), allow_nan=False) if x else "" for x in out]


def _optional(extra: str | None) -> dict:
    """The :class:`Entry` optional fields of an ``extra`` field (``""`` or absent: none)."""
    if not extra:
        return {}
    x = json.loads(extra)
    if "blendshapes" in x:
        scores = blendshape_scores(np.frombuffer(base64.b64decode(x["blendshapes"]), np.uint8))
        scores.flags.writeable = False
        x["blendshapes"] = scores
    return {k: x[k] for k in OPTIONAL_FIELDS if k in x}


def _entry(r: dict) -> Entry:
    return Entry(int(r["id"]), unescape_text(r["source"]), int(r["face"]), tuple(int(v) for v in r["box"]),
                 unescape_text(r["title"]), r.get("picture_hash") or None, **_optional(r.get("extra")))  # fmt: skip


def _file_record(r: dict) -> FileRecord:
    skipped = r.get("skipped")  # "" (or a null, in a first-release store): none
    return FileRecord(int(r["size"]), int(r["mtime_ns"]), int(r["faces"]),
                      unescape_text(skipped) if skipped else None, r.get("finder") or None)  # fmt: skip


def _groups_itself(backend: str, version: str) -> bool:
    """Whether a search with ``group_by_field`` is grouped by the server: Milvus Lite, or a server of release 2.4
    or later (2.3 ignores the parameter). A version without a release number is taken as too old: the grouping
    here is right on every server, only slower."""
    if backend == "milvus-lite":
        return True
    m = _VERSION.search(version)
    return m is not None and (int(m.group(1)), int(m.group(2))) >= _GROUP_BY_SINCE


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


def _create_collections(client, collection: str, embedder: EmbedderInfo, index: VectorIndex | None = None) -> None:
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
        s.add_field("picture_hash", DataType.VARCHAR, max_length=64)
        s.add_field("group", DataType.VARCHAR, max_length=_TEXT_MAX)
        s.add_field("extra", DataType.VARCHAR, max_length=_EXTRA_MAX)
        vec = client.prepare_index_params()  # the faces' index: FLAT, or the URI's (INDEX_OPTIONS)
        index = index or VectorIndex()
        vec.add_index("embedding", index_type=index.index_type, metric_type=METRIC, params=dict(index.build))
        client.create_collection(collection, schema=s, index_params=vec, consistency_level="Strong")
    files = f"{collection}_files"
    if not client.has_collection(files):
        s = client.create_schema(auto_id=False, enable_dynamic_field=False)
        s.add_field("source", DataType.VARCHAR, is_primary=True, max_length=_TEXT_MAX)
        s.add_field("size", DataType.INT64)
        s.add_field("mtime_ns", DataType.INT64)
        s.add_field("faces", DataType.INT64)
        s.add_field("skipped", DataType.VARCHAR, max_length=_TEXT_MAX)
        s.add_field("finder", DataType.VARCHAR, max_length=64)
        s.add_field("_v", DataType.FLOAT_VECTOR, dim=2)  # Milvus wants a vector field in every collection
        client.create_collection(files, schema=s, index_params=flat("_v"), consistency_level="Strong")
    meta = f"{collection}_meta"
    s = client.create_schema(auto_id=False, enable_dynamic_field=False)
    s.add_field("key", DataType.VARCHAR, is_primary=True, max_length=64)
    s.add_field("value", DataType.VARCHAR, max_length=_TEXT_MAX)
    s.add_field("_v", DataType.FLOAT_VECTOR, dim=2)
    client.create_collection(meta, schema=s, index_params=flat("_v"), consistency_level="Strong")


__all__ = ["MilvusStore", "parse_uri", "escape_text", "unescape_text", "FORMAT_NAME", "FORMAT_VERSION"]
