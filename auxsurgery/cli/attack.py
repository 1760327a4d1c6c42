"""``auxsurgery attack``: run the evaluation suites on a saved checkpoint and write the report."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..evaluation import Budget, list_suites, print_table, results_document
from ..evaluation.checkpoint_eval import evaluate_checkpoint
from .options import DataRoot, Device, Json, Out, Points, Seed, messages, print_json, results


def attack(
    checkpoint: Path = typer.Argument(..., help="A checkpoint written by `auxsurgery attach` or auxsurgery.save."),
    data: str = typer.Option(..., help="Test data: mnist, cifar10, synthetic, ..., an ImageFolder path, or a .pt "
                                       "file holding {'x': images in [0, 1], 'y': labels[, 'classes': names]}."),
    suite: str = typer.Option("static,adaptive", help=f"Suites, comma-separated: {', '.join(list_suites())}."),
    data_root: DataRoot = None,
    n: Points = 1000,
    eps: Optional[float] = typer.Option(None, help="L-inf budget in [0, 1] pixels (default: the preset's)."),
    step_size: Optional[float] = typer.Option(None, help="PGD step (default: the preset's, scaled with --eps)."),
    steps: Optional[int] = typer.Option(None, help="PGD iterations of the paper-faithful rows (default 5)."),
    preset: Optional[str] = typer.Option(None, help="Budget preset: mnist, cifar10, mini-imagenet (default: --data)."),
    rules: str = typer.Option("vote,score", help="Decision rules to attack: vote, score, public, private."),
    seed: Seed = 0,
    batch_size: int = typer.Option(128, help="Samples per attack batch."),
    device: Device = "auto",
    quick: bool = typer.Option(False, help="Smoke-test budget: every attack runs, none seriously."),
    standalone: bool = typer.Option(False, help="Strong suite: also run each attack alone on every point (rows "
                                                "for tables); by default only the cascade runs."),
    attack_dtype: str = typer.Option("fp32", help="Precision of the gradient attacks' steps: fp32, or bf16 "
                                                   "(faster on CPUs and GPUs with bf16 units; every success is "
                                                   "re-verified in fp32 before it counts)."),
    out: Out = None,
    as_json: Json = False,
):
    """Attack a checkpoint with the evaluation suites; judge by its own decision rules; report.

    With --out, writes results.json, report.md and PNG plots there and keeps the evaluation's progress in
    OUT/state: the same command after an interruption continues where it stopped. Under
    `torchrun --nproc_per_node N -m auxsurgery attack ...` the processes share the work.

    Example: auxsurgery attack model.safetensors --data mnist --suite static,adaptive,strong --points 1000 --out report
    """
    result, written = evaluate_checkpoint(
        checkpoint, data, suite, data_root=data_root, n=n, eps=eps, step_size=step_size, steps=steps, preset=preset,
        rules=[r.strip() for r in rules.split(",") if r.strip()], seed=seed, batch_size=batch_size, device=device,
        budget=Budget.quick() if quick else None, standalone=standalone, attack_dtype=attack_dtype, out=out)
    if not written and out is not None:
        return  # a torchrun process other than rank 0: rank 0 prints and writes
    if as_json:
        print_json(results_document(result))
    else:
        print_table(result, results)
    for path in written:
        messages.print(f"wrote {path}")
