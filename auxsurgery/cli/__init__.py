"""The ``auxsurgery`` command line: one module per command over the Python API (:mod:`.app` assembles them)."""
from .app import app, main

__all__ = ["app", "main"]
