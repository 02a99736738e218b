"""``facial-search serve``: the phone-ready web page and its API."""

from __future__ import annotations

import argparse

from facial_search.cli._common import add_model_options


def add_parser(sub) -> argparse.ArgumentParser:
    """Add the ``serve`` command to ``sub`` (``ArgumentParser.add_subparsers()``)."""
    s = sub.add_parser("serve", help="serve the phone-ready web page and API")
    s.add_argument("--index", required=True, metavar="INDEX")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, loopback only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--workers", type=int, metavar="N", help="pipelines in the pool (default: one per core)")
    s.add_argument(
        "--certfile", metavar="PEM", help="TLS certificate: serve HTTPS (phones allow the camera only on HTTPS)"
    )
    s.add_argument("--keyfile", metavar="PEM", help="TLS private key for --certfile")
    add_model_options(s)
    s.set_defaults(func=run)
    return s


def run(args: argparse.Namespace) -> int:
    from facial_search.web import serve

    return serve(args)
