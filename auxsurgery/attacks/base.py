"""What every attack shares: validation, model handling, projection and the success test.

Attacks see a model as a function from [0, 1] pixels to stacked logits ``[H, B, C]``
(a plain ``[B, C]`` classifier is one head). They climb an *objective* (a surrogate,
see :mod:`.objectives`) but success is always judged by the defended model's real
decision rule (:func:`auxsurgery.model.rule_predict` with the model's ``alpha``).
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn

from .._utils import preserved_state
from ..model import as_stacked, check_rule, rule_predict
from .objectives import Objective, get_objective

NORMS = ("linf", "l2")

__all__ = [
    "NORMS", "Attack", "Ball", "ascent_direction", "enforce_bounds", "frozen", "head_weights",
    "is_adversarial", "l2_norms", "per_sample",
]


# ---- the model during an attack ---------------------------------------------------------


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no parameter gradients inside; the model's exact prior state afterwards.

    Every submodule's own ``training`` flag and every parameter's ``requires_grad`` are
    restored, even if the attack raises.
    """
    with preserved_state(model, requires_grad=True):
        model.eval().requires_grad_(False)
        yield model


def head_weights(model: nn.Module, logits: torch.Tensor) -> torch.Tensor:
    """The model's ``alpha`` head weights, or ones (one per head) for a model without them."""
    alpha = getattr(model, "alpha", None)
    return alpha if isinstance(alpha, torch.Tensor) else logits.new_ones(logits.shape[0])


def _fooled(logits: torch.Tensor, y: torch.Tensor, rule: str, alpha: torch.Tensor, targeted: bool) -> torch.Tensor:
    prediction = rule_predict(logits, rule, alpha)
    return prediction == y if targeted else prediction != y


@torch.no_grad()
def is_adversarial(
    model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, rule: str = "vote", targeted: bool = False
) -> torch.Tensor:
    """Which samples fool ``model``'s decision ``rule`` (reach target ``y`` if ``targeted``): bool ``[B]``."""
    check_rule(rule)
    with frozen(model):
        logits = as_stacked(model(x_adv))
    return _fooled(logits, y, rule, head_weights(model, logits), targeted)


# ---- geometry of the threat model ----------------------------------------------------------


def per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape ``[B]`` values to broadcast over a ``[B, ...]`` tensor."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def l2_norms(t: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norms ``[B]`` of a ``[B, ...]`` tensor."""
    return t.flatten(1).norm(dim=1)


def ascent_direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """Steepest-ascent direction of unit ``norm``: sign for L-inf, normalised gradient for L2."""
    if norm == "linf":
        return grad.sign()
    return grad / per_sample(l2_norms(grad).clamp_min(1e-12), grad)


class Ball:
    """The threat model around clean inputs ``x``: the ``norm`` ball of radius ``eps`` within [0, 1].

    Built once per attack run. The hot loop of a gradient attack is a few elementwise
    passes over the batch, so each step allocates as little as it can: the L-inf ball
    clipped to the box is itself a box, whose corners are computed here once, and a
    projected step is one fused multiply-add followed by an in-place clamp.
    """

    def __init__(self, x: torch.Tensor, eps: float | torch.Tensor, norm: str):
        self.x, self.eps, self.norm = x, eps, norm
        if norm == "linf":
            self.low = (x - eps).clamp_(0.0, 1.0)
            self.high = (x + eps).clamp_(0.0, 1.0)

    def project_(self, z: torch.Tensor) -> torch.Tensor:
        """Project ``z`` onto the ball in place (``z`` must be a tensor the caller owns)."""
        if self.norm == "linf":
            return z.clamp_(self.low, self.high)
        delta = z.sub_(self.x)
        scale = (self.eps / l2_norms(delta).clamp_min(1e-12)).clamp_(max=1.0)
        # Clipping to the box only moves coordinates towards x (inside it): still in the ball.
        return delta.mul_(per_sample(scale, delta)).add_(self.x).clamp_(0.0, 1.0)

    def project(self, z: torch.Tensor) -> torch.Tensor:
        """The point of the ball nearest to ``z``, as a new tensor."""
        return self.project_(z.clone())

    def step(self, x_adv: torch.Tensor, grad: torch.Tensor, size: float | torch.Tensor) -> torch.Tensor:
        """``P(x_adv + size * d)`` for the ascent direction ``d`` of ``grad``; ``size``: float or ``[B]``."""
        size = per_sample(size, x_adv) if torch.is_tensor(size) else x_adv.new_tensor(size)
        return self.project_(torch.addcmul(x_adv, size, ascent_direction(grad, self.norm)))

    def random_point(self, generator: torch.Generator) -> torch.Tensor:
        """A uniformly random point of the ball (clipped to [0, 1])."""
        x = self.x
        if self.norm == "linf":
            noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            return noise.mul_(2 * self.eps).sub_(self.eps).add_(x).clamp_(0.0, 1.0)
        direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        # Radius u^(1/d) makes the point uniform in the ball's volume, not just on its surface.
        u = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype)
        radius = self.eps * u.pow(1.0 / x[0].numel())
        direction.mul_(per_sample(radius / l2_norms(direction), x))
        return direction.add_(x).clamp_(0.0, 1.0)


