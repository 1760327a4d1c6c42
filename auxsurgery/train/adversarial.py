"""Adversarial-training methods, registered by name like the attack objectives.

Turn one on with ``TrainConfig(adversarial=AdversarialConfig(eps=8/255, method="trades"))`` (or a
paper preset, :func:`adversarial_preset`): at every training step the method crafts adversarial
examples of the batch and returns the per-head losses the engine minimises. Registered:

* ``pgd``: Madry et al. (2018): train on PGD examples; the crafting objective is a choice
  (``joint``, ``max-head``, ``ensemble``, ``vote-margin``, ``public``: what PGD climbs);
* ``fgsm``: Wong et al. (2020), "fast is better than free": one signed step of ``1.25 * eps`` from a
  uniformly random start, the same objectives;
* ``trades``: Zhang et al. (2019) on every head: ``CE(f_h(x), y) + beta * KL(f_h(x) || f_h(x'))`` per head,
  with ``x'`` climbing the alpha-weighted sum of the heads' KL terms.

Each crafts in the L-inf ball or, with ``AdversarialConfig(norm="l2")``, in the L2 ball (steps along the
normalised gradient, the random start uniform in the L2 ball).

Every head's loss is weighted by the model's ``alpha`` in the engine (the per-head weights). The
crafting attack runs with the model frozen (eval mode, no parameter gradients; both restored), so
crafting never touches BatchNorm statistics, and its random start at step k depends only on
(seed, k): a resumed run crafts the same examples. Adding a method is one decorated class.

A method also states its cost: :attr:`TrainingMethod.passes_per_image`, the forward plus backward
image-passes one training image costs (crafting and the training step), which the engine records so
studies can give every model the same training budget in passes.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, ClassVar

import torch
import torch.nn.functional as F

from auxsurgery._utils import derive_seed, did_you_mean, preserved_state
from auxsurgery.model import AuxModel
from auxsurgery.train.config import AdversarialConfig
from auxsurgery.train.objective import head_losses

__all__ = [
    "PRESETS", "TrainingMethod", "adversarial_preset", "crafting_settings", "get_training_method",
    "list_training_methods", "register_training_method",
]

# Section IV-A.2: MNIST eps 0.2, step 0.02; CIFAR-10 and Mini-ImageNet eps 8/255, step 2/255.
# The paper gives no step count: 7 is Madry et al.'s CIFAR-10 setting; MNIST's 20 steps of
# 0.02 can cross the whole ball twice (Madry et al. use 40 steps of 0.01 for eps 0.3).
PRESETS = {
    "mnist": AdversarialConfig(eps=0.2, step_size=0.02, steps=20),
    "cifar10": AdversarialConfig(eps=8 / 255, step_size=2 / 255, steps=7),
    "mini-imagenet": AdversarialConfig(eps=8 / 255, step_size=2 / 255, steps=7),
}


def adversarial_preset(dataset: str, **overrides) -> AdversarialConfig:
    """The paper's PGD adversarial-training setting for ``mnist``, ``cifar10`` or ``mini-imagenet``."""
    if dataset not in PRESETS:
        raise ValueError(f"no adversarial-training preset for {dataset!r}; presets: {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[dataset], **overrides)


_METHODS: dict[str, type["TrainingMethod"]] = {}


def register_training_method(cls: type["TrainingMethod"]) -> type["TrainingMethod"]:
    """Class decorator registering an adversarial-training method under its ``name``."""
    _METHODS[cls.name] = cls
    return cls


def list_training_methods() -> list[str]:
    """Names of the registered adversarial-training methods."""
    return list(_METHODS)


def get_training_method(name: str) -> type["TrainingMethod"]:
    """The method class registered as ``name``; a ValueError names the close matches and the choices."""
    if name not in _METHODS:
        raise ValueError(f"unknown adversarial-training method {name!r}.{did_you_mean(name, _METHODS)} "
                         f"Valid methods: {', '.join(_METHODS)}")
    return _METHODS[name]


def crafting_settings(config: AdversarialConfig) -> dict:
    """What ``config`` crafts: its fields with the method's own steps and step length filled in where it leaves
    them unset, so that two configs crafting alike compare equal (fgsm's ``steps`` mean nothing; an unset pgd
    ``steps`` is 10). A resumed run compares these."""
    method = get_training_method(config.method)
    steps = method.attack_steps(config)
    step_size = config.step_size if config.step_size is not None else method.default_step(config.eps, steps)
    return {**dataclasses.asdict(config), "steps": steps, "step_size": step_size}


class TrainingMethod:
    """What one adversarial training step computes: ``losses(net, x, y, step) -> (per-head losses [H], logits)``.

    Args:
        model: the AuxModel being trained (a plain classifier is one head); the crafting attack runs on it.
        config: the method's settings.
        seed: the run's seed; the crafting randomness of step k is a function of (seed, k).
        dtype: the training's autocast dtype (None: fp32); bf16 training crafts under bf16 autocast too.
    """

    name: ClassVar[str]
    default_steps: ClassVar[int]  # attack steps per batch where the config leaves them unset
    default_step: ClassVar[Callable[[float, int], float]]  # (eps, steps) -> step length where it is unset

    def __init__(self, model: AuxModel, config: AdversarialConfig, seed: int, dtype: torch.dtype | None = None):
        # Imported here: clean training never needs the attack suite.
        from auxsurgery.attacks import PGD

        self.model, self.config, self.seed = model, config, seed
        crafting = crafting_settings(config)
        self.steps, self.step_size = crafting["steps"], crafting["step_size"]
        objective = self.crafting_objective(model, config)
        self.attack = PGD(model, objective=objective, eps=config.eps, step_size=self.step_size, steps=self.steps,
                          norm=config.norm, random_start=True, early_stop=False,
                          precision="bf16" if dtype is torch.bfloat16 else "fp32")

    @classmethod
    def attack_steps(cls, config: AdversarialConfig) -> int:
        return config.steps if config.steps is not None else cls.default_steps

    @staticmethod
    def crafting_objective(model: AuxModel, config: AdversarialConfig):
        return config.objective or ("joint" if model.num_heads > 1 else "public")

    @property
    def passes_per_image(self) -> int:
        """Forward plus backward image-passes per training image: the crafting steps and the training step."""
        return 2 * self.steps + 2

    def craft(self, x: torch.Tensor, y: torch.Tensor, step: int) -> torch.Tensor:
        """The adversarial examples of batch ``(x, y)`` at training step ``step``."""
        self.attack.seed = derive_seed(self.seed, step, bits=63)
        # Outside the training's autocast: the attack sets its own precision (bf16 when the training runs in it).
        with torch.autocast(x.device.type, enabled=False):
            return self.attack(x, y)

    def losses(self, net, x: torch.Tensor, y: torch.Tensor, step: int, label_smoothing: float = 0.0):
        """Per-head losses ``[H]`` to minimise and the logits ``[H, B, C]`` the training metrics count.

        Called inside the engine's autocast; ``net`` is the model as the engine runs it (DDP-wrapped
        under torchrun), in training mode.
        """
        logits = net(self.craft(x, y, step))
        return head_losses(logits, y, label_smoothing), logits


@register_training_method
class PGDTraining(TrainingMethod):
    """Madry et al.: train every head on PGD examples of the chosen crafting objective (random start)."""

    name = "pgd"
    default_steps = 10
    default_step = staticmethod(lambda eps, steps: 2.5 * eps / steps)


@register_training_method
class FastFGSMTraining(TrainingMethod):
    """Wong et al. 2020: one signed gradient step of ``1.25 * eps`` from a uniformly random start."""

    name = "fgsm"
    default_steps = 1
    default_step = staticmethod(lambda eps, steps: 1.25 * eps)

    @classmethod
    def attack_steps(cls, config: AdversarialConfig) -> int:
        return 1


def _kl_from(anchor_log_probs: torch.Tensor) -> Callable:
    """The objective ``(logits, y, alpha) -> [B]``: alpha-weighted sum over heads of KL(anchor || softmax)."""
    def kl_to_anchor(logits, y, alpha):
        per_head = _kl(anchor_log_probs, logits.to(anchor_log_probs.dtype).log_softmax(-1))  # [H, B]
        return (alpha.to(per_head.dtype).view(-1, 1) * per_head).sum(0)

    return kl_to_anchor


def _kl(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last dimension, from log-probabilities: ``[...]``."""
    return F.kl_div(q_log, p_log, reduction="none", log_target=True).sum(-1)


@register_training_method
class TRADESTraining(TrainingMethod):
    """Zhang et al. 2019 on every head: ``CE(f_h(x), y) + beta * KL(f_h(x) || f_h(x'))`` per head.

    ``x'`` climbs ``sum_h alpha_h KL(f_h(x) || f_h(x'))`` from a uniformly random start in the ball
    (the paper starts from ``x`` plus tiny Gaussian noise; a random start is at least as strong), the
    clean distribution fixed from an eval-mode forward. The training step then runs the clean and the
    adversarial batch through the model in training mode in one forward (so DDP sees one forward per
    step; BatchNorm normalises both halves together, where Zhang et al.'s code makes two calls).
    """

    name = "trades"
    default_steps = 10  # Zhang et al.'s CIFAR-10 setting, with steps of eps / 4
    default_step = staticmethod(lambda eps, steps: eps / 4)

    @staticmethod
    def crafting_objective(model: AuxModel, config: AdversarialConfig):
        return "joint"  # replaced by the KL objective of each batch in craft()

    @property
    def passes_per_image(self) -> int:
        # The clean forward that fixes the anchor, the crafting steps, and two training forwards and backwards.
        return 1 + 2 * self.steps + 4

    def craft(self, x: torch.Tensor, y: torch.Tensor, step: int) -> torch.Tensor:
        """The examples of batch ``(x, y)`` that move every head's prediction furthest from the clean one."""
        # Every submodule's own mode comes back (a frozen backbone stays in eval mode under mode="heads").
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False), preserved_state(self.model):
            with self.attack.autocast(x):
                anchor = self.model.eval()(x).float().log_softmax(-1)
        self.attack.objective = _kl_from(anchor)
        return super().craft(x, y, step)

    def losses(self, net, x: torch.Tensor, y: torch.Tensor, step: int, label_smoothing: float = 0.0):
        x_adv = self.craft(x, y, step)
        clean, adversarial = net(torch.cat([x, x_adv])).chunk(2, dim=1)
        kl = _kl(clean.float().log_softmax(-1), adversarial.float().log_softmax(-1)).mean(1)  # [H]
        return head_losses(clean, y, label_smoothing) + self.config.beta * kl, adversarial
