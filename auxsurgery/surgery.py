"""``attach_aux_blocks``: the graph rewrite that turns a backbone into an AuxModel.

The backbone is traced once with torch.fx (torchvision's feature-extraction tracer with
timm's leaf rules) and rewritten to return its logits and the feature maps at the attach
points in a single pass; a head per point turns its feature map into logits. Networks
that fx cannot trace fall back to forward hooks on named modules, with a warning.
"""
from __future__ import annotations

import warnings
from typing import Sequence

from torch import nn

from ._utils import close_matches
from .backbones import Normalize, NormalizedBackbone, build_backbone
from .graph.auto import auto_points
from .graph.discovery import (
    candidate_names,
    classifier_modules,
    list_attach_points,
    list_module_points_by_hooks,
    probe_features,
    within_classifier,
)
from .graph.layouts import FeatureAdapter, first_tensor, infer_layout
from .graph.tracing import OUTPUT, HookTrunk, build_trunk, node_names
from .heads import HeadFactory, build_head, get_head_factory
from .model import AuxModel
from .version import __version__

METHODS = ("auto", "fx", "hooks")


def parse_points(at: str | Sequence[str]) -> list[str]:
    """``"layer1,layer2"`` or a list -> a list of names; ``auto:k`` is kept as one item."""
    items = at.split(",") if isinstance(at, str) else list(at)
    points = [p.strip() for p in items if p.strip()]
    if not points:
        raise ValueError("no attach points given; name layers (see `auxsurgery layers MODEL`) or use 'auto:3'")
    if len(set(points)) != len(points):
        raise ValueError(f"attach points repeat: {points}")
    return points


def parse_input_size(size: str | Sequence[int]) -> tuple[int, int, int]:
    """``"3x32x32"`` or ``(3, 32, 32)`` -> ``(C, H, W)``."""
    parts = size.lower().split("x") if isinstance(size, str) else list(size)
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"input size must look like 3x32x32, got {size!r}") from None
    if len(dims) != 3 or min(dims) < 1:
        raise ValueError(f"input size must be C x H x W with positive sides, got {size!r}")
    return dims


def unwrap(model: nn.Module, mean, std) -> tuple[nn.Module, nn.Module | None, nn.Module]:
    """Split a model into (network to trace, normalisation, public backbone taking [0, 1] pixels)."""
    if isinstance(model, NormalizedBackbone):
        if mean is not None or std is not None:
            raise ValueError("this backbone already folds in its normalisation; drop mean/std")
        return model.net, model.normalize, model
    if (mean is None) != (std is None):
        raise ValueError("give both mean and std, or neither")
    if mean is None:
        return model, None, model
    public = NormalizedBackbone(model, mean, std)
    return model, public.normalize, public


def _trace(net: nn.Module, method: str) -> list[str] | None:
    """The fx node names of ``net``, or None when falling back to hooks."""
    if method == "hooks":
        return None
    try:
        return node_names(net)
    except Exception as err:
        if method == "fx":
            raise ValueError(f"torch.fx cannot trace {type(net).__name__}: {type(err).__name__}: {err}") from err
        warnings.warn(
            f"torch.fx cannot trace {type(net).__name__} ({type(err).__name__}: {err}); "
            "falling back to forward hooks on named modules (same outputs; attach points must be module names)",
            stacklevel=3,
        )
        return None


def _auto_candidates(net: nn.Module, input_size: tuple[int, int, int], nodes: list[str] | None) -> list:
    """The points the ``auto:k`` rule chooses from: module outputs three levels deep hold every stage
    and block it looks at; probing every op node of a large network at once would hold all its activations."""
    return (list_attach_points(net, input_size, depth=3, ops=False) if nodes is not None
            else list_module_points_by_hooks(net, input_size, depth=3))


def auto_picks(model: nn.Module, k: int, input_size: str | Sequence[int] | None = None,
               method: str = "auto") -> list[str]:
    """The attach points ``at="auto:k"`` picks on ``model`` (a backbone), as :func:`attach_aux_blocks` would."""
    net, _, _ = unwrap(model, None, None)
    size = input_size if input_size is not None else getattr(model, "default_input_size", None)
    if size is None:
        raise ValueError("pass input_size (C, H, W) for a model built outside auxsurgery")
    return auto_points(_auto_candidates(net, parse_input_size(size), _trace(net, method)), k)


def _check_points(points: list[str], nodes: list[str] | None, net: nn.Module) -> None:
    """Every point must name a node or a module; the classifier is not an attach point."""
    modules = {name for name, _ in net.named_modules() if name}
    known = candidate_names(nodes, modules, None) if nodes is not None else sorted(modules)
    known_set = set(known)
    for p in points:
        if p not in known_set:
            raise ValueError(f"unknown layer {p!r} in {type(net).__name__}. Close matches: {', '.join(close_matches(p, known, cutoff=0.5, fallback=True))}. "
                             "List them with `auxsurgery layers MODEL`.")
    if nodes is not None:
        classifier = classifier_modules(net, nodes[-1])
        for p in points:
            if p == nodes[-1] or within_classifier(p, classifier):
                raise ValueError(f"attach point {p!r} is in the classifier ({', '.join(classifier)}), after the last "
                                 "feature map; attach heads to earlier layers")


