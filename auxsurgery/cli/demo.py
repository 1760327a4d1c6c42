"""``auxsurgery demo``: the end-to-end run on the embedded dataset (the README's first command)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import typer

from ..studies.demo import DemoConfig, run_demo
from .options import Device, Json, Out, Seed, json_mode, print_json


def demo(
    out: Out = Path("demo-out"),
    seed: Seed = 0,
    eval_size: int = typer.Option(100, "--n", help="Test images to attack."),
    smoke: bool = typer.Option(False, help="Seconds-long run that checks the pipeline and measures nothing."),
    device: Device = "auto",
    as_json: Json = False,
):
    """Train a small CNN on the embedded shapes data, attach Aux Blocks, fine-tune, attack, report.

    No download, no GPU needed: a few minutes on two CPU cores. Writes summary.json, summary.md and
    each model's report under --out; --json prints the summary rows.

    Example: auxsurgery demo --out demo-out
    """
    config = DemoConfig.smoke() if smoke else DemoConfig(eval_size=eval_size)
    with json_mode(as_json):
        rows = run_demo(out, replace(config, seed=seed, device=device), show_table=not as_json)
    if as_json:
        print_json(rows)
