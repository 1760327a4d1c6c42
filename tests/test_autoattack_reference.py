"""The AutoAttack reference adapter: its protocol's stages, each on the points still robust, judged by the rule,
with the original settings, and counted in image-passes as the suite is."""
import pytest
import torch
from torch import nn

from auxsurgery.attacks import is_adversarial
from auxsurgery.evaluation import autoattack as reference
from auxsurgery.evaluation.autoattack import PROTOCOLS, autoattack

from attack_helpers import dataset, trained_aux_model, trained_plain_model

pytest.importorskip("torchattacks")


@pytest.fixture(scope="module")
def setting():
    x, y = dataset(48, seed=7, noise=0.3)
    return trained_aux_model(), x, y


def test_every_stage_runs_only_on_points_still_robust_and_results_are_judged_by_the_rule(setting):
    model, x, y = setting
    result = autoattack(model, x, y, eps=0.15, rule="vote", protocol={"steps": 5, "square_queries": 100}, seed=0)
    main = [s for s in result.stages if s["view"] == "surrogate"]
    assert [s["name"] for s in main] == ["APGD-CE", "APGD-T", "FAB-T", "Square"]
    attacked = [s["attacked"] for s in main]
    robust_after = [s["robust_after"] for s in main]
    assert attacked[1:] == robust_after[:-1]  # each stage attacks what the previous one left robust
    assert result.robust.sum().item() == result.stages[-1]["robust_after"]
    # Re-judged by the vote: a point is robust exactly when the vote still gets its example right.
    assert torch.equal(result.robust, ~is_adversarial(model, result.x_adv, y, "vote"))
    assert (result.x_adv - x).abs().max() <= 0.15 + 1e-6 and 0 <= result.x_adv.min() and result.x_adv.max() <= 1
    assert result.settings["unattacked"] == 0
    assert result.passes.forward >= sum(s["passes"]["forward"] for s in result.stages) > 0
    assert result.passes.backward == sum(s["passes"]["backward"] for s in result.stages) > 0


def test_the_l2_protocol_runs_every_stage_in_the_l2_ball(setting):
    model, x, y = setting
    result = autoattack(model, x, y, eps=1.0, rule="vote", protocol={"steps": 3, "square_queries": 20}, norm="l2")
    assert result.settings["norm"] == "l2"
    assert (result.x_adv - x).flatten(1).norm(dim=1).max() <= 1.0 + 1e-5
    assert (result.x_adv - x).abs().max() > 0.2  # an L2 step, far outside an L-inf ball of this size
    stages = dict(reference._stages(nn.Linear(2, 10), 0.5, 10, 0, PROTOCOLS["standard"], "l2"))
    assert {attack.norm for attack in stages.values()} == {"L2"}
    with pytest.raises(ValueError, match="unknown norm 'l1'"):
        autoattack(model, x, y, eps=1.0, norm="l1")


def test_the_standard_protocol_is_autoattacks_whatever_the_class_count():
    assert PROTOCOLS["standard"] == {"steps": 100, "square_queries": 5000}
    for classes, targets in ((4, 3), (10, 9), (100, 9)):
        stages = dict(reference._stages(nn.Linear(2, classes), 8 / 255, classes, 0, PROTOCOLS["standard"], "linf"))
        apgd, apgdt, fab, square = stages["APGD-CE"], stages["APGD-T"], stages["FAB-T"], stages["Square"]
        assert apgd.steps == apgdt.steps == fab.steps == 100 and apgd.loss == "ce"
        assert apgdt.n_target_classes == fab.n_target_classes == targets and fab.multi_targeted
        assert square.n_queries == 5000
        assert all(a.n_restarts == 1 for a in stages.values())


def test_a_plain_model_is_attacked_through_its_logits_and_counted_like_the_suite():
    model = trained_plain_model()
    x, y = dataset(16, seed=3, noise=0.3)
    seen = []
    handle = model.register_forward_hook(lambda module, args, out: seen.append(out.detach()))
    try:
        result = autoattack(model, x, y, eps=0.05, rule="vote", protocol={"steps": 3, "square_queries": 20})
    finally:
        handle.remove()
    assert [s["view"] for s in result.stages] == ["logits"] * 4
    assert all(out.dim() == 2 for out in seen)  # the model itself, not a wrapper around its log-probabilities
    # The same counter around the same model counts torchattacks' own passes: APGD-CE's 3 steps plus its
    # start are 4 forward and 4 backward passes per point attacked, and one judging forward.
    apgd = result.stages[0]
    assert apgd["passes"]["backward"] == 4 * apgd["attacked"]
    assert apgd["passes"]["forward"] >= 4 * apgd["attacked"] + apgd["attacked"]


def test_a_point_the_vote_gets_right_but_the_score_gets_wrong_is_still_attacked():
    model = trained_aux_model()
    x, y = dataset(400, seed=0, noise=0.3)
    x, y = x[380:], y[380:]  # point 389 of these: the vote gets it right, the score surrogate wrong
    with torch.no_grad():
        disagree = (model.as_classifier("score")(x).argmax(-1) != y) & ~is_adversarial(model, x, y, "vote")
    assert disagree.sum() == 1
    result = autoattack(model, x, y, eps=0.15, rule="vote", protocol={"steps": 3, "square_queries": 20}, seed=0)
    through_heads = [s for s in result.stages if s["view"].startswith("head")]
    assert through_heads and through_heads[0]["attacked"] == 1  # AutoAttack's attacks skip it on the surrogate
    assert result.settings["unattacked"] == 0
    assert not result.robust[disagree].item()  # and it breaks


def test_unknown_protocol_is_refused(setting):
    model, x, y = setting
    with pytest.raises(ValueError, match="unknown protocol 'plus'; valid: standard, torchattacks"):
        autoattack(model, x, y, eps=0.1, protocol="plus")
