"""Attacks on AuxModels and plain classifiers: one class per attack over a small shared base.

Every attack maps ``(x, y) -> x_adv`` for pixels in [0, 1], climbs a pluggable
objective (:mod:`.objectives`) and is judged by the defended model's decision rule::

    from auxsurgery.attacks import PGD, is_adversarial
    x_adv = PGD(aux_model, objective="joint", eps=8 / 255, steps=10)(x, y)  # Adp-PGD
    robust_accuracy = 1 - is_adversarial(aux_model, x_adv, y, rule="vote").float().mean()

Each attack module registers its class (:mod:`.registry`); importing this package imports them all.
"""
from .apgd import APGD
from .base import Attack, is_adversarial
from .boundary import Boundary
from .cw import CW
from .fgsm import FGSM
from .objectives import get_objective, list_objectives, register_objective
from .pgd import PGD
from .registry import KINDS, get_attack, list_attacks, register_attack
from .square import Square
from .transfer import Transfer

__all__ = [
    "APGD", "Attack", "Boundary", "CW", "FGSM", "KINDS", "PGD", "Square", "Transfer", "get_attack",
    "get_objective", "is_adversarial", "list_attacks", "list_objectives", "register_attack", "register_objective",
]
