"""Evaluation suites and :func:`run_suite`: which attacks run, on what, and how they are judged.

Suites (any comma-separated combination):

* ``static`` (Table II, a *baseline*): PGD (the paper's 5 iterations), untargeted CW-L2
  and Boundary, all crafted on the public backbone alone; the defended model is then
  judged on those inputs. The paper ran CW targeted; untargeted is the stronger test
  of a defence (any wrong class counts), so it is used here.
* ``adaptive`` (Table VII): Adp-FGSM and Adp-PGD climbing the joint loss of all heads.
* ``strong``: per attacked rule, APGD-CE on ``ensemble``, APGD-DLR on ``dlr-ensemble``,
  APGD on ``vote-margin`` and Square (score-based) on the rule itself, plus a cascade
  (Tramer et al. 2020) that attacks only the points still robust: PGD, then more steps
  with restarts, then Square.
* ``sweep`` (Fig. 4): Adp-PGD accuracy against eps (multiples of the preset, up to 1)
  and against the number of steps; sweeps use Madry's step ``2.5 * eps / steps``.
* ``heads`` (Table VI, Fig. 5): PGD crafted on each head alone, every head judged.

Success is always judged by the defended model's real decision rules, never by the
surrogate an attack climbed; every row records every rule's and every head's accuracy.
Sanity probes (a PGD at eps = 1, a steps comparison) join any run that lacks them.
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
from rich.text import Text
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..attacks import APGD, CW, FGSM, PGD, Attack, Boundary, Square, Transfer
from ..attacks.base import frozen
from ..attacks.objectives import as_stacked
from ..model import check_rule
from .heads_study import HeadsStudy, heads_study
from .presets import Budget, Preset, get_preset
from .sanity import LARGE_EPS, Finding, sanity_checks
from .worst_case import Outcome, WorstCase, applicable_rules, evaluate, worst_case

__all__ = [
    "AttackPlan", "AttackRow", "Cascade", "SUITES", "SuiteResult", "collect", "parse_suites", "plan", "run_suite",
]

SUITES = ("static", "adaptive", "strong", "sweep", "heads")
# The differentiable stand-in that gradient attacks climb to fool each decision rule.
RULE_OBJECTIVE = {"vote": "vote-margin", "score": "ensemble", "public": "public", "private": "private"}
# Square's objective per rule: a margin where one exists (random search wants a bounded signal).
SQUARE_OBJECTIVE = {"vote": "vote-margin", "score": "margin-ensemble", "public": "margin-public", "private": "private"}
KINDS = {Square: "score-based", Boundary: "decision-based", Transfer: "transfer"}


# ---- what to run ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AttackPlan:
    """One attack to run and how to label its row.

    Attributes:
        name, suite: the row's label and the suite it belongs to.
        make: builds the attack on the model it crafts on.
        config: JSON-able description of the attack (class and arguments).
        on_public: crafted on the public backbone alone (the static adversary).
        series: ``(name, axis, x)`` for rows along a sweep (axis ``eps`` or ``steps``).
    """

    name: str
    suite: str
    make: Callable[[nn.Module], Attack]
    config: dict
    on_public: bool = False
    series: tuple[str, str, float] | None = None


def plan(name: str, suite: str, attack: type[Attack], *, on_public: bool = False,
         series: tuple[str, str, float] | None = None, **params) -> AttackPlan:
    """An :class:`AttackPlan` for ``attack(model, **params)``."""
    config = {"attack": attack.__name__, "crafted_on": "public" if on_public else "defended", **params}
    return AttackPlan(name, suite, functools.partial(attack, **params), config, on_public, series)


@dataclass(frozen=True)
class Cascade:
    """Attacks run in turn, each only on the samples that every earlier stage left robust under ``rule``."""

    name: str
    suite: str
    rule: str
    stages: tuple[AttackPlan, ...]


@dataclass(frozen=True)
class _Context:
    preset: Preset
    budget: Budget
    rules: tuple[str, ...]
    seed: int
    head_names: tuple[str, ...]


# The paper's PGD is BIM under another name (Section II-B): it starts from the clean input,
# and its 5 preset steps add up to more than eps, so every coordinate can reach the corner.
def _paper_pgd(c: _Context, steps: int) -> dict:
    return dict(eps=c.preset.eps, steps=steps, step_size=c.preset.step_size, random_start=False)


def _static(c: _Context) -> list[AttackPlan]:
    b = c.budget
    public = dict(on_public=True, rule="public")
    return [
        plan("PGD", "static", PGD, objective="public", **_paper_pgd(c, c.preset.steps), **public),
        plan("CW-L2", "static", CW, objective="margin-public", steps=b.cw_steps, search_steps=b.cw_search_steps,
             lr=b.cw_lr, **public),
        plan("Boundary", "static", Boundary, steps=b.boundary_steps, seed=c.seed, **public),
    ]


def _adaptive(c: _Context) -> list[AttackPlan]:
    p = c.preset
    series = "Adp-FGSM/Adp-PGD vs steps"
    return [
        plan("Adp-FGSM", "adaptive", FGSM, objective="joint", eps=p.eps, series=(series, "steps", 1)),
        plan("Adp-PGD", "adaptive", PGD, objective="joint", **_paper_pgd(c, p.steps),
             series=(series, "steps", p.steps)),
    ]


def _cascade(c: _Context, rule: str) -> Cascade:
    p, b = c.preset, c.budget
    first, second = b.cascade_steps
    pgd = dict(objective=RULE_OBJECTIVE[rule], eps=p.eps, rule=rule, seed=c.seed)
    return Cascade(f"Cascade [{rule}]", "strong", rule, (
        plan(f"PGD-{first}", "strong", PGD, steps=first, **pgd),
        plan(f"PGD-{second}x{b.cascade_restarts}", "strong", PGD, steps=second, restarts=b.cascade_restarts, **pgd),
        # Another seed than the standalone Square row's: the cascade should not replay its random search.
        plan("Square", "strong", Square, objective=SQUARE_OBJECTIVE[rule], eps=p.eps, n_queries=b.square_queries,
             rule=rule, seed=c.seed + 1),
    ))


def _strong(c: _Context) -> list[AttackPlan | Cascade]:
    p, b = c.preset, c.budget
    plans: list[AttackPlan | Cascade] = []
    for rule in c.rules:
        apgd = dict(eps=p.eps, steps=b.apgd_steps, restarts=b.apgd_restarts, rule=rule, seed=c.seed)
        plans += [
            plan(f"APGD-CE [{rule}]", "strong", APGD, objective="ensemble", **apgd),
            plan(f"APGD-DLR [{rule}]", "strong", APGD, objective="dlr-ensemble", **apgd),
            plan(f"APGD-vote [{rule}]", "strong", APGD, objective="vote-margin", **apgd),
            plan(f"Square [{rule}]", "strong", Square, objective=SQUARE_OBJECTIVE[rule], eps=p.eps,
                 n_queries=b.square_queries, rule=rule, seed=c.seed),
        ]
    return plans + [_cascade(c, rule) for rule in c.rules]


def _sweep(c: _Context) -> list[AttackPlan]:
    p, b = c.preset, c.budget
    eps_values = sorted({min(1.0, m * p.eps) for m in b.sweep_multiples} | {LARGE_EPS})
    by_eps = [plan(f"Adp-PGD eps={eps:.4g}", "sweep", PGD, objective="joint", eps=eps, steps=p.steps, seed=c.seed,
                   series=("Adp-PGD vs eps", "eps", eps)) for eps in eps_values]
    by_steps = [plan(f"Adp-PGD steps={steps}", "sweep", PGD, objective="joint", eps=p.eps, steps=steps, seed=c.seed,
                     series=("Adp-PGD vs steps", "steps", steps)) for steps in b.sweep_steps]
    return by_eps + by_steps


def _heads(c: _Context) -> list[AttackPlan]:
    if len(c.head_names) < 2:
        raise ValueError("the heads suite needs a model with aux heads (an AuxModel)")
    return [plan(f"PGD on {name}", "heads", PGD, objective=f"head:{k}", **_paper_pgd(c, c.preset.heads_steps))
            for k, name in enumerate(c.head_names)]


_BUILDERS = {"static": _static, "adaptive": _adaptive, "strong": _strong, "sweep": _sweep, "heads": _heads}


def _probes(c: _Context, plans: Sequence[AttackPlan | Cascade]) -> list[AttackPlan]:
    """Sanity probes for whatever the chosen suites do not measure already."""
    series = [pl.series for pl in plans if isinstance(pl, AttackPlan) and pl.series]
    p, probes = c.preset, []
    if not any(axis == "eps" and x >= LARGE_EPS for _, axis, x in series):
        probes.append(plan(f"PGD eps={LARGE_EPS:g} (probe)", "sanity", PGD, objective="joint", eps=LARGE_EPS,
                           steps=c.budget.probe_steps, seed=c.seed, series=("probe vs eps", "eps", LARGE_EPS)))
    if len({x for _, axis, x in series if axis == "steps"}) < 2:
        probes += [plan(f"PGD steps={steps} (probe)", "sanity", PGD, objective="joint", eps=p.eps, steps=steps,
                        step_size=p.step_size, seed=c.seed, series=("probe vs steps", "steps", steps))
                   for steps in (p.steps, 4 * p.steps)]
    return probes


def parse_suites(suite: str | Sequence[str]) -> list[str]:
    """Suite names from ``"static,adaptive"`` or a list, in order, without repeats; unknown names raise."""
    names = suite.split(",") if isinstance(suite, str) else list(suite)
    names = list(dict.fromkeys(name.strip() for name in names if name.strip()))
    unknown = [name for name in names if name not in SUITES]
    if unknown:
        raise ValueError(f"unknown suite {unknown[0]!r}; valid suites: {', '.join(SUITES)}")
    return names


# ---- results ---------------------------------------------------------------------------------


@dataclass
class AttackRow:
    """What one attack did, judged by the defended model.

    Attributes:
        outcome: robust samples per rule and head (clean-correct and not fooled).
        head_loss: mean cross-entropy of each head on the adversarial inputs ``[H]``.
        kind: ``white-box``, ``transfer``, ``score-based``, ``decision-based`` or ``cascade``.
        threat: ``{"norm", "eps"}`` of the attack (eps None: unbounded, minimum distance).
        attacked: samples the attack ran on (samples no rule or head gets right are skipped).
        perturbation: largest L-inf and median L2 distance of the attacked inputs from the clean ones.
    """

    name: str
    suite: str
    kind: str
    config: dict
    threat: dict
    series: tuple[str, str, float] | None
    outcome: Outcome
    head_loss: torch.Tensor
    seconds: float
    attacked: int
    perturbation: dict

    def to_dict(self, head_names: Sequence[str]) -> dict:
        """The row as JSON-able values."""
        return {
            "name": self.name, "suite": self.suite, "kind": self.kind, "config": self.config,
            "threat": self.threat, "series": list(self.series) if self.series else None,
            **self.outcome.summary(head_names),
            "head_loss": dict(zip(head_names, self.head_loss.tolist())),
            "seconds": self.seconds, "attacked": self.attacked,
            "images_per_second": self.attacked / self.seconds if self.attacked and self.seconds > 0 else None,
            "perturbation": self.perturbation,
        }


@dataclass
class SuiteResult:
    """Everything one :func:`run_suite` call measured.

    Attributes:
        suites: suites run, in order.
        rules: decision rules attacked (rule-aware attacks run once per rule) and checked.
        eval_rules: every rule each input was judged under.
        head_names: the model's heads, ``public`` first.
        labels: the true labels ``[N]``.
        clean: outcome on the unattacked inputs.
        rows: one per attack (cascade: one per stage, cumulative).
        findings: sanity-check results.
        model_info, data_info, settings: descriptions for the report.
    """

    suites: list[str]
    rules: list[str]
    eval_rules: list[str]
    head_names: list[str]
    preset: Preset
    budget: Budget
    settings: dict
    model_info: dict
    data_info: dict
    labels: torch.Tensor
    clean: Outcome
    rows: list[AttackRow] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def n(self) -> int:
        """Number of samples evaluated."""
        return len(self.labels)

    @property
    def warnings(self) -> list[Finding]:
        """The sanity findings that are red flags."""
        return [f for f in self.findings if f.level == "warning"]

    def rows_of(self, suite: str) -> list[AttackRow]:
        """The rows of one suite, in the order they ran."""
        return [row for row in self.rows if row.suite == suite]

    def row(self, name: str) -> AttackRow:
        """The row called ``name``."""
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(f"no attack row {name!r}; rows: {', '.join(r.name for r in self.rows)}")

    def worst_case(self) -> WorstCase:
        """Per-sample worst case over every attack within the preset's L-inf budget."""
        return worst_case(self.clean, self.rows, self.preset.eps, "linf")

    def heads_study(self) -> HeadsStudy | None:
        """Table VI, the transfer matrix and Fig. 5's loss ratio, if the heads suite ran."""
        rows = self.rows_of("heads")
        return heads_study(rows, self.clean.head_accuracy(), self.head_names) if rows else None


