"""Keep MediaPipe's native (glog / TFLite) log lines out of the user's terminal.

MediaPipe's C++ code writes straight to file descriptor 2 (``WARNING: Logging before InitGoogle()``,
``W0000 ...``, ``INFO: Created TensorFlow Lite XNNPACK delegate``); environment variables do not stop it in
mediapipe 1.2.2. :func:`silence_native_stderr` points fd 2 at ``/dev/null`` (or a log file) and gives
Python's ``sys.stderr`` a duplicate of the original descriptor, so Python messages, progress bars and
tracebacks still reach the terminal. Set ``FACIAL_SEARCH_DEBUG=1`` to keep the native lines.

It changes the whole process (fd 2 and ``sys.stderr``), so only a program that owns its process calls it: the
``facial-search`` command line (:func:`facial_search.cli.main`) and the worker processes facial-search spawns
itself (:mod:`facial_search.parallel`). The library never calls it in a host program's process.
"""

from __future__ import annotations

import os
import sys

_done = False


def silence_native_stderr(log_path: str | None = None) -> None:
    """Redirect native writes on fd 2 to ``log_path`` (default ``/dev/null``); idempotent, process-wide.

    After the call ``sys.stderr`` is a new text stream on a duplicate of the original fd 2 (line-buffered).
    Does nothing when ``FACIAL_SEARCH_DEBUG`` is set or the process has no usable fd 2.
    """
    global _done
    if _done or os.environ.get("FACIAL_SEARCH_DEBUG"):
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
        target = os.open(log_path or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(target, 2)
        os.close(target)
        sys.stderr = os.fdopen(saved, "w", buffering=1, encoding=getattr(sys.stderr, "encoding", None) or "utf-8")
        _done = True
    except (OSError, ValueError, AttributeError):  # no real fd 2 (e.g. under some IDEs): leave it as it is
        pass
