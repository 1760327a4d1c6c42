"""Options that say which network to start from, shared by the commands that build one.

``--weights``, ``--model-factory``, ``--mean`` and ``--std`` are declared once here (as the
aliases in :mod:`.options` are) and turned into a backbone by :func:`backbone_from_options`;
:func:`load_checkpoint` reloads a saved AuxModel whose backbone came from a model factory.

    def attach(model: ModelName = None, weights: Weights = None, model_factory: ModelFactory = None,
               mean: Mean = None, std: Std = None, ...):
        backbone = backbone_from_options(model, num_classes=10, weights=weights,
                                         model_factory=model_factory, mean=mean, std=std)
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

if TYPE_CHECKING:  # imported where used: declaring these options loads no torch (see .options)
    from ..backbones import NormalizedBackbone

__all__ = ["At", "Head", "InputSize", "Mean", "ModelFactory", "ModelKwargs", "ModelName", "NumClasses", "Pretrained",
           "Std", "Weights", "backbone_from_options",
           "load_checkpoint", "parse_floats", "parse_model_kwargs"]

ModelName = Annotated[Optional[str], typer.Argument(
    help="Model name: resnet18, timm:convnext_atto, small_cnn, ... (omit it with --model-factory).")]
Weights = Annotated[Optional[str], typer.Option(
    help="Your trained weights: a state dict saved with torch.save (read with weights_only=True, never running "
         "code), a .safetensors file, or a timm checkpoint (state_dict / state_dict_ema); for torchvision models "
         "also a weights name (DEFAULT, IMAGENET1K_V2; downloads).")]
ModelFactory = Annotated[Optional[str], typer.Option(
    help="Build the network with your own code: package.module:function (or path/to/file.py:function), called "
         "with num_classes= if it takes it. This imports and runs that code. Needs --mean and --std.")]
Mean = Annotated[Optional[str], typer.Option(
    help="Input normalisation mean, per channel, comma-separated (e.g. 0.485,0.456,0.406); the model takes [0, 1] "
         "pixels and normalises inside. Default: the model's own (required with --model-factory).")]
Std = Annotated[Optional[str], typer.Option(
    help="Input normalisation std, per channel, comma-separated (e.g. 0.229,0.224,0.225).")]
Pretrained = Annotated[bool, typer.Option(help="Start from the library's pretrained weights (downloads).")]
At = Annotated[str, typer.Option(help="Attach points, comma-separated (see `auxsurgery layers MODEL`), or auto:K.")]
Head = Annotated[str, typer.Option(help="Head preset, default:<width>, or one per attach point (comma-separated).")]
ModelKwargs = Annotated[Optional[str], typer.Option(
    help="Extra arguments of the network's constructor, as JSON or key=value pairs, e.g. img_size=32 (timm ViTs at "
         "32x32) or '{\"drop_rate\": 0.1}'.")]
NumClasses = Annotated[Optional[int], typer.Option(help="Classes of the network's classifier.")]
InputSize = Annotated[Optional[str], typer.Option(help="C x H x W, e.g. 3x32x32 (default: the model's own).")]


def parse_floats(text: str | None, what: str) -> tuple[float, ...] | None:
    """``"0.5,0.5,0.5"`` -> ``(0.5, 0.5, 0.5)``; None stays None."""
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"--{what} must be comma-separated numbers, got {text!r}") from None
    if not values:
        raise ValueError(f"--{what} is empty")
    return values


def parse_model_kwargs(text: str | None) -> dict | None:
    """``--model-kwargs``: a JSON object, or ``key=value`` pairs separated by commas (values read as JSON when they
    parse, e.g. ``img_size=32,global_pool=avg`` -> ``{"img_size": 32, "global_pool": "avg"}``)."""
    if not text:
        return None
    if text.lstrip().startswith("{"):
        try:
            kwargs = _json(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"--model-kwargs is not valid JSON ({err.msg}): {text!r}") from None
        if not isinstance(kwargs, dict):
            raise ValueError(f"--model-kwargs must be a JSON object, got {text!r}")
        return kwargs
    kwargs = {}
    for pair in (p.strip() for p in text.split(",") if p.strip()):
        key, sep, value = pair.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ValueError(f"--model-kwargs takes JSON or key=value pairs (e.g. img_size=32), got {pair!r}")
        try:
            kwargs[key.strip()] = _json(value)
        except json.JSONDecodeError:
            kwargs[key.strip()] = value.strip()
    return kwargs


def _json(text: str):
    """``text`` parsed as JSON; nesting deeper than Python's recursion allows is one line, not a RecursionError."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError(f"--model-kwargs is nested too deeply ({len(text):,} characters); give the constructor's "
                         "arguments as a flat JSON object or key=value pairs") from None