# ---- running ---------------------------------------------------------------------------------


class _SingleHead(nn.Module):
    """A plain ``[B, C]`` classifier seen as a one-head model: the undefended baseline."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.register_buffer("alpha", torch.ones(1, device=next(net.parameters()).device))
        self.head_names = ["public"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return as_stacked(self.net(x))

    def public_model(self) -> nn.Module:
        """The classifier itself."""
        return self.net


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
        began = time.perf_counter()
        x_adv = (self.x if start is None else start).clone()
        x_adv[todo] = self.craft(attack, todo, name or plan.name)
        seconds = time.perf_counter() - began
        adv = evaluate(self.model, x_adv, self.y, self.rules, self.batch_size)
        delta = (x_adv - self.x)[todo].flatten(1)
        row = AttackRow(
            name=name or plan.name, suite=plan.suite,
            kind=kind or ("transfer" if plan.on_public else KINDS.get(type(attack), "white-box")),
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


def collect(data, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The first ``n`` samples of ``data`` as checked tensors ``(x, y, description)``.

    ``data`` is a pair of tensors, a Dataset of ``(image, label)`` or a DataLoader (any
    iterable of batches). Pixels must lie in [0, 1] and labels be integers.
    """
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(torch.is_tensor(t) for t in data):
        (x, y), source = data, "tensors"
    else:
        batches = DataLoader(data, batch_size=256) if isinstance(data, Dataset) else data
        source = type(data).__name__
        xs, ys = [], []
        for xb, yb in batches:
            xs.append(xb)
            ys.append(torch.as_tensor(yb))
            if n is not None and sum(map(len, xs)) >= n:
                break
        if not xs:
            raise ValueError(f"the data ({source}) is empty")
        x, y = torch.cat(xs), torch.cat(ys)
    x, y = x[:n], y[:n]
    if not x.is_floating_point() or x.dim() < 2 or len(x) == 0:
        raise ValueError(f"inputs must be a non-empty float tensor [N, ...], got {x.dtype} {tuple(x.shape)}")
    if y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8) or y.shape != (len(x),):
        raise ValueError(f"labels must be integers of shape ({len(x)},), got {y.dtype} {tuple(y.shape)}")
    low, high = x.min().item(), x.max().item()
    if not 0 <= low <= high <= 1:  # also refuses NaN
        raise ValueError(f"inputs must be pixels in [0, 1], got values in [{low:.3g}, {high:.3g}]: "
                         "normalisation belongs inside the model")
    return x, y.long(), source


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
        suite: comma-separated suite names (see :data:`SUITES` and the module docstring).
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
        raise ValueError(f"no suite chosen; valid suites: {', '.join(SUITES)}")
    aux = model if hasattr(model, "head_names") else _SingleHead(model)
    x, y, source = collect(data, n)
    classes = _num_classes(aux, x)
    if y.min() < 0 or y.max() >= classes:
        raise ValueError(f"labels span {y.min().item()}..{y.max().item()} but the model has {classes} classes")
    eval_rules = applicable_rules(len(aux.head_names))
    targets = tuple(dict.fromkeys(check_rule(r) for r in rules))
    if any(r not in eval_rules for r in targets):
        raise ValueError(f"a model with {len(aux.head_names)} head(s) has rules {', '.join(eval_rules)}; got {targets}")
    preset, budget = get_preset(dataset, eps, step_size, steps), budget or Budget()
    context = _Context(preset, budget, targets, seed, tuple(aux.head_names))
    plans = [pl for name in names for pl in _BUILDERS[name](context)] + extra
    unknown = set(exclude) - {pl.name for pl in plans}
    if unknown:
        raise ValueError(f"cannot exclude {', '.join(sorted(unknown))}: not planned; planned attacks: "
                         f"{', '.join(pl.name for pl in plans)}")
    plans = [pl for pl in plans if pl.name not in exclude]
    plans += _probes(context, plans)

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
