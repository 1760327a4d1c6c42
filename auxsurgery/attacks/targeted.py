"""Targeted over the top k: an untargeted attack made of targeted runs (AutoAttack's APGD-T scheme).

An untargeted loss lets every head of an AuxModel drift towards its own nearest wrong class,
and heads scattered over different wrong classes do not outvote the true one. Aiming all of
them at one target class at a time avoids that: :class:`TopKTargeted` runs an attack's
targeted runs for each of the k classes the model finds most likely at the clean input
(after the true label), each on the samples no earlier run fooled, and judges success
untargeted, by the decision rule. ``APGDT`` and ``PGDT`` are this mixin over APGD and PGD.

Which k? The most likely classes are not always the nearest ones. With ``target_candidates`` the
attack ranks that many likely classes by a linearised distance to each one's decision boundary,
``(s_y - s_t) / ||grad_x (s_y - s_t)||_*`` on the ensemble's log-probabilities ``s`` (dual norm of
the threat model's: L1 for L-inf), and attacks only the k nearest (the idea of MALT, Melamed et al.
2024, arXiv 2407.02240): one forward and one backward per candidate buy the same successes with far
fewer targeted runs.

Or by trying them: with ``screen_steps`` every candidate gets a short run of that many steps first, and
only the ``target_classes`` whose short runs came closest (the highest objective, the targeted loss that
success needs) get the full runs; a point a short run fools is done there. This spends where a target
is promising (A3's idea, Liu et al. 2022, arXiv 2203.05154) and, unlike the linearisation at the clean
input, sees what the decision rule does along the way: against a vote whose ties the ensemble's score
breaks, the target that wins a tie need not be the nearest one at the clean input.

And where it is close: with ``close_steps`` a sample still robust after the runs whose objective at its best
target ended within ``close_margin`` of success gets more runs there, up to ``close_restarts`` of that many steps,
each from a new random start and only while it stays robust (A3's idea of spending more only where the margin is
close). A targeted DLR run of 100 steps that ends a hair short of success may cross from about half of its random
starts, and then the verdict on the point is a coin flip; a longer run crosses from nearly all, and a point that
needs the whole radius (an L2 example pinned to the sphere) from most starts, so a few of them settle it (see
``Budget.close_steps`` and ``Budget.close_restarts``).
"""
from __future__ import annotations

from functools import partial

import torch

from .base import head_weights, input_gradient
from .objectives import ensemble_log_probs

__all__ = ["TopKTargeted", "boundary_distances", "top_k_targets"]