def check_attach_points(model: nn.Module, at: str | Sequence[str]) -> None:
    """Refuse attach points that :func:`attach_aux_blocks` would refuse on ``model`` (a backbone), from its
    graph alone: nothing runs, so a backbone built on the meta device will do. ``auto:k`` picks at attach time."""
    points = parse_points(at)
    if len(points) == 1 and points[0].startswith("auto"):
        return
    net, _, _ = unwrap(model, None, None)
    with warnings.catch_warnings():  # attach_aux_blocks warns of a fallback to hooks when it attaches
        warnings.simplefilter("ignore")
        nodes = _trace(net, "auto")
    _check_points(points, nodes, net)


def _head_factories(head, points: list[str]) -> tuple[list[HeadFactory], list[str]]:
    """One factory per point plus its name for the spec (``custom`` for callables)."""
    heads = list(head) if isinstance(head, (list, tuple)) else [head] * len(points)
    if len(heads) != len(points):
        raise ValueError(f"{len(heads)} heads given for {len(points)} attach points")
    names = [h if isinstance(h, str) else "custom" for h in heads]
    return [get_head_factory(h) for h in heads], names


def attach_aux_blocks(
    model: str | nn.Module,
    at: str | Sequence[str] = "auto:3",
    num_classes: int | None = None,
    input_size: str | Sequence[int] | None = None,
    head: str | HeadFactory | Sequence[str | HeadFactory] = "default",
    alpha: Sequence[float] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    method: str = "auto",
    pretrained: bool = False,
) -> AuxModel:
    """Attach Aux Block heads to a classifier and return the AuxModel.

    Args:
        model: a model name (see :func:`auxsurgery.build_backbone`) or an ``nn.Module``.
        at: attach points (``"layer1,layer2"``, a list, or ``"auto:k"``); see
            :func:`auxsurgery.graph.auto_points` for the automatic rule.
        num_classes: classes (default: the model's own output size; required for names).
        input_size: ``(C, H, W)`` or ``"3x32x32"`` (default: the model's design size).
        head: a preset name, ``default:<width>``, a callable ``(shape, num_classes) -> nn.Module``,
            or one of those per attach point.
        alpha: per-head weights, backbone first (default: all 1).
        mean, std: input normalisation to fold in for a plain ``nn.Module`` taking raw inputs.
        method: ``auto`` (fx, falling back to hooks), ``fx`` or ``hooks``.
        pretrained: load pretrained weights when ``model`` is a name.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    if isinstance(model, str):
        model = build_backbone(model, num_classes=num_classes or 1000, pretrained=pretrained)
    net, normalize, public = unwrap(model, mean, std)
    if input_size is None:
        input_size = getattr(model, "default_input_size", None)
        if input_size is None:
            raise ValueError("pass input_size (C, H, W) for a model built outside auxsurgery")
    input_size = parse_input_size(input_size)
    points = parse_points(at)

    nodes = _trace(net, method)
    if len(points) == 1 and points[0].startswith("auto"):
        k = int(points[0].partition(":")[2] or 3)
        points = auto_points(_auto_candidates(net, input_size, nodes), k)
        if len(points) < k:
            warnings.warn(f"auto:{k} found only {len(points)} stage outputs with a map larger than 1x1 at input "
                          f"{'x'.join(map(str, input_size))} ({', '.join(points)}); attaching those. Name the "
                          "points yourself (`auxsurgery layers MODEL`) or use a larger input for more heads.",
                          stacklevel=2)
    _check_points(points, nodes, net)

    trunk = build_trunk(net, points, nodes) if nodes is not None else HookTrunk(net, points)
    was_training = net.training
    outputs = probe_features(trunk, net, input_size, getattr(model, "spec", {}).get("name", type(net).__name__))
    logits = first_tensor(outputs[OUTPUT])
    if logits is None or logits.dim() != 2:
        got = (f"a tensor of shape {tuple(logits.shape)}" if logits is not None
               else type(outputs[OUTPUT]).__name__)
        raise ValueError(f"the model's output is not [B, num_classes] logits (got {got}); a feature encoder "
                         "without a classifier head cannot be defended with Aux Blocks")
    if num_classes is not None and logits.shape[1] != num_classes:
        raise ValueError(f"the model outputs {logits.shape[1]} classes but num_classes={num_classes}")
    num_classes = logits.shape[1]

    factories, head_names = _head_factories(head, points)
    param = next(net.parameters())
    layouts, adapters, heads = [], [], []
    for point, factory in zip(points, factories):
        feature = first_tensor(outputs[point])
        if feature is None:
            raise ValueError(f"attach point {point!r} outputs no tensor")
        try:
            layout = infer_layout(tuple(feature.shape), input_size[1:])
        except ValueError as err:
            raise ValueError(f"attach point {point!r}: {err}") from err
        layouts.append(layout)
        adapters.append(FeatureAdapter(layout))
        heads.append(build_head(factory, layout.shape, num_classes, point).to(param.device, param.dtype))

    spec = {
        "format": 1,
        "version": __version__,
        "backbone": dict(getattr(model, "spec", {})) or None,
        "normalize": _normalize_spec(normalize),
        "attach_points": points,
        "heads": head_names,
        "num_classes": num_classes,
        "input_size": list(input_size),
        "method": "fx" if nodes is not None else "hooks",
        "layouts": [layout.to_dict() for layout in layouts],
    }
    aux = AuxModel(trunk, heads, points, backbone=public, normalize=normalize, adapters=adapters,
                   alpha=alpha, spec=spec)
    return aux.train(was_training)


def _normalize_spec(normalize: nn.Module | None) -> dict | None:
    if not isinstance(normalize, Normalize):
        return None
    return {"mean": normalize.mean.flatten().tolist(), "std": normalize.std.flatten().tolist()}
