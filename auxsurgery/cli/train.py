"""``auxsurgery train``: fine-tune an AuxModel (a checkpoint, or a backbone name plus --at) on a dataset."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from .backbone_options import (
    At,
    Head,
    Mean,
    ModelFactory,
    ModelKwargs,
    Pretrained,
    Std,
    Weights,
    backbone_from_options,
    load_checkpoint,
)
from .options import (
    Data,
    DataRoot,
    Device,
    Json,
    Out,
    Resume,
    Seed,
    TrainSubset,
    head_choice,
    messages,
    print_json,
    require_data,
    results,
    resume_hint,
)

if TYPE_CHECKING:
    from ..train import TrainConfig


def _summary(result, config: TrainConfig, files: list[str]) -> dict:
    """The ``--json`` document: the best epoch, the last epoch's metrics and the files written."""
    return {"best_epoch": result.best_epoch, "select_best": config.select_best, "best_accuracy": result.best_accuracy,
            "epochs_run": len(result.history), "final": result.history[-1] if result.history else None,
            "files": files}


def train(
    out: Out,  # required (no default); declared first so that MODEL may be omitted with --model-factory
    model: Annotated[Optional[str], typer.Argument(
        help="A checkpoint (from `auxsurgery attach` or a previous run), or a backbone name (omit it with "
             "--model-factory).")] = None,
    data: Data = None,
    at: At = "auto:3",
    head: Head = "default",
    pretrained: Pretrained = False,
    weights: Weights = None,
    model_factory: ModelFactory = None,
    model_kwargs: ModelKwargs = None,
    mean: Mean = None,
    std: Std = None,
    data_root: DataRoot = None,
    download: bool = typer.Option(False, "--download", help="Download a missing named dataset."),
    train_subset: TrainSubset = None,
    val_subset: Optional[int] = typer.Option(None, min=1, help="Validate on the first N test samples."),
    image_size: Optional[int] = typer.Option(None, help="ImageFolder: resize and crop images to this size."),
    preset: Optional[str] = typer.Option(None, help="Start from the paper's Table III settings: mnist, cifar10, mini-imagenet."),
    epochs: Optional[int] = typer.Option(None, help="Epochs (default 100, or the preset's)."),
    batch_size: Optional[int] = typer.Option(None, help="Global batch size (default 128)."),
    optimizer: Optional[str] = typer.Option(None, help="sgd (default) or adamw."),
    lr: Optional[float] = typer.Option(None, help="Learning rate (default 0.01)."),
    momentum: Optional[float] = typer.Option(None, help="SGD momentum (default 0.9)."),
    weight_decay: Optional[float] = typer.Option(None, help="Weight decay (default 5e-4)."),
    schedule: Optional[str] = typer.Option(None, help="multistep (default), cosine, onecycle, none."),
    milestones: Optional[str] = typer.Option(None, help="multistep: epochs where lr drops, e.g. 50,75 (default 50)."),
    mode: Optional[str] = typer.Option(None, help="full (default), heads (backbone frozen), backbone-lr-scale."),
    backbone_lr_scale: Optional[float] = typer.Option(None, help="backbone-lr-scale mode: the backbone's lr factor."),
    amp: Optional[str] = typer.Option(None, help="auto (default), bf16, fp16, off."),
    channels_last: Optional[bool] = typer.Option(None, "--channels-last/--no-channels-last", help="NHWC memory format."),
    grad_clip: Optional[float] = typer.Option(None, help="Clip the gradient norm to this value."),
    seed: Seed = 0,
    adversarial: Optional[str] = typer.Option(None, help="PGD adversarial training with the paper's preset: mnist, cifar10, mini-imagenet."),
    resume: Resume = False,
    save_every: Optional[int] = typer.Option(None, help="Also save the resume state every N steps."),
    num_workers: Optional[int] = typer.Option(None, help="Data-loading worker processes (default 0)."),
    device: Device = "auto",
    as_json: Json = False,
):
    """Fine-tune every head on the joint objective; validate each epoch; save best/last checkpoints.

    Writes metrics.jsonl, best/last.safetensors and train_state.pt under --out; --json prints a summary.
    Under torchrun (``torchrun --nproc_per_node 2 -m auxsurgery train ...``) the run is data-parallel.

    With a backbone name, --at, --head, --pretrained, --weights (your trained weights) and --model-kwargs say
    how to build the model (the heads are new); a checkpoint carries all of that.

    Example: auxsurgery train small_cnn --at auto:3 --data synthetic --epochs 10 --schedule cosine --out runs/demo
    """
    from ..data import dataset_classes, load_dataset
    from ..train import TrainConfig, adversarial_preset, finetune, paper_config, starting_model
    from ..train.distributed import launched_rank
    from ..train.run_files import written_files

    chosen = dict(epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr, momentum=momentum,
                  weight_decay=weight_decay, schedule=schedule, mode=mode, backbone_lr_scale=backbone_lr_scale,
                  amp=amp, channels_last=channels_last, grad_clip=grad_clip, seed=seed, save_every=save_every,
                  num_workers=num_workers, device=device, out_dir=str(out), resume=resume,
                  milestones=_milestones(milestones) if milestones else None,
                  adversarial=adversarial_preset(adversarial) if adversarial else None)
    settings = {k: v for k, v in chosen.items() if v is not None}  # unset options keep the preset's
    config = paper_config(preset, **settings) if preset else TrainConfig(**settings)

    data = require_data(data)
    options = dict(root=data_root, download=download, image_size=image_size, fetch_hint="pass --download")
    train_data = load_dataset(data, train=True, subset=train_subset, **options)
    val_data = load_dataset(data, train=False, subset=val_subset, **options)
    if model and Path(model).is_file():  # a checkpoint carries its backbone's weights and normalisation
        given = [f"--{name}" for name, value in (("weights", weights), ("mean", mean), ("std", std),
                                                 ("pretrained", pretrained), ("model-kwargs", model_kwargs)) if value]
        if given:
            raise ValueError(f"{model} is a checkpoint, which carries its own weights and normalisation: "
                             f"{', '.join(given)} apply to a backbone name; drop {'them' if len(given) > 1 else 'it'}")
        aux = load_checkpoint(model, model_factory)
    else:
        import torch

        classes = dataset_classes(train_data)
        torch.manual_seed(config.seed)  # the backbone's new weights, then the heads'
        backbone = backbone_from_options(model, num_classes=len(classes) if classes is not None else None,
                                         weights=weights, model_factory=model_factory, mean=mean, std=std,
                                         pretrained=pretrained, in_chans=train_data[0][0].shape[0],
                                         model_kwargs=model_kwargs)
        aux = starting_model(backbone, train_data, at=at, head=head_choice(head), seed=None)
    with resume_hint("rerun the same command to continue" if resume else
                     "rerun the same command with --resume to continue"):
        result = finetune(aux, train_data, val_data, config)
    if launched_rank() != 0:  # under torchrun, rank 0 reports
        return
    files = [str(path) for path in written_files(out)]
    if as_json:
        print_json(_summary(result, config, files))
    elif result.best_epoch is not None:
        results.print(f"best epoch {result.best_epoch}: {config.select_best} accuracy {result.best_accuracy:.4f}")
    messages.print("wrote " + ", ".join(files))


def _milestones(text: str) -> tuple[int, ...]:
    """``--milestones 50,75`` as epochs."""
    try:
        return tuple(int(m) for m in text.split(","))
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a comma-separated list of epochs, e.g. 50,75",
                                 param_hint="--milestones") from None
