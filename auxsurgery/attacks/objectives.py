"""Attack objectives: what an attack maximises, kept apart from how it maximises it.

An objective is a callable ``(logits [H, B, C], y [B], alpha [H]) -> loss [B]`` that
the attack MAXIMISES, one value per sample (so restarts and step-size rules can act
per sample). ``logits`` are an AuxModel's stacked head logits, head 0 the backbone's;
a plain ``[B, C]`` output counts as a single head. ``alpha`` are the head weights of
Algorithm 2.

Names, by loss family (``get_objective`` builds them; ``<k>`` is a head index):

* cross-entropy: ``public`` (head 0, the paper's static adversary), ``joint``
  (sum of alpha_h * CE over all heads, the paper's Adp-FGSM/Adp-PGD), ``private``
  (the same sum over the aux heads only), ``ensemble`` (CE of the log alpha-weighted
  mean softmax, i.e. Algorithm 2 itself), ``head:<k>``;
* clipped margin (Carlini-Wagner's f6, capped at ``kappa`` so a head already fooled by
  that margin stops pulling): ``margin-public``, ``margin-ensemble``, ``margin-head:<k>``,
  and ``vote-margin``, the unweighted sum over heads: a smooth stand-in for fooling a
  majority vote (Algorithm 1);
* DLR (Croce & Hein 2020, untargeted only): ``dlr-public``, ``dlr-ensemble``,
  ``dlr-joint`` (alpha-weighted sum over heads), ``dlr-head:<k>``.

A targeted objective rewards reaching the target class ``y`` instead.
"""
from __future__ import annotations

from typing import Callable

import torch

from .._utils import did_you_mean
from ..model import as_stacked

Objective = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

__all__ = ["Objective", "ensemble_log_probs", "get_objective", "list_objectives", "register_objective"]


# ---- views: stacked head logits -> one [B, C] score vector --------------------------


