"""``auxsurgery place``: the placement study from the command line."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
import typer
from rich.console import Console

from ..backbones import build_backbone
from ..data import dataset_classes, load_dataset
from ..placement import place_study
from ..train import TrainConfig, finetune

console = Console(stderr=True)


def place(
    model: str = typer.Argument(..., help="Backbone name: small_cnn, resnet18, timm:convnext_atto, ..."),
    candidates: str = typer.Option(..., help="Attach points, comma-separated; each one is a placement "
                                             "(list them with `auxsurgery layers MODEL`)."),
    sets: Optional[str] = typer.Option(None, help="Multi-point placements: points joined by '+', sets by ',' "
                                                 "(e.g. stage1+stage2,stage2+stage3)."),
    data: str = typer.Option("synthetic", help="Dataset name (synthetic, mnist, cifar10, ...) or ImageFolder path."),
    data_root: Optional[Path] = typer.Option(None, help="Data root (default $AUXSURGERY_DATA, else ./data)."),
    train_size: Optional[int] = typer.Option(None, help="Training images to use (default: all)."),
    epochs: int = typer.Option(3, help="Fine-tuning epochs of each placement's heads."),
    n: int = typer.Option(200, "--n", help="Test images to attack."),
    seed: int = typer.Option(0, help="Seed of initial weights and data order."),
    out: Path = typer.Option(Path("place-out"), help="Folder for placement.json/.md/.png."),
    head: str = typer.Option("default", help="Head preset (see `auxsurgery attach --help`)."),
    mode: str = typer.Option("heads", help="'heads' freezes the backbone; 'full' fine-tunes everything."),
    train_backbone_epochs: Optional[int] = typer.Option(
        None, help="Train the backbone this many epochs first (default: 3 for random weights, 0 with --pretrained)."),
    pretrained: bool = typer.Option(False, help="Load the backbone's pretrained weights."),
    as_json: bool = typer.Option(False, "--json", help="Print placement.json to stdout instead of the table."),
):
    """Compare where to attach Aux Blocks: robustness to PGD on the public model vs head cost.

    Each placement gets heads on a copy of the (trained) backbone, is fine-tuned, and is
    measured with the paper's two-iteration PGD crafted on the public model (Table VI).

    Example: auxsurgery place small_cnn --candidates stage1,stage2,stage3 --data synthetic
    """
    torch.manual_seed(seed)
    train_set = load_dataset(data, root=data_root, train=True, subset=train_size)
    test_set = load_dataset(data, root=data_root, train=False)
    classes = dataset_classes(train_set)
    if classes is None:
        raise ValueError(f"dataset {data!r} names no classes; cannot size the classifier")
    input_size = tuple(train_set[0][0].shape)
    backbone = build_backbone(model, num_classes=len(classes), pretrained=pretrained, in_chans=input_size[0])
    if train_backbone_epochs is None:
        # Heads on a random-weight backbone measure nothing: train it unless weights were loaded.
        train_backbone_epochs = 0 if pretrained else 3
    if train_backbone_epochs > 0:
        console.rule(f"train {model} for {train_backbone_epochs} epoch(s)")
        finetune(backbone, train_set, None, TrainConfig(epochs=train_backbone_epochs, optimizer="adamw", lr=3e-3,
                                                        schedule="onecycle", seed=seed, out_dir=None, amp="off"))
    elif not pretrained:
        console.print("[yellow]warning[/yellow]: the backbone has random weights; pass --train-backbone-epochs or --pretrained")
    console.rule("placement study")
    result = place_study(backbone, train_set, test_set, candidates,
                         sets=[s.replace("+", ",") for s in sets.split(",") if s.strip()] if sets else None,
                         head=head, mode=mode, epochs=epochs, n=min(n, len(test_set)), seed=seed,
                         input_size=input_size)
    paths = result.write(out)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=1))
        return
    result.print_table()
    console.print("wrote " + ", ".join(str(p) for p in paths))
