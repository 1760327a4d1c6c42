"""The backbone's graph: tracing (:mod:`.tracing`), feature layouts (:mod:`.layouts`), attach-point
discovery (:mod:`.discovery`) and the ``auto:k`` placement rule (:mod:`.auto`)."""
from .auto import auto_points
from .discovery import AttachPoint, list_attach_points, list_module_points_by_hooks
from .layouts import FeatureAdapter, Layout, first_tensor, infer_layout
from .tracing import OUTPUT, HookTrunk, build_trunk, match_graph_to_mode, node_names

__all__ = [
    "OUTPUT", "AttachPoint", "FeatureAdapter", "HookTrunk", "Layout", "auto_points", "build_trunk", "first_tensor",
    "infer_layout", "list_attach_points", "list_module_points_by_hooks", "match_graph_to_mode", "node_names",
]
