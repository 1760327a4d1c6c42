"""Boundary Attack (Brendel et al. 2018): decision-based, walks along the decision boundary."""
from __future__ import annotations

import torch
from torch import nn

from .base import Attack, l2_norms, per_sample
from .registry import register_attack


@register_attack
class Boundary(Attack):
    """Decision-based L2 attack: needs only the decision rule's label, no scores or gradients.

    Starts from uniform noise that fools the rule (else from another input of the batch
    that does), pulled towards the input by binary
    search onto the decision boundary. Each step proposes a random move along the sphere
    around the input (length ``spherical_step`` times the current distance) followed by a
    step towards the input (``source_step`` times the distance), and keeps it if it still
    fools the rule. Every ``adapt_every`` steps both lengths grow by ``step_adaptation``
    when their proposals succeed often and shrink when they rarely do (too linear or too
    curved a boundary there). Both proposals of a step go through the model in one batch.

    Returns the closest adversarial point per sample, else the clean input. Untargeted
    only. With ``eps`` set, results are projected into the L2 ball.

    Args:
        steps: boundary-walk steps.
        spherical_step, source_step: initial step lengths, relative to the distance.
        step_adaptation: factor by which the step lengths are adapted.
        adapt_every: steps between adaptations (the success rates are measured over them).
        init_trials: uniform-noise draws tried to find a starting point.
        (others: see :class:`Attack`)
    """

    kind = "decision-based"
    norms = ("l2",)
    eps_optional = True

    def __init__(
        self,
        model: nn.Module,
        steps: int = 1000,
        spherical_step: float = 0.01,
        source_step: float = 0.01,
        step_adaptation: float = 1.5,
        adapt_every: int = 10,
        init_trials: int = 100,
        eps: float | None = None,
        rule: str = "vote",
        seed: int | None = None,
    ):
        super().__init__(model, objective=None, eps=eps, norm="l2", rule=rule, seed=seed)
        if steps < 0 or init_trials < 1 or adapt_every < 1 or step_adaptation <= 1:
            raise ValueError("need steps >= 0, init_trials >= 1, adapt_every >= 1 and step_adaptation > 1")
        self.steps, self.init_trials, self.adapt_every = steps, init_trials, adapt_every
        self.spherical_step, self.source_step, self.step_adaptation = spherical_step, source_step, step_adaptation

    @torch.no_grad()
    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_adv, found = self._starting_points(x, y)
        spherical = torch.full((x.shape[0],), self.spherical_step, device=x.device, dtype=x.dtype)
        source = torch.full_like(spherical, self.source_step)
        spherical_hits, step_hits = torch.zeros_like(spherical), torch.zeros_like(spherical)
        for step in range(1, self.steps + 1):
            on_sphere, candidate = self._proposals(x, x_adv, spherical, source)
            both = torch.cat([on_sphere, candidate])
            fooled = self.fooled(self.logits(both), torch.cat([y, y]), both)
            sphere_fooled, candidate_fooled = fooled.chunk(2)
            # Closer by construction, but clipping and rounding could break that.
            closer = l2_norms(candidate - x) < l2_norms(x_adv - x)
            x_adv = torch.where(per_sample(found & candidate_fooled & closer, x), candidate, x_adv)
            spherical_hits += sphere_fooled
            step_hits += candidate_fooled
            if step % self.adapt_every == 0:
                spherical, source = self._adapt(spherical, source, spherical_hits, step_hits)
                spherical_hits.zero_()
                step_hits.zero_()
        return x_adv

    def _starting_points(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Adversarial points on the boundary between ``x`` and uniform noise, and where one was found."""
        found = self.fooled(self.logits(x), y, x)  # already misclassified: x itself, at distance 0
        noise = x
        for _ in range(self.init_trials):
            if found.all():
                break
            draw = torch.rand(x.shape, generator=self.generator, device=x.device, dtype=x.dtype)
            hit = self.fooled(self.logits(draw), y, draw) & ~found
            noise = torch.where(per_sample(hit, x), draw, noise)
            found |= hit
        # Every noise draw can land in one class (MNIST models call uniform noise one digit): then the
        # batch's other inputs, which the rule labels otherwise, are the starting points.
        for shift in range(1, x.shape[0]):
            if found.all():
                break
            other = x.roll(shift, 0)
            hit = self.fooled(self.logits(other), y, other) & ~found
            noise = torch.where(per_sample(hit, x), other, noise)
            found |= hit
        # Bisection on the blend x + t (noise - x): t = high always fools, t = low does not.
        low, high = x.new_zeros(x.shape[0]), x.new_ones(x.shape[0])
        for _ in range(20):
            mid = (low + high) / 2
            blend = x + per_sample(mid, x) * (noise - x)
            fooled = self.fooled(self.logits(blend), y, blend)
            high, low = torch.where(fooled, mid, high), torch.where(fooled, low, mid)
        return x + per_sample(high, x) * (noise - x), found

    def _proposals(self, x, x_adv, spherical, source):
        """A random move along the sphere around ``x`` through ``x_adv``, and that move plus a step to ``x``."""
        to_x = x - x_adv
        dist = l2_norms(to_x).clamp_min(1e-12)
        unit = to_x / per_sample(dist, x)
        noise = torch.randn(x.shape, generator=self.generator, device=x.device, dtype=x.dtype)
        noise = noise - unit * per_sample((noise * unit).flatten(1).sum(1), x)  # orthogonal to to_x
        noise = noise * per_sample(spherical * dist / l2_norms(noise).clamp_min(1e-12), x)
        # x_adv + noise lies sqrt(1 + spherical^2) times farther from x: pull it back onto the sphere.
        on_sphere = x - (to_x - noise) / per_sample((1 + spherical.square()).sqrt(), x)
        on_sphere = on_sphere.clamp(0.0, 1.0)
        # Shrink towards x to (1 - source) of the old distance (never away from x after clipping).
        shrink = ((1 - source) * dist / l2_norms(x - on_sphere).clamp_min(1e-12)).clamp(max=1.0)
        candidate = x + per_sample(shrink, x) * (on_sphere - x)
        return on_sphere, candidate

    def _adapt(self, spherical, source, spherical_hits, step_hits):
        """Brendel et al.'s rule: success rates too high mean the steps can grow, too low that they must shrink."""
        up, down = self.step_adaptation, 1 / self.step_adaptation
        sphere_rate, step_rate = spherical_hits / self.adapt_every, step_hits / self.adapt_every
        sphere_factor = torch.where(sphere_rate > 0.5, up, torch.where(sphere_rate < 0.2, down, 1.0))
        step_factor = torch.where(step_rate > 0.25, up, torch.where(step_rate < 0.1, down, 1.0))
        return spherical * sphere_factor, source * sphere_factor * step_factor
