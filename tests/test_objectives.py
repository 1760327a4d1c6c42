"""Objectives: each equals its formula, handles plain models, and fails loudly on bad names."""
import pytest
import torch
import torch.nn.functional as F
import torchattacks

from auxsurgery.attacks.objectives import ensemble_log_probs, get_objective, list_objectives
from auxsurgery.model import rule_predict

H, B, C = 3, 5, 4


@pytest.fixture
def logits():
    return torch.randn(H, B, C) * 3


@pytest.fixture
def y():
    return torch.randint(0, C, (B,))


ALPHA = torch.tensor([1.0, 0.5, 2.0])


def ce(z, y):
    return F.cross_entropy(z, y, reduction="none")


def test_joint_is_alpha_weighted_sum_of_per_head_ce(logits, y):
    expected = sum(a * ce(z, y) for a, z in zip(ALPHA, logits))
    torch.testing.assert_close(get_objective("joint")(logits, y, ALPHA), expected)


def test_joint_with_unit_alpha_is_the_papers_adaptive_loss(logits, y):
    # J_adp = sum_j l(f_Aj(x), y) + l(f(x), y)
    expected = sum(ce(z, y) for z in logits)
    torch.testing.assert_close(get_objective("joint")(logits, y, torch.ones(H)), expected)


def test_public_private_and_head_k(logits, y):
    torch.testing.assert_close(get_objective("public")(logits, y, ALPHA), ce(logits[0], y))
    torch.testing.assert_close(get_objective("head:2")(logits, y, ALPHA), ce(logits[2], y))
    expected_private = ALPHA[1] * ce(logits[1], y) + ALPHA[2] * ce(logits[2], y)
    torch.testing.assert_close(get_objective("private")(logits, y, ALPHA), expected_private)


def test_ensemble_is_ce_of_log_alpha_weighted_mean_softmax(logits, y):
    mean_probs = (ALPHA.view(-1, 1, 1) * logits.softmax(-1)).sum(0) / ALPHA.sum()
    expected = -mean_probs.log().gather(1, y[:, None]).squeeze(1)
    torch.testing.assert_close(get_objective("ensemble")(logits, y, ALPHA), expected)
    # Its argmax is Algorithm 2's decision.
    assert torch.equal(ensemble_log_probs(logits, ALPHA).argmax(-1), rule_predict(logits, "score", ALPHA))


def test_ensemble_gradient_is_finite_and_nonzero_even_when_confident(y):
    logits = (torch.randn(H, B, C) * 200).requires_grad_(True)  # softmax saturates to 0/1
    loss = get_objective("ensemble")(logits, y, ALPHA)
    (grad,) = torch.autograd.grad(loss.sum(), logits)
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    assert grad.abs().sum() > 0


def test_ensemble_ignores_zero_weight_heads(logits, y):
    alpha = torch.tensor([1.0, 0.0, 0.0])
    torch.testing.assert_close(get_objective("ensemble")(logits, y, alpha), ce(logits[0], y))


def test_plain_logits_count_as_one_head(logits, y):
    plain = logits[0]
    one = torch.ones(1)
    for name in ("public", "joint", "ensemble", "head:0"):
        torch.testing.assert_close(get_objective(name)(plain, y, one), ce(plain, y), msg=name)


def test_private_needs_an_aux_head(logits, y):
    with pytest.raises(ValueError, match="aux head"):
        get_objective("private")(logits[:1], y, torch.ones(1))


def test_head_index_out_of_range(logits, y):
    with pytest.raises(ValueError, match="head 7 does not exist"):
        get_objective("head:7")(logits, y, ALPHA)


def test_targeted_ce_rewards_the_target(logits, y):
    torch.testing.assert_close(get_objective("joint", targeted=True)(logits, y, ALPHA),
                               -get_objective("joint")(logits, y, ALPHA))


