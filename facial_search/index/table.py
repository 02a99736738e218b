"""The file store's data in memory, by column: one row per face, two string tables, one file record per source.

Nothing here is a Python object per face: rows are NumPy arrays (:class:`Grow`, capacity doubling, so an add
costs what it adds, amortised), strings are one byte buffer with end offsets (:class:`Strings`), and an
:class:`~facial_search.index.store.Entry` is made only when asked for. At 1M faces of 64-d embeddings that is
the 256 MB of vectors and ~50 MB of other columns, plus the strings' bytes.

Rows are in the order they were added (ids ascending). A removed row stays in place, marked dead in
``live``, until the store is compacted (:meth:`Rows.compacted`); its place in the arrays is what the file's
log and the ANN graphs refer to.
"""

from __future__ import annotations

import numpy as np

#: Per-row columns besides the embeddings: name -> (dtype, trailing shape). The file (format 3) stores them
#: under these names, in this order, after ``ids`` and ``embeddings``.
ROW_COLUMNS: dict[str, tuple[str, tuple[int, ...]]] = {
    "ids": ("<i8", ()),
    "embeddings": ("<f4", ()),  # trailing shape (D,): set per store
    "face": ("<i4", ()),
    "box": ("<i4", (4,)),
    "picture_hash": ("<u8", ()),
    "flags": ("u1", ()),
    "source": ("<i4", ()),
    "title": ("<i4", ()),
    "group": ("<i8", ()),
}
#: ``flags`` bit: the row has a picture hash (rows of format-1 files have none).
HAS_HASH = 1
#: ``flags`` bit: the row has blendshapes (its ``blendshapes`` row holds them; else that row is all 0).
HAS_BLENDSHAPES = 2
#: Every ``flags`` bit defined (any other set bit is damage).
KNOWN_FLAGS = HAS_HASH | HAS_BLENDSHAPES
#: Blendshape scores per face (``facial_search.vision.faces.NUM_BLENDSHAPES``, the FaceLandmarker v1 model's).
BLENDSHAPES = 52
#: Optional per-row columns: name -> (dtype, trailing shape, fill value of a row that has none). A store
#: holds one only once some row has a value for it (a store of pictures pays nothing for the video columns);
#: the file stores it, after ``group``, in this order, in the commits that list it in their head's
#: ``"columns"``. ``blendshapes``: scores in [0, 1] quantised to 1/255 steps (``round(255 * s)``; whether a
#: row has them is its ``flags`` bit :data:`HAS_BLENDSHAPES`). ``t_start``, ``t_end``, ``t_frame``: seconds
#: in the source video (NaN: none); ``track``: the face track within the video (-1: none).
OPTIONAL_ROW_COLUMNS: dict[str, tuple[str, tuple[int, ...], object]] = {
    "blendshapes": ("u1", (BLENDSHAPES,), 0),
    "t_start": ("<f4", (), np.nan),
    "t_end": ("<f4", (), np.nan),
    "t_frame": ("<f4", (), np.nan),
    "track": ("<i4", (), -1),
}
#: Per-source columns of the file records (one slot per source string; ``-1`` text ids: none).
FILE_COLUMNS: dict[str, str] = {
    "size": "<i8",
    "mtime_ns": "<i8",
    "faces": "<i4",
    "skipped": "<i4",
    "finder": "<i4",
}


def quantise_blendshapes(scores: np.ndarray) -> np.ndarray:
    """``(..., 52) uint8`` of scores in [0, 1]: ``round(255 * s)`` (steps of 1/255, error <= 0.002)."""
    return np.rint(np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)


def blendshape_scores(stored: np.ndarray) -> np.ndarray:
    """The ``float32`` scores of stored ``uint8`` blendshapes (``q / 255``)."""
    return np.asarray(stored, dtype=np.float32) / np.float32(255.0)


