"""Objectives: each equals its formula, handles plain models, and fails loudly on bad names.

The formula tests take the ``device`` and ``dtype`` fixtures (``--device``, ``--dtype``), comparing
within the dtype's ``tolerance``; the tests of bad names and bad shapes run once, in float32.
"""
import pytest
import torch
import torch.nn.functional as F
import torchattacks

from auxsurgery.attacks.objectives import ensemble_log_probs, get_objective, list_objectives
from auxsurgery.model import rule_predict

H, B, C = 3, 5, 4
ALPHA = torch.tensor([1.0, 0.5, 2.0])


@pytest.fixture
def logits(device, dtype):
    # Drawn in float32 on the CPU, then moved: the same values whatever --device and --dtype.
    return (torch.randn(H, B, C) * 3).to(device, dtype)


@pytest.fixture
def y(device):
    return torch.randint(0, C, (B,)).to(device)


@pytest.fixture
def alpha(device):
    """ALPHA on ``device``; head weights stay float32, as an AuxModel's alpha buffer, whatever the logits' dtype."""
    return ALPHA.to(device)


def ce(z, y):
    return F.cross_entropy(z, y, reduction="none")


def full(value, like):
    return torch.full((B,), value, device=like.device, dtype=like.dtype)


def test_joint_is_alpha_weighted_sum_of_per_head_ce(logits, y, alpha, tolerance):
    expected = sum(a * ce(z, y) for a, z in zip(alpha.to(logits.dtype), logits))
    torch.testing.assert_close(get_objective("joint")(logits, y, alpha), expected, **tolerance)


def test_joint_with_unit_alpha_is_the_papers_adaptive_loss(logits, y, tolerance):
    # J_adp = sum_j l(f_Aj(x), y) + l(f(x), y)
    expected = sum(ce(z, y) for z in logits)
    ones = torch.ones(H, device=logits.device)
    torch.testing.assert_close(get_objective("joint")(logits, y, ones), expected, **tolerance)


def test_public_private_and_head_k(logits, y, alpha, tolerance):
    torch.testing.assert_close(get_objective("public")(logits, y, alpha), ce(logits[0], y), **tolerance)
    torch.testing.assert_close(get_objective("head:2")(logits, y, alpha), ce(logits[2], y), **tolerance)
    weights = alpha.to(logits.dtype)
    expected_private = weights[1] * ce(logits[1], y) + weights[2] * ce(logits[2], y)
    torch.testing.assert_close(get_objective("private")(logits, y, alpha), expected_private, **tolerance)


def test_ensemble_is_ce_of_log_alpha_weighted_mean_softmax(logits, y, alpha, tolerance):
    weights = alpha.to(logits.dtype)
    mean_probs = (weights.view(-1, 1, 1) * logits.softmax(-1)).sum(0) / weights.sum()
    expected = -mean_probs.log().gather(1, y[:, None]).squeeze(1)
    torch.testing.assert_close(get_objective("ensemble")(logits, y, alpha), expected, **tolerance)
    # Its argmax is Algorithm 2's decision.
    assert torch.equal(ensemble_log_probs(logits, alpha).argmax(-1), rule_predict(logits, "score", alpha))


def test_ensemble_gradient_is_finite_and_nonzero_even_when_confident(y, alpha, device, dtype):
    logits = (torch.randn(H, B, C) * 200).to(device, dtype).requires_grad_(True)  # softmax saturates to 0/1
    loss = get_objective("ensemble")(logits, y, alpha)
    (grad,) = torch.autograd.grad(loss.sum(), logits)
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    assert grad.abs().sum() > 0


def test_ensemble_ignores_zero_weight_heads(logits, y, tolerance):
    alpha = torch.tensor([1.0, 0.0, 0.0], device=logits.device)
    torch.testing.assert_close(get_objective("ensemble")(logits, y, alpha), ce(logits[0], y), **tolerance)


def test_plain_logits_count_as_one_head(logits, y, tolerance):
    plain = logits[0]
    one = torch.ones(1, device=logits.device)
    for name in ("public", "joint", "ensemble", "head:0"):
        torch.testing.assert_close(get_objective(name)(plain, y, one), ce(plain, y), msg=name, **tolerance)


def test_private_needs_an_aux_head():
    with pytest.raises(ValueError, match="aux head"):
        get_objective("private")(torch.randn(1, B, C), torch.zeros(B, dtype=torch.long), torch.ones(1))


def test_head_index_out_of_range():
    with pytest.raises(ValueError, match="head 7 does not exist"):
        get_objective("head:7")(torch.randn(H, B, C), torch.zeros(B, dtype=torch.long), ALPHA)