def enforce_bounds(x_adv: torch.Tensor, x: torch.Tensor, eps: float | None, norm: str) -> torch.Tensor:
    """Make ``x_adv`` satisfy the threat model exactly: inside [0, 1] and, if ``eps`` is set, the ball.

    For L-inf the bound holds exactly: ``(x_adv - x).abs() <= eps`` computed in the input's
    dtype or in float64. Plain projection can overshoot by one rounding unit, because
    ``x + eps`` rounds to the nearest representable number; such coordinates step back one unit.
    """
    if eps is None:
        return x_adv.clamp(0.0, 1.0)
    if norm == "l2":
        return Ball(x, eps, norm).project(x_adv)
    eps_t = torch.tensor(eps, dtype=x.dtype, device=x.device)
    if eps_t.item() > eps:  # eps itself rounded up in this dtype: use the number just below
        eps_t = torch.nextafter(eps_t, torch.zeros_like(eps_t))
    x_adv = Ball(x, eps_t, norm).project(x_adv)
    # Measured in float64, where the difference of two float32 values is (nearly) exact.
    overshoot = (x_adv.double() - x.double()).abs() > eps_t.double()
    return torch.where(overshoot, torch.nextafter(x_adv, x), x_adv)


# ---- the base class ---------------------------------------------------------------------


