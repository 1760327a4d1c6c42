"""``auxsurgery defend``: your trained model in, defended models and a plain verdict out."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from .backbone_options import (
    At,
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
    Eps,
    Json,
    Norm,
    Out,
    Points,
    Rules,
    Resume,
    Seed,
    ThreatPreset,
    TrainEps,
    TrainSubset,
    eps_in_norm,
    head_choice,
    messages,
    print_json,
    results,
    resume_hint,
)


def defend(
    model: ModelName = None,
    data: Data = ...,  # training and test data; an ImageFolder path with train/ and val/ (or test/) folders
    weights: Weights = None,
    model_factory: ModelFactory = None,
    mean: Mean = None,
    std: Std = None,
    pretrained: Pretrained = False,
    model_kwargs: ModelKwargs = None,
    method: str = typer.Option("heads", help="Defences to apply and compare, comma-separated: "
                                             "heads, heads-adversarial, adversarial, aux-adversarial."),
    adversarial_method: str = typer.Option("fgsm", help="Adversarial-training method of the adversarial defences: "
                                                 "fgsm, pgd, trades."),
    objective: Optional[str] = typer.Option(None, help="What the adversarial training's attack climbs: "
                                                       "joint, max-head, ensemble, vote-margin, public (default: joint with "
                                                       "heads, public without; TRADES climbs its own KL)."),
    train_eps: TrainEps = None,
    attack_steps: Optional[int] = typer.Option(None, help="Attack steps per training batch (pgd, trades; default "
                                                          "the method's: 10 for both)."),
    rules: Rules = "vote,score",
    min_clean: Optional[float] = typer.Option(None, help="Clean-accuracy floor of the verdict, a fraction in [0, 1]: "
                                                         "the best model is the most robust one at or above it."),
    at: At = "auto:3",
    head: Head = "default",
    epochs: Optional[int] = typer.Option(None, help="Epochs of every defence's training (default 5; 1 with --quick)."),
    n: Points = 1000,  # at most 100 with --quick
    train_subset: TrainSubset = None,
    eps: Eps = None,
    norm: Norm = "linf",
    threat_preset: ThreatPreset = None,
    image_size: Optional[int] = typer.Option(None, help="ImageFolder: resize and crop images to this size."),
    data_root: DataRoot = None,
    out: Out = Path("defence"),
    quick: bool = typer.Option(False, help="Smoke test: tiny attack budget and few images; proves nothing."),
    resume: Resume = False,
    seed: Seed = 0,
    device: Device = "auto",
    as_json: Json = False,
):
    """Defend your trained model one or more ways (--method), attack every result and the undefended model with
    the strong suite on the same images, and name the most robust one above the clean-accuracy floor.

    Defences: heads (Aux Blocks trained on clean data, backbone frozen), heads-adversarial (the same heads
    trained adversarially), adversarial (adversarial training of the backbone), aux-adversarial (heads and
    backbone trained adversarially together). Writes defence.md and defence.json (the verdict) and, per
    defence, its model, training folder and full evaluation report under --out.

    Example: auxsurgery defend resnet18 --weights my.pth --data cifar10 --method heads,aux-adversarial --points 1000 \
        --out defence
    """
    from ..studies.defend import DefendConfig
    from ..studies.defend import defend as run_defence

    # Unset options keep the method's defaults; the training eps defaults to the evaluation's.
    eps, train_eps = eps_in_norm(eps, norm), eps_in_norm(train_eps, norm, "--train-eps")
    training = {"method": adversarial_method, "objective": objective, "eps": train_eps, "norm": norm,
                "steps": attack_steps}
    config = DefendConfig(methods=[m.strip() for m in method.split(",") if m.strip()], at=at, head=head_choice(head),
                          epochs=epochs or (1 if quick else 5), n=n, train_subset=train_subset, eps=eps, norm=norm,
                          adversarial={k: v for k, v in training.items() if v is not None}, min_clean=min_clean,
                          dataset=threat_preset, rules=[r.strip() for r in rules.split(",") if r.strip()],
                          quick=quick, resume=resume, seed=seed, device=device)
    backbone = backbone_from_options(model, num_classes=None if model_factory else _classes(data, data_root),
                                     weights=weights, model_factory=model_factory, mean=mean, std=std,
                                     pretrained=pretrained, model_kwargs=model_kwargs)
    with resume_hint("rerun the same command to continue" if resume else
                     "rerun the same command with --resume to continue"):
        result = run_defence(backbone, data, out, config, data_root=data_root, image_size=image_size,
                             name=model or model_factory)
    if as_json:
        print_json({**result.to_dict(), "headline": result.headline()})
    else:
        results.print(result.headline())
    for message in result.warnings:
        messages.print(f"[yellow]warning[/yellow]: {escape(message)}")  # its [rule] tag is no markup
    messages.print(f"wrote {result.files.get('report')}, {result.files.get('json')}")


def _classes(data: str, data_root) -> int | None:
    """The class count of the named data, for building a backbone by name (its classifier's size)."""
    from ..data import dataset_classes, load_dataset

    classes = dataset_classes(load_dataset(data, root=data_root, train=False, subset=1))
    return len(classes) if classes is not None else None
