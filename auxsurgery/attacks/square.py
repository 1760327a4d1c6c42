"""Square Attack (Andriushchenko et al. 2020): score-based L-inf random search, no gradients."""
from __future__ import annotations

import math

import torch
from torch import nn

from .._utils import renamed_kwargs
from .base import Attack
from .objectives import Objective
from .registry import register_attack

# Query indices (on a 10,000-query scale) after which the square's area is halved.
HALVING_POINTS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


@register_attack
class Square(Attack):
    """Random search over vertical-stripe and square-shaped L-inf perturbations.

    Starts from random vertical stripes of ``+-eps``; each query redraws one random
    square window (per sample, random sign per channel) and keeps it if the objective
    rises or the decision rule is fooled. The square covers a fraction ``p`` of the image,
    ``p_init`` halved on the paper's schedule rescaled to ``queries``. Samples stop
    being queried once they fool the rule. Needs image batches ``[B, C, H, W]``.

    The default objective is the margin loss on head 0 (``margin-public``), as in the
    paper; on an AuxModel attacked through its vote, ``vote-margin`` is the natural choice.

    Args:
        queries: model queries per sample, the first one included.
        p_init: initial fraction of the image covered by the square.
        (others: see :class:`Attack`)
    """

    kind = "score-based"
    norms = ("linf",)

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
    ):
        super().__init__(model, objective, eps, "linf", rule, seed, targeted, kappa)
        if queries < 1 or not 0 < p_init <= 1:
            raise ValueError(f"need queries >= 1 and 0 < p_init <= 1, got {queries}, {p_init}")
        self.queries = queries
        self.p_init = p_init

    @torch.no_grad()
    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"Square needs image batches [B, C, H, W], got shape {tuple(x.shape)}")
        channels, height, width = x.shape[1:]
        x_adv = (x + self.eps * self._signs((x.shape[0], channels, 1, width), x)).clamp(0.0, 1.0)
        logits = self.logits(x_adv)
        loss, fooled = self.loss(logits, y), self.fooled(logits, y, x_adv)
        for query in range(1, self.queries):
            todo = (~fooled).nonzero().squeeze(1)
            if todo.numel() == 0:
                break
            side = round(math.sqrt(self._fraction(query) * height * width))
            side = min(max(side, 1), min(height, width) - 1)
            candidate = self._propose(x[todo], x_adv[todo], side)
            logits = self.logits(candidate)
            new_loss, new_fooled = self.loss(logits, y[todo]), self.fooled(logits, y[todo], candidate)
            accept = (new_loss > loss[todo]) | new_fooled
            keep = todo[accept]
            x_adv[keep], loss[keep], fooled[keep] = candidate[accept], new_loss[accept], new_fooled[accept]
        return x_adv

    def _fraction(self, query: int) -> float:
        """Fraction of the image the square covers at this query."""
        rescaled = int(query / self.queries * 10_000)
        return self.p_init / 2 ** sum(rescaled > point for point in HALVING_POINTS)

    def _signs(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        bits = torch.randint(0, 2, shape, generator=self.generator, device=like.device)
        return bits.to(like.dtype) * 2 - 1

    def _propose(self, x: torch.Tensor, x_adv: torch.Tensor, side: int) -> torch.Tensor:
        """``x_adv`` with one random ``side x side`` window per sample set to ``+-eps`` per channel."""
        batch, channels, height, width = x.shape
        top = torch.randint(0, height - side + 1, (batch, 1), generator=self.generator, device=x.device)
        left = torch.randint(0, width - side + 1, (batch, 1), generator=self.generator, device=x.device)
        rows = torch.arange(height, device=x.device)
        cols = torch.arange(width, device=x.device)
        in_rows = (rows >= top) & (rows < top + side)  # [B, H]
        in_cols = (cols >= left) & (cols < left + side)  # [B, W]
        window = (in_rows[:, :, None] & in_cols[:, None, :]).unsqueeze(1)  # [B, 1, H, W]

        signs = self._signs((batch, channels, 1, 1), x)
        candidate = torch.where(window, x + self.eps * signs, x_adv).clamp(0.0, 1.0)
        # A draw equal to the current window wastes a query; the opposite signs always differ.
        unchanged = (candidate == x_adv).flatten(1).all(1).view(-1, 1, 1, 1)
        signs = torch.where(unchanged, -signs, signs)
        return torch.where(window, x + self.eps * signs, x_adv).clamp(0.0, 1.0)
