"""``python -m auxsurgery`` runs the CLI."""
from .cli import main

main()