def top_k_targets(scores: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` highest-scoring classes other than ``y`` per sample, best first: ``[B, k]``.

    ``scores`` ``[B, C]``; ``k`` is capped at ``C - 1``.
    """
    if scores.shape[-1] < 2:
        raise ValueError("targets need at least 2 classes")
    k = min(k, scores.shape[-1] - 1)
    scores = scores.scatter(-1, y.unsqueeze(-1), float("-inf"))
    return scores.topk(k, dim=-1).indices


def boundary_distances(scores: torch.Tensor, x: torch.Tensor, y: torch.Tensor, candidates: torch.Tensor,
                       norm: str) -> torch.Tensor:
    """Linearised distance from each input to the boundary between ``y`` and each candidate class: ``[B, K]``.

    ``scores`` ``[B, C]`` must be differentiable in ``x``; ``candidates`` ``[B, K]``. The distance to the
    boundary of class ``t`` is ``(s_y - s_t) / ||grad_x (s_y - s_t)||_*`` (``*``: the dual of ``norm``); a
    zero or non-finite gradient puts that class at infinite distance (it is then ranked last).
    """
    true = scores.gather(1, y.unsqueeze(1))
    distances = []
    for k in range(candidates.shape[1]):
        gap = (true - scores.gather(1, candidates[:, k:k + 1])).squeeze(1)
        grad = input_gradient(gap, x, retain_graph=k + 1 < candidates.shape[1])
        dual = grad.flatten(1).abs().sum(1) if norm == "linf" else grad.flatten(1).norm(dim=1)
        distance = gap.detach() / dual
        distances.append(torch.where(torch.isfinite(distance) & (dual > 0), distance, torch.inf))
    return torch.stack(distances, 1)


class TopKTargeted:
    """Mixin (listed before the attack: ``class APGDT(TopKTargeted, APGD)``) running the attack's
    targeted runs over the top-k target classes.

    The targets are ranked by the model's ensemble scores at the clean input (Algorithm 2's
    alpha-weighted softmax; the logits of a plain classifier); the objective is built
    targeted and gets each run's target and the true label (:mod:`.objectives`); with
    ``target_candidates`` (more than k), that many top classes are re-ranked by
    :func:`boundary_distances` and the k nearest attacked. Success stays
    untargeted: the decision rule's prediction differs from the true label.
    Each target's runs (``restarts`` of them) attack only the samples still robust, and the
    samples that the clean input already fools are returned untouched. A sample that no run
    fools gets the result with the highest objective (each under its own target). As with
    restarts, a later run's random start depends on which samples are still in it; within a
    run, samples that fool drop out without changing anything for the others.

    The attack provides ``_run(x, y, target)`` and ``restarts``; the subclass calls
    :meth:`_init_targets` in its ``__init__``.
    """

    targets_objective = True
    target_classes: int
    target_candidates: int | None
    screen_steps: int | None
    close_steps: int
    close_margin: float
    close_restarts: int

    def _init_targets(self, target_classes: int, target_candidates: int | None = None,
                      screen_steps: int | None = None, close_steps: int = 0, close_margin: float = 0.05,
                      close_restarts: int = 1) -> None:
        if target_classes < 1:
            raise ValueError(f"target_classes must be >= 1, got {target_classes}")
        if target_candidates is not None and target_candidates < target_classes:
            raise ValueError(f"target_candidates ({target_candidates}) must be at least target_classes "
                             f"({target_classes}): the targets are picked among the candidates")
        if screen_steps is not None and screen_steps < 1:
            raise ValueError(f"screen_steps must be >= 1, got {screen_steps}")
        if screen_steps is not None and target_candidates is None:
            raise ValueError("screen_steps needs target_candidates: the short runs pick the targets among them")
        if close_steps < 0 or close_margin < 0:
            raise ValueError(f"close_steps and close_margin must be >= 0, got {close_steps} and {close_margin}")
        if close_restarts < 1:
            raise ValueError(f"close_restarts must be >= 1, got {close_restarts}")
        self.target_classes = target_classes
        self.target_candidates = target_candidates
        self.screen_steps = screen_steps
        self.close_steps = close_steps
        self.close_margin = close_margin
        self.close_restarts = close_restarts

    def config(self) -> dict[str, str]:
        ranked = {} if self.target_candidates is None else {"target_candidates": str(self.target_candidates)}
        screened = {} if self.screen_steps is None else {"screen_steps": str(self.screen_steps)}
        close = {"close_steps": str(self.close_steps), "close_margin": f"{self.close_margin:g}",
                 **({"close_restarts": str(self.close_restarts)} if self.close_restarts > 1 else {})} \
            if self.close_steps else {}
        return {**super().config(), "target_classes": str(self.target_classes), **ranked, **screened, **close}

    def targets(self, logits: torch.Tensor, y: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """Target classes ``[B, k]`` from the clean logits: the ensemble's top k other than ``y``, or, with
        ``target_candidates`` and logits differentiable in the inputs ``x``, the k of the top candidates
        nearest to their boundary."""
        scores = self._scores(logits)
        if self.target_candidates is None or x is None or self.target_candidates <= self.target_classes:
            return top_k_targets(scores.detach(), y, self.target_classes)
        candidates = top_k_targets(scores.detach(), y, self.target_candidates)
        nearest = boundary_distances(scores, x, y, candidates, self.norm).argsort(dim=1, stable=True)
        return candidates.gather(1, nearest[:, :self.target_classes])

    def _scores(self, logits: torch.Tensor) -> torch.Tensor:
        """The ensemble's log-probabilities ``[B, C]`` that rank the targets (a plain classifier's own)."""
        return ensemble_log_probs(logits, head_weights(self.model, logits))

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        screened = self.screen_steps is not None and self.target_candidates > self.target_classes
        ranked = not screened and self.target_candidates is not None and self.target_candidates > self.target_classes
        x_in = x.detach().requires_grad_(ranked)
        with torch.set_grad_enabled(ranked):
            logits = self.logits(x_in)
        x_adv = x.clone()
        todo = (~self.fooled(logits.detach(), y, x, fp32_logits=True)).nonzero().squeeze(1)
        if not todo.numel():
            return x_adv
        if screened:
            candidates = top_k_targets(self._scores(logits), y, self.target_candidates)[todo]
            x_adv[todo], targets = self._screened(x[todo], y[todo], candidates)
        else:
            # Ranking differentiates the clean forward: its scores keep their graph to x_in.
            targets = self.targets(logits, y, x_in)[todo] if ranked else self.targets(logits[:, todo], y[todo])
            x_adv[todo] = self.best_of_restarts(x[todo], y[todo], self.restarts, self._run, targets=targets)
        if self.close_steps:
            x_adv[todo] = self._retried_where_close(x[todo], y[todo], x_adv[todo], targets)
        return x_adv

    def _retried_where_close(self, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor,
                             targets: torch.Tensor) -> torch.Tensor:
        """``x_adv`` after up to ``close_restarts`` runs of ``close_steps`` steps at the best of its ``targets``
        ``[B, K]`` on the samples still robust whose objective there is above ``-close_margin`` (each run on those
        the earlier ones left robust); their best replaces ``x_adv`` where it fools the rule or reaches a higher
        objective."""
        with torch.no_grad():
            logits = self.logits(x_adv)
            reached = torch.stack([self.loss(logits, y, target) for target in targets.unbind(1)], 1)
        best, best_target = reached.max(dim=1)
        close = (~self.fooled(logits, y, x_adv, fp32_logits=True) & (best > -self.close_margin)).nonzero().squeeze(1)
        if not close.numel():
            return x_adv
        aim = targets[close].gather(1, best_target[close].unsqueeze(1)).squeeze(1)
        x_retry = self.best_of_restarts(x[close], y[close], self.close_restarts,
                                        partial(self._run, steps=self.close_steps), targets=aim.unsqueeze(1))
        with torch.no_grad():
            logits = self.logits(x_retry)
            better = (self.fooled(logits, y[close], x_retry, fp32_logits=True)
                      | (self.loss(logits, y[close], aim) > best[close]))
        x_adv = x_adv.clone()
        x_adv[close[better]] = x_retry[better]
        return x_adv

    def _screened(self, x: torch.Tensor, y: torch.Tensor,
                  candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A short run at every candidate ``[B, K]``, then full runs at the ``target_classes`` that came closest,
        each only on the samples still robust: ``(x_adv, the targets of the full runs [B, target_classes])`` (a
        sample a short run fooled keeps its first ``target_classes`` candidates there)."""
        x_adv = x.clone()
        reached = torch.full(candidates.shape, float("-inf"), device=x.device)
        fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        finalists = candidates[:, :self.target_classes].clone()
        for k, target in enumerate(candidates.unbind(1)):
            todo = (~fooled).nonzero().squeeze(1)
            if not todo.numel():
                return x_adv, finalists
            x_try = self._run(x[todo], y[todo], target[todo], steps=self.screen_steps)
            with torch.no_grad():
                logits = self.logits(x_try)
                reached[todo, k] = self.loss(logits, y[todo], target[todo]).to(reached.dtype)
            now_fooled = self.fooled(logits, y[todo], x_try, fp32_logits=True)
            x_adv[todo[now_fooled]] = x_try[now_fooled]
            fooled[todo] = now_fooled
        todo = (~fooled).nonzero().squeeze(1)
        closest = reached[todo].argsort(dim=1, descending=True, stable=True)[:, :self.target_classes]
        finalists[todo] = candidates[todo].gather(1, closest)
        x_adv[todo] = self.best_of_restarts(x[todo], y[todo], self.restarts, self._run, targets=finalists[todo])
        return x_adv, finalists
