"""``auxsurgery attack``: run the evaluation suites on a saved checkpoint and write the report."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from .._utils import resolve_device
from ..checkpoint import load, read_spec
from ..evaluation import (
    PRESETS,
    Budget,
    check_compatible,
    get_preset,
    list_suites,
    load_eval_data,
    parse_suites,
    print_table,
    results_document,
    run_suite,
    write_report,
)
from ..model import check_rule
from .options import DataRoot, Device, Json, Out, Seed, json_mode, print_json

console = Console()


def attack(
    checkpoint: Path = typer.Argument(..., help="A checkpoint written by `auxsurgery attach` or auxsurgery.save."),
    data: str = typer.Option(..., help="Test data: mnist, cifar10, synthetic, ..., an ImageFolder path, or a .pt "
                                       "file holding {'x': images in [0, 1], 'y': labels[, 'classes': names]}."),
    suite: str = typer.Option("static,adaptive", help=f"Suites, comma-separated: {', '.join(list_suites())}."),
    data_root: DataRoot = None,
    n: int = typer.Option(1000, help="Evaluate the first N test samples."),
    eps: Optional[float] = typer.Option(None, help="L-inf budget in [0, 1] pixels (default: the preset's)."),
    step_size: Optional[float] = typer.Option(None, help="PGD step (default: the preset's, scaled with --eps)."),
    steps: Optional[int] = typer.Option(None, help="PGD iterations of the paper-faithful rows (default 5)."),
    preset: Optional[str] = typer.Option(None, help="Budget preset: mnist, cifar10, mini-imagenet (default: --data)."),
    rules: str = typer.Option("vote,score", help="Decision rules to attack: vote, score, public, private."),
    seed: Seed = 0,
    batch_size: int = typer.Option(128, help="Samples per attack batch."),
    device: Device = "auto",
    quick: bool = typer.Option(False, help="Smoke-test budget: every attack runs, none seriously."),
    out: Out = None,
    as_json: Json = False,
):
    """Attack a checkpoint with the evaluation suites; judge by its own decision rules; report.

    With --out, writes results.json, report.md and PNG plots there; --json prints results.json.

    Example: auxsurgery attack model.safetensors --data mnist --suite static,adaptive,strong --n 1000 --out report
    """
    # Cheap checks first: a typo should not cost a dataset load.
    suites = parse_suites(suite)
    if not suites:
        raise ValueError(f"--suite names no suite; valid suites: {', '.join(list_suites())}")
    if preset is not None and get_preset(preset).name == "default":
        raise ValueError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    get_preset(preset or data, eps, step_size, steps)
    attacked_rules = [check_rule(r.strip()) for r in rules.split(",") if r.strip()]
    if n < 1 or batch_size < 1:
        raise ValueError(f"--n and --batch-size must be >= 1, got {n} and {batch_size}")
    spec = read_spec(checkpoint)
    with json_mode(as_json):
        samples, classes, shape = load_eval_data(data, data_root, n)
        check_compatible(spec, classes, shape, data)
        model = load(checkpoint, map_location=str(resolve_device(device)))
        result = run_suite(model, samples, suite=suites, eps=eps, step_size=step_size, steps=steps,
                           dataset=preset or data, seed=seed, rules=attacked_rules, batch_size=batch_size,
                           budget=Budget.quick() if quick else None)
        result.model_info["checkpoint"] = str(checkpoint)
        result.data_info["source"] = data
        written = write_report(result, out) if out else []
    if as_json:
        print_json(results_document(result))
        return
    print_table(result, console)
    for path in written:
        console.print(f"wrote {path}")
