"""``auxsurgery attack``: run the evaluation suites on a saved checkpoint and write the report."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import typer
from rich.console import Console

from ..checkpoint import load, read_spec
from ..data import dataset_classes, load_dataset, take_subset
from ..evaluation import (
    PRESETS, SUITES, Budget, get_preset, parse_suites, print_table, results_document, run_suite, write_report,
)
from ..model import check_rule
from ..train.distributed import resolve_device
from .options import DataRoot, Device, Json, Out, Seed, json_mode, print_json

console = Console()


def load_tensors(path: Path) -> tuple[torch.Tensor, torch.Tensor, list[str] | None]:
    """``(x, y, classes)`` from a ``.pt`` file holding ``{"x", "y"[, "classes"]}`` or ``(x, y)``.

    Read with ``weights_only=True``: plain tensors and containers only, never pickled code.
    """
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and {"x", "y"} <= obj.keys():
        return obj["x"], obj["y"], obj.get("classes")
    if isinstance(obj, (tuple, list)) and len(obj) == 2:
        return obj[0], obj[1], None
    raise ValueError(f"{path} must hold {{'x': images, 'y': labels[, 'classes': names]}} or an (x, y) pair")


def load_eval_data(data: str, root: Optional[Path], n: int):
    """``(samples, class names, image shape)``: the first ``n`` test samples of a dataset name,
    ImageFolder path or ``.pt`` file."""
    if data.endswith(".pt"):
        x, y, classes = load_tensors(Path(data))
        return (x[:n], y[:n]), classes, tuple(x.shape[1:])
    dataset = load_dataset(data, root=root, train=False)
    dataset = take_subset(dataset, min(n, len(dataset)))
    return dataset, dataset_classes(dataset), tuple(dataset[0][0].shape)


def check_compatible(spec: dict, classes: list[str] | None, shape: tuple, data: str) -> None:
    """Raise a clear ValueError when the checkpoint's classes or input size do not fit the data."""
    if classes is not None and len(classes) != spec["num_classes"]:
        raise ValueError(f"the checkpoint has {spec['num_classes']} classes but {data} has {len(classes)} "
                         f"({', '.join(map(str, classes[:5]))}{', ...' if len(classes) > 5 else ''})")
    if list(shape) != list(spec["input_size"]):
        raise ValueError(f"the checkpoint takes inputs of size {'x'.join(map(str, spec['input_size']))} but {data} "
                         f"has images of size {'x'.join(map(str, shape))}")


def attack(
    checkpoint: Path = typer.Argument(..., help="A checkpoint written by `auxsurgery attach` or auxsurgery.save."),
    data: str = typer.Option(..., help="Test data: mnist, cifar10, synthetic, ..., an ImageFolder path, or a .pt "
                                       "file holding {'x': images in [0, 1], 'y': labels[, 'classes': names]}."),
    suite: str = typer.Option("static,adaptive", help=f"Suites, comma-separated: {', '.join(SUITES)}."),
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
        raise ValueError(f"--suite names no suite; valid suites: {', '.join(SUITES)}")
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
