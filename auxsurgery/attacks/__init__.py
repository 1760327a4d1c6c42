"""Attacks on AuxModels and plain classifiers: one class per attack over a small shared base.

Every attack maps ``(x, y) -> x_adv`` for pixels in [0, 1], climbs a pluggable
objective (:mod:`.objectives`) and is judged by the defended model's decision rule::

    from auxsurgery.attacks import PGD, is_adversarial
    x_adv = PGD(aux_model, objective="joint", eps=8 / 255, steps=10)(x, y)  # Adp-PGD
    robust_accuracy = 1 - is_adversarial(aux_model, x_adv, y, rule="vote").float().mean()
"""
from .apgd import APGD
from .base import Attack, is_adversarial
from .boundary import Boundary
from .cw import CW
from .fgsm import FGSM
from .objectives import OBJECTIVES, get_objective
from .pgd import PGD
from .square import Square
from .transfer import Transfer

__all__ = [
    "APGD", "Attack", "Boundary", "CW", "FGSM", "OBJECTIVES", "PGD", "Square", "Transfer",
    "get_objective", "is_adversarial",
]
