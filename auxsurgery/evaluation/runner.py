"""Running an evaluation: :func:`run_suite` attacks fixed samples batch by batch and judges every
result by the defended model's real decision rules, never by the surrogate an attack climbed;
every row records every rule's and every head's accuracy. Sanity probes (a PGD at eps = 1, a
steps comparison) join any run that lacks them.
"""
from __future__ import annotations

import time
from typing import Iterable, Sequence

import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
from rich.text import Text
from torch import nn

from ..attacks import KINDS, Attack
from ..attacks.base import frozen
from ..model import as_aux_model, as_stacked, check_rule
from .inputs import collect
from .judging import applicable_rules, evaluate
from .plans import AttackPlan, Cascade, SuiteContext, get_suite, list_suites, parse_suites, plan_suites, sanity_probes
from .presets import Budget, get_preset
from .results import AttackRow, SuiteResult
from .sanity import sanity_checks

__all__ = ["run_suite"]


class _ImagesPerSecond(ProgressColumn):
    """Average throughput of an attack since it started, in images per second."""

    def render(self, task) -> Text:
        speed = task.completed / task.elapsed if task.elapsed else None
        return Text(f"{speed:,.1f} img/s" if speed else "- img/s", style="progress.data.speed")


def _progress(enabled: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _ImagesPerSecond(),
                    TimeElapsedColumn(), console=Console(stderr=True), disable=not enabled)


