"""Attacks on AuxModels and plain classifiers: one class per attack over a small shared base.

Every attack maps ``(x, y) -> x_adv`` for pixels in [0, 1], climbs a pluggable
objective (:mod:`.objectives`) and is judged by the defended model's decision rule::

    from auxsurgery.attacks import PGD, is_adversarial
    x_adv = PGD(aux_model, objective="joint", eps=8 / 255, steps=10)(x, y)  # Adp-PGD
    robust_accuracy = 1 - is_adversarial(aux_model, x_adv, y, rule="vote").float().mean()

Gradient attacks: FGSM, PGD, APGD (step-size-free, momentum), APGDT and PGDT (targeted runs
over the model's top-k other classes, untargeted success: :mod:`.targeted`), CW and FMN
(minimum norm; FMN's :attr:`~.fmn.FMN.last_norms` give the whole accuracy-vs-eps curve through
:func:`robust_accuracy_curve`). Square is score-based, Boundary decision-based, Transfer
crafts on another model. PGD and APGD keep each sample's first fooling iterate and stop
computing on it; the gradient attacks take ``precision="bf16"`` for bfloat16 steps, verified in fp32.

Each attack module registers its class (:mod:`.registry`); importing this package imports them all.
"""
from .apgd import APGD
from .apgdt import APGDT
from .base import Attack, PassCounter, Passes, is_adversarial, robust_accuracy_curve
from .boundary import Boundary
from .cw import CW
from .fgsm import FGSM
from .fmn import FMN
from .objectives import get_objective, list_objectives, needs_true_label, register_objective
from .pgd import PGD
from .pgdt import PGDT
from .registry import KINDS, get_attack, list_attacks, register_attack
from .square import Square
from .targeted import TopKTargeted
from .transfer import Transfer

__all__ = [
    "APGD", "APGDT", "Attack", "Boundary", "CW", "FGSM", "FMN", "KINDS", "PGD", "PGDT", "PassCounter", "Passes",
    "Square", "TopKTargeted", "Transfer", "get_attack", "get_objective", "is_adversarial", "list_attacks",
    "list_objectives", "needs_true_label", "register_attack", "register_objective", "robust_accuracy_curve",
]
