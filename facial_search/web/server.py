"""``facial-search serve``: check what can be checked, bind the port, build the pool, then run uvicorn.

Everything a user can get wrong fails before the URL is printed, with one line (the CLI's
``facial-search: error: ...``): an out-of-range option (:class:`~facial_search.errors.OptionError`), fastapi
or uvicorn not installed (:class:`~facial_search.errors.MissingDependencyError`), a missing or bad
certificate or key (:class:`~facial_search.errors.ServeError`, naming the file), a port in use or not
allowed (``ServeError``: the socket is bound here and handed to uvicorn), a bad index or model.
"""

from __future__ import annotations

import errno
import importlib
import os
import socket
import ssl
import sys
from pathlib import Path

from facial_search import __version__
from facial_search.errors import MissingDependencyError, ServeError
from facial_search.web.config import ServeConfig

#: What the web app imports beyond the core (module, PyPI name).
WEB_MODULES = (("fastapi", "fastapi"), ("uvicorn", "uvicorn"), ("python_multipart", "python-multipart"),
               ("swagger_ui_bundle", "swagger-ui-bundle"))  # fmt: skip
PIP_COMMAND = "pip install " + " ".join(pypi for _, pypi in WEB_MODULES)


def require_web() -> None:
    """Raise :class:`MissingDependencyError` (one line, with the pip command) if a web module is missing."""
    for module, pypi in WEB_MODULES:
        try:
            importlib.import_module(module)
        except ImportError:
            raise MissingDependencyError(f"the web app needs {pypi}, which is not installed: {PIP_COMMAND}") from None


def check_tls(certfile: str | os.PathLike, keyfile: str | os.PathLike | None) -> None:
    """Load the certificate and key as uvicorn will, naming the file that is missing or bad.

    Raises:
        ServeError: a file missing or unreadable, no PEM certificate in ``certfile``, or no PEM private key
        (unencrypted) for it in ``keyfile`` (or in ``certfile`` when there is no ``keyfile``).
    """
    for what, path in (("certificate", certfile), ("private key", keyfile)):
        if path is None:
            continue
        p = Path(path)
        if not p.is_file():
            raise ServeError(f"{path}: no such {what} file")
        try:
            with open(p, "rb") as f:
                f.read(1)
        except OSError as e:
            raise ServeError(f"{path}: cannot read the {what}: {e.strerror or e}") from None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_verify_locations(cafile=os.fspath(certfile))
    except (ssl.SSLError, ValueError) as e:
        raise ServeError(f"{certfile}: not a PEM certificate ({_reason(e)})") from None
    key = keyfile if keyfile is not None else certfile
    try:  # an encrypted key would make OpenSSL prompt on the terminal: refuse it instead
        ctx.load_cert_chain(os.fspath(certfile), os.fspath(key), password=lambda: b"")
    except (ssl.SSLError, ValueError) as e:
        raise ServeError(
            f"{key}: not a PEM private key for {certfile}, or one encrypted with a passphrase ({_reason(e)})"
        ) from None


def _reason(e: BaseException) -> str:
    return str(getattr(e, "reason", None) or e).lower().replace("_", " ")


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (not listening yet: uvicorn listens on it).

    Raises:
        ServeError: the port is in use, not allowed, or the host is not an address of this machine.
    """
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ServeError(f"{where}: cannot resolve host {host!r} ({e.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise ServeError(f"{where}: port {port} is in use (another server is listening: pick --port)") from None
        if e.errno == errno.EACCES:
            raise ServeError(f"{where}: port {port} is not allowed (ports under 1024 need root)") from None
        raise ServeError(f"{where}: cannot listen there ({e.strerror or e})") from None
    return sock


def serve(config: ServeConfig) -> int:
    """Run the web app until interrupted (Ctrl+C); 0 when it stopped.

    Raises:
        OptionError, MissingDependencyError, ServeError: see the module docstring; all before the URL is
        printed. FileNotFoundError, IndexFormatError, EmbedderMismatchError, AssetError: the index or models.
    """
    config.validate()
    require_web()
    import uvicorn

    from facial_search.web.app import create_app
    from facial_search.web.pool import SearchPool

    if config.certfile:
        check_tls(config.certfile, config.keyfile)
    sock = bind_socket(config.host, config.port)
    try:
        pool = SearchPool(config.index, config.workers, embedder=config.embedder, model_path=config.model_path)
        try:
            app = create_app(config, pool=pool)
            host, port = config.host, config.port
            shown = "localhost" if host in ("127.0.0.1", "0.0.0.0", "::", "") else host
            shown = f"[{shown}]" if ":" in shown else shown
            scheme = "https" if config.certfile else "http"
            print(
                f"facial-search {__version__}: {len(pool.index)} meme faces from {config.index}, "
                f"{pool.size} pipelines\n"
                f"open {scheme}://{shown}:{port}/  (API docs: {scheme}://{shown}:{port}/docs)  - Ctrl+C to stop",
                flush=True,
            )
            if host not in ("127.0.0.1", "localhost", "::1"):
                print(
                    f"listening on {host}: other machines can reach it; phones need HTTPS (or localhost) for the "
                    "camera",
                    file=sys.stderr,
                )
            tls = {}
            if config.certfile:
                tls = {"ssl_certfile": os.fspath(config.certfile)}
                if config.keyfile:
                    tls["ssl_keyfile"] = os.fspath(config.keyfile)
            server = uvicorn.Server(
                uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on", **tls)
            )
            server.run(sockets=[sock])
        finally:
            pool.close()
    finally:
        sock.close()
    return 0
