"""``auxsurgery demo``: the end-to-end run on the embedded dataset (the README's first command)."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import typer

from ..demo import DemoConfig, run_demo


def demo(
    out: Path = typer.Option(Path("demo-out"), help="Folder for the reports and checkpoints."),
    seed: int = typer.Option(0, help="Seed of data order, initial weights and attacks."),
    eval_size: int = typer.Option(100, "--n", help="Test images to attack."),
    smoke: bool = typer.Option(False, help="Seconds-long run that checks the pipeline and measures nothing."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary rows as JSON on stdout instead of the table."),
):
    """Train a small CNN on the embedded shapes data, attach Aux Blocks, fine-tune, attack, report.

    No download, no GPU: a few minutes on two CPU cores.

    Example: auxsurgery demo --out demo-out
    """
    config = DemoConfig.smoke() if smoke else DemoConfig(eval_size=eval_size)
    rows = run_demo(out, replace(config, seed=seed), show_table=not as_json)
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
