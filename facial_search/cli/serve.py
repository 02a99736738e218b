"""``facial-search serve``: the phone-ready web page and its API."""

from __future__ import annotations

import argparse

from facial_search.cli._common import add_index_option, add_model_options
from facial_search.web.config import BODY_TIMEOUT


def add_parser(sub) -> argparse.ArgumentParser:
    """Add the ``serve`` command to ``sub`` (``ArgumentParser.add_subparsers()``)."""
    s = sub.add_parser("serve", help="serve the phone-ready web page and API")
    add_index_option(s)
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, loopback only)")
    s.add_argument("--port", type=int, default=8000, help="TCP port, 1-65535 (default 8000)")
    s.add_argument("--workers", type=int, metavar="N", help="pipelines in the pool (default: one per core)")
    s.add_argument(
        "--certfile", metavar="PEM", help="TLS certificate: serve HTTPS (phones allow the camera only on HTTPS)"
    )
    s.add_argument("--keyfile", metavar="PEM", help="TLS private key for --certfile")
    s.add_argument(
        "--body-timeout",
        type=float,
        default=BODY_TIMEOUT,
        metavar="S",
        help=f"seconds a client may take to send a request's body (default {BODY_TIMEOUT:g}; then 408)",
    )
    add_model_options(s)
    s.set_defaults(func=run)
    return s


def run(args: argparse.Namespace) -> int:
    from facial_search.web import ServeConfig, serve

    return serve(
        ServeConfig(
            index=args.index,
            host=args.host,
            port=args.port,
            workers=args.workers,
            certfile=args.certfile,
            keyfile=args.keyfile,
            embedder=args.embedder,
            model_path=args.model,
            body_timeout=args.body_timeout,
        )
    )
