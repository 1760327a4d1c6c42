"""Square Attack (Andriushchenko et al. 2020): score-based random search in an L-inf or L2 ball, no gradients."""
from __future__ import annotations

import math

import torch
from torch import nn

from .._utils import renamed_kwargs
from .base import Attack, l2_norms, per_sample
from .objectives import Objective
from .registry import register_attack

# Query indices (on a 10,000-query scale) after which the square's area is halved.
HALVING_POINTS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
# The L2 start tiles the image with a grid of this many squares per side (the paper's initialisation).
L2_INIT_TILES = 5


@register_attack
class Square(Attack):
    """Random search over square-shaped perturbations on the boundary of the L-inf or L2 ball.

    Each query changes one random square window (per sample) and keeps the change if the
    objective rises or the decision rule is fooled. The square covers a fraction ``p`` of the
    image, ``p_init`` halved on the paper's schedule rescaled to ``queries``. Samples stop being
    queried once they fool the rule. Needs image batches ``[B, C, H, W]``.

    L-inf starts from random vertical stripes of ``+-eps`` and sets the window to ``+-eps``
    (a random sign per channel). L2 starts from a grid of the paper's centred squares (mass
    ``1/(k+1)^2`` on the ring at distance ``k`` from the centre, opposite signs in the two
    halves) and, per query, moves the perturbation's mass in a second random window into the
    first, adds a fresh centred square there, and rescales the whole perturbation to norm
    ``eps`` (the paper's Algorithm 3, as AutoAttack runs it); the window side is at least 3.

    The default objective is the margin loss on head 0 (``margin-public``), as in the
    paper; on an AuxModel attacked through its vote, ``vote-margin`` is the natural choice.

    Args:
        queries: model queries per sample, the first one included.
        p_init: initial fraction of the image covered by the square.
        (others: see :class:`Attack`)
    """

    kind = "score-based"
    norms = ("linf", "l2")

    @renamed_kwargs(n_queries="queries")
    def __init__(
        self,
        model: nn.Module,
        objective: str | Objective = "margin-public",
        eps: float = 8 / 255,
        queries: int = 5000,
        p_init: float = 0.8,
        rule: str = "vote",
        seed: int | None = None,
        targeted: bool = False,
        kappa: float = 0.0,
        norm: str = "linf",
    ):
        super().__init__(model, objective, eps, norm, rule, seed, targeted, kappa)
        if queries < 1 or not 0 < p_init <= 1:
            raise ValueError(f"need queries >= 1 and 0 < p_init <= 1, got {queries}, {p_init}")
        self.queries = queries
        self.p_init = p_init

    @torch.no_grad()
    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"Square needs image batches [B, C, H, W], got shape {tuple(x.shape)}")
        x_adv = self._start(x)
        logits = self.logits(x_adv)
        loss, fooled = self.loss(logits, y), self.fooled(logits, y, x_adv)
        for query in range(1, self.queries):
            todo = (~fooled).nonzero().squeeze(1)
            if todo.numel() == 0:
                break
            propose = self._propose if self.norm == "linf" else self._propose_l2
            candidate = propose(x[todo], x_adv[todo], self._side(query, x))
            logits = self.logits(candidate)
            new_loss, new_fooled = self.loss(logits, y[todo]), self.fooled(logits, y[todo], candidate)
            accept = (new_loss > loss[todo]) | new_fooled
            keep = todo[accept]
            x_adv[keep], loss[keep], fooled[keep] = candidate[accept], new_loss[accept], new_fooled[accept]
        return x_adv

    def _start(self, x: torch.Tensor) -> torch.Tensor:
        """The first query: vertical stripes of ``+-eps`` (L-inf) or a grid of centred squares at norm ``eps`` (L2)."""
        batch, channels, height, width = x.shape
        if self.norm == "linf":
            return (x + self.eps * self._signs((batch, channels, 1, width), x)).clamp(0.0, 1.0)
        side = max(min(height, width) // L2_INIT_TILES, 1)
        delta = torch.zeros_like(x)
        for top in self._tile_starts(height, side):
            for left in self._tile_starts(width, side):
                tile = self._centred_square(side, batch, x) * self._signs((batch, channels, 1, 1), x)
                delta[:, :, top:top + side, left:left + side] += tile
        return self._on_sphere(x, delta)

    @staticmethod
    def _tile_starts(length: int, side: int) -> range:
        """Where the start's tiles begin along one axis: centred, as many as fit."""
        count = min(L2_INIT_TILES, length // side)
        first = (length - side * count) // 2
        return range(first, first + side * count, side)

    def _side(self, query: int, x: torch.Tensor) -> int:
        """The window's side at this query: a fraction of the image's area, clipped to fit."""
        height, width = x.shape[2:]
        rescaled = int(query / self.queries * 10_000)
        fraction = self.p_init / 2 ** sum(rescaled > point for point in HALVING_POINTS)
        side = round(math.sqrt(fraction * height * width))
        if self.norm == "linf":
            return min(max(side, 1), min(height, width) - 1)
        side = max(side, 3)
        side += 1 - side % 2  # odd, so that the centred square has a centre pixel
        return min(side, min(height, width))

    def _signs(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        bits = torch.randint(0, 2, shape, generator=self.generator, device=like.device)
        return bits.to(like.dtype) * 2 - 1

    def _corners(self, x: torch.Tensor, side: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One random window position per sample: its top and left, ``[B, 1]`` each."""
        batch, _, height, width = x.shape
        top = torch.randint(0, height - side + 1, (batch, 1), generator=self.generator, device=x.device)
        left = torch.randint(0, width - side + 1, (batch, 1), generator=self.generator, device=x.device)
        return top, left

    def _window(self, x: torch.Tensor, side: int) -> torch.Tensor:
        """A random ``side x side`` window per sample, as a bool mask ``[B, 1, H, W]``."""
        top, left = self._corners(x, side)
        rows = torch.arange(x.shape[2], device=x.device)
        cols = torch.arange(x.shape[3], device=x.device)
        in_rows = (rows >= top) & (rows < top + side)  # [B, H]
        in_cols = (cols >= left) & (cols < left + side)  # [B, W]
        return (in_rows[:, :, None] & in_cols[:, None, :]).unsqueeze(1)

    def _propose(self, x: torch.Tensor, x_adv: torch.Tensor, side: int) -> torch.Tensor:
        """``x_adv`` with one random ``side x side`` window per sample set to ``+-eps`` per channel."""
        window = self._window(x, side)
        signs = self._signs((x.shape[0], x.shape[1], 1, 1), x)
        candidate = torch.where(window, x + self.eps * signs, x_adv).clamp(0.0, 1.0)
        # A draw equal to the current window wastes a query; the opposite signs always differ.
        unchanged = (candidate == x_adv).flatten(1).all(1).view(-1, 1, 1, 1)
        signs = torch.where(unchanged, -signs, signs)
        return torch.where(window, x + self.eps * signs, x_adv).clamp(0.0, 1.0)

    def _propose_l2(self, x: torch.Tensor, x_adv: torch.Tensor, side: int) -> torch.Tensor:
        """``x_adv`` with the perturbation's mass in a second random window moved into the first, which gets a
        fresh centred square, per channel; the whole perturbation rescaled to norm ``eps``."""
        batch, channels = x.shape[:2]
        delta = x_adv - x
        window = self._window(x, side)
        emptied = self._window(x, side)
        in_window = window.expand_as(delta)
        # Per channel, the window's current perturbation (unit norm) plus a fresh centred square of random sign...
        current = delta[in_window].view(batch, channels, side, side)
        fresh = current / self._channel_norms(current) + self._centred_square(side, batch, x) * self._signs(
            (batch, channels, 1, 1), x)
        # ...at the norm that the budget left over and the mass of both windows allow.
        budget_left = (self.eps ** 2 - l2_norms(delta) ** 2).clamp_min(0) / channels
        moved = l2_norms(delta * (window | emptied)) ** 2
        size = (budget_left + moved).sqrt().view(batch, 1, 1, 1)
        delta = delta.masked_fill(emptied, 0.0)
        delta[in_window] = (fresh / self._channel_norms(fresh) * size).flatten()
        return self._on_sphere(x, delta)

    @staticmethod
    def _channel_norms(t: torch.Tensor) -> torch.Tensor:
        """L2 norm of each channel of each sample, ``[B, C, 1, 1]`` (at least 1e-12, to divide by)."""
        return t.flatten(2).norm(dim=2).clamp_min(1e-12)[..., None, None]

    def _on_sphere(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """``x + delta`` with ``delta`` rescaled to L2 norm ``eps``, clipped into the box."""
        scale = self.eps / l2_norms(delta).clamp_min(1e-12)
        return (x + delta * per_sample(scale, delta)).clamp(0.0, 1.0)

    def _centred_square(self, side: int, batch: int, like: torch.Tensor) -> torch.Tensor:
        """The paper's L2 update pattern, one per sample ``[B, 1, side, side]`` of unit norm: two stacked
        rectangles of opposite sign, each with mass ``1/(k+1)^2`` summed over the rings at Chebyshev distance
        up to ``k`` from its centre; transposed for a random half of the samples."""
        upper = self._rings(side // 2, side, like)
        lower = self._rings(side - side // 2, side, like)
        pattern = torch.cat([upper, -lower])
        pattern = pattern / pattern.norm().clamp_min(1e-12)
        flip = torch.randint(0, 2, (batch, 1, 1, 1), generator=self.generator, device=like.device).bool()
        return torch.where(flip, pattern.T, pattern)

    @staticmethod
    def _rings(rows: int, cols: int, like: torch.Tensor) -> torch.Tensor:
        """A ``rows x cols`` rectangle whose entry at Chebyshev distance ``d`` from the centre is
        ``sum(1 / (k+1)^2 for d <= k < K)``, ``K`` the larger half-size plus one; unit norm."""
        if rows == 0:
            return like.new_zeros(0, cols)
        distance = torch.maximum((torch.arange(rows, device=like.device) - rows // 2).abs()[:, None],
                                 (torch.arange(cols, device=like.device) - cols // 2).abs()[None, :])
        reach = max(rows // 2, cols // 2) + 1
        weights = 1.0 / torch.arange(1, reach + 1, device=like.device, dtype=like.dtype) ** 2
        tail = weights.flip(0).cumsum(0).flip(0)  # tail[d] = sum of weights[d:]
        rect = tail[distance]
        return rect / rect.norm()