class Grow:
    """A NumPy array that grows at its end with capacity doubling (``np.empty``: pages not yet written cost no
    memory). ``view`` is the used part; views taken before a growth stay valid (they keep the old buffer)."""

    def __init__(self, dtype, shape: tuple[int, ...] = (), capacity: int = 0):
        self.a = np.empty((capacity, *shape), dtype=dtype)
        self.n = 0

    @classmethod
    def adopt(cls, buffer: np.ndarray, used: int) -> Grow:
        """A Grow over ``buffer`` whose first ``used`` rows hold data."""
        g = cls.__new__(cls)
        g.a, g.n = buffer, used
        return g

    def reserve(self, total: int) -> None:
        """Make room for ``total`` rows (the buffer is replaced by one at least twice as large)."""
        if total > len(self.a):
            cap = max(total, 2 * len(self.a), 16)
            bigger = np.empty((cap, *self.a.shape[1:]), dtype=self.a.dtype)
            bigger[: self.n] = self.a[: self.n]
            self.a = bigger

    def fill(self, k: int, value) -> None:
        """Append ``k`` rows all equal to ``value``."""
        self.reserve(self.n + k)
        self.a[self.n : self.n + k] = value
        self.n += k

    def extend(self, values) -> None:
        values = np.asarray(values, dtype=self.a.dtype)
        k = len(values)
        self.reserve(self.n + k)
        self.a[self.n : self.n + k] = values
        self.n += k

    @property
    def view(self) -> np.ndarray:
        return self.a[: self.n]

    def __len__(self) -> int:
        return self.n


def encode(s: str) -> bytes:
    """UTF-8, lone surrogates (a file name that is not UTF-8, as ``os.fsdecode`` holds it) kept as themselves."""
    return s.encode("utf-8", "surrogatepass")


def decode(b: bytes) -> str:
    return b.decode("utf-8", "surrogatepass")


_P = np.uint64(0x100000001B3)  # the FNV-1 64-bit prime, as the multiplier of a polynomial string hash


