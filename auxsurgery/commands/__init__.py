"""The CLI's commands, one module per command group; each is a thin layer over the Python API."""
