"""Running an evaluation: :func:`run_suite` attacks fixed samples batch by batch and judges every
result by the defended model's real decision rules, never by the surrogate an attack climbed;
every row records every rule's and every head's accuracy. Sanity probes (a PGD at eps = 1, a
steps comparison) join any run that lacks them.

A randomised model (two forwards differ) is evaluated under expectation over transformation: every
gradient step averages :data:`DEFAULT_EOT` draws and every verdict, clean included, is the majority of
:data:`DEFAULT_JUDGE_DRAWS` forwards. With ``transfer_from`` the suites' gradient attacks craft on that
surrogate while the attacked model judges every example (and answers the black-box attacks' queries).
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
import torch.distributed as dist
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text
from torch import nn

from .._output import COUNTED_AT_START, OutputConsole, TimeLeft, progress_display
from .._utils import renamed_kwargs
from ..attacks import KINDS, Attack, Transfer
from ..attacks.base import PRECISIONS, PassCounter, Passes, check_draws, frozen
from ..model import AuxModel, as_aux_model, as_stacked, check_labels
from ..rules import check_rule, default_rules, get_rule
from ..train.distributed import DistContext, distributed_context
from .inputs import collect
from .judging import SANITY_SUITE, Outcome, evaluate
from .plans import (
    AttackPlan,
    Cascade,
    MinimumNormCurve,
    SuiteContext,
    get_suite,
    list_suites,
    parse_suites,
    plan_suites,
    sanity_probes,
    with_precision,
)
from .presets import Budget, Preset, get_preset
from .results import AttackRow, SuiteResult
from .sanity import Finding, blind_gradients, model_checks, probe_findings, sanity_checks
from .state import EvaluationState, fingerprint_data, fingerprint_model

__all__ = ["DEFAULT_EOT", "DEFAULT_JUDGE_DRAWS", "run_suite"]

# Draws per gradient step on a randomised model: AutoAttack's rand version (APGD with eot_iter=20).
DEFAULT_EOT = 20
# Forwards per verdict on a randomised model. benchmarks/judge_agreement.py (a CIFAR-10 Aux Block ResNet-9 with
# Gaussian input noise of std 0.05, vote rule, 200 points, clean and at the boundary after a 2/255 APGD): two runs
# of the judge agree on 96.5% of the examples with one forward, on 99.0% from 7 on, 99.5% and 99.0% at 9. 7 meets
# 99% with no margin (two disagreements in 200); 9 keeps it at 11 and 15 too, for two forwards more per verdict.
DEFAULT_JUDGE_DRAWS = 9


class _ImagesPerSecond(ProgressColumn):
    """Average throughput of an attack since it started, in images per second."""

    def render(self, task) -> Text:
        if task.fields.get("overall"):
            return Text("")
        done = task.completed - task.fields.get(COUNTED_AT_START, 0)
        speed = done / task.elapsed if task.elapsed else None
        return Text(f"{speed:,.1f} img/s" if speed else "- img/s", style="progress.data.speed")


def _progress(enabled: bool) -> Progress:
    return progress_display(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _ImagesPerSecond(),
                            TimeElapsedColumn(), TimeLeft(), enabled=enabled)


@dataclass(frozen=True)
class _Protocol:
    """How an evaluation draws a randomised model's randomness, and where its gradient attacks craft.

    ``eot``: draws averaged per gradient step on the attacked model (``surrogate_eot`` on the surrogate);
    ``judge_draws``: forwards whose majority is every verdict; ``surrogate``: the model the suites'
    gradient attacks craft on (None: the attacked model itself).
    """

    eot: int = 1
    judge_draws: int = 1
    surrogate: AuxModel | None = None
    surrogate_eot: int = 1

    @property
    def drawn(self) -> bool:
        """Whether any decision or step takes more than one draw."""
        return self.eot > 1 or self.judge_draws > 1 or self.surrogate_eot > 1

    @property
    def surrogates(self) -> tuple[nn.Module, ...]:
        """The surrogate, if any, as a tuple of models to count passes through."""
        return () if self.surrogate is None else (self.surrogate,)


class _Runner:
    """Runs plans batch by batch over fixed samples and judges each batch by the defended model.

    Each batch's judgement (per point: rules and heads still right, losses, perturbation sizes) is a
    record; rows are rebuilt from the records of all batches. With a state folder every record is
    kept on disk as soon as it exists, so a killed run resumes at the batch it stopped in; under
    torchrun, batch ``b`` of every attack runs on process ``b % world_size`` and all processes
    gather the records, so each holds the whole result. A batch's attack seed is ``seed + b *
    batch_size`` over the globally ordered points it attacks: neither an interruption nor the
    number of processes changes any result.
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, rules: Sequence[str],
                 batch_size: int, progress: Progress, state: EvaluationState | None, ctx: DistContext,
                 keep_adversarial: bool = False, protocol: _Protocol | None = None):
        self.model, self.x, self.y, self.rules, self.keep_adversarial = model, x, y, rules, keep_adversarial
        self.batch_size, self.progress, self.state, self.ctx = batch_size, progress, state, ctx
        self.protocol = protocol or _Protocol()
        self.device = next(model.parameters()).device
        self.clean = evaluate(model, x, y, rules, batch_size, self.protocol.judge_draws)
        # Samples that no rule or head gets right cannot be fooled: attacking them is wasted time.
        self.active = self.clean.any_correct().nonzero().flatten()
        self.planned = 0  # plans started so far: names each plan's records in the state folder
        self.point_losses = self.clean.losses  # each head's loss per point on the last plan's examples [H, N]
        self.findings: list[Finding] = []  # what the cascades' indicators of attack failure found

    def _judge(self, batch: torch.Tensor, x_adv: torch.Tensor, seconds: float, passes: Passes) -> dict:
        """The record of one attacked batch (see :data:`auxsurgery.evaluation.state.RECORD_KEYS`).

        ``passes`` are the attack's; the judging forward of the examples is added to them (the AutoAttack
        reference judges its examples the same way and is counted the same way).
        """
        with PassCounter(self.model) as judging:
            adv = evaluate(self.model, x_adv, self.y[batch], self.rules, self.batch_size, self.protocol.judge_draws)
        passes = passes + judging
        delta, pixels = (x_adv - self.x[batch]).flatten(1), x_adv.flatten(1)
        kept = {"x_adv": x_adv} if self.keep_adversarial else {}
        return {**kept, "indices": batch, "rules": torch.stack([adv.rules[r] for r in self.rules]), "heads": adv.heads,
                "losses": adv.losses, "linf": delta.abs().amax(1), "l2": delta.norm(dim=1),
                "pixel_min": pixels.amin(1), "pixel_max": pixels.amax(1), "seconds": torch.tensor(seconds),
                "forward": torch.tensor(passes.forward), "backward": torch.tensor(passes.backward)}

    def craft(self, attack: Attack, key: str, todo: torch.Tensor, label: str) -> list[dict]:
        """The records of every batch of ``todo``: this process's computed or read back, the others gathered."""
        batches = [todo[start:start + self.batch_size] for start in range(0, len(todo), self.batch_size)]
        mine = range(self.ctx.rank, len(batches), self.ctx.world_size)
        # The bar counts every point of the evaluation: those this stage does not attack (decided by an earlier
        # one, or another process's) are done before it starts; a stage left nothing to attack is finished.
        decided = len(self.x) - sum(len(batches[b]) for b in mine)
        task = self.progress.add_task(escape(label), total=len(self.x), **{COUNTED_AT_START: decided})
        self.progress.update(task, completed=decided)
        seed, records = attack.seed, {}
        # What each kept record belongs to, beside the plan key and the points (see EvaluationState.get).
        owner = {"attack": label, "class": type(attack).__name__, "rule": getattr(attack, "rule", None)}
        for b in mine:
            batch = batches[b]
            record = self.state.get(key, b, owner, batch) if self.state else None
            if record is None:
                if seed is not None:
                    attack.seed = seed + b * self.batch_size
                began = time.perf_counter()
                # Every model an attack may hold; a forward of one inside another counts once.
                with PassCounter(self.model, self.model.public_model(), *self.protocol.surrogates) as passes:
                    x_adv = attack(self.x[batch].to(self.device), self.y[batch].to(self.device)).cpu()
                record = self._judge(batch, x_adv, time.perf_counter() - began, passes)
                if self.state:
                    self.state.put(key, b, owner, record)
            records[b] = record
            self.progress.advance(task, len(batch))
        if self.ctx.world_size > 1:
            gathered: list[dict] = [{} for _ in range(self.ctx.world_size)]
            dist.all_gather_object(gathered, records)
            records = {b: r for part in gathered for b, r in part.items()}
        return [records[b] for b in range(len(batches))]

    def run_plan(self, plan: AttackPlan, todo: torch.Tensor | None = None, name: str | None = None,
                 kind: str | None = None) -> AttackRow:
        """Attack samples ``todo`` (default: every active one); the others keep their clean judgement."""
        todo = self.active if todo is None else todo
        attack = self.make(plan)
        if getattr(attack, "kind", None) not in KINDS:
            # The masking check compares kinds: an undeclared one must not pass for white-box.
            raise ValueError(f"attack {type(attack).__name__} must declare its kind as class data, one of "
                             f"{', '.join(KINDS)} (got {getattr(attack, 'kind', None)!r})")
        name = name or plan.name
        key = f"{self.planned:03d}"
        self.planned += 1
        records = self.craft(attack, key, todo, name)
        rules = {r: c.clone() for r, c in self.clean.rules.items()}
        heads, losses = self.clean.heads.clone(), self.clean.losses.clone()
        for record in records:
            index = record["indices"]
            for i, r in enumerate(self.rules):
                rules[r][index] = record["rules"][i]
            heads[:, index], losses[:, index] = record["heads"], record["losses"]
        self.point_losses = losses
        transferred = isinstance(attack, Transfer) and not plan.on_public
        return AttackRow(
            name=name, suite=plan.suite, kind=kind or ("transfer" if plan.on_public else attack.kind),
            config={**plan.config, "crafted_on": "surrogate"} if transferred else plan.config,
            threat={"norm": attack.norm, "eps": attack.eps}, series=plan.series,
            outcome=self.clean & Outcome(rules, heads), head_loss=losses.mean(1),
            seconds=sum(r["seconds"].item() for r in records), passes=_passes(records), attacked=len(todo),
            perturbation=_perturbation(records),
            adversarial=_examples(records, self.x) if self.keep_adversarial else None,
        )

    def make(self, plan: AttackPlan) -> Attack:
        """The plan's attack on the model it crafts on, set for the protocol's draws.

        The static adversary crafts on the public backbone. With a surrogate, a gradient attack outside the
        sanity probes (which check the attacked model's own gradients) crafts on it instead, and asks the
        attacked model whether a sample is fooled (:class:`~auxsurgery.attacks.Transfer` with
        ``query_target``).
        """
        p = self.protocol
        attack = plan.make(self.model.public_model() if plan.on_public else self.model)
        gradient = getattr(attack, "kind", None) == "white-box"
        if p.surrogate is not None and gradient and not plan.on_public and plan.suite != SANITY_SUITE:
            crafting = plan.make(p.surrogate).with_draws(p.surrogate_eot, p.judge_draws)
            return Transfer(self.model, crafting, rule=crafting.rule, query_target=True)
        return attack.with_draws(p.eot if gradient else 1, p.judge_draws) if p.drawn else attack

    def run_curve(self, curve: MinimumNormCurve) -> list[AttackRow]:
        """One minimum-norm run on every active point, read at each eps of the curve (one row each)."""
        attack = self.make(curve.attack)
        key = f"{self.planned:03d}"
        self.planned += 1
        records = self.craft(attack, key, self.active, curve.name)
        rows = []
        for eps in curve.eps_values:
            rules = {r: c.clone() for r, c in self.clean.rules.items()}
            heads, losses = self.clean.heads.clone(), self.clean.losses.clone()
            used = []  # the examples that count at this eps: those in its ball (with float32 rounding)
            for record in records:
                inside = record[attack.norm] <= eps + 1e-7
                used.append({k: v[inside] if k == "x_adv" else v[..., inside] if v.dim() else v
                             for k, v in record.items()})
            for record in used:
                index = record["indices"]
                for i, r in enumerate(self.rules):
                    rules[r][index] = record["rules"][i]
                heads[:, index], losses[:, index] = record["heads"], record["losses"]
            rows.append(AttackRow(
                name=f"{curve.name} eps={eps:.4g}", suite=curve.suite, kind=attack.kind,
                config={**curve.attack.config, "read_at_eps": eps}, threat={"norm": attack.norm, "eps": eps},
                series=(curve.series, "eps", eps), outcome=self.clean & Outcome(rules, heads),
                head_loss=losses.mean(1),
                # One run serves every eps: its time is counted once, on the first row.
                seconds=sum(r["seconds"].item() for r in records) if not rows else 0.0,
                passes=_passes(records) if not rows else Passes(),
                attacked=len(self.active), perturbation=_perturbation([r for r in used if len(r["indices"])]),
                adversarial=_examples(used, self.x) if self.keep_adversarial else None))
        return rows

    def run_cascade(self, cascade: Cascade, prior: Outcome) -> list[AttackRow]:
        """Each stage attacks only the points still robust under the cascade's rule, after ``prior``
        (the worst case of every attack that ran before) and the earlier stages; every row is that
        cumulative worst case, so the last row is the cascade's answer.

        Then the indicators of attack failure (Pintor et al. 2022) are read on the survivors: a gradient of
        the first stage's objective that is zero or not finite at the clean point, a loss (the heads' mean
        cross-entropy) that no gradient stage raised, and a black-box stage that broke any point the
        gradient stages missed (then every survivor is suspect). The ``escalation`` stage attacks the
        survivors where one fires; its row carries the cost of the checks, and a finding reports them.
        """
        rows, raised, blackbox_wins = [], None, 0
        clean_loss = self.clean.losses.mean(0)
        for i, stage in enumerate(cascade.stages, 1):
            before = prior.rules[cascade.rule]
            row = self.run_plan(stage, before.nonzero().flatten(), name=f"{cascade.name} {i}: {stage.name}",
                                kind="cascade")
            row.outcome = prior = prior & row.outcome
            row.cascade = {"name": cascade.name, "rule": cascade.rule, "stage": stage.name}
            rows.append(row)
            if stage.make.func.kind == "white-box":
                gain = self.point_losses.mean(0) > clean_loss
                raised = gain if raised is None else raised | gain
            else:
                blackbox_wins += int((before & ~prior.rules[cascade.rule]).sum())
        if cascade.escalation is None:
            return rows
        survivors = prior.rules[cascade.rule].nonzero().flatten()
        with PassCounter(self.model) as checks:
            blind = blind_gradients(self.model, self.x[survivors], self.y[survivors],
                                    cascade.stages[0].config["objective"], self.batch_size)
        stalled = ~raised[survivors] if raised is not None else torch.zeros_like(blind)
        flagged = blind | stalled | torch.full_like(blind, blackbox_wins > 0)
        escalation = cascade.escalation
        row = self.run_plan(escalation, survivors[flagged], name=f"{cascade.name} {len(rows) + 1}: {escalation.name}",
                            kind="cascade")
        row.passes = row.passes + checks
        broken = int((prior.rules[cascade.rule] & ~row.outcome.rules[cascade.rule]).sum())
        row.outcome = prior & row.outcome
        rows.append(row)
        fired = bool(blind.any() or blackbox_wins or broken)
        # A one-head model's cascade answers for every rule, which are one decision: no rule names.
        tag = f"[{', '.join(cascade.rules or (cascade.rule,))}] " if len(self.model.head_names) > 1 else ""
        self.findings.append(Finding("indicators", "warning" if fired else "note", (
            f"{tag}{cascade.name}: of {len(survivors)} points left robust, "
            f"{int(blind.sum())} have a zero or non-finite gradient of {cascade.stages[0].config['objective']}, "
            f"{int(stalled.sum())} a loss no gradient stage raised; the black-box stage broke {blackbox_wins} point(s) "
            f"the gradient stages missed. {int(flagged.sum())} point(s) escalated to {escalation.name}, which broke "
            f"{broken} more" + ("; the gradient stages are blind there and the escalated number stands"
                                if broken else ""))))
        return rows