def _check_size(model: str, num_classes: int | None, in_chans: int | None, kwargs: dict | None,
                model_kwargs: str | None) -> None:
    """Refuse, before anything is allocated, a network whose weights cannot fit in memory or whose arguments give
    it a negative size: it is built first on the meta device, which allocates nothing."""
    import torch

    from .._utils import check_memory
    from ..backbones import build_backbone

    built = f"{model}" + (f" with {num_classes:,} classes" if num_classes is not None else "") + (
        f" and --model-kwargs {model_kwargs!r}" if kwargs else "")
    try:
        with torch.device("meta"):
            probe = build_backbone(model, num_classes=num_classes, in_chans=in_chans, model_kwargs=kwargs)
    except RuntimeError as err:
        if "negative dimension" not in str(err):
            return  # a constructor that reads values cannot run on the meta device: its real build says
        raise ValueError(f"{built} would have a negative size ({str(err).splitlines()[0]}): give "
                         f"{'--model-kwargs' if kwargs else '--num-classes'} sizes of 1 or more") from None
    needed = sum(t.numel() * t.element_size() for t in (*probe.parameters(), *probe.buffers()))
    check_memory(needed, f"building {built}", "give smaller sizes (--model-kwargs, --num-classes)")


def backbone_from_options(
    model: str | None,
    num_classes: int | None = None,
    weights: str | None = None,
    model_factory: str | None = None,
    mean: str | None = None,
    std: str | None = None,
    pretrained: bool = False,
    in_chans: int | None = None,
    model_kwargs: str | None = None,
) -> NormalizedBackbone:
    """The backbone the options describe: ``model`` by name, or ``--model-factory``, with ``--weights`` and
    ``--model-kwargs``."""
    from ..backbones import FACTORY_PREFIX, build_backbone

    if model_factory:
        if model and model != FACTORY_PREFIX + model_factory:
            raise ValueError(f"give a model name ({model!r}) or --model-factory ({model_factory!r}), not both")
        model = FACTORY_PREFIX + model_factory
    if not model:
        raise ValueError("name a model (resnet18, timm:convnext_atto, ...) or give --model-factory "
                         "package.module:function")
    mean_values, std_values = parse_floats(mean, "mean"), parse_floats(std, "std")
    if (mean_values is None) != (std_values is None):
        raise ValueError("give both --mean and --std, or neither")
    if num_classes is not None and num_classes < 1:
        raise ValueError(f"--num-classes must be 1 or more, got {num_classes}")
    kwargs = parse_model_kwargs(model_kwargs)
    if kwargs and model_factory:
        raise ValueError("--model-kwargs passes arguments to a named network's constructor; a --model-factory "
                         "function builds its own (give it defaults)")
    try:
        if not model.startswith(FACTORY_PREFIX):  # a factory runs your code: once, for real
            _check_size(model, num_classes, in_chans, kwargs, model_kwargs)
        return build_backbone(model, num_classes=num_classes, pretrained=pretrained, in_chans=in_chans,
                              mean=mean_values, std=std_values, weights=weights, model_kwargs=kwargs)
    except TypeError as err:
        if not kwargs:
            raise
        raise ValueError(f"--model-kwargs {model_kwargs!r} does not fit {model}'s constructor: {err}") from None


def load_checkpoint(path: str | Path, model_factory: str | None = None, map_location: str = "cpu"):
    """Load an AuxModel checkpoint; one made from a model factory is rebuilt with ``--model-factory``.

    The factory is never imported because the checkpoint names it: the user has to name it (it may
    differ from the recorded one, e.g. after a move; the weights must still fit exactly).
    """
    from ..backbones import backbone_from_spec
    from ..checkpoint import load, read_spec

    spec = read_spec(path)
    backbone_spec = spec.get("backbone") or {}
    if backbone_spec.get("source") != "factory":
        if model_factory:
            raise ValueError(f"{path} was not made from a model factory; drop --model-factory")
        return load(path, map_location=map_location)
    if not model_factory:
        raise ValueError(f"{path} was made from the model factory {backbone_spec['name']!r}, which runs your code: "
                         f"pass --model-factory {backbone_spec['name']} to rebuild it")
    backbone = backbone_from_spec({**backbone_spec, "name": model_factory}, allow_factory=True)
    return load(path, backbone=backbone, map_location=map_location)
