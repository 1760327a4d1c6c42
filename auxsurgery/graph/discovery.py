"""Attach-point discovery: every place a head can go, with its output shape, layout and stride.

Points are found on the fx node list (:mod:`.tracing`) and probed with one eval-mode pass; for
untraceable networks, forward hooks on named modules record the same description.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import torch
from torch import nn

from .._utils import preserved_state
from .layouts import Layout, first_tensor, infer_layout
from .tracing import build_trunk, node_names, resolve_node

__all__ = ["AttachPoint", "check_input_size", "fixed_input_size", "list_attach_points", "list_module_points_by_hooks",
           "probe_input"]


@dataclass(frozen=True)
class AttachPoint:
    """One place a head can attach: name, the raw output shape, its layout and stride."""

    name: str
    kind: str  # "block" (a module with children), "layer" (a leaf module) or "op" (a function node)
    shape: tuple[int, ...]
    layout: Layout | None
    stride: float | None
    in_classifier: bool

    def to_dict(self) -> dict:
        data = asdict(self)
        data["shape"] = list(self.shape)
        return data


def candidate_names(nodes: list[str], modules: set[str], depth: int | None) -> list[str]:
    """Node names and their module prefixes (up to ``depth`` dots + 1), in execution order.

    A prefix is ordered by its last node, which is where its output becomes available.
    """
    last_position: dict[str, int] = {}
    for i, node in enumerate(nodes):
        parts = node.split(".")
        for k in range(1, len(parts) + 1):
            prefix = ".".join(parts[:k])
            if k < len(parts) and prefix not in modules:
                continue
            if depth is None or k <= depth:
                last_position[prefix] = i
    # At equal positions the shallower name comes last: ``layer1`` ends where ``layer1.1`` ends.
    return sorted(last_position, key=lambda n: (last_position[n], -n.count(".")))


def classifier_modules(net: nn.Module, last: str) -> tuple[str, ...]:
    """Module names holding the classifier: the top-level module that computes the output
    (``fc``, ``classifier``, ``head``), plus the heads timm declares in a model's
    ``pretrained_cfg["classifier"]`` (distillation and token-labelling heads such as
    ``head_dist`` or VOLO's ``aux_head`` that are merged into the output)."""
    declared = (getattr(net, "pretrained_cfg", None) or {}).get("classifier") or ()
    declared = (declared,) if isinstance(declared, str) else tuple(declared)
    return (last.split(".")[0], *declared)


def within_classifier(name: str, classifier: tuple[str, ...]) -> bool:
    """Is ``name`` one of the ``classifier`` modules or inside one?"""
    return any(name == c or name.startswith(c + ".") for c in classifier)


def probe_input(net: nn.Module, input_size: tuple[int, int, int]) -> torch.Tensor:
    """One random image on the network's device and dtype, for shape probing."""
    param = next(iter(net.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    generator = torch.Generator().manual_seed(0)
    return torch.rand(1, *input_size, generator=generator).to(device=device, dtype=dtype)


def fixed_input_size(model: nn.Module) -> tuple[int, int] | None:
    """The height and width ``model`` only takes where it fixes them (timm's patch embedding of a ViT, built for its
    ``img_size``, refuses any other), else None."""
    for module in model.modules():
        if getattr(module, "strict_img_size", False) and getattr(module, "img_size", None):
            return tuple(module.img_size)
    return None


def check_input_size(model: nn.Module, input_size: Sequence[int], name: str = "the model") -> None:
    """Refuse images of ``input_size`` (C x H x W) that ``model`` cannot take, saying how to build it for them:
    timm fails deep inside its forward, with an assertion that names no fix."""
    fixed, size = fixed_input_size(model), tuple(input_size[-2:])
    if fixed is None or fixed == size:
        return
    value = str(size[0]) if size[0] == size[1] else f"[{size[0]},{size[1]}]"
    raise ValueError(f"{name} takes {fixed[0]}x{fixed[1]} images only, and these are {size[0]}x{size[1]}: build it "
                     f"for them with --model-kwargs img_size={value} (model_kwargs={{'img_size': {value}}} in Python)")


def probe_features(trunk: nn.Module, net: nn.Module, input_size: tuple[int, int, int], name: str = "model") -> dict:
    """Run one eval-mode, no-grad pass of ``trunk`` and return its outputs.

    Raises a ValueError naming the input size when the network cannot take it.
    """
    check_input_size(net, input_size, name)
    x = probe_input(net, input_size)
    with preserved_state(net, buffers=True), torch.no_grad():
        trunk.eval()
        try:
            return trunk(x)
        except Exception as err:  # the backbone's own message says what it expected
            size = "x".join(map(str, input_size))
            raise ValueError(f"{name} cannot take input size {size}: {type(err).__name__}: {err}") from err


def list_attach_points(
    net: nn.Module, input_size: tuple[int, int, int], depth: int | None = 2, ops: bool = True
) -> list[AttachPoint]:
    """Every insertable point of ``net`` with its output shape, layout and stride.

    ``depth`` limits names to that many levels (``layer1`` is 1, ``layer1.0`` is 2; ``None``:
    no limit); ``ops=False`` leaves out function nodes such as ``add`` (module outputs only).
    """
    nodes = node_names(net)
    modules = {name for name, _ in net.named_modules() if name}
    containers = {name for name, m in net.named_modules() if name and next(m.children(), None) is not None}
    names = [n for n in candidate_names(nodes, modules, depth) if ops or n in modules]
    resolved = {name: resolve_node(name, nodes) for name in names}
    unique_nodes = list(dict.fromkeys(resolved.values()))
    node_outputs = probe_features(build_trunk(net, unique_nodes, nodes), net, input_size, type(net).__name__)
    outputs = {name: node_outputs[node] for name, node in resolved.items()}
    classifier = classifier_modules(net, nodes[-1])
    points = []
    for name in names:
        kind = ("block" if name in containers else "layer") if name in modules else "op"
        point = _attach_point(name, kind, outputs[name], input_size,
                              name == nodes[-1] or within_classifier(name, classifier))
        if point is not None:
            points.append(point)
    return points


def _attach_point(name: str, kind: str, value, input_size, in_classifier: bool) -> AttachPoint | None:
    """Describe one point from its probed output (None when it outputs no tensor)."""
    tensor = first_tensor(value)
    if tensor is None:
        return None
    try:
        layout = infer_layout(tuple(tensor.shape), input_size[1:])
    except ValueError:
        layout = None
    stride = input_size[1] / layout.height if layout is not None and layout.kind != "flat" else None
    return AttachPoint(name, kind, tuple(tensor.shape[1:]), layout, stride, in_classifier)


def list_module_points_by_hooks(net: nn.Module, input_size: tuple[int, int, int], depth: int = 3) -> list[AttachPoint]:
    """Module outputs recorded by forward hooks in one eval pass: discovery for untraceable networks.

    Hooks fire when a module finishes, so the completion order is the order in which
    outputs become available, as with fx nodes; the classifier is the top-level module
    that finishes last.
    """
    finished: list[tuple[str, object]] = []
    handles = []
    containers = set()
    for name, module in net.named_modules():
        if name and name.count(".") < depth:
            if next(module.children(), None) is not None:
                containers.add(name)
            handles.append(module.register_forward_hook(
                lambda _m, _args, out, name=name: finished.append((name, out))))
    try:
        probe_features(net, net, input_size, type(net).__name__)
    finally:
        for handle in handles:
            handle.remove()
    classifier = classifier_modules(net, finished[-1][0]) if finished else ()
    points = []
    for name, value in dict(finished).items():
        kind = "block" if name in containers else "layer"
        point = _attach_point(name, kind, value, input_size, within_classifier(name, classifier))
        if point is not None:
            points.append(point)
    return points

