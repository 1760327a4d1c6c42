"""``auxsurgery run``: a whole experiment from a recipe file, resumable."""
from __future__ import annotations

from pathlib import Path

import typer

from .options import DataRoot, Device, Json, Out, messages, print_json, results, resume_hint


def run(
    recipe: Path = typer.Argument(..., help="A recipe file (TOML), e.g. recipes/mnist-lenet5-cpu.toml."),
    out: Out = None,
    data_root: DataRoot = None,
    device: Device = "auto",
    validate: bool = typer.Option(False, "--validate", help="Only validate the recipe and exit."),
    train_only: bool = typer.Option(False, "--train-only", help="Train (or finish training) every stage, then stop "
                                                                 "before the attacks; run again without it to attack."),
    as_json: Json = False,
):
    """Run a recipe end to end: train its models (undefended, adversarially trained, Aux Block, Aux Block
    trained adversarially), attack them with the recipe's suites, and write report.md/report.json with the paper's numbers
    beside ours; print the comparison table of each eps reading (--json: report.json instead). Running the same
    command again resumes where it stopped (the run folder, default runs/<recipe name>, keeps every stage's state).

    Example: auxsurgery run recipes/mnist-lenet5-cpu.toml --data-root ../shared/data --out runs/mnist

    Example: auxsurgery run recipes/cifar10-vgg16.toml --validate
    """
    from ..studies.experiment import run_recipe
    from ..studies.recipe import load_recipe

    parsed = load_recipe(recipe)
    if validate:
        messages.print(f"{recipe}: ok ({parsed.name})")
        return
    with resume_hint("rerun the same command to resume"):
        report = run_recipe(parsed, out, data_root=str(data_root) if data_root else None, device=device,
                            train_only=train_only)
    if as_json:
        print_json(report)
    elif not train_only:
        print_readings(report)


def print_readings(report: dict) -> None:
    """A recipe report's comparison tables, one per eps reading, on stdout (Markdown in a log file)."""
    from ..studies.comparison import reading_tables

    for table in reading_tables(report):
        results.print(table)
