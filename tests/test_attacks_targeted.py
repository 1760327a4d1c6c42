"""Targeted attacks on the ensemble: top-k targets, APGDT/PGDT, and why they beat untargeted ones on a vote."""
import pytest
import torch

from attack_helpers import (
    CLASSES, ScatterVote, aux_model, batch_sizes, dataset, scatter_data, trained_aux_model, trained_plain_model,
)
from auxsurgery.attacks import APGD, APGDT, PGD, PGDT, get_attack, is_adversarial, list_attacks, needs_true_label
from auxsurgery.attacks.objectives import ensemble_log_probs
from auxsurgery.attacks.targeted import top_k_targets
from auxsurgery.model import rule_predict

pytestmark = pytest.mark.usefixtures("single_thread")


def test_top_k_targets_rank_the_other_classes_by_score():
    scores = torch.tensor([[0.1, 0.5, 0.3, 0.9, 0.2], [0.9, 0.8, 0.7, 0.6, 0.5]])
    y = torch.tensor([3, 2])
    assert top_k_targets(scores, y, 2).tolist() == [[1, 2], [0, 1]]
    assert top_k_targets(scores, y, 9).tolist() == [[1, 2, 4, 0], [0, 1, 3, 4]]  # capped at C - 1
    with pytest.raises(ValueError, match="at least 2 classes"):
        top_k_targets(scores[:, :1], y * 0, 1)


def test_targeted_attacks_fool_a_vote_that_untargeted_ones_cannot():
    # Each head's nearest wrong class is its own, so untargeted losses scatter the heads; only one
    # class, far in every head, moves all of them at once (attack_helpers.ScatterVote).
    eps = 0.1
    model = ScatterVote(eps)
    x, y = scatter_data(32)
    assert not is_adversarial(model, x, y).any()
    with torch.no_grad():
        ranked = top_k_targets(ensemble_log_probs(model(x), torch.ones(3)), y, 9)
    assert (ranked[:, :3].sort(1).values == torch.tensor([1, 2, 3])).all() and (ranked[:, 3] == 4).all()

    def fooled(attack):
        return is_adversarial(model, attack(x, y), y, "vote").float().mean().item()

    # The same budget per sample: nine targeted runs against nine untargeted restarts.
    untargeted = max(fooled(attack(model, objective, eps=eps, steps=10, restarts=9, seed=0))
                     for attack in (APGD, PGD) for objective in ("ensemble", "dlr-ensemble", "vote-margin", "joint"))
    targeted = {objective: fooled(APGDT(model, objective, eps=eps, steps=10, target_classes=9, seed=0))
                for objective in ("dlr-t-ensemble", "vote-margin", "ensemble")}
    targeted["PGDT"] = fooled(PGDT(model, "vote-margin", eps=eps, steps=10, target_classes=9, seed=0))
    assert untargeted <= 0.1
    assert min(targeted.values()) >= 0.9, targeted
    # A head alone is easy to flip (to its own class): the vote, not the heads, is what resists.
    for k in range(3):
        x_adv = APGD(model, f"head:{k}", eps=eps, steps=10, rule="public", seed=0)(x, y)
        with torch.no_grad():
            assert (model(x_adv)[k].argmax(1) == k + 1).float().mean() >= 0.9
        assert not is_adversarial(model, x_adv, y, "vote").any()


def test_apgdt_judges_success_by_the_rule_and_runs_each_target_on_the_robust_samples():
    model = trained_aux_model()
    x, y = dataset(48, seed=6)
    attack = APGDT(model, eps=0.08, steps=8, target_classes=3, seed=0)
    with batch_sizes(model.trunk) as sizes:
        x_adv = attack(x, y)
    fooled = attack.success(x_adv, y)
    assert 0 < fooled.float().mean() < 1
    with torch.no_grad():
        assert torch.equal(fooled, rule_predict(model(x_adv), "vote", model.alpha) != y)  # untargeted success
    # The clean forward, then per target: 9 forwards of its run and one judging it, each run on the
    # samples still robust, and within a run fooled samples drop out.
    assert sizes[0] == 48 and len(sizes) <= 1 + 3 * 10
    runs = [sizes[1 + 10 * t: 1 + 10 * (t + 1)] for t in range(3)]
    assert runs[0][0] == 48 and all(run[:9] == sorted(run[:9], reverse=True) for run in runs if run)
    assert all(later[0] < earlier[0] for earlier, later in zip(runs, runs[1:]) if later)
    assert min(sizes) >= (~fooled).sum() and sum(sizes) < 0.8 * 48 * len(sizes)