def _passes(records: list[dict]) -> Passes:
    """The image-passes of every batch of a plan together."""
    return Passes(sum(int(r["forward"]) for r in records), sum(int(r["backward"]) for r in records))


def _examples(records: list[dict], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(indices, adversarial examples)`` of the points the records judged (inputs like ``x``)."""
    if not records:
        return torch.zeros(0, dtype=torch.long), x.new_zeros((0, *x.shape[1:]))
    return torch.cat([r["indices"] for r in records]), torch.cat([r["x_adv"] for r in records])


def _perturbation(records: list[dict]) -> dict:
    """Sizes of the perturbations and the pixel range of the examples actually attacked."""
    if not records:
        return {"linf_max": 0.0, "l2_max": 0.0, "l2_median": 0.0, "pixel_min": 0.0, "pixel_max": 0.0}
    l2 = torch.cat([r["l2"] for r in records])
    return {"linf_max": torch.cat([r["linf"] for r in records]).max().item(), "l2_max": l2.max().item(),
            "l2_median": l2.median().item(), "pixel_min": min(r["pixel_min"].min().item() for r in records),
            "pixel_max": max(r["pixel_max"].max().item() for r in records)}


@torch.no_grad()
def _num_classes(model: nn.Module, x: torch.Tensor) -> int:
    with frozen(model):
        return as_stacked(model(x[:1].to(next(model.parameters()).device))).shape[-1]


@renamed_kwargs(attack_dtype="precision")
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
    standalone: bool = False,
    state_dir: str | os.PathLike | None = None,
    precision: str = "fp32",
    progress: bool = True,
    keep_adversarial: bool = False,
    eot: int | None = None,
    judge_draws: int | None = None,
    transfer_from: nn.Module | None = None,
    norm: str = "linf",
) -> SuiteResult:
    """Attack ``model`` with the chosen suites and judge every result by its real decision rules.

    Args:
        model: an AuxModel, or a plain ``[B, C]`` classifier (the undefended baseline).
        data: ``(x, y)`` tensors, a Dataset or a DataLoader of [0, 1] pixels and labels.
        suite: comma-separated suite names (see :func:`~auxsurgery.evaluation.plans.list_suites`).
        eps, step_size, steps: override the preset's budget (a radius in ``norm``), PGD step and PGD iterations.
        dataset: picks the preset (``mnist``, ``cifar10``, ``mini-imagenet``; others: default).
        n: evaluate the first ``n`` samples only.
        seed: seed of every attack's randomness (batch ``i`` of an attack uses ``seed + i * batch_size``).
        rules: decision rules to attack; rule-aware attacks (APGD, Square, the cascade) run once per rule.
        batch_size: samples per attack batch.
        budget: iterations, restarts and queries of the non-paper attacks (default :class:`Budget`).
        attacks: extra plans or cascades to run (and to count in the worst case) beside the suites.
        exclude: names of the suites' attacks to leave out (e.g. ``Boundary``, whose result does
            not depend on eps, when a second eps is evaluated); unknown names raise.
        standalone: the strong suite also runs each of its attacks alone on every point (rows for
            tables); by default only its cascades run, each attack on the points still robust.
        state_dir: keep the evaluation's progress in this folder as it goes; the same call after an
            interruption continues where it stopped (see :mod:`.state`). A folder made for another
            model, data set, plan, budget or seed is refused.
        precision: ``fp32``, or ``bf16`` for the gradient attacks' steps (bfloat16 autocast; every
            success is re-verified by an fp32 forward of the real decision rule before it counts). The
            attacks' own ``precision``; not the model's (the model keeps its weights' dtype) nor training's
            ``TrainConfig.amp``.
        progress: show progress on stderr: bars on a terminal (images/s per attack; attacks done, with an
            ETA), periodic lines in a log file; and what a resumed evaluation found in ``state_dir``.
        keep_adversarial: keep every attack's adversarial examples (in memory, and in ``state_dir``), for
            :meth:`SuiteResult.adversarial_examples`.
        eot: draws of a randomised model's randomness averaged per gradient step (expectation over
            transformation). Default: :data:`DEFAULT_EOT` where the ``randomness`` check finds two forwards
            that differ, else 1 (a deterministic model costs nothing more).
        judge_draws: forwards (odd) whose majority is every verdict, clean included, and every attack's
            early stop. Default: :data:`DEFAULT_JUDGE_DRAWS` on a randomised model (or where ``eot`` > 1 is
            asked), else 1.
        transfer_from: a surrogate model (same classes and heads) on which the suites' gradient attacks craft
            their examples, for a model whose own gradients are useless (a hidden non-differentiable
            aggregation); the attacked model still judges every example, answers the black-box attacks and
            the sanity probes, and decides when an attack stops working on a point. Its eot follows its own
            randomness check unless ``eot`` is given.
        norm: the threat model's norm, ``linf`` or ``l2``: picks the dataset's preset of that norm, which every
            bounded attack of the suites runs in (the sanity probe at eps 1 stays L-inf, where it holds any image).

    Under ``torchrun`` (or inside an initialised process group) the batches of every attack are
    shared out over the processes (gloo on CPU, nccl on CUDA: each process evaluates on its own
    device) and every process returns the whole result, identical to a single process's.
    """
    names = parse_suites(suite)
    extra = list(attacks)
    if not names and not extra:
        raise ValueError(f"no suite chosen; valid suites: {', '.join(list_suites())}")
    aux = as_aux_model(model)
    x, y, source = collect(data, n)
    aux.check_input(x, "the evaluation data")
    classes = _num_classes(aux, x)
    check_labels(y, len(x), classes)
    targets = tuple(dict.fromkeys(check_rule(r) for r in rules))
    for rule in targets:
        get_rule(rule).check_heads(len(aux.head_names))
    # Every evaluation judges the standard rules; an attacked rule outside them is judged too.
    eval_rules = tuple(dict.fromkeys([*default_rules(len(aux.head_names)), *targets]))
    preset, budget = get_preset(dataset, eps, step_size, steps, norm), budget or Budget()
    context = SuiteContext(preset, budget, targets, seed, tuple(aux.head_names), standalone)
    if len(aux.head_names) < 2:
        skipped = [name for name in names if get_suite(name).needs_heads]
        if skipped:
            raise ValueError(f"the {' and '.join(skipped)} suite needs a model with aux heads (an AuxModel)")
    # The suites' top-level attacks (what exclude names) do not depend on the draws; their stages may.
    planned = [pl.name for pl in plan_suites(names, context) + extra]
    unknown = set(exclude) - set(planned)
    if unknown:
        raise ValueError(f"cannot exclude {', '.join(sorted(unknown))}: not planned; planned attacks: "
                         f"{', '.join(planned)}")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown attack precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    for name, count in (("eot", eot), ("judge_draws", judge_draws)):
        if count is not None:
            check_draws(count, name, odd=name == "judge_draws")
    surrogate = _surrogate(transfer_from, aux, x, classes)

    began = time.perf_counter()
    with distributed_context(str(next(aux.parameters()).device)) as ctx:
        preflight = model_checks(aux, x, y, targets, {r: get_rule(r).surrogate for r in targets}, batch_size,
                                 one_decision=len(aux.head_names) == 1)
        protocol = _protocol(preflight, eot, judge_draws, surrogate, x, y, batch_size)
        preflight += _protocol_findings(protocol, _randomised(preflight), type(transfer_from).__name__)
        context = dataclasses.replace(context, drawn=protocol.drawn)
        plans = [pl for pl in plan_suites(names, context) + extra if pl.name not in exclude]
        plans = [with_precision(pl, precision) for pl in plans + sanity_probes(context, plans)]
        state = None
        if state_dir is not None:
            state = EvaluationState(state_dir, {
                "model": fingerprint_model(aux), "data": fingerprint_data(x, y), "suites": names,
                "plans": [_describe(pl) for pl in plans], "rules": list(targets), "eval_rules": list(eval_rules),
                "seed": seed, "batch_size": batch_size, "preset": preset.to_dict(), "budget": budget.to_dict(),
                # Only where kept, drawn or transferred: the folders of runs without them keep matching.
                **({"keep_adversarial": True} if keep_adversarial else {}),
                **({"draws": _draws(protocol)} if protocol.drawn else {}),
                **({"transfer_from": fingerprint_model(surrogate)} if surrogate is not None else {})})
            if state.resumed and progress and ctx.is_main:
                attacks_planned = sum(len(pl.stages) if isinstance(pl, Cascade) else 1 for pl in plans)
                OutputConsole(stderr=True).print(state.resume_summary(attacks_planned), markup=False)
        devices: list = [None] * ctx.world_size
        if ctx.world_size > 1:
            dist.all_gather_object(devices, str(ctx.device))
        else:
            devices = [str(ctx.device)]
        result = _run(aux, x, y, plans, eval_rules, targets, preset, batch_size, state, ctx, progress and ctx.is_main,
                      keep_adversarial, preflight, protocol)
    result.suites, result.budget = names, budget
    result.settings = {"suites": names, "rules": list(targets), "seed": seed, "batch_size": batch_size,
                       "standalone": standalone, "precision": precision, "dataset": dataset,
                       "preset": preset.to_dict(), "budget": budget.to_dict(), "processes": len(devices),
                       "devices": devices, "state_dir": str(state_dir) if state_dir is not None else None,
                       "protocol": {"randomised": _randomised(preflight), **_draws(protocol)},
                       "transfer_from": _describe_surrogate(transfer_from, surrogate)}
    result.model_info = {"head_names": list(aux.head_names), "alpha": aux.alpha.tolist(), "num_classes": classes,
                         "spec": getattr(aux, "spec", None), "class": type(model).__name__}
    result.data_info = {"source": source, "dataset": dataset, "n": len(x), "shape": list(x.shape[1:])}
    result.seconds = time.perf_counter() - began
    return result


def _surrogate(model: nn.Module | None, aux: AuxModel, x: torch.Tensor, classes: int) -> AuxModel | None:
    """``transfer_from`` as an AuxModel, once it fits the attacked model (device, heads, classes)."""
    if model is None:
        return None
    surrogate = as_aux_model(model)
    device, param = next(aux.parameters()).device, next(surrogate.parameters(), None)
    if param is None:
        raise ValueError("transfer_from has no parameters: a surrogate's gradients must come from a network")
    if param.device != device:
        raise ValueError(f"transfer_from is on {param.device}, the attacked model on {device}: move it there")
    if len(surrogate.head_names) != len(aux.head_names):
        raise ValueError(f"transfer_from has {len(surrogate.head_names)} head(s), the attacked model "
                         f"{len(aux.head_names)}: the gradient attacks' objectives need a surrogate with as many heads")
    scored = _num_classes(surrogate, x)
    if scored != classes:
        raise ValueError(f"transfer_from scores {scored} classes, the attacked model {classes}: a surrogate must "
                         "score the same classes")
    return surrogate


def _randomised(preflight: list[Finding]) -> bool:
    return any(f.check == "randomness" for f in preflight)


def _protocol(preflight: list[Finding], eot: int | None, judge_draws: int | None, surrogate: AuxModel | None,
              x: torch.Tensor, y: torch.Tensor, batch_size: int) -> _Protocol:
    """The draws of this evaluation: the defaults where the model (and the surrogate) is randomised, else 1."""
    randomised = _randomised(preflight)
    surrogate_eot = 1
    if surrogate is not None:
        noisy = _randomised(model_checks(surrogate, x, y, (), {}, batch_size))
        surrogate_eot = eot or (DEFAULT_EOT if noisy else 1)
    eot = eot or (DEFAULT_EOT if randomised else 1)
    drawn = randomised or eot > 1 or surrogate_eot > 1
    return _Protocol(eot, judge_draws or (DEFAULT_JUDGE_DRAWS if drawn else 1), surrogate, surrogate_eot)


def _draws(protocol: _Protocol) -> dict:
    return {"eot": protocol.eot, "judge_draws": protocol.judge_draws, "surrogate_eot": protocol.surrogate_eot}


def _protocol_findings(protocol: _Protocol, randomised: bool, surrogate_name: str) -> list[Finding]:
    """What the report must say about the draws and the surrogate: a note where the draws answer the model's
    randomness, a warning where a randomised model is attacked or judged with single draws."""
    transfer = [] if protocol.surrogate is None else [Finding("transfer", "note", (
        f"the suites' gradient attacks crafted on the surrogate {surrogate_name}; the attacked "
        "model judged every example, decided when an attack stopped on a point and answered the black-box attacks "
        "and the sanity probes"))]
    if not protocol.drawn:
        return transfer
    single = protocol.eot == 1 or protocol.judge_draws == 1
    return transfer + [Finding("protocol", "warning" if randomised and single else "note", (
        f"every verdict, clean included, is the majority of {protocol.judge_draws} forward(s); gradient steps "
        f"average loss and gradient over {protocol.eot} draw(s) of the model (expectation over transformation)"
        + (f", {protocol.surrogate_eot} on the surrogate" if protocol.surrogate is not None else "")
        + ("; single draws leave these numbers resting on luck" if randomised and single else "")))]


def _describe_surrogate(model: nn.Module | None, surrogate: AuxModel | None) -> dict | None:
    """The surrogate as the report names it: its class and the sha256 of its weights and buffers."""
    if surrogate is None:
        return None
    return {"class": type(model).__name__, "sha256": fingerprint_model(surrogate)}


def _describe(plan: AttackPlan | Cascade) -> dict:
    """A plan as JSON-able values, for the state folder's fingerprint."""
    if isinstance(plan, Cascade):
        return {"cascade": plan.name, "rule": plan.rule, "stages": [_describe(stage) for stage in plan.stages],
                "escalation": _describe(plan.escalation) if plan.escalation else None}
    if isinstance(plan, MinimumNormCurve):
        return {"curve": plan.name, "attack": _describe(plan.attack), "eps": list(plan.eps_values)}
    return {"name": plan.name, "suite": plan.suite, "config": plan.config, "series": plan.series}


