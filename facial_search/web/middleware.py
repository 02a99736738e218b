"""ASGI middleware of the web app: bounded request bodies, HEAD wherever GET works, the security headers.

- :class:`BodyGuard` reads each request's body before the app sees it, within ``max_bytes`` (413) and within
  ``timeout`` seconds of the request's start (408), then hands it on; both answers close the connection. A
  client that stops sending half-way through its ``Content-Length`` is cut off at the deadline instead of
  holding a connection (and the upload's buffer) forever.
- :class:`HeadAsGet` answers ``HEAD`` as ``GET`` without the body, for every GET route (FastAPI's routes,
  unlike Starlette's, do not add HEAD themselves).
- :class:`SecurityHeaders` adds :func:`security_headers` to every response.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import anyio
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: ``Content-Security-Policy`` of the page (``/`` and ``/static/``): only our own files, the camera's stream, and
#: compiling our WebAssembly (MediaPipe's and ONNX Runtime's, for on-device mode: ``'wasm-unsafe-eval'``).
PAGE_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob: mediastream:; connect-src 'self'; "
    "style-src 'self'; script-src 'self' 'wasm-unsafe-eval'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
#: Paths served under :data:`PAGE_CSP` besides ``/static/``: the page, and its service worker (whose fetches the
#: policy of its own script governs: ``connect-src 'self'``).
PAGE_PATHS = frozenset({"/", "/sw.js"})
#: ``Content-Security-Policy`` of everything else (JSON, images): nothing may run or be loaded.
DEFAULT_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'"
#: Paths whose answers are about a person's face: never cached (``Cache-Control: no-store``).
PRIVATE_PATHS = frozenset({"/api/search", "/api/search/vectors"})


def docs_csp(script_hashes: str) -> str:
    """The OpenAPI page's policy: our Swagger UI files, its inline script (``script_hashes``: its
    ``'sha256-...'`` sources), the inline styles its widgets set, ``data:`` icons, and ``/openapi.json``."""
    return (
        f"default-src 'none'; script-src 'self' {script_hashes}; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    )


def security_headers(path: str, docs_policy: str = DEFAULT_CSP) -> dict[str, str]:
    """The headers every response for ``path`` carries (``docs_policy``: the CSP of ``/docs``)."""
    h = {
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
        "Cross-Origin-Opener-Policy": "same-origin",
    }
    if path in PAGE_PATHS or path.startswith("/static/"):
        h["Content-Security-Policy"] = PAGE_CSP
        h["Permissions-Policy"] = "camera=(self), microphone=(), geolocation=()"
    elif path == "/docs":
        h["Content-Security-Policy"] = docs_policy
    else:
        h["Content-Security-Policy"] = DEFAULT_CSP
    if path in PRIVATE_PATHS:
        h["Cache-Control"] = "no-store"
    return h


class SecurityHeaders:
    """Add :func:`security_headers` to every HTTP response (``Cache-Control`` of private paths replaced,
    the others only where the route set none)."""

    def __init__(self, app: ASGIApp, docs_policy: Callable[[], str] | str = DEFAULT_CSP):
        self.app = app
        self.docs_policy = docs_policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        policy = self.docs_policy() if callable(self.docs_policy) else self.docs_policy
        extra = security_headers(scope["path"], policy)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for k, v in extra.items():
                    if k == "Cache-Control" or k not in headers:
                        headers[k] = v
            await send(message)

        await self.app(scope, receive, send_with_headers)


class HeadAsGet:
    """Route ``HEAD`` as ``GET`` and drop the body: same status and headers (``Content-Length`` included)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        done = False

        async def send_headers_only(message: Message) -> None:
            nonlocal done
            if message["type"] == "http.response.body":
                if done or message.get("more_body", False):
                    return
                done = True
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app(dict(scope, method="GET"), receive, send_headers_only)


async def send_error(send: Send, status: int, detail: str) -> None:
    """A JSON ``{"detail": ...}`` answer that closes the connection."""
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


class BodyGuard:
    """Read the whole request body first: at most ``max_bytes`` (else 413), within ``timeout`` seconds of
    the request's start (else 408), then run the app with it (its ``receive`` replays the body)."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout: float):
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    def too_large(self) -> str:
        return f"upload too large: over {self.max_bytes // (1024 * 1024)} MB"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await send_error(send, 413, self.too_large())
            return
        chunks: list[bytes] = []
        size = 0
        with anyio.move_on_after(self.timeout) as deadline:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return  # the client left: nobody to answer
                body = message.get("body", b"")
                size += len(body)
                if size > self.max_bytes:
                    await send_error(send, 413, self.too_large())
                    return
                chunks.append(body)
                if not message.get("more_body", False):
                    break
        if deadline.cancelled_caught:
            chunks.clear()
            await send_error(send, 408, f"the request body did not arrive within {self.timeout:g} s")
            return
        data: bytes | None = b"".join(chunks)
        chunks.clear()

        async def replay() -> Message:
            nonlocal data
            if data is not None:
                message, data = {"type": "http.request", "body": data, "more_body": False}, None
                return message
            return await receive()

        await self.app(scope, replay, send)
