"""auxsurgery: attach Aux Block heads to any timm/torchvision classifier and measure its robustness honestly.

The public API is listed in ``__all__``; each name is imported on first use (PEP 562), so that
``import auxsurgery.attacks`` or ``import auxsurgery.model`` loads only what those need, and not
the training, report or plotting stack.
"""
from __future__ import annotations

import importlib

from .version import __version__

# public name -> the module that defines it
_API = {
    "attach_aux_blocks": "surgery",
    "AuxModel": "model",
    "rule_predict": "rules",
    "rule_scores": "rules",
    "register_rule": "rules",
    "get_rule": "rules",
    "list_rules": "rules",
    "build_backbone": "backbones",
    "available_backbones": "backbones",
    "NormalizedBackbone": "backbones",
    "list_attach_points": "graph",
    "list_heads": "heads",
    "register_head": "heads",
    "save": "checkpoint",
    "load": "checkpoint",
    "CheckpointError": "checkpoint",
    "load_dataset": "data",
    "TrainConfig": "train",
    "finetune": "train",
    "run_suite": "evaluation",
    "write_report": "evaluation",
    "Budget": "evaluation",
    "list_attacks": "attacks",
    "list_objectives": "attacks",
    "list_suites": "evaluation",
    "load_recipe": "studies",
    "export_model": "export",
    "check_parity": "export",
    "OnnxClassifier": "export",
    "backbone_from_factory": "backbones",
    "run_recipe": "studies",
}

__all__ = ["__version__", *sorted(_API)]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'auxsurgery' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
