"""Training configuration: one dataclass, validated on creation, plus the paper's presets."""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("multistep", "cosine", "onecycle", "none")
MODES = ("full", "heads", "backbone-lr-scale")
AMP_MODES = ("auto", "bf16", "fp16", "off")
# What the crafting attack of an adversarial-training method may climb (auxsurgery.attacks.objectives):
# the joint sum over heads, the worst head, Algorithm 2's ensemble, the vote's margin surrogate, or one head.
CRAFTING_OBJECTIVES = ("joint", "max-head", "ensemble", "vote-margin", "public")
# Far above any learning rate that trains (SGD and AdamW diverge long before): a larger one is a typo.
MAX_LR = 10.0


@dataclass
class AdversarialConfig:
    """Adversarial training: every training batch is replaced by (or, for TRADES, paired with) adversarial
    examples that a registered method crafts (:mod:`auxsurgery.train.adversarial`). The crafting steps run
    in the training's precision (bf16 autocast when ``TrainConfig.amp`` resolves to bf16; the examples are
    projected into the ball exactly either way).

    Args:
        eps: radius of the ``norm`` ball in pixel units ([0, 1] images).
        method: a registered method (:func:`auxsurgery.train.adversarial.list_training_methods`, checked when
            training starts): ``pgd`` (Madry et al.), ``fgsm`` (one step from a random start, Wong et al. 2020)
            or ``trades`` (Zhang et al. 2019, on every head).
        step_size: step length (None: the method's default: ``2.5 * eps / steps`` for pgd, ``1.25 * eps``
            for fgsm, ``eps / 4`` for trades).
        steps: attack steps per batch (None: the method's default: 10 for pgd and trades, as Madry et al. and
            Zhang et al.; fgsm always takes one step).
        objective: what the crafting attack climbs (pgd, fgsm): ``joint`` (the alpha-weighted sum of every
            head's cross-entropy, the paper's Adp-PGD), ``max-head`` (the worst head's cross-entropy),
            ``ensemble`` (Algorithm 2's mixture), ``vote-margin`` (the vote's surrogate) or ``public`` (the
            backbone's head); None picks ``joint`` for a model with aux heads and ``public`` for a plain one.
            TRADES climbs its own KL term.
        beta: TRADES' weight of the KL term (Zhang et al. use 6).
        norm: the ball the crafting attack stays in, ``linf`` or ``l2``: every method has both forms (PGD's
            steps along the normalised gradient in L2, FGSM's one such step from a random point of the L2 ball,
            TRADES' L2 branch).
    """

    eps: float
    method: str = "pgd"
    step_size: float | None = None
    steps: int | None = None
    objective: str | None = None
    beta: float = 6.0
    norm: str = "linf"

    def __post_init__(self):
        from ..attacks.base import NORMS  # deferred: a config is made without loading the attacks

        _check_choice("norm", self.norm, NORMS)
        step_ok = self.step_size is None or (math.isfinite(self.step_size) and self.step_size > 0)
        steps_ok = self.steps is None or self.steps >= 1
        eps_ok = math.isfinite(self.eps) and 0 < self.eps and (self.eps <= 1 or self.norm == "l2")
        if not eps_ok or not step_ok or not steps_ok:
            raise ValueError(f"adversarial training needs 0 < eps (<= 1 for linf), step_size > 0, steps >= 1; "
                             f"got {self}")
        if not (math.isfinite(self.beta) and self.beta >= 0):
            raise ValueError(f"TRADES beta must be a finite number >= 0, got {self.beta}")
        _check_choice("crafting objective", self.objective, (*CRAFTING_OBJECTIVES, None))