def _fooled_logits(y, margin):
    """Logits where every head puts class (y + 1) % C ``margin`` above every other class."""
    z = torch.zeros(H, B, C)
    z[:, torch.arange(B), (y + 1) % C] = margin
    return z


def test_vote_margin_is_clipped_and_gradient_free_once_heads_are_fooled(y):
    z = _fooled_logits(y, 5.0).requires_grad_(True)
    loss = get_objective("vote-margin")(z, y, ALPHA)
    assert torch.equal(loss, torch.zeros(B))
    (grad,) = torch.autograd.grad(loss.sum(), z)
    assert torch.equal(grad, torch.zeros_like(grad))
    # With kappa the cap is H * kappa: heads fooled by more than kappa stop pulling.
    torch.testing.assert_close(get_objective("vote-margin", kappa=2.0)(z, y, ALPHA), torch.full((B,), H * 2.0))


def test_vote_margin_sums_unclipped_margins_of_correct_heads(y):
    z = torch.zeros(H, B, C)
    z[:, torch.arange(B), y] = 1.0  # y leads by 1 in every head: margin -1 each, below any cap
    torch.testing.assert_close(get_objective("vote-margin")(z, y, ALPHA), torch.full((B,), -1.0 * H))


def test_vote_margin_mixes_fooled_and_correct_heads(y):
    z = torch.zeros(H, B, C)
    z[0, torch.arange(B), (y + 1) % C] = 4.0  # head 0 fooled by 4
    z[1, torch.arange(B), y] = 2.0  # head 1 correct by 2
    z[2, torch.arange(B), y] = 0.5  # head 2 correct by 0.5
    expected = torch.full((B,), 1.0 - 2.0 - 0.5)  # capped at kappa = 1, then the two negative margins
    torch.testing.assert_close(get_objective("vote-margin", kappa=1.0)(z, y, ALPHA), expected)


def test_targeted_margin_caps_at_kappa_when_target_reached(y):
    target = (y + 1) % C
    z = _fooled_logits(y, 5.0)  # the target leads by 5 in every head
    torch.testing.assert_close(get_objective("margin-public", targeted=True, kappa=1.0)(z, target, ALPHA),
                               torch.full((B,), 1.0))
    torch.testing.assert_close(get_objective("margin-public", targeted=True)(z, y, ALPHA), torch.full((B,), -5.0))


def test_dlr_matches_croce_and_hein(logits, y):
    reference = torchattacks.APGD(torch.nn.Identity()).dlr_loss
    torch.testing.assert_close(get_objective("dlr-public")(logits, y, ALPHA), reference(logits[0], y))
    torch.testing.assert_close(get_objective("dlr-ensemble")(logits, y, ALPHA),
                               reference(ensemble_log_probs(logits, ALPHA), y))
    per_head = torch.stack([get_objective(f"dlr-head:{k}")(logits, y, ALPHA) for k in range(H)])
    torch.testing.assert_close(get_objective("dlr-joint")(logits, y, ALPHA), (ALPHA[:, None] * per_head).sum(0))


def test_dlr_has_no_targeted_form_and_needs_three_classes(y):
    with pytest.raises(ValueError, match="no targeted form"):
        get_objective("dlr-ensemble", targeted=True)
    with pytest.raises(ValueError, match="at least 3 classes"):
        get_objective("dlr-public")(torch.randn(1, B, 2), y % 2, torch.ones(1))


@pytest.mark.parametrize("name", ["nope", "head:", "head:x", "margin-joint", "dlr-private", "Public"])
def test_unknown_name_lists_the_valid_ones(name):
    with pytest.raises(ValueError) as err:
        get_objective(name)
    message = str(err.value)
    assert repr(name) in message
    assert all(valid in message for valid in list_objectives())


def test_every_listed_objective_builds_and_returns_one_loss_per_sample(logits, y):
    for name in list_objectives():
        objective = get_objective(name.replace("<k>", "1"))
        loss = objective(logits, y, ALPHA)
        assert loss.shape == (B,) and torch.isfinite(loss).all(), name
