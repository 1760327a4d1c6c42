"""Saving and loading AuxModels: safetensors weights plus a JSON surgery spec.

A checkpoint rebuilds without the user's script: the spec names the backbone, attach
points and head presets, and the weights load into the rebuilt model. Loading never
unpickles anything (safetensors holds only tensors and string metadata), and writes
are atomic (temp file in the same folder, fsync, rename), so an interrupted save never
leaves a half-written checkpoint in place.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_model
from torch import nn

from ._utils import atomic_write
from .backbones import (Normalize, NormalizedBackbone, WeightsError, backbone_from_spec, is_weights_file,
                        read_state_dict)
from .model import AuxModel
from .surgery import attach_aux_blocks

SPEC_KEY = "auxsurgery_spec"
FORMATS = (1,)  # spec formats this version reads
# Limits checked before anything is built: a spec past them is corrupt or hostile, and building it
# would try to allocate far more memory than any machine has before failing.
MAX_CLASSES = 100_000
MAX_CHANNELS = 64
MAX_SIDE = 4096


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, or does not match the model it should rebuild."""


def save(aux_model: AuxModel, path: str | Path) -> Path:
    """Write ``aux_model``'s weights and surgery spec to ``path`` (safetensors format)."""
    spec = dict(aux_model.spec, alpha=aux_model.alpha.tolist())
    metadata = {SPEC_KEY: json.dumps(spec)}
    try:
        return atomic_write(path, lambda tmp: save_model(aux_model, tmp, metadata=metadata))
    except SafetensorError as err:  # safetensors reports a full disk or a lost folder as its own error
        raise OSError(f"could not write the checkpoint {path}: {err}") from None


def read_spec(path: str | Path) -> dict:
    """The surgery spec stored in a checkpoint, without loading weights."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata, tensors = f.metadata() or {}, bool(list(f.keys()))
    except (SafetensorError, OSError, ValueError) as err:
        raise _not_a_checkpoint(path, err) from None
    if SPEC_KEY not in metadata:
        if tensors:
            raise _plain_weights(path)
        raise CheckpointError(f"{path} is a safetensors file without an auxsurgery spec; was it saved by "
                              "auxsurgery.save?")
    try:
        spec = json.loads(metadata[SPEC_KEY])
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: the stored surgery spec is not valid JSON: {err}") from err
    _check_spec(spec, path)
    return spec


def _plain_weights(path: Path) -> CheckpointError:
    return CheckpointError(
        f"{path} holds plain weights, not an auxsurgery checkpoint: name the network they belong to, "
        f"`auxsurgery attack MODEL --weights {path}` (e.g. resnet18) to evaluate them, or `auxsurgery attach MODEL "
        f"--weights {path} --out model.safetensors` to make a checkpoint; in Python build_backbone(MODEL, weights=...)")


def _not_a_checkpoint(path: Path, err: Exception) -> CheckpointError:
    """What a file that is no safetensors file holds instead: plain weights or pickled objects saved with
    torch.save (read as :func:`read_state_dict` reads them, never running code), or something unreadable."""
    if not is_weights_file(path):
        return CheckpointError(f"{path} is not a readable auxsurgery checkpoint (a safetensors file written by "
                               f"auxsurgery.save, attach, train or defend) nor a torch.save file: corrupt or "
                               f"truncated, or another kind of file? ({err})")
    try:
        read_state_dict(path)
    except WeightsError as weights_err:  # a pickled whole model, a torch.save file cut short, ...
        return CheckpointError(str(weights_err))
    return _plain_weights(path)


def _check_spec(spec, path) -> None:
    """Refuse a spec that is not one this version wrote, before anything is built from it."""
    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{path}: invalid surgery spec: {what}; the file was not written by "
                               "auxsurgery.save or has been altered")

    if not isinstance(spec, dict):
        raise bad(f"expected a JSON object, got {type(spec).__name__}")
    missing = [k for k in ("format", "attach_points", "heads", "num_classes", "input_size", "alpha", "method")
               if k not in spec]
    if missing:
        raise bad(f"missing {', '.join(missing)}")
    if spec["format"] not in FORMATS:
        raise bad(f"format {spec['format']!r} is not one this version reads ({', '.join(map(str, FORMATS))}); "
                  "upgrade auxsurgery")
    points, heads = spec["attach_points"], spec["heads"]
    if not isinstance(points, list) or not all(isinstance(p, str) for p in points):
        raise bad("attach_points must be a list of names")
    if not isinstance(heads, (str, list)) or (isinstance(heads, list) and len(heads) != len(points)):
        raise bad(f"heads must name one head per attach point ({len(points)})")
    classes = spec["num_classes"]
    if type(classes) is not int or not 1 <= classes <= MAX_CLASSES:
        raise bad(f"num_classes must be an integer in 1..{MAX_CLASSES}, got {classes!r}")
    size = spec["input_size"]
    if (not isinstance(size, list) or len(size) != 3 or any(type(s) is not int for s in size)
            or not 1 <= size[0] <= MAX_CHANNELS or not all(1 <= s <= MAX_SIDE for s in size[1:])):
        raise bad(f"input_size must be [C, H, W] with C in 1..{MAX_CHANNELS} and sides in 1..{MAX_SIDE}, "
                  f"got {size!r}")
    alpha = spec["alpha"]
    if (not isinstance(alpha, list) or len(alpha) != len(points) + 1
            or not all(isinstance(a, (int, float)) and math.isfinite(a) and a >= 0 for a in alpha)):
        raise bad(f"alpha must be {len(points) + 1} finite weights >= 0 (backbone first), got {alpha!r}")


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
    # alpha is stored twice (spec and buffer); the buffer is what predictions use, so both must agree.
    if not torch.equal(aux.alpha.cpu(), torch.tensor(spec["alpha"], dtype=aux.alpha.dtype)):
        raise CheckpointError(f"{path}: the alpha weights stored with the tensors ({aux.alpha.tolist()}) disagree "
                              f"with the spec's ({spec['alpha']}); the file has been altered")
    _check_normalize(aux, spec, path)
    return aux.to(map_location).eval()


def _check_normalize(aux: AuxModel, spec: dict, path) -> None:
    """The input normalisation is stored twice too (spec and buffers): the buffers normalise every input,
    so they must agree with the spec, and a std of 0, a negative or a non-finite value is refused."""
    if not isinstance(aux.normalize, Normalize):
        return
    mean, std = aux.normalize.mean.flatten().cpu(), aux.normalize.std.flatten().cpu()
    if not (torch.isfinite(mean).all() and torch.isfinite(std).all() and (std > 0).all()):
        raise CheckpointError(f"{path}: the stored input normalisation is invalid (mean {mean.tolist()}, std "
                              f"{std.tolist()}; std must be > 0, all finite); the file has been altered")
    stored = spec.get("normalize")
    try:
        agree = stored is None or (torch.equal(mean, torch.tensor(stored["mean"], dtype=mean.dtype))
                                   and torch.equal(std, torch.tensor(stored["std"], dtype=std.dtype)))
    except (TypeError, ValueError, KeyError, IndexError, RuntimeError):  # not {"mean": [...], "std": [...]}
        agree = False
    if not agree:
        raise CheckpointError(f"{path}: the input normalisation stored with the tensors (mean {mean.tolist()}, std "
                              f"{std.tolist()}) disagrees with the spec's ({stored}); the file has been altered")
