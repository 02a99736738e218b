"""The writer lock of an index file: one writing process at a time, so that no run's faces are lost.

Two ``index`` runs into one ``--out`` would each load the index, add their faces and save, and the last save
would drop the other run's faces. So a writer holds :class:`IndexWriter` from loading the index until its
last save: an exclusive ``flock`` (PyPI ``filelock``) on the sidecar file ``<index>.lock``. A second writer
**refuses at once** with :class:`~facial_search.errors.IndexLockedError` (it does not wait: an index run can
take an hour, and silently waiting would look like a hang):
``<index>: another facial-search index run is writing this index (pid N); wait for it or use another --out``.

- The kernel releases the lock when its process ends, however it ends (SIGKILL, a crash), so a killed run
  never blocks the next one. The lock file itself stays (removing it would let two writers lock two different
  files of one name); it holds the pid of its last holder, for the message only, and is rewritten by the next
  holder, so a stale or garbled lock file is harmless.
- Readers (``search``, ``serve``, ``info``) never lock: saves are atomic renames, so a reader sees the old or
  the new index.
- Within one process the lock is held once: a second :class:`IndexWriter` of the same file refuses too, and
  :meth:`MemeIndex.save <facial_search.index.store.MemeIndex.save>` goes ahead where this process holds it.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from facial_search.errors import IndexLockedError, OutputError

_HELD: dict[str, IndexWriter] = {}  # the writers this process holds, by the real path of their lock file
_GUARD = threading.Lock()


class IndexWriter:
    """The right to write the index file ``path``, held by one process at a time (see the module docstring).

    Use it as a context manager (``with MemeIndex.writer(path):``) or with :meth:`acquire` and :meth:`release`.
    It creates ``path``'s folder (as a save would) and the lock file ``<path>.lock`` beside the index.

    Args:
        path: the index file (it need not exist yet).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self._lock = None
        self._key: str | None = None

    @property
    def held(self) -> bool:
        """Whether this writer holds the lock now."""
        return self._lock is not None

    def acquire(self) -> IndexWriter:
        """Take the lock, or refuse at once; returns ``self``.

        Raises:
            IndexLockedError: another process (or another writer in this one) holds it; the message gives its pid.
            OutputError: the folder or the lock file cannot be created or opened (read-only file system, no
                permission, a lock file that is a folder or owned by another account).
        """
        from filelock import FileLock, Timeout

        if self.held:
            return self
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"{self.path}: cannot create the index's folder ({e.strerror or e})") from None
        key = os.path.realpath(self.lock_path)
        with _GUARD:
            if key in _HELD:
                raise IndexLockedError(_locked_message(self.path, os.getpid()))
            lock = FileLock(self.lock_path, thread_local=False, on_acquired=_write_pid)
            try:
                lock.acquire(blocking=False)
            except Timeout:
                raise IndexLockedError(_locked_message(self.path, _holder_pid(self.lock_path))) from None
            except OSError as e:
                raise OutputError(
                    f"{self.lock_path}: cannot lock the index for writing ({e.strerror or e}); remove this file "
                    "if it is not a facial-search lock file"
                ) from None
            self._lock, self._key = lock, key
            _HELD[key] = self
        return self

    def release(self) -> None:
        """Let the lock go (nothing happens if it is not held). The lock file stays: see the module docstring."""
        with _GUARD:
            if self._lock is None:
                return
            lock, self._lock = self._lock, None
            _HELD.pop(self._key, None)
            lock.release()

    def covers(self, path: str | os.PathLike) -> bool:
        """Whether this writer holds the lock of the index file ``path``."""
        return self.held and os.path.realpath(Path(path).with_name(Path(path).name + ".lock")) == self._key

    def __enter__(self) -> IndexWriter:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"IndexWriter({str(self.path)!r}, held={self.held})"


def held_writer(path: str | os.PathLike) -> IndexWriter | None:
    """The :class:`IndexWriter` this process holds for the index file ``path``, else ``None``."""
    p = Path(path)
    with _GUARD:
        return _HELD.get(os.path.realpath(p.with_name(p.name + ".lock")))


def _write_pid(fd: int) -> None:
    """``filelock``'s ``on_acquired``: the lock file's content becomes this process's pid."""
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, f"{os.getpid()}\n".encode("ascii"))


def _holder_pid(lock_path: Path) -> int | None:
    try:
        text = lock_path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _locked_message(path: Path, pid: int | None) -> str:
    who = f"pid {pid}" if pid is not None else "pid unknown"
    if pid == os.getpid():
        who += ", this process"
    return f"{path}: another facial-search index run is writing this index ({who}); wait for it or use another --out"
