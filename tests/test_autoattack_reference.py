"""The AutoAttack reference adapter: its protocol's stages, each on the points still robust, judged by the rule."""
import pytest
import torch

from auxsurgery.attacks import is_adversarial
from auxsurgery.evaluation.autoattack import autoattack

from attack_helpers import dataset, trained_aux_model

pytest.importorskip("torchattacks")


@pytest.fixture(scope="module")
def setting():
    x, y = dataset(48, seed=7, noise=0.3)
    return trained_aux_model(), x, y


def test_every_stage_runs_only_on_points_still_robust_and_results_are_judged_by_the_rule(setting):
    model, x, y = setting
    result = autoattack(model, x, y, eps=0.15, rule="vote", protocol={"steps": 5, "square_queries": 100}, seed=0)
    assert [s["name"] for s in result.stages] == ["APGD-CE", "APGD-T", "FAB-T", "Square"]
    attacked = [s["attacked"] for s in result.stages]
    robust_after = [s["robust_after"] for s in result.stages]
    assert attacked[1:] == robust_after[:-1]  # each stage attacks what the previous one left robust
    assert result.robust.sum().item() == robust_after[-1]
    # Re-judged by the vote: a point is robust exactly when the vote still gets its example right.
    assert torch.equal(result.robust, ~is_adversarial(model, result.x_adv, y, "vote"))
    assert (result.x_adv - x).abs().max() <= 0.15 + 1e-6 and 0 <= result.x_adv.min() and result.x_adv.max() <= 1


def test_unknown_protocol_is_refused(setting):
    model, x, y = setting
    with pytest.raises(ValueError, match="unknown protocol 'plus'; valid: standard, torchattacks"):
        autoattack(model, x, y, eps=0.1, protocol="plus")
