"""The model a training run starts from: a saved checkpoint, or a backbone with new heads sized to the data."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from auxsurgery.backbones import build_backbone
from auxsurgery.checkpoint import load
from auxsurgery.data import dataset_classes
from auxsurgery.model import AuxModel
from auxsurgery.surgery import attach_aux_blocks


def starting_model(source: str | Path | nn.Module, data: Dataset, at: str = "auto:3",
                   head: str | Sequence[str] = "default", pretrained: bool = False, seed: int | None = 0) -> AuxModel:
    """The AuxModel to train on ``data``.

    ``source`` is a checkpoint file (a previous run, ``auxsurgery attach``), loaded as saved;
    a backbone module (e.g. ``build_backbone(name, weights=PATH)``: your trained weights), which
    gets heads ``head`` at ``at`` (see :func:`auxsurgery.attach_aux_blocks`); or a backbone
    name, built for the data's classes and image size (``pretrained``: the library's weights)
    and given heads the same way. The new weights (the named backbone's, the heads') are drawn
    from ``seed``; ``seed=None`` draws them from torch's random state as it stands (a caller
    that built ``source`` under its own seed keeps one stream).
    """
    if not isinstance(source, nn.Module) and Path(source).is_file():
        return load(source)
    classes = dataset_classes(data)
    if classes is None:
        raise ValueError("the training data names no classes; cannot size the classifier")
    if seed is not None:
        torch.manual_seed(seed)
    sample = data[0][0]
    if not isinstance(source, nn.Module):
        source = build_backbone(str(source), num_classes=len(classes), pretrained=pretrained)
    return attach_aux_blocks(source, at=at, num_classes=len(classes), input_size=tuple(sample.shape), head=head)
