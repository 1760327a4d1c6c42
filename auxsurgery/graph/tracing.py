"""Tracing a backbone into a trunk that returns its logits and the features at the attach points.

Builds on torchvision's ``models.feature_extraction`` (node naming, train/eval dual
graphs) with timm's fx leaf-module and autowrap-function registries, so that timm
models trace the way timm's own feature extractors do. Node names follow torchvision:
module qualified names (``layer1``, ``features.3``, ``stages.1``) or leaf-op names
(``add_3``); a module name stands for the last node inside that module.
"""
from __future__ import annotations

from torch import nn
from torchvision.models import feature_extraction

from .._utils import close_matches, preserved_state

__all__ = ["NET", "OUTPUT", "HookTrunk", "build_trunk", "match_graph_to_mode", "node_names", "resolve_node"]

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
    # Imported here: a model that is only run (attacks, checkpoints) never needs timm.
    import timm.layers

    return {
        "leaf_modules": [*timm.layers.get_notrace_modules(), OutputTap],
        "autowrap_functions": list(timm.layers.get_notrace_functions()),
    }


def node_names(net: nn.Module) -> list[str]:
    """Every fx node name of ``net`` in eval mode, in execution order (no input, no output)."""
    with preserved_state(net, buffers=True):
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
    with preserved_state(net, buffers=True):
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
                f"Examples: {', '.join(close_matches(missing[0], modules, cutoff=0.5, fallback=True))}"
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