def ensemble_log_probs(logits: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Log of the alpha-weighted mean softmax over heads ``[B, C]`` (Algorithm 2, normalised)."""
    alpha = alpha.to(logits.dtype)
    # logsumexp instead of log(sum(softmax)): stays finite and accurate when the
    # ensemble is confident, where the plain log of a sum would round to log(0).
    weighted = torch.logsumexp(logits.log_softmax(-1) + alpha.log().view(-1, 1, 1), dim=0)
    return weighted - alpha.sum().log()


def _head(k: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    def view(logits: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        if not 0 <= k < logits.shape[0]:
            raise ValueError(f"head {k} does not exist: the model has {logits.shape[0]} heads")
        return logits[k]

    return view


# ---- per-sample losses on a [B, C] (or [H, B, C]) score tensor ------------------------


def _true_and_best_other(z: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Score of class ``y`` and the best score among the other classes, over the last dim."""
    y = y.expand(z.shape[:-1]).unsqueeze(-1)
    true = z.gather(-1, y).squeeze(-1)
    other = z.scatter(-1, y, float("-inf")).amax(-1)
    return true, other


def _ce(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    log_probs = z.log_softmax(-1)
    return -log_probs.gather(-1, y.expand(z.shape[:-1]).unsqueeze(-1)).squeeze(-1)


def _margin(kappa: float, targeted: bool):
    def loss(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        true, other = _true_and_best_other(z, y)
        # Untargeted: push another class above y. Targeted: push y (the target) above the rest.
        gap = true - other if targeted else other - true
        return gap.clamp(max=kappa)

    return loss


def _dlr(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if z.shape[-1] < 3:
        raise ValueError("DLR objectives need at least 3 classes")
    true, other = _true_and_best_other(z, y)
    top = z.topk(3, dim=-1).values
    return (other - true) / (top[..., 0] - top[..., 2] + 1e-12)


# ---- objectives: a loss applied to one view, or summed over heads ---------------------


def _on_view(loss, view) -> Objective:
    def objective(logits, y, alpha):
        return loss(view(as_stacked(logits), alpha), y)

    return objective


def _head_sum(loss, aux_only: bool = False, weighted: bool = True) -> Objective:
    def objective(logits, y, alpha):
        logits = as_stacked(logits)
        if aux_only:
            if logits.shape[0] < 2:
                raise ValueError("objective 'private' needs a model with at least one aux head")
            logits, alpha = logits[1:], alpha[1:]
        per_head = loss(logits, y)  # [H, B]: the losses broadcast over the head dimension
        if weighted:
            per_head = alpha.to(per_head.dtype).view(-1, 1) * per_head
        return per_head.sum(0)

    return objective


def _ce_objective(objective: Objective, targeted: bool) -> Objective:
    # Targeted cross-entropy: make the target class likely, i.e. minimise its loss.
    return (lambda logits, y, alpha: -objective(logits, y, alpha)) if targeted else objective


def _dlr_objective(name: str, objective: Objective, targeted: bool) -> Objective:
    if targeted:
        raise ValueError(f"objective {name!r} has no targeted form (targeted DLR needs the true label too)")
    return objective


_OBJECTIVES: dict[str, Callable[[bool, float], Objective]] = {}
_PER_HEAD: dict[str, Callable[[int, bool, float], Objective]] = {}


def register_objective(name: str, per_head: bool = False):
    """Decorator registering an objective builder under ``name``.

    A builder takes ``(targeted, kappa)`` and returns ``(logits [H,B,C], y [B], alpha [H]) -> loss [B]``;
    with ``per_head``, ``name`` is a prefix such as ``head:`` and the builder takes ``(k, targeted, kappa)``
    for the names ``<prefix><k>``. Adding an objective is one decorated function.
    """
    def decorate(builder):
        (_PER_HEAD if per_head else _OBJECTIVES)[name] = builder
        return builder

    return decorate


def list_objectives() -> list[str]:
    """Names of the registered objectives (per-head forms as ``<prefix><k>``)."""
    return [*_OBJECTIVES, *(prefix + "<k>" for prefix in _PER_HEAD)]


for _name, _builder in {
    "public": lambda t, kappa: _ce_objective(_on_view(_ce, _head(0)), t),
    "ensemble": lambda t, kappa: _ce_objective(_on_view(_ce, ensemble_log_probs), t),
    "joint": lambda t, kappa: _ce_objective(_head_sum(_ce), t),
    "private": lambda t, kappa: _ce_objective(_head_sum(_ce, aux_only=True), t),
    "margin-public": lambda t, kappa: _on_view(_margin(kappa, t), _head(0)),
    "margin-ensemble": lambda t, kappa: _on_view(_margin(kappa, t), ensemble_log_probs),
    # Unweighted: Algorithm 1 counts every head's vote the same, whatever its alpha.
    "vote-margin": lambda t, kappa: _head_sum(_margin(kappa, t), weighted=False),
    "dlr-public": lambda t, kappa: _dlr_objective("dlr-public", _on_view(_dlr, _head(0)), t),
    "dlr-ensemble": lambda t, kappa: _dlr_objective("dlr-ensemble", _on_view(_dlr, ensemble_log_probs), t),
    "dlr-joint": lambda t, kappa: _dlr_objective("dlr-joint", _head_sum(_dlr), t),
}.items():
    register_objective(_name)(_builder)

for _prefix, _builder in {
    "head:": lambda k, t, kappa: _ce_objective(_on_view(_ce, _head(k)), t),
    "margin-head:": lambda k, t, kappa: _on_view(_margin(kappa, t), _head(k)),
    "dlr-head:": lambda k, t, kappa: _dlr_objective(f"dlr-head:{k}", _on_view(_dlr, _head(k)), t),
}.items():
    register_objective(_prefix, per_head=True)(_builder)


def get_objective(name: str, targeted: bool = False, kappa: float = 0.0) -> Objective:
    """Build the objective called ``name`` (listed in the module docstring and by :func:`list_objectives`).

    Args:
        name: an objective name; the ``...head:<k>`` forms take a head index (0 = public).
        targeted: build the form that rewards reaching the target label ``y``.
        kappa: cap of the margin objectives; ignored by the others.
    """
    if name in _OBJECTIVES:
        return _OBJECTIVES[name](targeted, kappa)
    prefix, colon, index = name.partition(":")
    if colon and prefix + colon in _PER_HEAD and index.isdigit():
        return _PER_HEAD[prefix + colon](int(index), targeted, kappa)
    raise ValueError(f"unknown objective {name!r}.{did_you_mean(name, list_objectives())} "
                     f"Valid objectives: {', '.join(list_objectives())}")
