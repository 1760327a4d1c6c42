"""Tracing a backbone and discovering where Aux Blocks can attach.

Builds on torchvision's ``models.feature_extraction`` (node naming, train/eval dual
graphs) with timm's fx leaf-module and autowrap-function registries, so that timm
models trace the way timm's own feature extractors do. Node names follow torchvision:
module qualified names (``layer1``, ``features.3``, ``stages.1``) or leaf-op names
(``add_3``); a module name stands for the last node inside that module.
"""
from __future__ import annotations

import contextlib
import difflib
import math
from dataclasses import asdict, dataclass

import timm.layers
import torch
from torch import nn
from torchvision.models import feature_extraction

NET = "net"
OUTPUT = "output"


class OutputTap(nn.Module):
    """Marks the backbone's final output as a graph node (a leaf, so never traced through)."""

    def forward(self, x):
        return x


class Tapped(nn.Module):
    """The backbone under ``net`` plus a tap on its output, so the output can be returned by name."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.output_tap = OutputTap()

    def forward(self, x):
        return self.output_tap(self.net(x))


def tracer_kwargs() -> dict:
    """fx tracer settings: timm's no-trace modules and functions, plus our output tap."""
    return {
        "leaf_modules": [*timm.layers.get_notrace_modules(), OutputTap],
        "autowrap_functions": list(timm.layers.get_notrace_functions()),
    }


@contextlib.contextmanager
def preserved_state(model: nn.Module):
    """Restore every submodule's ``training`` flag and all buffers (BN statistics) on exit.

    torchvision's tracing helpers leave a model in train mode when tracing fails, and a
    probe forward in train mode would silently update BatchNorm running statistics.
    """
    modes = {m: m.training for m in model.modules()}
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    try:
        yield
    finally:
        for module, mode in modes.items():
            module.training = mode
        with torch.no_grad():
            for name, b in model.named_buffers():
                if name in buffers and b.shape == buffers[name].shape:
                    b.copy_(buffers[name])


def node_names(net: nn.Module) -> list[str]:
    """Every fx node name of ``net`` in eval mode, in execution order (no input, no output)."""
    with preserved_state(net):
        _, eval_nodes = feature_extraction.get_graph_node_names(
            Tapped(net), tracer_kwargs=tracer_kwargs(), suppress_diff_warning=True
        )
    prefix = NET + "."
    return [n[len(prefix):] for n in eval_nodes if n.startswith(prefix)]


def resolve_node(point: str, nodes: list[str]) -> str:
    """The node a point stands for: itself, or the last node inside the module it names."""
    for node in reversed(nodes):
        if node == point or node.startswith(point + "."):
            return node
    raise KeyError(point)


def build_trunk(net: nn.Module, points: list[str], nodes: list[str]) -> nn.Module:
    """An fx GraphModule returning ``{"output": net(x), point: feature, ...}`` in one pass.

    Train and eval mode get their own graphs (torchvision's ``DualGraphModule``), so
    dropout, stochastic depth and BatchNorm behave as in the original network. Points
    are resolved to exact node names first: torchvision's prefix matching would map two
    names of one node (``features`` and ``features.30``) to different nodes.
    """
    resolved = {p: resolve_node(p, nodes) for p in points}
    if len(set(resolved.values())) != len(resolved):
        raise ValueError(f"attach points name the same node twice: {resolved}")
    return_nodes = {f"{NET}.{node}": p for p, node in resolved.items()}
    return_nodes["output_tap"] = OUTPUT
    with preserved_state(net):
        return feature_extraction.create_feature_extractor(
            Tapped(net), return_nodes=return_nodes, tracer_kwargs=tracer_kwargs(), suppress_diff_warning=True
        )


def match_graph_to_mode(trunk: nn.Module) -> None:
    """Make an fx trunk run the graph of its current mode (train or eval).

    torchvision's ``DualGraphModule`` swaps graphs only inside ``train()``; code that
    restores ``module.training`` flags directly (as state-restoring context managers do)
    would leave the other mode's graph in place, with dropout or stochastic depth baked
    in or out. Checking identity per forward is cheap; the swap recompiles only on change.
    """
    if isinstance(trunk, feature_extraction.DualGraphModule):
        expected = trunk.train_graph if trunk.training else trunk.eval_graph
        if trunk.graph is not expected:
            trunk.graph = expected