class Attack:
    """Base class of all attacks: ``attack(x, y) -> x_adv``.

    Args:
        model: maps [0, 1] pixels to logits ``[H, B, C]`` (an AuxModel) or ``[B, C]``.
        objective: the loss the attack maximises: a name from :mod:`.objectives` or a
            callable ``(logits [H,B,C], y [B], alpha [H]) -> [B]``. A callable is used
            as given, so for a targeted attack it must already reward reaching ``y``.
        eps: radius of the threat model's ball (``None``: unbounded, minimum-distance
            attacks only).
        norm: ``"linf"`` or ``"l2"`` (each attack lists the ones it supports in ``norms``).
        rule: the defended model's decision rule that judges success.
        seed: seed of the attack's own random generator (``None``: fresh randomness);
            the global RNG is never touched.
        targeted: ``y`` are target labels to reach instead of true labels to leave.
        kappa: cap of the margin objectives (``vote-margin``, ``margin-*``).

    Subclasses implement :meth:`perturb`; ``__call__`` validates the inputs, freezes the
    model (eval mode, no parameter gradients, restored afterwards) and clips the result
    into the threat model exactly.
    """

    # Declared by every registered attack (see :mod:`.registry`): what it uses of the model.
    kind: str
    norms: tuple[str, ...] = NORMS
    eps_optional = False  # minimum-distance attacks (CW, Boundary) may run without a budget

    def __init__(
        self,
        model: nn.Module,
        objective: str | Objective | None = "public",
        eps: float | None = 8 / 255,
        norm: str = "linf",
        rule: str = "vote",
        seed: int | None = None,
        targeted: bool = False,
        kappa: float = 0.0,
    ):
        name = type(self).__name__
        if norm not in self.norms:
            raise ValueError(f"{name} supports norm {' or '.join(map(repr, self.norms))}, got {norm!r}")
        if eps is None:
            if not self.eps_optional:
                raise ValueError(f"{name} needs a perturbation budget eps")
        elif norm == "linf" and not 0 <= eps <= 1:
            raise ValueError(f"linf eps must lie in [0, 1] (pixels are in [0, 1]), got {eps}")
        elif norm == "l2" and not eps > 0:
            raise ValueError(f"l2 eps must be > 0, got {eps}")
        check_rule(rule)
        if rule == "private" and getattr(model, "num_heads", 1) < 2:
            raise ValueError("rule 'private' needs a model with at least one aux head")
        self.model = model
        self.eps = eps
        self.norm = norm
        self.rule = rule
        self.seed = seed
        self.targeted = targeted
        self.kappa = kappa
        self.objective_name = objective if isinstance(objective, str) else getattr(objective, "__name__", None)
        self.objective = get_objective(objective, targeted, kappa) if isinstance(objective, str) else objective
        self.generator: torch.Generator | None = None

    def __repr__(self) -> str:
        eps = "None" if self.eps is None else f"{self.eps:.4g}"
        return (f"{type(self).__name__}(objective={self.objective_name!r}, eps={eps}, norm={self.norm!r}, "
                f"rule={self.rule!r}, targeted={self.targeted})")

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Adversarial examples for inputs ``x`` (pixels in [0, 1]) and labels ``y`` ``[B]``."""
        self._check_inputs(x, y)
        # Detached views share x's storage: attacks never write into them in place.
        x, y = x.detach(), y.detach().long()
        self.generator = torch.Generator(device=x.device)
        if self.seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(self.seed)
        with frozen(self.model):
            x_adv = self.perturb(x, y)
        return enforce_bounds(x_adv.detach(), x, self.eps, self.norm)

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The attack itself, on validated inputs with the model frozen (override this)."""
        raise NotImplementedError

    def success(self, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Which samples of ``x_adv`` fool this attack's model under its rule: bool ``[B]``."""
        return is_adversarial(self.model, x_adv, y, self.rule, self.targeted)

    # ---- helpers for subclasses ------------------------------------------------------

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Stacked logits ``[H, B, C]``: one forward of the model."""
        return as_stacked(self.model(x))

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The objective per sample ``[B]`` (to maximise)."""
        return self.objective(logits, y, head_weights(self.model, logits))

    def loss_and_grad(self, x_adv: torch.Tensor, y: torch.Tensor):
        """``(loss [B], d loss / d x_adv, logits)`` from one forward and one backward pass."""
        x_adv = x_adv.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = self.logits(x_adv)
            loss = self.loss(logits, y)
            (grad,) = torch.autograd.grad(loss.sum(), x_adv)
        return loss.detach(), grad, logits.detach()

    def fooled(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Whether the decision rule on these logits is fooled (reaches the target): bool ``[B]``."""
        return _fooled(logits, y, self.rule, head_weights(self.model, logits), self.targeted)

    def ball(self, x: torch.Tensor) -> Ball:
        """This attack's threat model around clean inputs ``x``."""
        return Ball(x, self.eps, self.norm)

    def best_of_restarts(
        self, x: torch.Tensor, y: torch.Tensor, restarts: int,
        run: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """Run ``run(x, y) -> x_adv`` up to ``restarts`` times and keep each sample's worst case.

        Each restart only attacks the samples that no earlier run fooled (judged by the
        decision rule); among points that fool nobody, the highest objective wins. Costs
        one extra forward per restart, so a single run skips the bookkeeping.
        """
        if restarts == 1:
            return run(x, y)
        x_best = x.clone()
        best_loss = torch.full((x.shape[0],), float("-inf"), device=x.device)
        fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for _ in range(restarts):
            todo = (~fooled).nonzero().squeeze(1)
            if todo.numel() == 0:
                break
            x_adv = run(x[todo], y[todo])
            with torch.no_grad():
                logits = self.logits(x_adv)
                loss = self.loss(logits, y[todo])
            now_fooled = self.fooled(logits, y[todo])
            better = now_fooled | (loss > best_loss[todo])
            x_best[todo[better]] = x_adv[better]
            best_loss[todo[better]] = loss[better].to(best_loss.dtype)
            fooled[todo] = now_fooled
        return x_best

    def _check_inputs(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if not torch.is_tensor(x) or not x.is_floating_point() or x.dim() < 2:
            raise ValueError("x must be a floating-point tensor [B, ...] of pixels in [0, 1]")
        if not torch.is_tensor(y) or y.dtype not in (torch.int64, torch.int32) or y.shape != (x.shape[0],):
            shape = tuple(y.shape) if torch.is_tensor(y) else type(y).__name__
            raise ValueError(f"labels must be an integer tensor of shape ({x.shape[0]},) for {x.shape[0]} "
                             f"inputs, got {shape}")
        low, high = x.min().item(), x.max().item()
        if not 0 <= low <= high <= 1:  # also refuses NaN
            raise ValueError(f"inputs must be pixels in [0, 1], got values in [{low:.3g}, {high:.3g}]: "
                             "normalisation belongs inside the model")
        if self.norm == "l2" and self.eps is not None and self.eps > math.sqrt(x[0].numel()):
            raise ValueError(f"l2 eps {self.eps} exceeds sqrt({x[0].numel()}), the diameter of the pixel box")