def test_targeted_ce_rewards_the_target(logits, y, alpha):
    torch.testing.assert_close(get_objective("joint", targeted=True)(logits, y, alpha),
                               -get_objective("joint")(logits, y, alpha))


def _fooled_logits(y, margin, dtype):
    """Logits where every head puts class (y + 1) % C ``margin`` above every other class."""
    z = torch.zeros(H, B, C, device=y.device, dtype=dtype)
    z[:, torch.arange(B), (y + 1) % C] = margin
    return z


def test_vote_margin_is_clipped_and_gradient_free_once_heads_are_fooled(y, alpha, dtype, tolerance):
    z = _fooled_logits(y, 5.0, dtype).requires_grad_(True)
    loss = get_objective("vote-margin")(z, y, alpha)
    assert torch.equal(loss, full(0.0, z))
    (grad,) = torch.autograd.grad(loss.sum(), z)
    assert torch.equal(grad, torch.zeros_like(grad))
    # With kappa the cap is H * kappa: heads fooled by more than kappa stop pulling.
    torch.testing.assert_close(get_objective("vote-margin", kappa=2.0)(z, y, alpha), full(H * 2.0, z), **tolerance)


def test_vote_margin_sums_unclipped_margins_of_correct_heads(y, alpha, dtype, tolerance):
    z = torch.zeros(H, B, C, device=y.device, dtype=dtype)
    z[:, torch.arange(B), y] = 1.0  # y leads by 1 in every head: margin -1 each, below any cap
    torch.testing.assert_close(get_objective("vote-margin")(z, y, alpha), full(-1.0 * H, z), **tolerance)


def test_vote_margin_mixes_fooled_and_correct_heads(y, alpha, dtype, tolerance):
    z = torch.zeros(H, B, C, device=y.device, dtype=dtype)
    z[0, torch.arange(B), (y + 1) % C] = 4.0  # head 0 fooled by 4
    z[1, torch.arange(B), y] = 2.0  # head 1 correct by 2
    z[2, torch.arange(B), y] = 0.5  # head 2 correct by 0.5
    expected = full(1.0 - 2.0 - 0.5, z)  # capped at kappa = 1, then the two negative margins
    torch.testing.assert_close(get_objective("vote-margin", kappa=1.0)(z, y, alpha), expected, **tolerance)


def test_targeted_margin_caps_at_kappa_when_target_reached(y, alpha, dtype, tolerance):
    target = (y + 1) % C
    z = _fooled_logits(y, 5.0, dtype)  # the target leads by 5 in every head
    torch.testing.assert_close(get_objective("margin-public", targeted=True, kappa=1.0)(z, target, alpha),
                               full(1.0, z), **tolerance)
    torch.testing.assert_close(get_objective("margin-public", targeted=True)(z, y, alpha), full(-5.0, z), **tolerance)


def test_dlr_matches_croce_and_hein(logits, y, alpha, tolerance):
    # torchattacks' reference promotes to float32 (it mixes in a float32 mask): compare in the logits' dtype.
    dlr = torchattacks.APGD(torch.nn.Identity()).dlr_loss
    reference = lambda z, y: dlr(z, y).to(z.dtype)  # noqa: E731
    torch.testing.assert_close(get_objective("dlr-public")(logits, y, alpha), reference(logits[0], y), **tolerance)
    torch.testing.assert_close(get_objective("dlr-ensemble")(logits, y, alpha),
                               reference(ensemble_log_probs(logits, alpha), y), **tolerance)
    per_head = torch.stack([get_objective(f"dlr-head:{k}")(logits, y, alpha) for k in range(H)])
    torch.testing.assert_close(get_objective("dlr-joint")(logits, y, alpha),
                               (alpha.to(logits.dtype)[:, None] * per_head).sum(0), **tolerance)


def test_dlr_has_no_targeted_form_and_needs_three_classes():
    y = torch.randint(0, C, (B,))
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


def test_every_listed_objective_builds_and_returns_one_loss_per_sample(logits, y, alpha):
    for name in list_objectives():
        objective = get_objective(name.replace("<k>", "1").replace("<rule>", "crossmax"))
        loss = objective(logits, y, alpha)
        assert loss.shape == (B,) and loss.dtype == logits.dtype and torch.isfinite(loss).all(), name


# ---- targeted objectives and the true label (appended: Strong suite v2) -----------------------

from auxsurgery.attacks.objectives import evaluate, needs_true_label  # noqa: E402


def _dlr_t_reference(z, y_true, target):
    return torchattacks.APGDT(torch.nn.Identity()).dlr_loss_targeted(z, y_true, target)


