"""The web app (FastAPI): :func:`create_app`, :func:`serve`."""

from facial_search.web.app import SearchPool, create_app, serve

__all__ = ["SearchPool", "create_app", "serve"]
