"""Saving and loading AuxModels: safetensors weights plus a JSON surgery spec.

A checkpoint rebuilds without the user's script: the spec names the backbone, attach
points and head presets, and the weights load into the rebuilt model. Loading never
unpickles anything (safetensors holds only tensors and string metadata), and writes
are atomic (temp file in the same folder, fsync, rename), so an interrupted save never
leaves a half-written checkpoint in place.
"""
from __future__ import annotations

import json
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_model
from torch import nn

from ._utils import atomic_write
from .backbones import NormalizedBackbone, backbone_from_spec
from .model import AuxModel
from .surgery import attach_aux_blocks

SPEC_KEY = "auxsurgery_spec"


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, or does not match the model it should rebuild."""


def save(aux_model: AuxModel, path: str | Path) -> Path:
    """Write ``aux_model``'s weights and surgery spec to ``path`` (safetensors format)."""
    spec = dict(aux_model.spec, alpha=aux_model.alpha.tolist())
    metadata = {SPEC_KEY: json.dumps(spec)}
    return atomic_write(path, lambda tmp: save_model(aux_model, tmp, metadata=metadata))


def read_spec(path: str | Path) -> dict:
    """The surgery spec stored in a checkpoint, without loading weights."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable auxsurgery checkpoint (corrupt or truncated?): {err}") from err
    if SPEC_KEY not in metadata:
        raise CheckpointError(f"{path} is a safetensors file without an auxsurgery spec; was it saved by auxsurgery.save?")
    try:
        return json.loads(metadata[SPEC_KEY])
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: the stored surgery spec is not valid JSON: {err}") from err


def load(path: str | Path, backbone: nn.Module | None = None, head=None, map_location: str = "cpu") -> AuxModel:
    """Rebuild an AuxModel from a checkpoint.

    Args:
        path: a file written by :func:`save`.
        backbone: the backbone module, needed only when it was not built by name.
        head: head factories, needed only when custom (non-preset) heads were used.
        map_location: device to load the weights onto.
    """
    spec = read_spec(path)
    if backbone is None:
        if not spec.get("backbone"):
            raise CheckpointError(f"{path} was made from a custom nn.Module; pass it as load(path, backbone=...)")
        backbone = backbone_from_spec(spec["backbone"])
    if head is None:
        if "custom" in spec["heads"]:
            raise CheckpointError(f"{path} uses custom head factories; pass them as load(path, head=...)")
        head = spec["heads"]
    # A plain module had its normalisation folded in at attach time; a NormalizedBackbone carries its own.
    normalize = None if isinstance(backbone, NormalizedBackbone) else spec.get("normalize")
    aux = attach_aux_blocks(
        backbone, at=spec["attach_points"], num_classes=spec["num_classes"], input_size=spec["input_size"],
        head=head, alpha=spec["alpha"], method=spec["method"],
        mean=normalize["mean"] if normalize else None, std=normalize["std"] if normalize else None,
    )
    try:
        missing, unexpected = load_model(aux, str(path), strict=False, device=map_location)
    except (SafetensorError, RuntimeError) as err:
        raise CheckpointError(f"{path}: weights do not fit the rebuilt model: {err}") from err
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not match the rebuilt model "
                              f"(missing: {sorted(missing)[:5]}, unexpected: {sorted(unexpected)[:5]})")
    return aux.to(map_location).eval()
