"""``auxsurgery demo``: the built-in demo recipe, run like ``auxsurgery run`` (the README's first command)."""
from __future__ import annotations

from pathlib import Path

import typer

from .options import Device, Json, Out, Points, Seed, print_json, resume_hint
from .run import print_readings


def demo(
    out: Out = Path("demo-out"),
    seed: Seed = 0,
    n: Points = None,  # default: the recipe's 100
    quick: bool = typer.Option(False, help="Seconds-long run that checks the pipeline and measures nothing."),
    device: Device = "auto",
    as_json: Json = False,
):
    """Train a small CNN on the embedded shapes data, attach Aux Blocks, fine-tune, attack, report.

    No download, no GPU needed. Runs the built-in recipe demo.toml (also recipes/demo.toml) and writes
    its report.md, report.json, accuracy_vs_eps.png and each model's training and evaluation folders
    under --out; the same command again resumes there. Prints the comparison table; --json prints
    report.json instead.

    Example: auxsurgery demo --out demo-out
    """
    from ..studies.demo import demo_recipe
    from ..studies.experiment import run_recipe
    with resume_hint("rerun the same command to resume"):
        report = run_recipe(demo_recipe(quick=quick, seed=seed, n=n), out, device=device)
    if as_json:
        print_json(report)
    else:
        print_readings(report)