def test_apgdt_aims_the_objective_at_each_target_with_the_true_label():
    model = trained_aux_model()
    x, y = dataset(16, seed=6)
    calls = []

    @needs_true_label
    def spy(logits, target, alpha, y_true):
        calls.append((target.clone(), y_true.clone()))
        return ensemble_log_probs(logits, alpha).gather(1, target[:, None]).squeeze(1)

    APGDT(model, spy, eps=0.01, steps=2, target_classes=3, seed=0)(x, y)
    with torch.no_grad():
        logits = model(x)
    expected = top_k_targets(ensemble_log_probs(logits, model.alpha), y, 3)
    targets_seen = {tuple(target.tolist()) for target, _ in calls}
    assert all(not (target == y_true).any() for target, y_true in calls)
    assert tuple(expected[:, 0].tolist()) in targets_seen  # the first run covers every sample
    # A plain three-argument callable gets the target as its label.
    seen = []
    APGDT(model, lambda z, labels, alpha: seen.append(labels) or z[0].gather(1, labels[:, None]).squeeze(1),
          eps=0.01, steps=1, target_classes=1, seed=0)(x, y)
    assert torch.equal(seen[0], expected[:, 0])


def test_apgdt_leaves_inputs_the_rule_already_gets_wrong():
    model = trained_plain_model()
    x, y = dataset(8, seed=6)
    wrong = (y + 1) % CLASSES
    assert torch.equal(APGDT(model, eps=0.1, steps=3, seed=0)(x, wrong), x)


def test_targeted_classes_are_registered_and_configured():
    assert {"APGDT", "PGDT", "FMN"} <= set(list_attacks("white-box"))
    assert get_attack("APGDT") is APGDT
    attack = APGDT(aux_model(), eps=0.03, target_classes=5, precision="bf16")
    assert repr(attack) == ("APGDT(objective='dlr-t-ensemble', eps=0.03, norm='linf', rule='vote', targeted=False, "
                            "precision='bf16', target_classes=5)")
    assert not attack.targeted and attack.objective.needs_true_label


def test_screening_finds_the_far_class_that_one_target_by_score_misses():
    """ScatterVote: only class 4, fourth by score, fools the vote. One target by score never aims there;
    a short run at every candidate finds it."""
    eps = 0.1
    model = ScatterVote(eps)
    x, y = scatter_data(32)

    def fooled(attack):
        return is_adversarial(model, attack(x, y), y, "vote").float().mean().item()

    assert fooled(APGDT(model, eps=eps, steps=10, target_classes=1, seed=0)) <= 0.1
    assert fooled(APGDT(model, eps=eps, steps=10, target_classes=1, target_candidates=9, screen_steps=3,
                        seed=0)) >= 0.9


