"""The attack registry: every attack class registers itself by name, as timm registers models.

``list_attacks()`` and ``get_attack(name)`` are what the CLI, recipes and reports read, so adding
an attack is one file: a subclass of :class:`~auxsurgery.attacks.base.Attack` decorated with
:func:`register_attack`, imported in ``attacks/__init__.py``.
"""
from __future__ import annotations

from .._utils import did_you_mean

__all__ = ["KINDS", "get_attack", "list_attacks", "register_attack"]

# What an attack may use of the model, declared by each class as ``kind`` (reports and the
# gradient-masking check read it): gradients, output scores, only the decision, or another model.
KINDS = ("white-box", "score-based", "decision-based", "transfer")

_ATTACKS: dict[str, type] = {}


def register_attack(cls: type) -> type:
    """Class decorator: register ``cls`` under its class name, after checking its declared ``kind``."""
    if getattr(cls, "kind", None) not in KINDS:
        raise TypeError(f"{cls.__name__}.kind must be one of {', '.join(KINDS)}, got {getattr(cls, 'kind', None)!r}")
    _ATTACKS[cls.__name__] = cls
    return cls


def list_attacks(kind: str | None = None) -> list[str]:
    """Registered attack names (of one ``kind`` if given), in registration order."""
    return [name for name, cls in _ATTACKS.items() if kind is None or cls.kind == kind]


def get_attack(name: str) -> type:
    """The attack class registered as ``name``; unknown names raise a ValueError with close matches."""
    if name not in _ATTACKS:
        raise ValueError(f"unknown attack {name!r}.{did_you_mean(name, _ATTACKS)} Valid attacks: {', '.join(_ATTACKS)}")
    return _ATTACKS[name]
