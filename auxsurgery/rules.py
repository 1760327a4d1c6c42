"""Decision rules: how an AuxModel's head logits become one label, as a registry of plug-ins.

A rule is a function ``scores(logits [H, B, C], alpha [H], **params) -> [B, C]`` whose ``argmax``
over classes is the decision, registered with :func:`register_rule` together with the
differentiable objective that gradient attacks climb to fool it (its *surrogate*, a name of
:func:`auxsurgery.attacks.get_objective`). Everything that takes a rule (``AuxModel.predict``,
``as_classifier``, ``run_suite(rules=)``, ``attack --rules``, recipes, ``export``) takes any
registered one, by name.

Built-in rules:

* ``vote`` (the paper's Algorithm 1): each head votes for its top class, the majority wins, ties broken
  by the summed softmax; surrogate ``vote-margin``.
* ``score`` (Algorithm 2): the ``alpha``-weighted sum of the heads' softmaxes; surrogate ``ensemble``.
* ``public``: head 0 alone, the backbone as it was; surrogate ``public``.
* ``private``: the aux heads' ``alpha``-weighted softmax sum (needs an aux head); surrogate ``private``.
* ``crossmax`` (Fort & Lakshminarayanan 2024, arXiv 2408.05446, Algorithm 1): each head's logits minus
  their max over classes, then each class's values minus their max over heads, then per class the
  ``k``-th highest value over heads (``k`` = 3 by default; with fewer than ``k`` heads, the lowest).
  Needs two heads: with one the second step leaves all zeros. Surrogate ``rule-ce:crossmax``, the
  cross-entropy of its own scores read as logits.
* ``mean-logits``: the ``alpha``-weighted mean of the heads' logits (the plain mean at the default
  ``alpha`` of ones), the smooth ensemble that attacks on CrossMax transfer from; surrogate ``mean-logits``.

A parameterised rule is named ``NAME:KEY=VALUE`` (several: ``NAME:K1=V1:K2=V2``), e.g. ``crossmax:k=2``;
a parameter left out takes its registered default, and the canonical name leaves defaults out
(``crossmax:k=3`` is ``crossmax``). A rule of your own is a few lines::

    @register_rule("median", surrogate="mean-logits")
    def median(logits, alpha):
        return logits.median(0).values
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F

from ._utils import did_you_mean

__all__ = [
    "Rule", "check_rule", "crossmax", "default_rules", "get_rule", "list_rules", "mean_logits", "register_rule",
    "rule_predict", "rule_scores",
]

Scores = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class Rule:
    """A registered decision rule, with its parameters bound (see :func:`register_rule`).

    Attributes:
        name: the canonical name, parameters that differ from their defaults included (``crossmax:k=2``).
        scores: ``(logits [H, B, C], alpha [H], **params) -> [B, C]``; the decision is their argmax.
        surrogate: the objective gradient attacks climb to fool the rule; a ``{rule}`` in it reads as ``name``.
        square: the objective Square's random search reads (a bounded margin where one exists).
        params: the parameter values (defaults filled in).
        min_heads: the fewest heads (the backbone's included) the rule is defined on.
        probabilities: the scores are non-negative class weights (their normalised log is a log-probability);
            otherwise they are logit-like reals, turned into log-probabilities with a log-softmax.
        judged: judged on every evaluation, attacked or not (the paper's four rules).
        label: how reports name the rule.
    """

    name: str
    scores: Scores
    surrogate: str
    square: str
    params: dict[str, Any] = field(default_factory=dict)
    min_heads: int = 1
    probabilities: bool = False
    judged: bool = False
    label: str = ""

    def check_heads(self, num_heads: int) -> None:
        """Raise a ValueError unless the rule is defined on a model with ``num_heads`` heads."""
        if num_heads < self.min_heads:
            aux = "one aux head" if self.min_heads == 2 else f"{self.min_heads - 1} aux heads"
            raise ValueError(f"rule {self.name!r} needs a model with at least {aux} besides the backbone's "
                             f"head; this one has {num_heads} head(s)")

    def __call__(self, logits: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """The rule's per-class scores ``[B, C]`` over stacked head logits ``[H, B, C]``."""
        self.check_heads(logits.shape[0])
        # At least float32: in bfloat16 the spacing near 2 votes (1/64) swallows the vote's tie-break.
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        return self.scores(logits, alpha.to(logits.device), **self.params)

    def log_probs(self, logits: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """The scores as log-probabilities ``[B, C]`` (same argmax), for libraries that want logits."""
        scores = self(logits, alpha)
        if self.probabilities:
            return (scores / scores.sum(-1, keepdim=True)).clamp_min(1e-12).log()
        return scores.log_softmax(-1)


@dataclass(frozen=True)
class _Entry:
    scores: Scores
    surrogate: str
    square: str
    defaults: dict[str, Any]
    min_heads: int
    probabilities: bool
    judged: bool
    label: str


_RULES: dict[str, _Entry] = {}
_BUILT_IN: set[str] = set()


def register_rule(name: str, scores: Scores | None = None, *, surrogate: str, square: str | None = None,
                  params: dict[str, Any] | None = None, min_heads: int = 1, probabilities: bool = False,
                  judged: bool = False, label: str | None = None):
    """Register the decision rule ``name`` (also usable as a decorator on ``scores``); returns ``scores``.

    Args:
        name: letters, digits, ``-`` and ``_`` (``:`` and ``=`` name parameters, ``,`` separates rules).
        scores: ``(logits [H, B, C], alpha [H], **params) -> [B, C]``, the decision its argmax. It gets
            float32 (or wider) logits; keep it to tensor operations if the rule is to be exported.
        surrogate: the objective name gradient attacks climb for it (``{rule}`` stands for the rule's name
            with its parameters: ``rule-ce:{rule}`` is the cross-entropy of the rule's own scores).
        square: the objective of Square's random search (default: ``surrogate``).
        params: the parameters ``scores`` takes, with their defaults (their types parse ``NAME:KEY=VALUE``).
        min_heads: the fewest heads the rule is defined on (2: needs an aux head).
        probabilities: the scores are non-negative class weights rather than logit-like reals.
        judged: judge it on every evaluation, attacked or not (the built-in paper rules only, by default).
        label: how reports name it (default: the name).

    Registering a name again replaces your earlier rule; the built-in rules cannot be replaced.
    """
    if not name or not all(ch.isalnum() or ch in "-_" for ch in name):
        raise ValueError(f"rule name {name!r} must be letters, digits, '-' and '_' (':' names parameters)")
    if name in _BUILT_IN:
        raise ValueError(f"{name!r} is a built-in rule; register yours under another name")
    if min_heads < 1:
        raise ValueError(f"min_heads must be >= 1, got {min_heads}")

    def decorate(fn: Scores) -> Scores:
        _RULES[name] = _Entry(fn, surrogate, square or surrogate, dict(params or {}), min_heads, probabilities,
                              judged, label or name)
        return fn

    return decorate if scores is None else decorate(scores)


def list_rules() -> list[str]:
    """Names of the registered rules, in registration order (the built-in ones first)."""
    return list(_RULES)


def default_rules(num_heads: int | None = None) -> tuple[str, ...]:
    """The rules every evaluation judges (registered ``judged``), those defined on ``num_heads`` heads if given."""
    return tuple(name for name, entry in _RULES.items()
                 if entry.judged and (num_heads is None or entry.min_heads <= num_heads))


def _parse_value(rule: str, key: str, text: str, default: Any) -> Any:
    kind = type(default)
    try:
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return text.lower() in ("true", "1")
        return kind(text)
    except ValueError:
        raise ValueError(f"rule {rule!r}: parameter {key} takes {kind.__name__} values (default {default!r}), "
                         f"got {text!r}") from None


def get_rule(name: str) -> Rule:
    """The rule ``name`` (``NAME`` or ``NAME:KEY=VALUE[:KEY=VALUE...]``), its parameters bound.

    Unknown names and parameters raise a ValueError naming the close matches and the valid ones.
    """
    if isinstance(name, Rule):
        return name
    if not isinstance(name, str):
        raise ValueError(f"a decision rule is named by a string, got {type(name).__name__}")
    base, *assignments = name.split(":")
    if base not in _RULES:
        raise ValueError(f"unknown prediction rule {name!r}; valid rules: {', '.join(_RULES)}."
                         f"{did_you_mean(base, _RULES)}")
    entry = _RULES[base]
    params = dict(entry.defaults)
    for assignment in assignments:
        key, equals, text = assignment.partition("=")
        if not equals or key not in params:
            valid = ", ".join(f"{k}={v!r}" for k, v in entry.defaults.items()) or "none"
            raise ValueError(f"rule {name!r}: unknown parameter {assignment!r} (write {base}:KEY=VALUE)."
                             f"{did_you_mean(key, entry.defaults)} Its parameters: {valid}")
        params[key] = _parse_value(name, key, text, entry.defaults[key])
    canonical = base + "".join(f":{k}={v}" for k, v in params.items() if v != entry.defaults[k])
    return Rule(canonical, entry.scores, entry.surrogate.format(rule=canonical),
                entry.square.format(rule=canonical), params, entry.min_heads, entry.probabilities, entry.judged,
                entry.label + "".join(f" ({k}={v})" for k, v in params.items() if v != entry.defaults[k]))


def check_rule(rule: str) -> str:
    """The canonical name of the registered rule ``rule``; unknown rules raise a ValueError listing them."""
    return get_rule(rule).name


def rule_scores(logits: torch.Tensor, rule: str, alpha: torch.Tensor) -> torch.Tensor:
    """Per-class scores ``[B, C]`` of a decision rule over stacked head logits ``[H, B, C]``."""
    return get_rule(rule)(logits, alpha)


def rule_predict(logits: torch.Tensor, rule: str, alpha: torch.Tensor) -> torch.Tensor:
    """Predicted labels ``[B]`` of a decision rule over stacked head logits ``[H, B, C]``."""
    return rule_scores(logits, rule, alpha).argmax(-1)


# ---- the built-in rules ------------------------------------------------------------------------


def _weighted_softmax(logits: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Algorithm 2's scores: the alpha-weighted sum of the heads' softmaxes ``[B, C]``."""
    probs = logits.softmax(-1)
    return (alpha.to(probs.dtype).view(-1, 1, 1) * probs).sum(0)


def _vote(logits: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Algorithm 1: the number of heads voting for each class, plus the normalised summed softmax as a
    tie-break strictly below one vote, so ``argmax`` of these scores is the vote decision."""
    weighted = _weighted_softmax(logits, alpha)
    votes = F.one_hot(logits.argmax(-1), logits.shape[-1]).to(weighted.dtype).sum(0)
    # The tie-break lies in [0, 0.5]: it orders classes with equal votes but never outranks a vote.
    tie_break = 0.5 * weighted / weighted.sum(-1, keepdim=True).clamp_min(1e-12)
    return votes + tie_break


def _public(logits: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    return logits[0].softmax(-1)


def _private(logits: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    return _weighted_softmax(logits[1:], alpha[1:])


def crossmax(logits: torch.Tensor, alpha: torch.Tensor, k: int = 3) -> torch.Tensor:
    """CrossMax (Fort & Lakshminarayanan 2024, Algorithm 1) over logits ``[H, B, C]``: ``[B, C]``.

    Each head's logits minus their max over classes, then each class's values minus their max over heads,
    then per class the ``k``-th highest value over heads. With fewer than ``k`` heads it takes the lowest
    (``k = min(k, H)``). ``alpha`` is not used: CrossMax weighs every head the same.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"crossmax's k is the rank taken over heads, an integer >= 1, got {k!r}")
    z = logits - logits.amax(-1, keepdim=True)
    z = z - z.amax(0, keepdim=True)
    k = min(k, z.shape[0])
    return z.topk(k, dim=0).values[k - 1]


def mean_logits(logits: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """The ``alpha``-weighted mean of the heads' logits ``[B, C]`` (the plain mean when ``alpha`` is all ones)."""
    weights = alpha.to(logits.dtype)
    return (weights.view(-1, 1, 1) * logits).sum(0) / weights.sum().clamp_min(1e-12)


for _name, _scores, _options in (
    ("vote", _vote, dict(surrogate="vote-margin", label="vote (Alg. 1, all heads)")),
    ("score", _weighted_softmax, dict(surrogate="ensemble", square="margin-ensemble",
                                      label="score (Alg. 2, all heads)")),
    ("public", _public, dict(surrogate="public", square="margin-public", label="public (backbone alone)")),
    ("private", _private, dict(surrogate="private", min_heads=2, label="private (aux heads only)")),
):
    register_rule(_name, _scores, probabilities=True, judged=True, **_options)
register_rule("crossmax", crossmax, surrogate="rule-ce:{rule}", square="rule-margin:{rule}", params={"k": 3},
              min_heads=2, label="crossmax (all heads)")
register_rule("mean-logits", mean_logits, surrogate="mean-logits", square="margin-mean-logits",
              label="mean-logits (all heads)")
_BUILT_IN.update(_RULES)