@dataclass
class TrainConfig:
    """Everything :func:`auxsurgery.train.finetune` needs besides the model and the data.

    The defaults are the paper's CIFAR-10 column of Table III: SGD with lr 0.01,
    momentum 0.9, weight decay 5e-4, batch 128, 100 epochs, lr x0.1 at epoch 50.

    Args:
        epochs: passes over the training data.
        batch_size: the global batch: under DDP each of N processes takes batch_size / N.
        optimizer: ``sgd`` or ``adamw``.
        lr, momentum, weight_decay: optimiser settings (momentum is SGD's only).
        schedule: ``multistep`` (lr x gamma at each of ``milestones``, in epochs),
            ``cosine``, ``onecycle`` (peak at ``lr``) or ``none``; stepped every batch.
        mode: ``full`` trains everything; ``heads`` freezes the backbone (weights and
            BatchNorm statistics: it stays in eval mode) and trains only the aux heads;
            ``backbone-lr-scale`` trains the backbone at ``lr * backbone_lr_scale``.
        label_smoothing: cross-entropy label smoothing.
        amp: ``auto`` (bf16 on CUDA when supported else fp16, bf16 on CPUs with native
            bf16 support, else off), ``bf16``, ``fp16`` (with a gradient scaler) or ``off``. Training's
            mixed precision (autocast of the training step and of validation); an evaluation's attacks take
            their own ``precision`` (:func:`~auxsurgery.evaluation.run_suite`).
        channels_last: use the NHWC memory format (faster convolutions on most hardware).
        grad_clip: clip the global gradient norm to this value (None: no clipping).
        seed: seeds the data order, augmentation and any randomness in the model.
        out_dir: where metrics.jsonl, best/last checkpoints and the resume state go
            (None: write nothing).
        resume: continue the run in ``out_dir`` exactly where it stopped.
        save_every: also save the resume state every this many steps (0: at epoch ends only).
        log_every: steps between progress updates, the non-finite-loss check and the
            stop-signal check (the only points where the loop waits for the device).
        select_best: the validation accuracy that picks ``best``: a rule (``vote``,
            ``score``, ``private``) or a head name; plain models use their one head.
        adversarial: adversarial-training settings (None: clean training).
    """

    epochs: int = 100
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "multistep"
    milestones: tuple[int, ...] = (50,)
    gamma: float = 0.1
    mode: str = "full"
    backbone_lr_scale: float = 0.1
    label_smoothing: float = 0.0
    amp: str = "auto"
    channels_last: bool = False
    grad_clip: float | None = None
    seed: int = 0
    out_dir: str | os.PathLike | None = None
    resume: bool = False
    save_every: int = 0
    log_every: int = 20
    num_workers: int = 0
    device: str = "auto"
    select_best: str = "vote"
    progress: bool = True
    adversarial: AdversarialConfig | None = field(default=None)

    def __post_init__(self):
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("schedule", self.schedule, SCHEDULES)
        _check_choice("mode", self.mode, MODES)
        _check_choice("amp", self.amp, AMP_MODES)
        if self.epochs < 1 or self.batch_size < 1 or self.log_every < 1 or self.save_every < 0:
            raise ValueError("epochs, batch_size and log_every must be >= 1 and save_every >= 0")
        if not 0 < self.lr <= MAX_LR:  # also refuses NaN (every comparison with NaN is false) and inf
            raise ValueError(f"lr must be a number in (0, {MAX_LR:g}], got {self.lr}")
        settings = {"momentum": self.momentum, "weight_decay": self.weight_decay, "gamma": self.gamma,
                    "backbone_lr_scale": self.backbone_lr_scale, "label_smoothing": self.label_smoothing,
                    "grad_clip": self.grad_clip}
        bad = [f"{name} {value}" for name, value in settings.items() if value is not None and not math.isfinite(value)]
        if bad:
            raise ValueError(f"settings must be finite numbers, got {', '.join(bad)}")
        self.milestones = tuple(int(m) for m in self.milestones)
        # Stored in the resume state, which holds only plain types (it loads with weights_only=True).
        self.out_dir = None if self.out_dir is None else str(self.out_dir)
        if isinstance(self.adversarial, dict):
            self.adversarial = AdversarialConfig(**self.adversarial)

    @classmethod
    def quick(cls, epochs: int, lr: float = 3e-3, **overrides) -> "TrainConfig":
        """AdamW with a one-cycle schedule in fp32: converges in a handful of epochs on small tasks
        (the demo, the placement study's heads, a backbone trained for a study)."""
        settings = dict(epochs=epochs, optimizer="adamw", lr=lr, weight_decay=5e-4, schedule="onecycle", amp="off")
        return cls(**{**settings, **overrides})

    def to_dict(self) -> dict:
        """A JSON-able dict (``TrainConfig(**d)`` rebuilds it)."""
        return dataclasses.asdict(self)


def _check_choice(what: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; valid: {', '.join(map(str, choices))}")


# Table III of the paper: the training parameters per dataset.
PAPER_PRESETS = {
    "mnist": dict(lr=0.01, momentum=0.5, weight_decay=0.0, batch_size=128, epochs=20, schedule="none"),
    "cifar10": dict(lr=0.01, momentum=0.9, weight_decay=5e-4, batch_size=128, epochs=100, schedule="multistep", milestones=(50,)),
    "mini-imagenet": dict(lr=0.01, momentum=0.9, weight_decay=5e-4, batch_size=32, epochs=100, schedule="multistep", milestones=(50,)),
}


def paper_config(dataset: str, **overrides) -> TrainConfig:
    """The paper's Table III settings for ``mnist``, ``cifar10`` or ``mini-imagenet``, with overrides."""
    _check_choice("paper preset", dataset, tuple(PAPER_PRESETS))
    return TrainConfig(**{**PAPER_PRESETS[dataset], **overrides})
