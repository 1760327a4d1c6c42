"""Targeted over the top k: an untargeted attack made of targeted runs (AutoAttack's APGD-T scheme).

An untargeted loss lets every head of an AuxModel drift towards its own nearest wrong class,
and heads scattered over different wrong classes do not outvote the true one. Aiming all of
them at one target class at a time avoids that: :class:`TopKTargeted` runs an attack's
targeted runs for each of the k classes the model finds most likely at the clean input
(after the true label), each on the samples no earlier run fooled, and judges success
untargeted, by the decision rule. ``APGDT`` and ``PGDT`` are this mixin over APGD and PGD.
"""
from __future__ import annotations

import torch

from .base import head_weights
from .objectives import ensemble_log_probs

__all__ = ["TopKTargeted", "top_k_targets"]


def top_k_targets(scores: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` highest-scoring classes other than ``y`` per sample, best first: ``[B, k]``.

    ``scores`` ``[B, C]``; ``k`` is capped at ``C - 1``.
    """
    if scores.shape[-1] < 2:
        raise ValueError("targets need at least 2 classes")
    k = min(k, scores.shape[-1] - 1)
    scores = scores.scatter(-1, y.unsqueeze(-1), float("-inf"))
    return scores.topk(k, dim=-1).indices


class TopKTargeted:
    """Mixin (listed before the attack: ``class APGDT(TopKTargeted, APGD)``) running the attack's
    targeted runs over the top-k target classes.

    The targets are ranked by the model's ensemble scores at the clean input (Algorithm 2's
    alpha-weighted softmax; the logits of a plain classifier); the objective is built
    targeted and gets each run's target and the true label (:mod:`.objectives`), while
    success stays untargeted: the decision rule's prediction differs from the true label.
    Each target's runs (``restarts`` of them) attack only the samples still robust, and the
    samples that the clean input already fools are returned untouched. A sample that no run
    fools gets the result with the highest objective (each under its own target). As with
    restarts, a later run's random start depends on which samples are still in it; within a
    run, samples that fool drop out without changing anything for the others.

    The attack provides ``_run(x, y, target)`` and ``restarts``; the subclass calls
    :meth:`_init_targets` in its ``__init__``.
    """

    targets_objective = True
    n_target_classes: int

    def _init_targets(self, n_target_classes: int) -> None:
        if n_target_classes < 1:
            raise ValueError(f"n_target_classes must be >= 1, got {n_target_classes}")
        self.n_target_classes = n_target_classes

    def config(self) -> dict[str, str]:
        return {**super().config(), "n_target_classes": str(self.n_target_classes)}

    def targets(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Target classes ``[B, k]`` from the clean logits: the ensemble's top k other than ``y``."""
        return top_k_targets(ensemble_log_probs(logits, head_weights(self.model, logits)), y, self.n_target_classes)

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            logits = self.logits(x)
        x_adv = x.clone()
        todo = (~self.fooled(logits, y)).nonzero().squeeze(1)
        if todo.numel():
            targets = self.targets(logits[:, todo], y[todo])
            x_adv[todo] = self.best_of_restarts(x[todo], y[todo], self.restarts, self._run, targets=targets)
        return x_adv