class RecordedAPGDT(APGDT):
    """APGDT keeping each run as ``(target, steps, result, objective at the result)``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.runs = []

    def _run(self, x, y, target=None, steps=None):
        x_adv = super()._run(x, y, target, steps)
        with torch.no_grad():
            self.runs.append((target, steps, x_adv, self.loss(self.logits(x_adv), y, target)))
        return x_adv


def test_screening_runs_every_candidate_briefly_then_the_closest_in_full():
    model = trained_aux_model()
    x, y = dataset(8, seed=6)
    # An eps too small to fool anything: every run sees every sample, and no run returns early.
    attack = RecordedAPGDT(model, eps=1e-5, steps=4, target_classes=2, target_candidates=5, screen_steps=2, seed=0)
    x_adv = attack(x, y)
    assert not attack.success(x_adv, y).any() and (x_adv - x).abs().max() <= 1e-5
    candidates, runs = CLASSES - 1, attack.runs  # all the other classes (fewer than the 5 asked for)
    assert [steps for _, steps, _, _ in runs] == [2] * candidates + [None] * 2
    screened = torch.stack([target for target, _, _, _ in runs[:candidates]], 1)
    reached = torch.stack([loss for _, _, _, loss in runs[:candidates]], 1)
    closest = screened.gather(1, reached.argsort(dim=1, descending=True, stable=True)[:, :2])
    assert torch.equal(torch.stack([target for target, _, _, _ in runs[candidates:]], 1), closest)
    with pytest.raises(ValueError, match="screen_steps must be >= 1"):
        APGDT(model, target_classes=1, target_candidates=3, screen_steps=0)
    with pytest.raises(ValueError, match="screen_steps needs target_candidates"):
        APGDT(model, target_classes=1, screen_steps=3)
    assert APGDT(model, target_classes=1, target_candidates=3, screen_steps=3).config()["screen_steps"] == "3"


def test_a_longer_run_goes_only_where_the_best_target_came_close():
    model = trained_aux_model()
    x, y = dataset(8, seed=6)

    def attack(margin):
        # An eps too small to fool anything, large enough for a longer run to reach more than the short ones.
        chosen = RecordedAPGDT(model, eps=1e-3, steps=4, target_classes=2, target_candidates=5, screen_steps=2,
                               close_steps=7, close_margin=margin, seed=0)
        return chosen, chosen(x, y)

    first, _ = attack(0.0)
    assert [steps for _, steps, _, _ in first.runs] == [2] * (CLASSES - 1) + [None] * 2  # nothing within 0
    full = first.runs[CLASSES - 1:]
    reached = torch.stack([loss for _, _, _, loss in full], 1)
    margin = reached.max(1).values.median().item() * -1  # half of the samples ended closer than this
    chosen, x_adv = attack(margin)
    *_, (target, steps, x_retry, retry_reached) = chosen.runs
    best, best_run = reached.max(1)
    close = best > -margin
    assert steps == 7 and len(target) == close.sum() < len(x)
    # The retry aims at the finalist that came closest, on the close samples only; its result stands where it
    # reached more, each sample's best full run elsewhere (nothing fools at this eps).
    finalists = torch.stack([t for t, _, _, _ in full], 1)
    assert torch.equal(target, finalists[close].gather(1, best_run[close].unsqueeze(1)).squeeze(1))
    expected = torch.stack([x_full for _, _, x_full, _ in full], 1)[torch.arange(len(x)), best_run]
    reached_more = retry_reached > best[close]
    assert reached_more.any() and not reached_more.all()  # both cases happen here
    expected[close] = torch.where(reached_more.view(-1, 1, 1, 1), x_retry, expected[close])
    # (to float rounding: the attack's final projection onto the ball; the ball is 2e-3 wide)
    assert (x_adv - expected).abs().max() < 1e-6 and not chosen.success(x_adv, y).any()
    with pytest.raises(ValueError, match="close_steps and close_margin must be >= 0"):
        APGDT(model, close_steps=-1)
    assert chosen.config()["close_steps"] == "7" and "close_steps" not in APGDT(model).config()


def test_close_restarts_run_the_longer_run_again_from_new_starts_and_keep_each_samples_best():
    model = trained_aux_model()
    x, y = dataset(8, seed=6)
    # Every sample close (margin 10), nothing fooled at this eps: each of the 3 longer runs sees every sample.
    chosen = RecordedAPGDT(model, eps=1e-3, steps=4, target_classes=2, target_candidates=5, screen_steps=2,
                           close_steps=7, close_margin=10.0, close_restarts=3, seed=0)
    x_adv = chosen(x, y)
    full = chosen.runs[CLASSES - 1:CLASSES + 1]
    retries = chosen.runs[CLASSES + 1:]
    assert [steps for _, steps, _, _ in retries] == [7] * 3
    assert all(torch.equal(target, retries[0][0]) for target, _, _, _ in retries)  # one aim per sample, 3 starts
    assert not torch.equal(retries[0][2], retries[1][2])  # new random starts
    reached = torch.stack([loss for _, _, _, loss in retries], 1)
    best_retry = torch.stack([x_run for _, _, x_run, _ in retries], 1)[torch.arange(len(x)), reached.argmax(1)]
    before = torch.stack([loss for _, _, _, loss in full], 1).max(1).values
    better = reached.max(1).values > before
    assert better.any()
    assert (x_adv[better] - best_retry[better]).abs().max() < 1e-6 and not chosen.success(x_adv, y).any()
    assert chosen.config()["close_restarts"] == "3" and "close_restarts" not in APGDT(model, close_steps=7).config()
    with pytest.raises(ValueError, match="close_restarts must be >= 1"):
        APGDT(model, close_steps=7, close_restarts=0)


def test_boundary_ranking_picks_the_nearest_boundary_not_the_likeliest_class():
    """On a linear model the linearised distance is the exact L-inf distance to each class's boundary,
    (z_y - z_t) / ||w_y - w_t||_1: a likely class behind a steep boundary ranks after an unlikely near one."""
    torch = pytest.importorskip("torch")
    from auxsurgery.attacks.targeted import boundary_distances
    from torch import nn
    numel = 16
    linear = nn.Linear(numel, 3)
    with torch.no_grad():
        linear.weight.zero_()
        linear.weight[1].fill_(0.01)  # class 1: likely (logit -1) but the weights barely move it
        linear.weight[2].fill_(1.0)   # class 2: unlikely (logit -3) but its boundary is steep
        linear.bias.copy_(torch.tensor([0.0, -1.0, -3.0]))
    model = nn.Sequential(nn.Flatten(), linear)
    x, y = torch.full((1, 1, 4, 4), 0.0), torch.tensor([0])
    xg = x.clone().requires_grad_(True)
    scores = torch.log_softmax(model(xg), -1)
    distances = boundary_distances(scores, xg, y, torch.tensor([[1, 2]]), "linf")
    torch.testing.assert_close(distances, torch.tensor([[1.0 / (0.01 * numel), 3.0 / numel]]))
    attack = APGDT(model, eps=0.2, steps=2, target_classes=1, target_candidates=2, seed=0)
    with torch.no_grad():
        logits = model(x).unsqueeze(0)
    assert attack.targets(logits, y).tolist() == [[1]]  # by score: the likeliest
    assert attack.targets(model(xg).unsqueeze(0), y, xg).tolist() == [[2]]  # by distance: the nearest


class _TieModel(torch.nn.Module):
    """Four heads over classes (true 0, target 1, other 2), read from two groups of pixels: the mean ``a`` of the
    first 8 flips heads 0 and 1 to the target (above 0.55); the mean ``b`` of the last 8 dilutes their confidence
    with class 2 as it rises, and leans heads 2 and 3, which never flip within eps 0.1, slightly toward the target.
    Pulling every head toward the target (the targeted vote margin) drives both up: a 2-2 split whose tie-break,
    the summed softmax, stays with the true class. Fooling the vote takes ``b`` down as well."""

    num_heads = 4

    def __init__(self):
        super().__init__()
        self.register_buffer("alpha", torch.ones(4))

    def forward(self, x):
        pixels = x.flatten(1)
        a, b = pixels[:, :8].mean(1), pixels[:, 8:].mean(1)
        zero = torch.zeros_like(a)
        flip = 40 * (a - 0.55)
        target_heads = torch.stack([zero, flip, flip - 10 * (0.6 - b) - 0.05], -1)
        true_heads = torch.stack([zero, -1.2 + 0.5 * (b - 0.5), zero - 4], -1)
        return torch.stack([target_heads, target_heads, true_heads, true_heads])


def test_vote_tie_breaks_the_two_two_split_the_targeted_vote_margin_leaves():
    """The strong suite's targeted stage on the vote: the targeted vote margin leaves every point at a 2-2 tie
    broken toward the true class; vote-tie, which also raises the ensemble's score of the target over the true
    class's (the tie-break), fools the vote on every one."""
    model = _TieModel()
    x, y = torch.full((16, 1, 4, 4), 0.5), torch.zeros(16, dtype=torch.long)
    assert torch.equal(rule_predict(model(x), "vote", model.alpha), y)

    def attack(objective):
        return APGDT(model, objective, eps=0.1, steps=100, target_classes=1, rule="vote", seed=0)(x, y)

    tied = attack("vote-margin")
    assert not is_adversarial(model, tied, y, "vote").any()
    votes = model(tied).argmax(-1)  # [heads, points]
    assert (votes[:2] == 1).all() and (votes[2:] == 0).all()  # split 2-2 between target and true class
    broken = attack("vote-tie")
    assert (broken - x).abs().max() <= 0.1 + 1e-6 and is_adversarial(model, broken, y, "vote").all()