class HookTrunk(nn.Module):
    """Fallback trunk for untraceable networks: forward hooks on named modules.

    Same output as the fx trunk; attach points must be module names here.
    """

    def __init__(self, net: nn.Module, points: list[str]):
        super().__init__()
        modules = dict(net.named_modules())
        missing = [p for p in points if p not in modules]
        if missing:
            raise ValueError(
                f"the forward-hook fallback can attach only to named modules; not modules: {missing}. "
                f"Examples: {suggest(missing[0], list(modules))}"
            )
        self.net = net
        self.points = list(points)
        self._captured: dict[str, object] = {}
        for p in points:
            modules[p].register_forward_hook(self._capture(p))

    def _capture(self, name: str):
        def hook(module, args, output):
            self._captured[name] = output

        return hook

    def forward(self, x):
        self._captured = {}
        output = self.net(x)
        features, self._captured = self._captured, {}
        return {OUTPUT: output, **{p: features[p] for p in self.points}}


def first_tensor(value):
    """The tensor a head should see: the value itself, or the first tensor inside a tuple/list/dict."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        for item in value:
            found = first_tensor(item)
            if found is not None:
                return found
    return None


# ---------------------------------------------------------------------------------------------
# Feature layouts: what a backbone outputs at a layer, and how to view it as an NCHW map.
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Layout:
    """How a raw feature maps to an NCHW map: ``kind`` is nchw, nhwc, tokens or flat."""

    kind: str
    channels: int
    height: int
    width: int
    prefix_tokens: int = 0

    @property
    def shape(self) -> tuple[int, int, int]:
        """The adapted feature map's ``(C, H, W)``."""
        return (self.channels, self.height, self.width)

    def to_dict(self) -> dict:
        return asdict(self)


def _grid_matches(h: int, w: int, in_h: int, in_w: int) -> bool:
    """Whether an ``h x w`` grid is a downsampling of an ``in_h x in_w`` input by one stride.

    The two strides may differ only by rounding (a 299-pixel side gives 149 or 150 cells).
    """
    if h <= 0 or w <= 0 or h > in_h or w > in_w:
        return False
    rh, rw = in_h / h, in_w / w
    return max(rh, rw) / min(rh, rw) < 1.2


