"""Training recipe of the ``expression`` embedder (see training/README.md). Needs torch (``[train]`` extra)."""