def test_targeted_dlr_matches_croce_and_hein(logits, y, alpha, tolerance):
    target = (y + 1) % C
    torch.testing.assert_close(evaluate(get_objective("dlr-t-public", targeted=True), logits, target, alpha, y),
                               _dlr_t_reference(logits[0], y, target), **tolerance)
    torch.testing.assert_close(evaluate(get_objective("dlr-t-ensemble", targeted=True), logits, target, alpha, y),
                               _dlr_t_reference(ensemble_log_probs(logits, alpha), y, target), **tolerance)
    per_head = torch.stack([evaluate(get_objective(f"dlr-t-head:{k}", targeted=True), logits, target, alpha, y)
                            for k in range(H)])
    torch.testing.assert_close(per_head[2], _dlr_t_reference(logits[2], y, target), **tolerance)
    torch.testing.assert_close(evaluate(get_objective("dlr-t-joint", targeted=True), logits, target, alpha, y),
                               (alpha.to(logits.dtype)[:, None] * per_head).sum(0), **tolerance)


def test_targeted_dlr_needs_the_true_label_and_four_classes():
    logits, y = torch.randn(H, B, C), torch.randint(0, C, (B,))
    objective = get_objective("dlr-t-ensemble", targeted=True)
    assert getattr(objective, "needs_true_label", False)
    with pytest.raises(ValueError, match="needs the true labels besides the targets"):
        evaluate(objective, logits, y, ALPHA)
    with pytest.raises(ValueError, match="at least 4 classes"):
        evaluate(objective, logits[..., :3], y % 3, ALPHA, (y + 1) % 3)
    # The untargeted DLR names still refuse a targeted form, and point to this one.
    with pytest.raises(ValueError, match="no targeted form.*'dlr-t-ensemble'"):
        get_objective("dlr-ensemble", targeted=True)


def test_untargeted_dlr_t_aims_at_the_runner_up(logits, y, alpha, tolerance):
    runner_up = logits[0].scatter(1, y[:, None], float("-inf")).argmax(1)
    objective = get_objective("dlr-t-public")
    assert not getattr(objective, "needs_true_label", False)
    torch.testing.assert_close(objective(logits, y, alpha), _dlr_t_reference(logits[0], y, runner_up), **tolerance)


def test_plain_callables_keep_the_three_argument_signature():
    logits, y = torch.randn(H, B, C), torch.randint(0, C, (B,))
    seen = []

    def plain(z, labels, alpha):
        seen.append(labels)
        return z[0, :, 0]

    @needs_true_label
    def with_true(z, target, alpha, y_true):
        seen.append((target, y_true))
        return z[0, :, 1]

    target = (y + 2) % C
    assert torch.equal(evaluate(plain, logits, target, ALPHA, y), logits[0, :, 0])
    assert torch.equal(evaluate(with_true, logits, target, ALPHA, y), logits[0, :, 1])
    assert seen[0] is target and seen[1][0] is target and seen[1][1] is y


def test_targeted_vote_margin_pulls_every_head_towards_the_target(y, alpha, dtype, tolerance):
    target = (y + 1) % C
    z = torch.randn(H, B, C).to(y.device, dtype).requires_grad_(True)
    loss = get_objective("vote-margin", targeted=True)(z, target, alpha)
    index = target.expand(H, B)[..., None]
    lead = z.gather(2, index).squeeze(2) - z.scatter(2, index, float("-inf")).amax(2)
    torch.testing.assert_close(loss, lead.clamp(max=0).sum(0), **tolerance)  # unweighted, each capped at kappa = 0
    (grad,) = torch.autograd.grad(loss.sum(), z)
    behind = lead < 0
    # Each head not yet on the target gets +1 on the target's logit (and -1 on its leader): all pull one way.
    assert torch.equal(grad.gather(2, index).squeeze(2), behind.to(dtype))
    assert torch.equal(grad.sum(-1), torch.zeros_like(loss).expand(H, B))
    capped = get_objective("vote-margin", targeted=True, kappa=1.0)(_fooled_logits(y, 5.0, dtype), target, alpha)
    torch.testing.assert_close(capped, full(1.0 * H, capped), **tolerance)  # every head on the target, capped


def test_targeted_ensemble_ce_is_the_log_probability_of_the_target(logits, y, alpha, tolerance):
    target = (y + 3) % C
    expected = ensemble_log_probs(logits, alpha).gather(1, target[:, None]).squeeze(1)
    torch.testing.assert_close(get_objective("ensemble", targeted=True)(logits, target, alpha), expected, **tolerance)


# ---- vote-tie: the vote's majority and its tie-break (issue 29) ------------------------------------------------


