"""AuxModel prediction rules (Algorithms 1 and 2), alpha weights and the classifier views.

The rule and forward tests take the ``device`` and ``dtype`` fixtures (``--device``, ``--dtype``).
"""
import copy

import pytest
import torch
from torch import nn

from auxsurgery import attach_aux_blocks
from auxsurgery.model import rule_predict, rule_scores


def logits_from_votes(votes, num_classes=3, device="cpu", dtype=torch.float32):
    """Stacked logits [H, 1, C] where head h strongly prefers class votes[h]."""
    out = torch.zeros(len(votes), 1, num_classes, device=device, dtype=dtype)
    for h, c in enumerate(votes):
        out[h, 0, c] = 5.0
    return out


def test_vote_is_the_majority(device, dtype):
    logits = logits_from_votes([0, 2, 2], device=device, dtype=dtype)
    assert rule_predict(logits, "vote", torch.ones(3, device=device)).item() == 2


def test_vote_tie_is_broken_by_summed_softmax(device, dtype):
    ones = torch.ones(5, device=device)
    logits = logits_from_votes([0, 1, 2, 2, 1], num_classes=3, device=device, dtype=dtype)
    logits[1, 0, 1] = 9.0  # class 1's voters are more confident than class 2's
    assert rule_predict(logits, "vote", ones).item() == 1
    logits[1, 0, 1] = 5.0
    logits[2, 0, 2] = 9.0
    assert rule_predict(logits, "vote", ones).item() == 2


def test_tie_break_never_outranks_a_vote(device, dtype):
    logits = logits_from_votes([0, 0, 1], device=device, dtype=dtype)
    logits[2, 0, 1] = 50.0
    assert rule_predict(logits, "vote", torch.ones(3, device=device)).item() == 0


def test_score_is_alpha_weighted_softmax_sum(device, dtype, tolerance):
    logits = torch.randn(3, 4, 5).to(device, dtype)
    alpha = torch.tensor([1.0, 0.5, 2.0], device=device)
    expected = (alpha.to(dtype).view(3, 1, 1) * logits.softmax(-1)).sum(0)
    scores = rule_scores(logits, "score", alpha)
    assert scores.dtype == torch.promote_types(dtype, torch.float32)  # decisions at least in float32
    torch.testing.assert_close(scores, expected.to(scores.dtype), **tolerance)
    heavy = torch.tensor([0.0, 0.0, 1.0], device=device)
    assert torch.equal(rule_predict(logits, "score", heavy), logits[2].argmax(-1))


def test_public_and_private_rules(device, dtype):
    logits = logits_from_votes([0, 1, 1], device=device, dtype=dtype)
    ones = torch.ones(3, device=device)
    assert rule_predict(logits, "public", ones).item() == 0
    assert rule_predict(logits, "private", ones).item() == 1
    with pytest.raises(ValueError, match="at least one aux head"):
        rule_scores(logits[:1], "private", ones[:1])


def test_with_equal_alpha_vote_and_score_agree_on_unanimous_heads(device, dtype):
    logits = logits_from_votes([1, 1, 1], device=device, dtype=dtype)
    ones = torch.ones(3, device=device)
    assert rule_predict(logits, "vote", ones) == rule_predict(logits, "score", ones)


def test_unknown_rule_lists_valid_rules():
    with pytest.raises(ValueError, match="vote, score, public, private"):
        rule_scores(torch.zeros(2, 1, 3), "majority", torch.ones(2))


@pytest.fixture(scope="module")
def lenet_aux_float32():
    return attach_aux_blocks("lenet5", at="pool1,pool2", num_classes=10, head="paper-mnist").eval()


@pytest.fixture(scope="module")
def lenet_aux(lenet_aux_float32, device, dtype):
    """The float32 model, copied onto ``device`` in ``dtype`` (the same weights in every run)."""
    return copy.deepcopy(lenet_aux_float32).to(device, dtype)


def test_forward_shape_and_dtype(lenet_aux, device, dtype):
    logits = lenet_aux(torch.rand(4, 1, 28, 28).to(device, dtype))
    assert logits.shape == (3, 4, 10) and logits.dtype == dtype and logits.device.type == device.type
    assert torch.isfinite(logits).all()


def test_predict_and_scores_shapes(lenet_aux, device, dtype):
    x = torch.rand(4, 1, 28, 28).to(device, dtype)
    for rule in ("vote", "score", "public", "private"):
        assert lenet_aux.predict(x, rule).shape == (4,)
        assert lenet_aux.scores(x, rule).shape == (4, 10)


def test_as_classifier_returns_log_probabilities_whose_argmax_is_the_rule(lenet_aux, device, dtype, tolerance):
    x = torch.rand(6, 1, 28, 28).to(device, dtype)
    for rule in ("score", "vote"):
        out = lenet_aux.as_classifier(rule)(x)
        assert out.shape == (6, 10)
        torch.testing.assert_close(out.exp().sum(-1), torch.ones(6, device=device, dtype=out.dtype), **tolerance)
        assert torch.equal(out.argmax(-1), lenet_aux.predict(x, rule))


def test_score_classifier_is_differentiable(lenet_aux, device, dtype):
    x = torch.rand(2, 1, 28, 28).to(device, dtype).requires_grad_(True)
    out = lenet_aux.as_classifier("score")(x)
    nn.functional.nll_loss(out, torch.tensor([1, 2], device=device)).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_alpha_validation():
    with pytest.raises(ValueError, match="alpha has 2 weights for 3 heads"):
        attach_aux_blocks("lenet5", at="pool1,pool2", num_classes=10, alpha=[1, 1])
    with pytest.raises(ValueError, match=">= 0"):
        attach_aux_blocks("lenet5", at="pool1,pool2", num_classes=10, alpha=[1, -1, 1])
