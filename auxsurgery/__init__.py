"""auxsurgery: attach Aux Block heads to any timm/torchvision classifier and measure its robustness honestly."""
__version__ = "0.1.0"

from .checkpoint import CheckpointError, load, save
from .backbones import NormalizedBackbone, available_backbones, build_backbone
from .graph import list_attach_points
from .heads import list_heads, register_head
from .model import AuxModel, rule_predict, rule_scores
from .surgery import attach_aux_blocks
from .evaluation import run_suite, write_report

__all__ = [
    "AuxModel",
    "CheckpointError",
    "NormalizedBackbone",
    "attach_aux_blocks",
    "available_backbones",
    "build_backbone",
    "list_attach_points",
    "list_heads",
    "load",
    "register_head",
    "rule_predict",
    "rule_scores",
    "run_suite",
    "save",
    "write_report",
]
