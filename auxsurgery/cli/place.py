"""``auxsurgery place``: the placement study from the command line."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .backbone_options import (
    Head,
    Mean,
    ModelFactory,
    ModelKwargs,
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
    Json,
    Out,
    Points,
    Seed,
    TrainSubset,
    messages,
    print_json,
    require_data,
    results,
)


def place(
    model: ModelName = None,
    candidates: str = typer.Option(..., help="Attach points, comma-separated; each one is a placement "
                                             "(list them with `auxsurgery layers MODEL`)."),
    sets: Optional[str] = typer.Option(None, help="Multi-point placements: points joined by '+', sets by ',' "
                                                 "(e.g. stage1+stage2,stage2+stage3)."),
    data: Data = None,
    data_root: DataRoot = None,
    train_subset: TrainSubset = None,
    epochs: int = typer.Option(3, help="Fine-tuning epochs of each placement's heads."),
    n: Points = 200,
    seed: Seed = 0,
    out: Out = Path("place-out"),
    head: Head = "default",
    mode: str = typer.Option("heads", help="'heads' freezes the backbone; 'full' fine-tunes everything."),
    train_backbone_epochs: Optional[int] = typer.Option(
        None, help="Train the backbone this many epochs first (default: 3 for random weights, 0 with --weights or "
                   "--pretrained: your trained backbone is used as it is)."),
    pretrained: Pretrained = False,
    weights: Weights = None,
    model_factory: ModelFactory = None,
    model_kwargs: ModelKwargs = None,
    mean: Mean = None,
    std: Std = None,
    device: Device = "auto",
    as_json: Json = False,
):
    """Compare where to attach Aux Blocks: robustness to PGD on the public model vs head cost.

    Each placement gets heads on a copy of the (trained) backbone, is fine-tuned, and is
    measured with the paper's two-iteration PGD crafted on the public model (Table VI).
    Writes placement.json, placement.md and placement.png under --out; --json prints placement.json.

    Example: auxsurgery place small_cnn --candidates stage1,stage2,stage3 --data synthetic

    Example: auxsurgery place resnet9_cifar --weights runs/r9/last.safetensors --candidates layer1,layer2 --data cifar10
    """
    import torch

    from .._utils import run_folder_lock
    from ..data import dataset_classes, load_dataset
    from ..studies.placement import place_study, trained_backbone

    data = require_data(data)
    with run_folder_lock(out, "auxsurgery place"):  # first: a busy or unwritable folder fails before training
        torch.manual_seed(seed)
        train_data = load_dataset(data, root=data_root, train=True, subset=train_subset)
        test_data = load_dataset(data, root=data_root, train=False)
        classes = dataset_classes(train_data)
        if classes is None:
            raise ValueError(f"dataset {data!r} names no classes; cannot size the classifier")
        backbone = backbone_from_options(model, num_classes=len(classes), weights=weights, model_factory=model_factory,
                                         mean=mean, std=std, pretrained=pretrained, in_chans=train_data[0][0].shape[0],
                                         model_kwargs=model_kwargs)
        backbone = trained_backbone(backbone, train_data, len(classes), pretrained, train_backbone_epochs, seed, device)
        messages.rule("placement study")
        result = place_study(backbone, train_data, test_data, candidates,
                             sets=[s.replace("+", ",") for s in sets.split(",") if s.strip()] if sets else None,
                             head=head, mode=mode, epochs=epochs, n=min(n, len(test_data)), seed=seed,
                             input_size=tuple(train_data[0][0].shape), device=device)
        paths = result.write(out)
        if as_json:
            print_json(result.to_dict())
            return
        result.print_table(results)
        messages.print("wrote " + ", ".join(str(p) for p in paths))