def _two_two_split(confidence: float) -> torch.Tensor:
    """Four heads over classes (true 0, target 1, other 2): heads 0 and 1 vote for the target with logit lead
    ``confidence``, heads 2 and 3 for the true class with lead 1: a 2-2 tie the summed softmax breaks."""
    target_heads = torch.tensor([[0.0, confidence, -4.0]] * 2)
    true_heads = torch.tensor([[1.0, 0.0, -4.0]] * 2)
    return torch.cat([target_heads, true_heads]).unsqueeze(1)  # [4, 1, 3]


def test_vote_tie_rewards_the_tie_broken_toward_the_target_where_the_vote_margin_cannot_tell():
    ones, y_true, target = torch.ones(4), torch.tensor([0]), torch.tensor([1])
    robust, fooled = _two_two_split(0.1), _two_two_split(3.0)
    assert rule_predict(robust, "vote", ones).item() == 0 and rule_predict(fooled, "vote", ones).item() == 1
    vote_margin = get_objective("vote-margin", targeted=True)
    # The capped vote margin is the same at both: the flipped heads are capped, the others unchanged.
    assert vote_margin(robust, target, ones) == vote_margin(fooled, target, ones)
    vote_tie = get_objective("vote-tie", targeted=True)
    assert evaluate(vote_tie, fooled, target, ones, y_true) > evaluate(vote_tie, robust, target, ones, y_true)
    # And at the robust tie it still pulls the flipped heads toward the target, where the vote margin does not.
    logits = robust.clone().requires_grad_(True)
    vote_margin(logits, target, ones).sum().backward()
    assert logits.grad[:2].abs().sum() == 0
    logits.grad = None
    evaluate(vote_tie, logits, target, ones, y_true).sum().backward()
    assert (logits.grad[:2, 0, 1] > 0).all() and (logits.grad[:2, 0, 0] < 0).all()


def test_at_a_tie_vote_tie_climbs_the_tie_break_not_the_heads_that_have_not_flipped():
    """Two heads hold a 2-2 tie for the target, the other two vote for the true class far from the target (margin
    -10): the objective is the lead alone (the holding heads' capped margins are 0), and the steps it gives the
    far heads are the lead's only, not their own margins' pull toward the target."""
    ones, y_true, target = torch.ones(4), torch.tensor([0]), torch.tensor([1])
    logits = _two_two_split(0.1)
    logits[2:, 0, 1] = -10.0  # the true-class heads: far from the target
    ensemble = ensemble_log_probs(logits, ones)
    lead = (ensemble[0, 1] - ensemble[0, 0]).clamp(max=0)
    vote_tie = get_objective("vote-tie", targeted=True)
    torch.testing.assert_close(evaluate(vote_tie, logits, target, ones, y_true), lead.view(1))
    logits.requires_grad_(True)
    evaluate(vote_tie, logits, target, ones, y_true).sum().backward()
    from_lead = torch.autograd.grad(ensemble_log_probs(logits, ones)[0, 1] - ensemble_log_probs(logits, ones)[0, 0],
                                    logits)[0]
    torch.testing.assert_close(logits.grad, from_lead)


def test_vote_tie_is_the_vote_margin_until_the_target_ties_then_the_lead_and_the_heads_holding_it(logits, y, alpha):
    """Where the target has as many votes as the true class or more: the ensemble's capped lead plus the capped
    margins of the heads voting for the target; elsewhere the targeted vote margin, so an attack takes the same
    steps until the heads tie."""
    target = (y + 1) % C
    ensemble = ensemble_log_probs(logits, alpha)
    lead = (ensemble.gather(1, target[:, None]) - ensemble.gather(1, y[:, None])).squeeze(1).clamp(max=0.5)
    ballots = logits.argmax(-1)
    tied = (ballots == target).sum(0) >= (ballots == y).sum(0)
    assert tied.any() and not tied.all()  # both cases on this batch
    margins = logits.gather(-1, target.expand(logits.shape[:-1]).unsqueeze(-1)).squeeze(-1)
    others = logits.scatter(-1, target.expand(logits.shape[:-1]).unsqueeze(-1), float("-inf")).amax(-1)
    margins = (margins - others).clamp(max=0.5)  # [H, B]: each head's targeted margin
    held = (margins * (ballots == target)).sum(0)
    expected = torch.where(tied, lead + held, margins.sum(0))
    got = evaluate(get_objective("vote-tie", targeted=True, kappa=0.5), logits, target, alpha, y)
    torch.testing.assert_close(got, expected)
    untargeted = get_objective("vote-margin")(logits, y, alpha) + get_objective("margin-ensemble")(logits, y, alpha)
    torch.testing.assert_close(get_objective("vote-tie")(logits, y, alpha), untargeted)
    with pytest.raises(ValueError, match="'vote-tie' needs the true labels"):
        evaluate(get_objective("vote-tie", targeted=True), logits, target, alpha)