class _Runner:
    """Runs plans batch by batch over fixed samples and judges each result by the defended model."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, rules: Sequence[str],
                 batch_size: int, progress: Progress):
        self.model, self.x, self.y, self.rules = model, x, y, rules
        self.batch_size, self.progress = batch_size, progress
        self.device = next(model.parameters()).device
        self.clean = evaluate(model, x, y, rules, batch_size)
        # Samples that no rule or head gets right cannot be fooled: attacking them is wasted time.
        self.active = self.clean.any_correct().nonzero().flatten()

    def craft(self, attack: Attack, todo: torch.Tensor, label: str) -> torch.Tensor:
        """Adversarial versions of samples ``todo``, in batches; each batch gets its own seed."""
        task = self.progress.add_task(escape(label), total=len(todo))
        seed, crafted = attack.seed, []
        for start in range(0, len(todo), self.batch_size):
            batch = todo[start:start + self.batch_size]
            if seed is not None:
                attack.seed = seed + start
            crafted.append(attack(self.x[batch].to(self.device), self.y[batch].to(self.device)).cpu())
            self.progress.advance(task, len(batch))
        return torch.cat(crafted) if crafted else self.x[:0]

    def run_plan(self, plan: AttackPlan, todo: torch.Tensor | None = None, start: torch.Tensor | None = None,
                 name: str | None = None, kind: str | None = None) -> tuple[AttackRow, torch.Tensor]:
        """Attack samples ``todo`` (default: every active one) starting from inputs ``start`` (default: clean)."""
        todo = self.active if todo is None else todo
        attack = plan.make(self.model.public_model() if plan.on_public else self.model)
        if getattr(attack, "kind", None) not in KINDS:
            # The masking check compares kinds: an undeclared one must not pass for white-box.
            raise ValueError(f"attack {type(attack).__name__} must declare its kind as class data, one of "
                             f"{', '.join(KINDS)} (got {getattr(attack, 'kind', None)!r})")
        began = time.perf_counter()
        x_adv = (self.x if start is None else start).clone()
        x_adv[todo] = self.craft(attack, todo, name or plan.name)
        seconds = time.perf_counter() - began
        adv = evaluate(self.model, x_adv, self.y, self.rules, self.batch_size)
        delta = (x_adv - self.x)[todo].flatten(1)
        row = AttackRow(
            name=name or plan.name, suite=plan.suite,
            kind=kind or ("transfer" if plan.on_public else attack.kind),
            config=plan.config, threat={"norm": attack.norm, "eps": attack.eps}, series=plan.series,
            outcome=self.clean & adv, head_loss=adv.losses.mean(1), seconds=seconds, attacked=len(todo),
            perturbation={"linf_max": delta.abs().max().item() if len(todo) else 0.0,
                          "l2_median": delta.norm(dim=1).median().item() if len(todo) else 0.0},
        )
        return row, x_adv

    def run_cascade(self, cascade: Cascade) -> list[AttackRow]:
        """Each stage attacks only what is still robust; every row is the cumulative result so far."""
        rows, x_adv = [], self.x
        robust = self.clean.rules[cascade.rule]
        for i, stage in enumerate(cascade.stages, 1):
            row, x_adv = self.run_plan(stage, robust.nonzero().flatten(), x_adv,
                                       name=f"{cascade.name} {i}: {stage.name}", kind="cascade")
            robust = row.outcome.rules[cascade.rule]
            rows.append(row)
        return rows


@torch.no_grad()
def _num_classes(model: nn.Module, x: torch.Tensor) -> int:
    with frozen(model):
        return as_stacked(model(x[:1].to(next(model.parameters()).device))).shape[-1]


def run_suite(
    model: nn.Module,
    data,
    suite: str | Sequence[str] = "static,adaptive",
    eps: float | None = None,
    step_size: float | None = None,
    steps: int | None = None,
    dataset: str | None = None,
    n: int | None = None,
    seed: int = 0,
    rules: Sequence[str] = ("vote", "score"),
    batch_size: int = 128,
    budget: Budget | None = None,
    attacks: Iterable[AttackPlan | Cascade] = (),
    exclude: Sequence[str] = (),
    progress: bool = True,
) -> SuiteResult:
    """Attack ``model`` with the chosen suites and judge every result by its real decision rules.

    Args:
        model: an AuxModel, or a plain ``[B, C]`` classifier (the undefended baseline).
        data: ``(x, y)`` tensors, a Dataset or a DataLoader of [0, 1] pixels and labels.
        suite: comma-separated suite names (see :func:`~auxsurgery.evaluation.plans.list_suites`).
        eps, step_size, steps: override the preset's L-inf budget, PGD step and PGD iterations.
        dataset: picks the preset (``mnist``, ``cifar10``, ``mini-imagenet``; others: default).
        n: evaluate the first ``n`` samples only.
        seed: seed of every attack's randomness (batch ``i`` of an attack uses ``seed + i * batch_size``).
        rules: decision rules to attack; rule-aware attacks (APGD, Square, the cascade) run once per rule.
        batch_size: samples per attack batch.
        budget: iterations, restarts and queries of the non-paper attacks (default :class:`Budget`).
        attacks: extra plans or cascades to run (and to count in the worst case) beside the suites.
        exclude: names of the suites' attacks to leave out (e.g. ``Boundary``, whose result does
            not depend on eps, when a second eps is evaluated); unknown names raise.
        progress: show a progress bar (with images/s) on stderr.
    """
    names = parse_suites(suite)
    extra = list(attacks)
    if not names and not extra:
        raise ValueError(f"no suite chosen; valid suites: {', '.join(list_suites())}")
    aux = as_aux_model(model)
    x, y, source = collect(data, n)
    classes = _num_classes(aux, x)
    if y.min() < 0 or y.max() >= classes:
        raise ValueError(f"labels span {y.min().item()}..{y.max().item()} but the model has {classes} classes")
    eval_rules = applicable_rules(len(aux.head_names))
    targets = tuple(dict.fromkeys(check_rule(r) for r in rules))
    if any(r not in eval_rules for r in targets):
        raise ValueError(f"a model with {len(aux.head_names)} head(s) has rules {', '.join(eval_rules)}; got {targets}")
    preset, budget = get_preset(dataset, eps, step_size, steps), budget or Budget()
    context = SuiteContext(preset, budget, targets, seed, tuple(aux.head_names))
    if len(aux.head_names) < 2:
        skipped = [name for name in names if get_suite(name).needs_heads]
        if skipped:
            raise ValueError(f"the {' and '.join(skipped)} suite needs a model with aux heads (an AuxModel)")
    plans = plan_suites(names, context) + extra
    unknown = set(exclude) - {pl.name for pl in plans}
    if unknown:
        raise ValueError(f"cannot exclude {', '.join(sorted(unknown))}: not planned; planned attacks: "
                         f"{', '.join(pl.name for pl in plans)}")
    plans = [pl for pl in plans if pl.name not in exclude]
    plans += sanity_probes(context, plans)

    began = time.perf_counter()
    with _progress(progress) as bar:
        runner = _Runner(aux, x, y, eval_rules, batch_size, bar)
        result = SuiteResult(
            suites=names, rules=list(targets), eval_rules=list(eval_rules), head_names=list(aux.head_names),
            preset=preset, budget=budget,
            settings={"suites": names, "rules": list(targets), "seed": seed, "batch_size": batch_size,
                      "dataset": dataset, "preset": preset.to_dict(), "budget": budget.to_dict()},
            model_info={"head_names": list(aux.head_names), "alpha": aux.alpha.tolist(), "num_classes": classes,
                        "spec": getattr(aux, "spec", None), "class": type(model).__name__},
            data_info={"source": source, "dataset": dataset, "n": len(x), "shape": list(x.shape[1:])},
            labels=y, clean=runner.clean,
        )
        for pl in plans:
            result.rows += runner.run_cascade(pl) if isinstance(pl, Cascade) else [runner.run_plan(pl)[0]]
    result.seconds = time.perf_counter() - began
    result.findings = sanity_checks(result.rows, targets, len(x))
    return result
