"""Keep MediaPipe's native (glog / TFLite) log lines out of the user's terminal.

MediaPipe's C++ code writes straight to file descriptor 2 (``WARNING: Logging before InitGoogle()``,
``W0000 ...``, ``INFO: Created TensorFlow Lite XNNPACK delegate``); environment variables do not stop it in
mediapipe 1.2.2. :func:`silence_native_stderr` points fd 2 at ``/dev/null`` (or a log file) and gives
Python's ``sys.stderr`` a duplicate of the original descriptor, so Python messages, progress bars and
tracebacks still reach the terminal. Set ``FACIAL_SEARCH_DEBUG=1`` to keep the native lines.
"""

from __future__ import annotations

import os
import sys

_done = False


def silence_native_stderr(log_path: str | None = None) -> None:
    """Redirect native writes on fd 2 to ``log_path`` (default ``/dev/null``); idempotent, process-wide."""
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