def infer_layout(shape: tuple[int, ...], input_hw: tuple[int, int]) -> Layout:
    """Guess a feature's layout from its shape ``[B, ...]`` and the input's spatial size.

    NCHW wins ties (a ``C == H == W`` map); a 4-d tensor whose last or middle two sides
    are not one downsampling of the input is refused (attention windows); a 3-d ``[B, N, C]`` tensor is a token
    sequence whose first ``k`` tokens (class/register tokens) are dropped so that the
    rest form a grid with the input's aspect ratio.
    """
    in_h, in_w = input_hw
    dims = tuple(shape[1:])
    if len(dims) == 3:
        a, b, c = dims
        if _grid_matches(b, c, in_h, in_w):
            return Layout("nchw", a, b, c)
        if _grid_matches(a, b, in_h, in_w):
            return Layout("nhwc", c, a, b)
        # e.g. attention windows [B*windows, tokens, C]: no spatial map a head could read
        raise ValueError(f"feature {list(shape)} is neither an NCHW nor an NHWC map of a {in_h}x{in_w} input")
    if len(dims) == 2:
        n, c = dims
        for prefix in range(0, min(n, 17)):
            cells = n - prefix
            gh = round(math.sqrt(cells * in_h / in_w))
            # Token grids come from patching, so their aspect ratio equals the input's exactly.
            if gh > 0 and cells % gh == 0 and gh * in_w == (cells // gh) * in_h:
                return Layout("tokens", c, gh, cells // gh, prefix)
        raise ValueError(f"cannot read a [B, N, C] feature {list(shape)} as a token grid for input {in_h}x{in_w}")
    if len(dims) == 1:
        return Layout("flat", dims[0], 1, 1)
    raise ValueError(f"unsupported feature shape {list(shape)}: expected NCHW, NHWC, tokens [B,N,C] or flat [B,F]")


class FeatureAdapter(nn.Module):
    """Turns one raw feature (tensor or tuple) into the NCHW map its head expects."""

    def __init__(self, layout: Layout):
        super().__init__()
        self.layout = layout

    def forward(self, value):
        x = first_tensor(value)
        kind = self.layout.kind
        if kind == "nhwc":
            return x.permute(0, 3, 1, 2)
        if kind == "tokens":
            tokens = x[:, self.layout.prefix_tokens:]
            return tokens.transpose(1, 2).reshape(x.shape[0], self.layout.channels, self.layout.height, self.layout.width)
        if kind == "flat":
            return x.reshape(x.shape[0], -1, 1, 1)
        return x


# ---------------------------------------------------------------------------------------------
# Attach-point discovery
# ---------------------------------------------------------------------------------------------

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


def suggest(name: str, choices: list[str], n: int = 5) -> str:
    """A short 'did you mean' list of the closest names."""
    close = difflib.get_close_matches(name, choices, n=n, cutoff=0.5)
    return ", ".join(close) if close else ", ".join(choices[:n])


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


def probe_features(trunk: nn.Module, net: nn.Module, input_size: tuple[int, int, int], name: str = "model") -> dict:
    """Run one eval-mode, no-grad pass of ``trunk`` and return its outputs.

    Raises a ValueError naming the input size when the network cannot take it.
    """
    x = probe_input(net, input_size)
    with preserved_state(net), torch.no_grad():
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


def _stage_outputs(points: list[AttachPoint]) -> dict[int, AttachPoint]:
    """The last point at each stride, strides rounded to powers of two (299 px inputs give
    149- and 147-pixel maps in one stage); points that raise the resolution again are skipped."""
    stages: dict[int, AttachPoint] = {}
    for p in points:
        level = round(math.log2(p.stride))
        if stages and level < max(stages):
            continue
        stages[level] = p
    return stages


# Module names timm and torchvision give the input stem (a few strided convs before the first
# stage, or a ViT's patch embedding).
STEM_NAMES = frozenset({"stem", "conv_stem", "patch_embed"})


def _collapse_stems(points: list[AttachPoint]) -> list[AttachPoint]:
    """Keep one point per stem module: its own output when it is a candidate, else its last point.

    The layers inside a stem each halve the resolution, so without this a stem of three
    strided convs (LeViT, EfficientViT, XCiT) looks like three stages and takes every head.
    """
    def stem_of(name: str) -> str | None:
        parts = name.split(".")
        for i, part in enumerate(parts):
            if part in STEM_NAMES:
                return ".".join(parts[: i + 1])
        return None

    last_in_stem: dict[str, AttachPoint] = {}
    for p in points:
        stem = stem_of(p.name)
        if stem is not None and (stem not in last_in_stem or last_in_stem[stem].name != stem):
            last_in_stem[stem] = p
    kept = set(map(id, last_in_stem.values()))
    return [p for p in points if stem_of(p.name) is None or id(p) in kept]


def auto_points(points: list[AttachPoint], k: int) -> list[str]:
    """Pick ``k`` attach points in the early and middle network.

    Candidates are spatial module outputs outside the classifier, with each input stem
    (``stem``, ``conv_stem``, ``patch_embed``) standing as one point, preferring blocks
    (modules with children: ``layer1``, ``stages.0``, ``blocks.3``) over single layers
    when blocks give enough choices. Hierarchical networks (ResNet, VGG, ConvNeXt, Swin,
    EfficientNet): use the module depth whose names cover the most resolutions, take the
    last point at each stride (a stage output) and return the first ``k`` stages.
    Isotropic networks (ViT, MLP-Mixer: one resolution throughout): spread ``k`` points
    evenly over the first two thirds of the longest run of sibling blocks. The paper put
    its heads early (Section IV-B) and found early placements the most robust (Table VI).
    """
    if k < 1:
        raise ValueError(f"auto placement needs k >= 1, got {k}")
    spatial = _collapse_stems([p for p in points if p.kind != "op" and not p.in_classifier
                               and p.layout is not None and p.layout.kind != "flat" and p.layout.height > 1])
    if not spatial:
        raise ValueError("no spatial attach point found; pass attach points explicitly")
    blocks = [p for p in spatial if p.kind == "block"]
    picks: list[str] = []
    for pool in (blocks, spatial):
        picks = _stage_picks(pool, k) or _isotropic_picks(pool, k)
        if len(picks) >= k:
            break
    return picks


def _stage_picks(points: list[AttachPoint], k: int) -> list[str]:
    """The first ``k`` stage outputs, or [] when the points span fewer than two strides."""
    by_depth: dict[int, list[AttachPoint]] = {}
    for p in points:
        by_depth.setdefault(p.name.count("."), []).append(p)
    stages = max((_stage_outputs(group) for _, group in sorted(by_depth.items())), key=len, default={})
    if len(stages) < 2:
        return []
    return [stages[s].name for s in sorted(stages)][:k]


def _isotropic_picks(points: list[AttachPoint], k: int) -> list[str]:
    """``k`` points spread over the first two thirds of the longest run of sibling modules."""
    siblings: dict[str, list[AttachPoint]] = {}
    for p in points:
        siblings.setdefault(p.name.rpartition(".")[0], []).append(p)
    run = max(siblings.values(), key=len, default=[])
    window = run[: max(k, math.ceil(len(run) * 2 / 3))]
    if k >= len(window):
        return [p.name for p in window]
    step = (len(window) - 1) / max(k - 1, 1)
    return [window[round(i * step)].name for i in range(k)]
