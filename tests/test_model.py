"""AuxModel prediction rules (Algorithms 1 and 2), alpha weights and the classifier views."""
import pytest
import torch
from torch import nn

from auxsurgery import attach_aux_blocks
from auxsurgery.model import rule_predict, rule_scores


def logits_from_votes(votes, num_classes=3):
    """Stacked logits [H, 1, C] where head h strongly prefers class votes[h]."""
    out = torch.zeros(len(votes), 1, num_classes)
    for h, c in enumerate(votes):
        out[h, 0, c] = 5.0
    return out


def test_vote_is_the_majority():
    logits = logits_from_votes([0, 2, 2])
    assert rule_predict(logits, "vote", torch.ones(3)).item() == 2


def test_vote_tie_is_broken_by_summed_softmax():
    logits = logits_from_votes([0, 1, 2, 2, 1], num_classes=3)
    logits[1, 0, 1] = 9.0  # class 1's voters are more confident than class 2's
    assert rule_predict(logits, "vote", torch.ones(5)).item() == 1
    logits[1, 0, 1] = 5.0
    logits[2, 0, 2] = 9.0
    assert rule_predict(logits, "vote", torch.ones(5)).item() == 2


def test_tie_break_never_outranks_a_vote():
    logits = logits_from_votes([0, 0, 1])
    logits[2, 0, 1] = 50.0
    assert rule_predict(logits, "vote", torch.ones(3)).item() == 0


def test_score_is_alpha_weighted_softmax_sum():
    logits = torch.randn(3, 4, 5)
    alpha = torch.tensor([1.0, 0.5, 2.0])
    expected = (alpha.view(3, 1, 1) * logits.softmax(-1)).sum(0)
    assert torch.allclose(rule_scores(logits, "score", alpha), expected)
    heavy = torch.tensor([0.0, 0.0, 1.0])
    assert torch.equal(rule_predict(logits, "score", heavy), logits[2].argmax(-1))


def test_public_and_private_rules():
    logits = logits_from_votes([0, 1, 1])
    assert rule_predict(logits, "public", torch.ones(3)).item() == 0
    assert rule_predict(logits, "private", torch.ones(3)).item() == 1
    with pytest.raises(ValueError, match="at least one aux head"):
        rule_scores(logits[:1], "private", torch.ones(1))


def test_with_equal_alpha_vote_and_score_agree_on_unanimous_heads():
    logits = logits_from_votes([1, 1, 1])
    assert rule_predict(logits, "vote", torch.ones(3)) == rule_predict(logits, "score", torch.ones(3))


def test_unknown_rule_lists_valid_rules():
    with pytest.raises(ValueError, match="vote, score, public, private"):
        rule_scores(torch.zeros(2, 1, 3), "majority", torch.ones(2))


@pytest.fixture(scope="module")
def lenet_aux():
    return attach_aux_blocks("lenet5", at="pool1,pool2", num_classes=10, head="paper-mnist").eval()


def test_predict_and_scores_shapes(lenet_aux):
    x = torch.rand(4, 1, 28, 28)
    for rule in ("vote", "score", "public", "private"):
        assert lenet_aux.predict(x, rule).shape == (4,)
        assert lenet_aux.scores(x, rule).shape == (4, 10)


def test_as_classifier_returns_log_probabilities_whose_argmax_is_the_rule(lenet_aux):
    x = torch.rand(6, 1, 28, 28)
    for rule in ("score", "vote"):
        out = lenet_aux.as_classifier(rule)(x)
        assert out.shape == (6, 10)
        assert torch.allclose(out.exp().sum(-1), torch.ones(6), atol=1e-5)
        assert torch.equal(out.argmax(-1), lenet_aux.predict(x, rule))


def test_score_classifier_is_differentiable(lenet_aux):
    x = torch.rand(2, 1, 28, 28, requires_grad=True)
    nn.functional.nll_loss(lenet_aux.as_classifier("score")(x), torch.tensor([1, 2])).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_alpha_validation():
    with pytest.raises(ValueError, match="alpha has 2 weights for 3 heads"):
        attach_aux_blocks("lenet5", at="pool1,pool2", num_classes=10, alpha=[1, 1])
    with pytest.raises(ValueError, match=">= 0"):
        attach_aux_blocks("lenet5", at="pool1,pool2", num_classes=10, alpha=[1, -1, 1])