def _hashes(blob: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """A 64-bit hash of every string (``sum(byte_j * P^j) ^ length``, wrapping), vectorised over the bytes."""
    ends = np.asarray(ends, dtype=np.int64)
    starts = np.r_[0, ends[:-1]] if len(ends) else ends
    lengths = ends - starts
    out = lengths.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    if not len(blob):
        return out
    pos = np.arange(len(blob), dtype=np.int64) - np.repeat(starts, lengths)
    powers = np.cumprod(np.r_[np.uint64(1), np.full(int(lengths.max()) - 1, _P, dtype=np.uint64)], dtype=np.uint64)
    with np.errstate(over="ignore"):
        terms = (blob.astype(np.uint64) + np.uint64(1)) * powers[pos]
        full = lengths > 0
        out[full] += np.add.reduceat(terms, starts[full])
    return out


class Strings:
    """A table of strings: their UTF-8 bytes one after another and each one's end offset; string ``i`` is
    ``bytes[ends[i-1]:ends[i]]``. ``find`` looks one up by value: through a 64-bit hash of every string,
    computed for all at once when first needed (~0.1 s a million) and kept sorted, the bytes compared on a match."""

    def __init__(self, blob: Grow | None = None, ends: Grow | None = None):
        self.blob = blob if blob is not None else Grow(np.uint8)
        self.ends = ends if ends is not None else Grow(np.int64)
        self._sorted: tuple[np.ndarray, np.ndarray] | None = None  # (hashes ascending, string numbers)
        self._recent: dict[bytes, int] = {}  # strings appended since the sorted hashes were made

    def __len__(self) -> int:
        return self.ends.n

    def start(self, i: int) -> int:
        return int(self.ends.a[i - 1]) if i > 0 else 0

    def raw(self, i: int) -> bytes:
        return self.blob.a[self.start(i) : int(self.ends.a[i])].tobytes()

    def get(self, i: int) -> str:
        return decode(self.raw(i))

    def all(self) -> list[str]:
        """Every string, in order (decoded at once: for listing; :meth:`get` for one)."""
        ends = self.ends.view
        data = self.blob.view.tobytes()
        starts = np.r_[0, ends[:-1]] if len(ends) else ends
        return [decode(data[a:b]) for a, b in zip(starts.tolist(), ends.tolist(), strict=True)]

    def append(self, values: list[bytes]) -> np.ndarray:
        """Append encoded strings; returns their numbers ``(n,) int64``."""
        first = len(self)
        if not values:
            return np.zeros(0, dtype=np.int64)
        lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
        base = int(self.ends.a[first - 1]) if first else 0
        self.ends.extend(base + np.cumsum(lengths))
        self.blob.extend(np.frombuffer(b"".join(values), dtype=np.uint8))
        if self._sorted is not None:
            for j, v in enumerate(values):
                self._recent.setdefault(v, first + j)
            if len(self._recent) > max(1 << 16, len(self._sorted[0]) // 4):
                self._sorted = None  # re-sorted at the next find
        return np.arange(first, first + len(values), dtype=np.int64)

    def find_many(self, values: list[bytes]) -> np.ndarray:
        """The number of the first string equal to each value (encoded), -1 where there is none."""
        out = np.full(len(values), -1, dtype=np.int64)
        if not values or not len(self):
            return out
        if self._sorted is None:
            h = _hashes(self.blob.view, self.ends.view)
            order = np.argsort(h, kind="stable")
            self._sorted, self._recent = (h[order], order), {}
        keys, order = self._sorted
        lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
        mine = _hashes(np.frombuffer(b"".join(values), dtype=np.uint8), np.cumsum(lengths))
        at = np.searchsorted(keys, mine)
        for j, v in enumerate(values):
            i = self._recent.get(v, -1)
            k = int(at[j])
            while i < 0 and k < len(keys) and keys[k] == mine[j]:
                if self.raw(int(order[k])) == v:
                    i = int(order[k])
                k += 1
            out[j] = i
        return out

    def find(self, value: bytes) -> int | None:
        """The number of the first string equal to ``value`` (encoded), ``None`` if there is none."""
        i = int(self.find_many([value])[0])
        return None if i < 0 else i

    def ids_of(self, values: list[bytes]) -> np.ndarray:
        """The number of every value, appending those not yet in the table (each once)."""
        out = self.find_many(values)
        new: dict[bytes, int] = {}
        for j in np.flatnonzero(out < 0).tolist():
            v = values[j]
            i = new.get(v)
            if i is None:
                i = new[v] = len(self) + len(new)
            out[j] = i
        if new:
            self.append(list(new))
        return out

    def gather(self, picks: np.ndarray) -> Strings:
        """A new table of the strings ``picks`` (numbers), in that order."""
        picks = np.asarray(picks, dtype=np.int64)
        ends = self.ends.view
        starts = np.r_[0, ends[:-1]][picks] if len(ends) else np.zeros(0, np.int64)
        lengths = ends[picks] - starts
        total = int(lengths.sum())
        offsets = np.repeat(starts - np.r_[0, np.cumsum(lengths)[:-1]], lengths) + np.arange(total)
        out = Strings()
        out.blob.extend(self.blob.view[offsets])
        out.ends.extend(np.cumsum(lengths))
        return out


class TextIds:
    """Numbers of texts (titles, skip reasons, finders) in a :class:`Strings`, deduplicated among those added
    in this session (a text already in the file may be stored again: cheaper than indexing every title)."""

    def __init__(self, table: Strings):
        self.table = table
        self._seen: dict[str, int] = {}

    def ids_of(self, values: list[str]) -> np.ndarray:
        out = np.empty(len(values), dtype=np.int64)
        new: list[bytes] = []
        for j, v in enumerate(values):
            i = self._seen.get(v)
            if i is None:
                i = self._seen[v] = len(self.table) + len(new)
                new.append(encode(v))
            out[j] = i
        if new:
            self.table.append(new)
        return out

    def id_of(self, value: str | None) -> int:
        return -1 if value is None else int(self.ids_of([value])[0])

    def reset(self) -> None:
        self._seen.clear()


__all__ = ["BLENDSHAPES", "FILE_COLUMNS", "HAS_BLENDSHAPES", "HAS_HASH", "KNOWN_FLAGS", "OPTIONAL_ROW_COLUMNS", "ROW_COLUMNS",
           "Grow", "Strings", "TextIds", "blendshape_scores", "decode", "encode", "quantise_blendshapes"]  # fmt: skip
