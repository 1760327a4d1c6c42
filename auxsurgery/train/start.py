"""The model a training run starts from: a saved checkpoint, or a backbone with new heads sized to the data."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch.utils.data import Dataset

from auxsurgery.checkpoint import load
from auxsurgery.data import dataset_classes
from auxsurgery.model import AuxModel
from auxsurgery.surgery import attach_aux_blocks


def starting_model(source: str | Path, data: Dataset, at: str = "auto:3", head: str | Sequence[str] = "default",
                   pretrained: bool = False, seed: int = 0) -> AuxModel:
    """The AuxModel to train on ``data``.

    ``source`` is a checkpoint file (a previous run, ``auxsurgery attach``), loaded as saved;
    or a backbone name, built for the data's classes and image size with heads ``head`` at
    ``at`` (see :func:`auxsurgery.attach_aux_blocks`), its new weights drawn from ``seed``.
    """
    if Path(source).is_file():
        return load(source)
    classes = dataset_classes(data)
    if classes is None:
        raise ValueError("the training data names no classes; cannot size the classifier")
    torch.manual_seed(seed)
    return attach_aux_blocks(str(source), at=at, num_classes=len(classes), input_size=tuple(data[0][0].shape),
                             head=head, pretrained=pretrained)
