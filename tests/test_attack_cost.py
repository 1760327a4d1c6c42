"""Attack cost in image-passes: exact for known attacks, the same counter around a reference library, one
cascade for a one-head model, sanity probes costed apart, and a masked-gradient model the suite still breaks."""
import pytest
import torch
from torch import nn

from auxsurgery.attacks import APGD, PGD, PassCounter, Square, is_adversarial
from auxsurgery.evaluation import Budget, run_suite

from attack_helpers import dataset, plain_model, trained_aux_model, trained_plain_model

pytestmark = pytest.mark.usefixtures("single_thread")


def test_pgd_costs_one_forward_and_one_backward_per_step_and_image():
    model, (x, y) = plain_model(), dataset(12, seed=1)
    with PassCounter(model) as passes:
        PGD(model, eps=8 / 255, steps=7, early_stop=False)(x, y)
    assert (passes.forward, passes.backward) == (7 * 12, 7 * 12)


def test_apgd_costs_its_start_and_steps_and_a_restart_judging_forward():
    model, (x, y) = trained_plain_model(), dataset(10, seed=2)
    # A budget too small to fool anything: every point takes every step of both restarts.
    attack = APGD(model, eps=1e-6, steps=5, restarts=2, seed=0)
    with PassCounter(model) as passes:
        x_adv = attack(x, y)
    assert not attack.success(x_adv, y).any()
    assert passes.backward == 2 * 6 * 10  # per restart: the start and 5 steps
    assert passes.forward == 2 * 6 * 10 + 2 * 10  # and one judging forward per restart


def test_a_wrapper_around_a_counted_model_counts_once_and_a_library_attack_counts_the_same():
    torchattacks = pytest.importorskip("torchattacks")
    model = trained_aux_model()
    x, y = dataset(8, seed=3)
    view = model.as_classifier("score")
    with PassCounter(view, model) as passes:
        torchattacks.PGD(view, eps=8 / 255, alpha=2 / 255, steps=4, random_start=False)(x, y)
    assert (passes.forward, passes.backward) == (4 * 8, 4 * 8)
    with PassCounter(model) as ours:
        PGD(model, "ensemble", eps=8 / 255, step_size=2 / 255, steps=4, random_start=False, early_stop=False)(x, y)
    assert ours == passes


def test_rows_carry_passes_and_the_stage_count_includes_the_judging_forward():
    model, (x, y) = trained_plain_model(), dataset(16, seed=4)
    plan_budget = Budget(apgd_steps=3, square_queries=10, square_escalation_queries=20, target_classes=1,
                         target_candidates=2, probe_steps=2)
    result = run_suite(model, (x, y), suite="strong", eps=0.02, budget=plan_budget, progress=False)
    first = result.rows_of("strong")[0]
    assert first.passes.backward > 0 and first.passes.forward >= first.passes.backward + first.attacked
    assert result.passes() == sum((row.passes for row in result.rows_of("strong")), start=type(result.passes())())
    assert result.passes(sanity=True).total > 0


def test_a_one_head_model_runs_one_cascade_for_all_its_rules():
    model, (x, y) = trained_plain_model(), dataset(16, seed=4)
    budget = Budget(apgd_steps=3, square_queries=10, square_escalation_queries=20, target_classes=1,
                    target_candidates=2, probe_steps=2)
    result = run_suite(model, (x, y), suite="strong", eps=0.05, rules=("vote", "score", "public"), budget=budget,
                       progress=False)
    names = [row.name for row in result.rows_of("strong")]
    assert names == ["Cascade 1: APGD-CE", "Cascade 2: APGD-T [dlr-t, top-2]", "Cascade 3: Square",
                     "Cascade 4: Square x20 (escalated)"]
    assert not any("vote" in name for name in names)
    worst = result.worst_case()
    assert torch.equal(worst.outcome.rules["vote"], worst.outcome.rules["score"])
    assert torch.equal(worst.outcome.rules["vote"], worst.outcome.rules["public"])
    # Its tables speak of its accuracy, one column, not of votes and scores.
    assert result.shown_rules == [("vote", "accuracy")]
    from auxsurgery.evaluation.report import markdown_report

    assert "| Attack | Kind | Threat | accuracy (clean" in markdown_report(result)


def test_sanity_probes_are_costed_apart_and_stay_out_of_the_worst_case():
    model, (x, y) = trained_aux_model(), dataset(16, seed=5)
    result = run_suite(model, (x, y), suite="strong", rules=("vote",), eps=0.05, budget=Budget.quick(),
                       progress=False)
    probes = result.rows_of("sanity")
    assert probes and all(row.passes.total > 0 for row in probes)
    assert not any(row.name in result.worst_case().attacks for row in probes)
    assert result.passes(sanity=True) == sum((row.passes for row in probes), start=type(result.passes())())


class Quantised(nn.Module):
    """A classifier behind non-differentiable input quantisation: every input gradient is exactly zero."""

    def __init__(self, net: nn.Module, levels: int = 4):
        super().__init__()
        self.net, self.levels = net, levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(torch.round(x * self.levels) / self.levels)


def test_masked_gradients_escalate_the_black_box_stage_to_what_square_5000_finds():
    model, (x, y) = Quantised(trained_plain_model()), dataset(24, seed=5)
    eps = 0.1
    square = Square(model, eps=eps, queries=5000, seed=0)(x, y)
    square_robust = int((~is_adversarial(model, square, y)).sum())
    budget = Budget(apgd_steps=10, square_queries=100, target_classes=2, target_candidates=3)
    result = run_suite(model, (x, y), suite="strong", eps=eps, budget=budget, progress=False)
    rows = result.rows_of("strong")
    gradient_stages = rows[:2]
    assert all(row.outcome.accuracy("vote") == result.clean.accuracy("vote") for row in gradient_stages)  # blind
    escalation = rows[-1]
    assert "x5,000" in escalation.name and escalation.attacked > 0
    assert escalation.outcome.accuracy("vote") < rows[-2].outcome.accuracy("vote")  # it breaks more
    assert int(result.worst_case().outcome.rules["vote"].sum()) <= square_robust
    indicators = [f for f in result.findings if f.check == "indicators"]
    assert indicators and indicators[0].level == "warning" and "zero or non-finite gradient" in indicators[0].message
