"""``auxsurgery defend``: your trained model in, the defended model and a plain verdict out."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..studies.defend import DefendConfig
from ..studies.defend import defend as run_defence
from .backbone_options import (
    At,
    Head,
    Mean,
    ModelFactory,
    ModelName,
    Pretrained,
    Std,
    Weights,
    backbone_from_options,
)
from .options import (
    Data,
    DataRoot,
    Device,
    Eps,
    Json,
    Out,
    Points,
    Seed,
    ThreatPreset,
    TrainSubset,
    head_choice,
    messages,
    print_json,
    results,
)


def defend(
    model: ModelName = None,
    data: Data = ...,  # training and test data; an ImageFolder path with train/ and val/ (or test/) folders
    weights: Weights = None,
    model_factory: ModelFactory = None,
    mean: Mean = None,
    std: Std = None,
    pretrained: Pretrained = False,
    at: At = "auto:3",
    head: Head = "default",
    epochs: Optional[int] = typer.Option(None, help="Epochs to train the heads (default 5; 1 with --quick)."),
    n: Points = 1000,  # at most 100 with --quick
    train_subset: TrainSubset = None,
    eps: Eps = None,
    threat_preset: ThreatPreset = None,
    image_size: Optional[int] = typer.Option(None, help="ImageFolder: resize and crop images to this size."),
    data_root: DataRoot = None,
    out: Out = Path("defence"),
    quick: bool = typer.Option(False, help="Smoke test: tiny attack budget and few images; proves nothing."),
    seed: Seed = 0,
    device: Device = "auto",
    as_json: Json = False,
):
    """Attach Aux Blocks to your trained model, train only them (backbone frozen), attack both models with the
    strong suite, and say plainly whether the heads helped.

    Writes defence.md and defence.json (the verdict), defended.safetensors, and the full undefended/ and
    defended/ evaluation reports under --out.

    Example: auxsurgery defend resnet18 --weights my.pth --data cifar10 --at auto:3 --epochs 5 --points 1000 \
        --out defence
    """
    config = DefendConfig(at=at, head=head_choice(head), epochs=epochs or (1 if quick else 5),
                          n=n, train_subset=train_subset, eps=eps, dataset=threat_preset, quick=quick, seed=seed,
                          device=device)
    backbone = backbone_from_options(model, num_classes=None if model_factory else _classes(data, data_root),
                                     weights=weights, model_factory=model_factory, mean=mean, std=std,
                                     pretrained=pretrained)
    result = run_defence(backbone, data, out, config, data_root=data_root, image_size=image_size,
                         name=model or model_factory)
    if as_json:
        print_json({**result.to_dict(), "headline": result.headline()})
    else:
        results.print(result.headline())
    for message in result.warnings:
        messages.print(f"[yellow]warning[/yellow]: {message}")
    messages.print(f"wrote {result.files.get('report')}, {result.files.get('json')}")


def _classes(data: str, data_root) -> int | None:
    """The class count of the named data, for building a backbone by name (its classifier's size)."""
    from ..data import dataset_classes, load_dataset

    classes = dataset_classes(load_dataset(data, root=data_root, train=False, subset=1))
    return len(classes) if classes is not None else None
