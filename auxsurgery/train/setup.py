"""What a run derives from its config, model and data before the first step.

The optimiser and its parameter groups, the lr schedule, the autocast dtype, the modes
the model trains in, the metric that picks the best epoch, and the checks that fail
before any step when the model cannot train on the data.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch.utils.data import Dataset

from auxsurgery._utils import preserved_state
from auxsurgery.data import dataset_classes
from auxsurgery.model import AuxModel
from auxsurgery.train.config import TrainConfig
from auxsurgery.train.objective import RULES_REPORTED


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device`` (None: full precision)."""
    if amp == "off":
        return None
    if amp != "auto":
        return {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    # Emulated bf16 is slower than fp32: use it only where oneDNN has native bf16 kernels.
    if device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return torch.bfloat16
    return None


def set_train_mode(aux: AuxModel, config: TrainConfig) -> None:
    aux.train()
    if config.mode == "heads":
        # A frozen backbone must not drift either: eval mode keeps its BatchNorm statistics.
        aux.trunk.eval()


@contextmanager
def frozen_backbone(aux: AuxModel, frozen: bool) -> Iterator[None]:
    """Backbone parameters without gradients inside (if ``frozen``), as they were afterwards."""
    if not frozen:
        yield
        return
    with preserved_state(aux.trunk, training=False, requires_grad=True):
        aux.trunk.requires_grad_(False)
        yield


def param_groups(aux: AuxModel, config: TrainConfig) -> list[dict]:
    backbone = list(aux.trunk.parameters())
    backbone_ids = {id(p) for p in backbone}
    heads = [p for p in aux.parameters() if id(p) not in backbone_ids]
    if config.mode == "heads":
        if not heads:
            raise ValueError("mode 'heads' trains only the aux heads, and this model has none")
        return [{"params": heads}]
    scale = config.backbone_lr_scale if config.mode == "backbone-lr-scale" else 1.0
    groups = [{"params": backbone, "lr": config.lr * scale}, {"params": heads, "lr": config.lr}]
    return [group for group in groups if group["params"]]


def make_optimizer(groups: list[dict], config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int):
    """The lr schedule, stepped once per batch."""
    total = config.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler
    if config.schedule == "multistep":
        return sched.MultiStepLR(optimizer, [m * steps_per_epoch for m in config.milestones], config.gamma)
    if config.schedule == "cosine":
        return sched.CosineAnnealingLR(optimizer, T_max=total)
    if config.schedule == "onecycle":
        max_lr = [group["lr"] for group in optimizer.param_groups]
        cycle_momentum = config.optimizer == "adamw" or config.momentum > 0
        return sched.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total, cycle_momentum=cycle_momentum)
    return sched.LambdaLR(optimizer, lambda step: 1.0)


def best_key(head_names: list[str], select_best: str) -> str:
    """The validation metric that picks the best epoch."""
    if len(head_names) == 1:
        return f"val/head/{head_names[0]}"
    if select_best in RULES_REPORTED:
        return f"val/rule/{select_best}"
    if select_best in head_names:
        return f"val/head/{select_best}"
    raise ValueError(f"select_best {select_best!r} is neither a rule ({', '.join(RULES_REPORTED)}) nor a head ({', '.join(head_names)})")


def check_model_fits_data(aux: AuxModel, datasets: list[Dataset], device: torch.device) -> None:
    """Fail before training when the model cannot take the images or predicts another class count."""
    image, _ = datasets[0][0]
    aux.check_input(image.unsqueeze(0), "the training data")
    aux.eval()
    try:
        with torch.no_grad():
            num_classes = aux(image.unsqueeze(0).to(device)).shape[-1]
    except RuntimeError as error:
        raise ValueError(f"the model does not accept the dataset's images (shape {list(image.shape)}): {error}") from None
    for dataset in datasets:
        classes = dataset_classes(dataset)
        if classes is not None and len(classes) != num_classes:
            raise ValueError(
                f"label count mismatch: the data has {len(classes)} classes but the model predicts "
                f"{num_classes}; build the model with num_classes={len(classes)}"
            )
