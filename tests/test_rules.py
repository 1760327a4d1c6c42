"""Decision rules as plug-ins: the registry, CrossMax against a reference written from the paper, mean-logits,
parameters, a rule of the user's own attacked and judged."""
import numpy as np
import pytest
import torch

from auxsurgery import attach_aux_blocks
from auxsurgery.attacks import APGD, get_objective, is_adversarial
from auxsurgery.rules import (
    check_rule,
    crossmax,
    default_rules,
    get_rule,
    list_rules,
    register_rule,
    rule_predict,
    rule_scores,
)


def crossmax_reference(logits: np.ndarray, k: int) -> np.ndarray:
    """Fort & Lakshminarayanan 2024, Algorithm 1 (CrossMax), written out loop by loop on Z [H, B, C]."""
    heads, batch, classes = logits.shape
    z = logits.astype(np.float64).copy()
    for h in range(heads):  # Z <- Z - max over classes, per predictor
        for b in range(batch):
            z[h, b, :] -= max(z[h, b, :])
    for b in range(batch):  # Z <- Z - max over predictors, per class
        for c in range(classes):
            z[:, b, c] -= max(z[:, b, c])
    out = np.zeros((batch, classes))
    for b in range(batch):  # Y <- the k-th highest value over predictors, per class
        for c in range(classes):
            out[b, c] = sorted(z[:, b, c], reverse=True)[min(k, heads) - 1]
    return out


@pytest.mark.parametrize("heads, k", [(5, 3), (4, 3), (2, 3), (6, 2)])
def test_crossmax_matches_the_papers_algorithm(heads, k):
    logits = torch.randn(heads, 16, 10, generator=torch.Generator().manual_seed(heads + k), dtype=torch.float64) * 3
    expected = torch.from_numpy(crossmax_reference(logits.numpy(), k))
    name = "crossmax" if k == 3 else f"crossmax:k={k}"
    scores = rule_scores(logits, name, torch.ones(heads))
    torch.testing.assert_close(scores, expected)
    assert torch.equal(rule_predict(logits, name, torch.ones(heads)), expected.argmax(-1))


def test_crossmax_is_not_the_mean_or_the_vote():
    """A batch where the three rules disagree somewhere, so the test above could not pass with another rule."""
    logits = torch.randn(5, 64, 10, generator=torch.Generator().manual_seed(1)) * 3
    ones = torch.ones(5)
    cross = rule_predict(logits, "crossmax", ones)
    assert (cross != rule_predict(logits, "mean-logits", ones)).any()
    assert (cross != rule_predict(logits, "vote", ones)).any()


def test_mean_logits_is_the_alpha_weighted_mean():
    logits = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(rule_scores(logits, "mean-logits", torch.ones(3)), logits.mean(0))
    alpha = torch.tensor([2.0, 1.0, 1.0])
    torch.testing.assert_close(rule_scores(logits, "mean-logits", alpha), (2 * logits[0] + logits[1] + logits[2]) / 4)


def test_registry_lists_and_gets_the_rules():
    assert {"vote", "score", "public", "private", "crossmax", "mean-logits"} <= set(list_rules())
    assert default_rules() == ("vote", "score", "public", "private") and "private" not in default_rules(1)
    rule = get_rule("crossmax")
    assert rule.params == {"k": 3} and rule.surrogate == "rule-ce:crossmax" and rule.min_heads == 2
    two = get_rule("crossmax:k=2")
    assert two.name == "crossmax:k=2" and two.params == {"k": 2} and two.surrogate == "rule-ce:crossmax:k=2"
    assert check_rule("crossmax:k=3") == "crossmax"  # defaults are left out of the canonical name
    assert get_rule("vote").surrogate == "vote-margin" and get_rule("score").square == "margin-ensemble"
    assert get_rule("mean-logits").surrogate == "mean-logits"


@pytest.mark.parametrize("name, message", [
    ("crosmax", "unknown prediction rule 'crosmax'; valid rules: .*Did you mean 'crossmax'"),
    ("mean-logit", "Did you mean 'mean-logits'"),
    ("crossmax:j=2", "unknown parameter 'j=2'.*Its parameters: k=3"),
    ("crossmax:k=two", "parameter k takes int values"),
    ("vote:k=2", "unknown parameter 'k=2'.*Its parameters: none"),
])
def test_unknown_rules_and_parameters_name_the_valid_ones(name, message):
    with pytest.raises(ValueError, match=message):
        get_rule(name)


def test_crossmax_refuses_a_rank_below_one_and_a_single_head():
    with pytest.raises(ValueError, match="integer >= 1"):
        rule_scores(torch.zeros(3, 1, 4), "crossmax:k=0", torch.ones(3))
    with pytest.raises(ValueError, match="needs a model with at least one aux head"):
        rule_scores(torch.zeros(1, 1, 4), "crossmax", torch.ones(1))


def test_built_in_rules_cannot_be_replaced_and_names_are_checked():
    with pytest.raises(ValueError, match="built-in rule"):
        register_rule("vote", lambda logits, alpha: logits[0], surrogate="public")
    with pytest.raises(ValueError, match="must be letters"):
        register_rule("my:rule", lambda logits, alpha: logits[0], surrogate="public")


