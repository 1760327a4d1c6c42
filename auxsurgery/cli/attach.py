"""``auxsurgery layers`` and ``auxsurgery attach``: inspect a backbone and perform the surgery."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from .backbone_options import (
    At,
    Head,
    InputSize,
    Mean,
    ModelFactory,
    ModelKwargs,
    ModelName,
    NumClasses,
    Pretrained,
    Std,
    Weights,
    backbone_from_options,
)
from .options import Json, Seed, head_choice, messages, print_json, results


def _fmt_shape(shape) -> str:
    return "x".join(str(d) for d in shape)


def _fmt_count(n: int) -> str:
    """``74033152`` -> ``74.03M``: short enough for an 80-column table."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def describe_head(head) -> str:
    """One line listing a head's layers, e.g. ``Conv3x3(64->64) > BatchNorm2d > ReLU > ...``."""
    from torch import nn

    parts = []
    for module in head.modules():
        if next(module.children(), None) is not None:
            continue
        if isinstance(module, nn.Conv2d):
            k, s = module.kernel_size[0], module.stride[0]
            parts.append(f"Conv{k}x{k}{'/' + str(s) if s > 1 else ''}({module.in_channels}->{module.out_channels})")
        elif isinstance(module, nn.Linear):
            parts.append(f"Linear({module.in_features}->{module.out_features})")
        else:
            parts.append(type(module).__name__)
    return " > ".join(parts)


def models(
    pattern: str = typer.Argument("", help="Substring to filter names by."),
    as_json: Json = False,
):
    """List buildable backbone names per source (auxsurgery, torchvision, timm).

    Example: auxsurgery models convnext
    """
    from ..backbones import available_backbones

    found = {src: [n for n in names if pattern in n] for src, names in available_backbones().items()}
    if as_json:
        print_json(found)
        return
    for src, names in found.items():
        results.print(f"[bold]{src}[/bold] ({len(names)}): {', '.join(names)}")


def layers(
    model: ModelName = None,
    input_size: InputSize = None,
    num_classes: NumClasses = 10,
    model_factory: ModelFactory = None,
    model_kwargs: ModelKwargs = None,
    mean: Mean = None,
    std: Std = None,
    auto: int = typer.Option(3, help="Mark the points that --at auto:K (K = this) picks."),
    depth: int = typer.Option(2, help="Module-name depth to list (layer1 is 1, layer1.0 is 2)."),
    all_nodes: bool = typer.Option(False, "--all", help="List every fx node, leaf ops included."),
    as_json: Json = False,
):
    """List where Aux Blocks can attach, with output shape and stride; mark the points auto:K picks.

    Example: auxsurgery layers resnet18 --input-size 3x32x32
    """
    from ..graph import list_attach_points
    from ..surgery import auto_picks, parse_input_size

    size = parse_input_size(input_size) if input_size else None
    backbone = backbone_from_options(model, num_classes=num_classes, model_factory=model_factory, mean=mean, std=std,
                                     in_chans=size[0] if size else None, model_kwargs=model_kwargs)
    size = size or backbone.default_input_size
    points = list_attach_points(backbone.net, size, depth=None if all_nodes else depth)
    picks = auto_picks(backbone, auto, size) if auto > 0 else []
    if as_json:
        print_json([{**p.to_dict(), "auto": p.name in picks} for p in points])
        return
    table = Table(title=f"{model or model_factory}: attach points at input {_fmt_shape(size)}")
    for column in ("name", "kind", "output shape", "layout", "stride", "note"):
        table.add_column(column)
    for p in points:
        notes = ["classifier" if p.in_classifier else ("" if p.layout else "no head layout"),
                 f"auto:{auto} pick" if p.name in picks else ""]
        stride = f"{p.stride:g}" if p.stride else "-"
        table.add_row(p.name, p.kind, _fmt_shape(p.shape), p.layout.kind if p.layout else "-", stride,
                      "; ".join(note for note in notes if note))
    hidden = [name for name in picks if name not in {p.name for p in points}]
    table.caption = f"auto:{auto} picks {', '.join(picks)}" if picks else None
    if hidden:
        table.caption += f" ({', '.join(hidden)} deeper than --depth {depth})"
    results.print(table)


def attach(
    model: ModelName = None,
    at: At = "auto:3",
    num_classes: NumClasses = 10,
    input_size: InputSize = None,
    head: Head = "default",
    pretrained: Pretrained = False,
    weights: Weights = None,
    model_factory: ModelFactory = None,
    model_kwargs: ModelKwargs = None,
    mean: Mean = None,
    std: Std = None,
    out: Optional[Path] = typer.Option(None, metavar="FILE", help="Save the AuxModel to this file (.safetensors "
                                                                  "with its surgery spec)."),
    seed: Seed = 0,
    as_json: Json = False,
):
    """Attach Aux Block heads to a backbone; print the heads and their cost.

    Example: auxsurgery attach resnet18 --at layer1,layer2 --input-size 3x32x32 --out model.safetensors

    Example: auxsurgery attach resnet18 --weights my_resnet.pth --input-size 3x32x32 --out model.safetensors
    """
    import torch

    from ..checkpoint import save
    from ..cost import head_costs
    from ..surgery import attach_aux_blocks, parse_input_size

    size = parse_input_size(input_size) if input_size else None
    torch.manual_seed(seed)  # the backbone's new weights (without --weights), then the heads'
    backbone = backbone_from_options(model, num_classes=num_classes, weights=weights, model_factory=model_factory,
                                     mean=mean, std=std, pretrained=pretrained, in_chans=size[0] if size else None,
                                     model_kwargs=model_kwargs)
    aux = attach_aux_blocks(backbone, at=at, num_classes=num_classes, input_size=size, head=head_choice(head))
    costs = head_costs(aux)
    saved = str(save(aux, out)) if out else None
    if as_json:
        print_json({"spec": aux.spec, "costs": [c.to_dict() for c in costs], "saved": saved})
    else:
        _print_costs(model or model_factory, aux, costs)
    if saved:
        messages.print(f"saved to {saved}")


def _print_costs(model: str, aux, costs) -> None:
    """The heads and their cost as a table, then each head's layers."""
    from ..heads import list_heads

    table = Table(title=f"{model} + {len(aux.heads)} Aux Blocks at input {_fmt_shape(aux.spec['input_size'])}")
    for column in ("head", "feature", "layout", "params", "% params", "FLOPs", "% FLOPs"):
        table.add_column(column, justify="right" if column != "head" else "left")
    layouts = [None, *aux.spec["layouts"]]
    for cost, layout in zip(costs, layouts):
        feature = f"{layout['channels']}x{layout['height']}x{layout['width']}" if layout else "-"
        table.add_row(cost.name, feature, layout["kind"] if layout else "-", _fmt_count(cost.params),
                      f"{cost.params_ratio:.1%}", _fmt_count(cost.flops), f"{cost.flops_ratio:.1%}")
    total = sum(c.flops_ratio for c in costs[1:])
    table.caption = f"all heads: {total:.1%} of the backbone's FLOPs; presets: {', '.join(list_heads())}"
    results.print(table)
    for name, module in zip(aux.attach_points, aux.heads):
        results.print(f"[bold]{name}[/bold]: {describe_head(module)}")