def _run(aux: AuxModel, x: torch.Tensor, y: torch.Tensor, plans: list, eval_rules: Sequence[str],
         targets: Sequence[str], preset: Preset, batch_size: int, state: EvaluationState | None, ctx: DistContext,
         progress: bool, keep_adversarial: bool, preflight: list[Finding], protocol: _Protocol) -> SuiteResult:
    """Run every plan in order and judge the results (the body of :func:`run_suite`)."""
    one_decision = len(aux.head_names) == 1
    stages = sum(len(pl.stages) + (pl.escalation is not None) if isinstance(pl, Cascade) else
                 len(pl.eps_values) if isinstance(pl, MinimumNormCurve) else 1 for pl in plans)
    with _progress(progress) as bar:
        overall = bar.add_task("attacks done", total=stages, overall=True)
        runner = _Runner(aux, x, y, eval_rules, batch_size, bar, state, ctx, keep_adversarial, protocol)
        result = SuiteResult(
            suites=[], rules=list(targets), eval_rules=list(eval_rules), head_names=list(aux.head_names),
            preset=preset, budget=None, settings={}, model_info={}, data_info={}, labels=y, clean=runner.clean,
        )
        for pl in plans:
            if isinstance(pl, Cascade):
                result.rows += runner.run_cascade(pl, result.worst_case().outcome)
            elif isinstance(pl, MinimumNormCurve):
                result.rows += runner.run_curve(pl)
            else:
                result.rows.append(runner.run_plan(pl))
            bar.update(overall, completed=len(result.rows))
    missed = {rule: count for rule, count in result.worst_case().missed.items() if rule in targets}
    result.findings = (preflight + runner.findings + probe_findings(missed, one_decision)
                       + sanity_checks(result.rows, targets, len(x), one_decision=one_decision))
    return result