def test_crossmax_surrogate_climbs_its_scores():
    """rule-ce:crossmax is the cross-entropy of the crossmax scores: it has gradients, and its targeted form
    is smaller where the target leads."""
    logits = torch.randn(4, 8, 10, generator=torch.Generator().manual_seed(2), requires_grad=True)
    y, ones = torch.randint(0, 10, (8,), generator=torch.Generator().manual_seed(3)), torch.ones(4)
    loss = get_objective("rule-ce:crossmax")(logits, y, ones)
    expected = torch.nn.functional.cross_entropy(crossmax(logits, ones), y, reduction="none")
    torch.testing.assert_close(loss, expected)
    loss.sum().backward()
    assert logits.grad.abs().sum() > 0
    torch.testing.assert_close(get_objective("mean-logits")(logits, y, ones),
                               torch.nn.functional.cross_entropy(logits.mean(0), y, reduction="none"))


def test_as_classifier_gives_log_probabilities_of_logit_like_rules():
    aux = attach_aux_blocks("small_cnn", at="auto:2", num_classes=10, input_size=(3, 32, 32)).eval()
    x = torch.rand(4, 3, 32, 32)
    for rule in ("crossmax", "mean-logits", "vote"):
        out = aux.as_classifier(rule)(x)
        torch.testing.assert_close(out.exp().sum(-1), torch.ones(4))
        assert torch.equal(out.argmax(-1), aux.predict(x, rule))


def test_a_rule_of_your_own_is_attacked_and_judged():
    """A user's rule (the heads' median logit) in a few lines: APGD climbs its registered surrogate, and success
    is judged by the rule itself."""
    @register_rule("test-median", surrogate="mean-logits")
    def median(logits, alpha):
        return logits.median(0).values

    torch.manual_seed(0)
    aux = attach_aux_blocks("small_cnn", at="auto:2", num_classes=10, input_size=(3, 32, 32)).eval()
    x = torch.rand(6, 3, 32, 32)
    y = aux.predict(x, "test-median")
    assert torch.equal(y, aux(x).median(0).values.argmax(-1))
    attack = APGD(aux, get_rule("test-median").surrogate, eps=16 / 255, steps=20, rule="test-median", seed=0)
    x_adv = attack(x, y)
    assert (x_adv - x).abs().max() <= 16 / 255 + 1e-6
    fooled = is_adversarial(aux, x_adv, y, "test-median")
    assert torch.equal(fooled, aux.predict(x_adv, "test-median") != y) and fooled.any()


def test_every_rules_cascade_climbs_its_surrogate_then_the_smooth_ensembles():
    from auxsurgery.evaluation import Budget
    from auxsurgery.evaluation.plans import SuiteContext, get_suite
    from auxsurgery.evaluation.presets import get_preset

    rules = ("vote", "score", "public", "private", "crossmax", "mean-logits")
    context = SuiteContext(get_preset(), Budget(), rules, 0, ("public", "a", "b", "c"))
    objectives = {cascade.rule: [stage.config.get("objective") for stage in cascade.stages]
                  for cascade in get_suite("strong").build(context)}
    for rule in rules:
        assert objectives[rule][0] == get_rule(rule).surrogate and objectives[rule][-1] == get_rule(rule).square
        assert {"ensemble", "mean-logits"} <= set(objectives[rule]), rule
    assert objectives["vote"] == ["vote-margin", "ensemble", "mean-logits", "dlr-t-ensemble", "vote-tie",
                                  "vote-margin"]
    assert objectives["crossmax"] == ["rule-ce:crossmax", "ensemble", "mean-logits", "dlr-t-ensemble",
                                      "rule-margin:crossmax"]


def test_the_strong_suite_attacks_and_judges_crossmax_and_a_rule_of_your_own():
    from auxsurgery import run_suite
    from auxsurgery.evaluation import Budget

    register_rule("test-min-head", lambda logits, alpha: logits.log_softmax(-1).amin(0), surrogate="mean-logits")
    torch.manual_seed(0)
    aux = attach_aux_blocks("small_cnn", at="auto:2", num_classes=10, input_size=(3, 32, 32)).eval()
    x = torch.rand(8, 3, 32, 32)
    y = aux.predict(x, "crossmax")  # every point starts correct under crossmax
    result = run_suite(aux, (x, y), suite="strong", rules=("crossmax", "test-min-head"), eps=8 / 255,
                       budget=Budget.quick(), progress=False)
    assert result.eval_rules == ["vote", "score", "public", "private", "crossmax", "test-min-head"]
    assert [cascade["rule"] for cascade in result.to_dict()["cascade_stages"]] == ["crossmax", "test-min-head"]
    worst = result.worst_case().outcome
    assert result.clean.accuracy("crossmax") == 1.0 and worst.accuracy("crossmax") < 1.0
    # The judge is the rule itself: a point counts as robust only where its decision is still the label.
    for rule in ("crossmax", "test-min-head"):
        assert torch.equal(result.clean.rules[rule], aux.predict(x, rule) == y)
