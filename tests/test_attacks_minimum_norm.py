"""FMN: minimum-norm adversarials judged by the rule, their norms, and the accuracy-vs-eps curve from one run."""
import math

import pytest
import torch
from torch import nn

from attack_helpers import CLASSES, SHAPE, dataset, trained_aux_model, trained_plain_model
from auxsurgery.attacks import APGD, FMN, is_adversarial, robust_accuracy_curve
from auxsurgery.attacks.base import perturbation_norms

pytestmark = pytest.mark.usefixtures("single_thread")

EPS = {"linf": [0.04, 0.06, 0.08, 0.1], "l2": [0.3, 0.45, 0.6, 0.8]}


def test_robust_accuracy_curve_counts_norms_above_each_eps():
    norms = torch.tensor([0.0, 0.1, 0.2, math.inf])
    curve = robust_accuracy_curve(norms, [0.0, 0.1, 0.15, 1.0])
    assert curve.tolist() == [0.75, 0.5, 0.5, 0.25]  # fooled at exactly eps counts as fooled
    assert robust_accuracy_curve(norms, torch.tensor(0.05)).tolist() == [0.75]
    with pytest.raises(ValueError, match=">= 0"):
        robust_accuracy_curve(torch.tensor([0.1, -1.0]), [0.1])
    with pytest.raises(ValueError, match="at least one norm"):
        robust_accuracy_curve(torch.tensor([]), [0.1])


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_one_fmn_run_gives_the_accuracy_curve(norm):
    model = trained_plain_model()
    x, y = dataset(64, seed=23)
    attack = FMN(model, norm=norm, steps=50)
    x_adv = attack(x, y)
    norms = attack.last_norms
    assert norms.shape == (64,) and torch.isfinite(norms).all()
    assert is_adversarial(model, x_adv, y).all()
    torch.testing.assert_close(perturbation_norms(x_adv - x, norm), norms, rtol=0, atol=1e-6)
    # Each point of the curve is an attack at that budget: no weaker than APGD's there.
    curve = robust_accuracy_curve(norms, EPS[norm])
    apgd = torch.tensor([1 - is_adversarial(model, APGD(model, "dlr-ensemble", eps=eps, norm=norm, steps=30,
                                                           seed=0)(x, y), y).float().mean().item()
                         for eps in EPS[norm]], dtype=curve.dtype)
    assert (curve <= apgd + 0.02).all() and (curve >= apgd - 0.1).all()
    assert curve[0] > 0.5 > curve[-1]


@pytest.mark.parametrize("rule, objective", [("vote", "margin-ensemble"), ("vote", "vote-margin"),
                                             ("score", "margin-ensemble")])
def test_fmn_on_an_aux_model_is_judged_by_the_rule(rule, objective):
    model = trained_aux_model()
    x, y = dataset(32, seed=23)
    attack = FMN(model, objective, steps=30, rule=rule)
    x_adv = attack(x, y)
    found = torch.isfinite(attack.last_norms)
    assert found.float().mean() > 0.9
    assert torch.equal(is_adversarial(model, x_adv, y, rule), found)
    assert torch.equal(attack.minimum_norms(x, y), attack.last_norms)  # deterministic: no random start


def test_fmn_with_a_budget_fails_where_the_minimum_norm_exceeds_it():
    model = trained_plain_model()
    x, y = dataset(64, seed=23)
    eps = 0.06
    attack = FMN(model, eps=eps, steps=50)
    x_adv = attack(x, y)
    within = attack.last_norms <= eps
    assert 0 < within.float().mean() < 1
    assert ((x_adv - x).abs().flatten(1).amax(1) <= eps).all()  # clipped into the ball, as every attack's
    fooled = is_adversarial(model, x_adv, y)
    assert fooled[within].all()
    assert torch.equal(x_adv[within], FMN(model, steps=50)(x, y)[within])


class Constant(nn.Module):
    """Always class 0 with a margin of 1, whatever the input: nothing fools it."""

    def forward(self, x):
        return torch.tensor([1.0] + [0.0] * (CLASSES - 1)) + 0 * x.flatten(1).sum(1, keepdim=True)


def test_minimum_norms_are_zero_for_misclassified_and_inf_for_unfoolable_inputs():
    x, _ = dataset(6, seed=2)
    y = torch.tensor([0, 0, 0, 1, 2, 3])
    attack = FMN(Constant(), steps=5)
    norms = attack.minimum_norms(x, y)
    assert norms.tolist() == [math.inf] * 3 + [0.0] * 3
    assert torch.equal(attack(x, y), x)


def test_targeted_fmn_reaches_the_target_with_a_small_norm():
    model = trained_plain_model()
    x, y = dataset(32, seed=24)
    target = (y + 1) % CLASSES
    attack = FMN(model, norm="l2", steps=50, targeted=True)
    x_adv = attack(x, target)
    with torch.no_grad():
        assert (model(x_adv).argmax(1) == target).float().mean() >= 0.95
    untargeted = FMN(model, norm="l2", steps=50).minimum_norms(x, y)
    assert (attack.last_norms >= untargeted - 1e-3).float().mean() >= 0.9  # reaching one class costs more
    assert attack.last_norms.median() < math.sqrt(math.prod(SHAPE)) / 4
