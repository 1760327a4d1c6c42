"""Attacks: threat-model bounds, model hygiene, repeatability, cost per step, success by the rule."""
import math

import pytest
import torch
from torch import nn
from hypothesis import given, settings
from hypothesis import strategies as st

from attack_helpers import (
    CLASSES, SHAPE, NearTie, aux_model, batch_sizes, count_forwards, dataset, legacy_attack, plain_model,
    trained_aux_model, trained_plain_model,
)
from auxsurgery.attacks import (
    APGD, APGDT, CW, FGSM, FMN, PGD, PGDT, Attack, Boundary, Square, Transfer, is_adversarial,
)
from auxsurgery.attacks.base import enforce_bounds, frozen, per_sample
from auxsurgery.model import rule_predict

pytestmark = pytest.mark.usefixtures("single_thread")

NUMEL = math.prod(SHAPE)

# Every attack, small enough for property tests: (norms it supports, factory(model, eps, norm, seed)).
ATTACKS = {
    "FGSM": (("linf", "l2"), lambda m, eps, norm, seed: FGSM(m, eps=eps, norm=norm)),
    "PGD": (("linf", "l2"), lambda m, eps, norm, seed: PGD(m, "joint", eps=eps, norm=norm, steps=3,
                                                          restarts=2, seed=seed)),
    "APGD": (("linf", "l2"), lambda m, eps, norm, seed: APGD(m, "dlr-ensemble", eps=eps, norm=norm, steps=5,
                                                            restarts=2, seed=seed)),
    "CW": (("l2",), lambda m, eps, norm, seed: CW(m, "vote-margin", eps=eps, steps=5, search_steps=2, lr=0.1)),
    "Square": (("linf", "l2"), lambda m, eps, norm, seed: Square(m, "vote-margin", eps=eps, norm=norm, queries=20,
                                                                seed=seed)),
    "Boundary": (("l2",), lambda m, eps, norm, seed: Boundary(m, eps=eps, steps=10, init_trials=5, seed=seed)),
    "Transfer": (("linf", "l2"), lambda m, eps, norm, seed: Transfer(
        m, PGD(plain_model(seed=1), eps=eps, norm=norm, steps=2, seed=seed))),
    "APGDT": (("linf", "l2"), lambda m, eps, norm, seed: APGDT(m, eps=eps, norm=norm, steps=3, target_classes=2,
                                                              seed=seed)),
    "PGDT": (("linf", "l2"), lambda m, eps, norm, seed: PGDT(m, "vote-margin", eps=eps, norm=norm, steps=2, restarts=2,
                                                            target_classes=2, seed=seed)),
    "FMN": (("linf", "l2"), lambda m, eps, norm, seed: FMN(m, eps=eps, norm=norm, steps=6)),
    "APGD-bf16": (("linf", "l2"), lambda m, eps, norm, seed: APGD(m, "vote-margin", eps=eps, norm=norm, steps=3,
                                                                 seed=seed, precision="bf16")),
}


def _state(model):
    return ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()])


def assert_in_threat_model(x_adv, x, eps, norm):
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and not x_adv.requires_grad
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    delta = x_adv.double() - x.double()
    if norm == "linf":
        # Exact, in the input's dtype and in float64.
        assert (x_adv - x).abs().max() <= eps
        assert delta.abs().max() <= eps
    else:
        # Exact too: the norm computed in the input's dtype and in float64.
        assert (x_adv - x).flatten(1).norm(dim=1).max() <= eps
        assert delta.flatten(1).norm(dim=1).max() <= eps


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(sorted(ATTACKS)),
    norm=st.sampled_from(["linf", "l2"]),
    eps_fraction=st.floats(0.001, 1.0),
    seed=st.integers(0, 2**31 - 1),
    use_aux=st.booleans(),
)
def test_outputs_stay_in_threat_model_and_leave_model_and_inputs_untouched(
        name, norm, eps_fraction, seed, use_aux):
    norms, make = ATTACKS[name]
    norm = norm if norm in norms else norms[0]
    eps = eps_fraction * (1.0 if norm == "linf" else math.sqrt(NUMEL))
    model = aux_model(seed=seed % 3) if use_aux else plain_model(seed=seed % 3)
    # A mixed state the attack must hand back exactly: training, one frozen submodule, one frozen weight.
    model.train()
    next(model.children()).eval()
    next(model.parameters()).requires_grad_(False)
    before = _state(model)
    x, y = dataset(4, seed=seed)
    x_before = x.clone()

    x_adv = make(model, eps, norm, seed)(x, y)

    assert_in_threat_model(x_adv, x, eps, norm)
    assert torch.equal(x, x_before)
    assert _state(model) == before


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("name", sorted(name for name, (norms, _) in ATTACKS.items() if "l2" in norms))
def test_every_l2_attack_stays_inside_the_ball_and_the_box_exactly(name, dtype):
    # Budgets from a sliver of the box's diameter to most of it: the large ones push many pixels onto the box's
    # faces, where a rescaled perturbation is clipped; the small ones stay on the sphere.
    model = aux_model(seed=1).to(dtype)
    x, y = dataset(6, seed=4)
    x = x.to(dtype)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # models a factory builds itself (Transfer's source) in dtype too
    try:
        for eps in (0.05, 0.5, 0.5 * math.sqrt(NUMEL)):
            x_adv = ATTACKS[name][1](model, eps, "l2", 0)(x, y)
            assert_in_threat_model(x_adv, x, eps, "l2")
    finally:
        torch.set_default_dtype(default)


def test_state_is_restored_when_the_attack_raises():
    model = aux_model()
    model.train()
    before = _state(model)
    with count_forwards(model) as calls:
        def explode(_module, _inputs):
            if calls[0] == 3:
                raise RuntimeError("boom")

        model.register_forward_pre_hook(explode)
        with pytest.raises(RuntimeError, match="boom"):
            PGD(model, steps=10)(*dataset(4))
    assert calls[0] == 3 and _state(model) == before and model.training


def test_the_model_runs_in_eval_mode_without_parameter_gradients():
    model = aux_model()
    model.train()
    seen = []
    model.register_forward_pre_hook(
        lambda m, _: seen.append((m.training, any(p.requires_grad for p in m.parameters()))))
    PGD(model, steps=2)(*dataset(4))
    assert seen == [(False, False)] * 2 and model.training
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("make, forwards", [
    (lambda m: FGSM(m), 1),
    (lambda m: PGD(m, "joint", steps=7), 7),
    (lambda m: APGD(m, "ensemble", steps=9), 10),  # one forward at the random start
    (lambda m: CW(m, steps=4, search_steps=2), 8),
    (lambda m: FMN(m, steps=4), 4),
])
def test_one_trunk_pass_per_step(make, forwards):
    # The AuxModel yields every head from one trunk pass: the backbone never runs twice a step.
    model = aux_model()
    with count_forwards(model.trunk) as trunk_calls:
        make(model)(*dataset(4))
    assert trunk_calls[0] == forwards


def test_seeds_repeat_runs_and_leave_the_global_rng_alone():
    model = trained_aux_model()
    x, y = dataset(8, seed=3)
    rng = torch.get_rng_state()
    first = PGD(model, eps=0.1, steps=3, seed=5)(x, y)
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(PGD(model, eps=0.1, steps=3, seed=5)(x, y), first)
    assert not torch.equal(PGD(model, eps=0.1, steps=3, seed=6)(x, y), first)
    assert torch.equal(Square(model, eps=0.1, queries=30, seed=5)(x, y),
                       Square(model, eps=0.1, queries=30, seed=5)(x, y))


# ---- first fooling iterates; fooled samples stop costing compute -------------------------


def _pgd_trajectory(attack, x, y):
    """Every iterate of a full-batch PGD run ``[steps + 1, B, ...]`` and whether iterates 0..steps-1 fool."""
    attack.generator = torch.Generator().manual_seed(attack.seed)
    with frozen(attack.model):
        ball = attack.ball(x)
        x_adv = ball.random_point(attack.generator)
        iterates, fooled = [x_adv], []
        for _ in range(attack.steps):
            _, grad, logits = attack.loss_and_grad(x_adv, y)
            fooled.append(attack.fooled(logits, y))
            x_adv = ball.step(x_adv, grad, attack.step_size)
            iterates.append(x_adv)
    return torch.stack(iterates), torch.stack(fooled)


def test_pgd_returns_each_samples_first_fooling_iterate():
    model = trained_aux_model()
    x, y = dataset(64, seed=4)
    attack = PGD(model, "vote-margin", eps=0.08, steps=10, seed=0)
    x_adv = attack(x, y)

    iterates, fooled = _pgd_trajectory(attack, x, y)
    ever = fooled.any(0)
    first = fooled.int().argmax(0)  # the first iterate that fools (where any does)
    expected = torch.where(per_sample(ever, x), iterates[first, torch.arange(len(y))], iterates[-1])
    assert torch.equal(x_adv, enforce_bounds(expected, x, attack.eps, attack.norm))
    # Part way: fooled after the start, and some never; the first fooling iterate is one the last
    # iterate may no longer be (the vote-margin stops pulling once the vote flips).
    assert (first[ever] > 0).any() and not ever.all()
    last_fools = is_adversarial(model, iterates[-1], y)
    assert (attack.success(x_adv, y) | ~last_fools).all()
    assert attack.success(x_adv, y).sum() > last_fools.sum()


@pytest.mark.parametrize("attack_cls, steps", [(PGD, 10), (APGD, 20)])
@pytest.mark.parametrize("norm, eps", [("linf", 0.08), ("l2", 1.0)])
def test_samples_that_never_fool_follow_the_old_trajectories(attack_cls, steps, norm, eps):
    # The reference is the code before fooled samples were dropped (attack_helpers.legacy_attack).
    model = trained_aux_model()
    x, y = dataset(128, seed=4)
    attack = attack_cls(model, "dlr-ensemble", eps=eps, norm=norm, steps=steps, seed=0)
    new, old = attack(x, y), legacy_attack(attack, x, y)
    never = ~attack.success(new, y)
    assert never.sum() >= 10
    if norm == "linf":
        assert torch.equal(new[never], old[never])
    else:  # a sample left alone in the working batch runs batch-size-1 kernels: last-bit differences
        torch.testing.assert_close(new[never], old[never], rtol=0, atol=1e-6)
    assert (~attack.success(old, y) | ~never).all()  # whatever the old run fooled, the new one fools


@pytest.mark.parametrize("attack_cls", [PGD, APGD])
def test_other_samples_in_the_batch_leave_a_robust_samples_run_alone(attack_cls):
    # A run draws its randomness (the start) for the whole batch first and nothing afterwards: a
    # sample's start depends on the seed and its position (L-inf), as before, and samples after it
    # that fool and drop out along the way change nothing for it.
    model = trained_aux_model()
    x, y = dataset(32, seed=4)
    more_x, more_y = dataset(32, seed=5)
    attack = attack_cls(model, "vote-margin", eps=0.08, steps=10, seed=0)
    alone = attack(x, y)
    together = attack(torch.cat([x, more_x]), torch.cat([y, more_y]))
    never = ~attack.success(alone, y)
    assert never.sum() >= 5 and attack.success(together[32:], more_y).any()
    assert torch.equal(together[:32][never], alone[never])


@pytest.mark.parametrize("make, forwards", [
    (lambda m: PGD(m, "vote-margin", eps=0.08, steps=10, seed=0), 10),
    (lambda m: APGD(m, "vote-margin", eps=0.08, steps=10, seed=0), 11),
])
def test_fooled_samples_stop_costing_compute(make, forwards):
    model = trained_aux_model()
    x, y = dataset(64, seed=4)
    with batch_sizes(model.trunk) as sizes:
        x_adv = make(model)(x, y)
    robust = (~is_adversarial(model, x_adv, y)).sum().item()
    assert len(sizes) == forwards and sizes[0] == 64
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] >= robust > 0
    assert sum(sizes) < 0.8 * 64 * forwards  # the fooled samples left the batch part way


def test_a_batch_fooled_from_the_start_costs_one_forward():
    model = trained_plain_model()
    x, y = dataset(8)
    wrong = (y + 1) % CLASSES  # the clean inputs already "fool" these labels
    # FGSM is the classic one step (every input takes it): only the iterative attacks stop early.
    for attack in (PGD(model, steps=10, random_start=False), APGD(model, eps=1e-3, steps=10, seed=0)):
        with count_forwards(model) as calls:
            x_adv = attack(x, wrong)
        assert calls[0] == 1, attack
        assert is_adversarial(model, x_adv, wrong).all()
        if not isinstance(attack, APGD):  # no random start: the inputs themselves are returned
            assert torch.equal(x_adv, x)


# ---- bfloat16 steps ------------------------------------------------------------------------


def test_bf16_verdicts_are_verified_in_fp32():
    model = NearTie()
    x, _ = dataset(8)
    y = torch.ones(8, dtype=torch.long)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert (model(x).argmax(1) != y).all()  # bfloat16 alone calls every sample fooled...
    assert not is_adversarial(model, x, y).any()  # ...fp32 none, and no budget changes that
    for attack, steps in ((PGD(model, eps=0.01, steps=5, seed=0, precision="bf16"), 5),
                          (APGD(model, eps=0.01, steps=5, seed=0, precision="bf16"), 6)):
        with count_forwards(model) as calls:
            x_adv = attack(x, y)
        # Every step ran on every sample, each bfloat16 verdict re-checked by one fp32 forward; counted
        # as fooled, the samples would have left after the first forward.
        assert calls[0] == 2 * steps, attack
        assert not attack.success(x_adv, y).any()
    fmn = FMN(model, steps=5, precision="bf16")
    assert torch.isinf(fmn.minimum_norms(x, y)).all()  # no fooling norm 0 from bfloat16's tie


def test_bf16_steps_run_under_autocast_and_find_what_fp32_finds():
    model = trained_aux_model()
    x, y = dataset(64, seed=4)
    seen = []
    handle = model.heads[0].register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    try:
        rates = {precision: is_adversarial(model, APGD(model, "vote-margin", eps=0.08, steps=10, seed=0,
                                                       precision=precision)(x, y), y).float().mean().item()
                 for precision in ("fp32", "bf16")}
    finally:
        handle.remove()
    assert torch.bfloat16 in seen and torch.float32 in seen  # bf16 steps, fp32 verification forwards
    assert 0.2 < rates["fp32"] < 1 and abs(rates["fp32"] - rates["bf16"]) <= 0.05
    assert "precision='bf16'" in repr(APGD(model, precision="bf16")) and "precision='fp32'" in repr(PGD(model))
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16"):
        PGD(model, precision="fp16")


@pytest.mark.parametrize("make, old, new", [
    (lambda m, **kw: APGD(m, eps=0.08, steps=3, seed=0, **kw), "dtype", ("precision", "bf16")),
    (lambda m, **kw: PGD(m, eps=0.08, steps=3, seed=0, **kw), "dtype", ("precision", "bf16")),
    (lambda m, **kw: FGSM(m, eps=0.08, **kw), "dtype", ("precision", "bf16")),
    (lambda m, **kw: FMN(m, steps=3, **kw), "dtype", ("precision", "bf16")),
    (lambda m, **kw: APGDT(m, eps=0.08, steps=2, seed=0, **kw), "n_target_classes", ("target_classes", 2)),
    (lambda m, **kw: PGDT(m, eps=0.08, steps=2, seed=0, **kw), "n_target_classes", ("target_classes", 2)),
    (lambda m, **kw: Square(m, eps=0.08, seed=0, **kw), "n_queries", ("queries", 20)),
])
def test_renamed_arguments_still_work_until_0_3_with_a_warning(make, old, new):
    name, value = new
    model = aux_model()
    x, y = dataset(8, seed=3)
    with pytest.warns(DeprecationWarning, match=rf"\(\): {old}= is deprecated and will be removed in 0\.3\.0; use "
                                                rf"{name}="):
        deprecated = make(model, **{old: value})
    current = make(model, **{name: value})
    assert getattr(deprecated, name) == value and repr(deprecated) == repr(current)
    assert torch.equal(deprecated(x, y), current(x, y))
    with pytest.raises(TypeError, match=f"got both {old}= and its new name {name}=: pass {name}= only"):
        make(model, **{old: value, name: value})


@pytest.mark.parametrize("rule", ["vote", "score", "public", "private"])
def test_is_adversarial_uses_the_decision_rule(rule):
    model = trained_aux_model()
    x, y = dataset(64, seed=4)
    x_adv = PGD(model, "head:1", eps=0.12, steps=5, seed=0)(x, y)
    with torch.no_grad():
        expected = rule_predict(model(x_adv), rule, model.alpha) != y
    assert torch.equal(is_adversarial(model, x_adv, y, rule), expected)


def test_rules_disagree_on_attacks_aimed_at_one_head():
    # Fooling head 0 (the static adversary) fools the vote less often: the paper's point.
    model = trained_aux_model()
    x, y = dataset(128, seed=4)
    x_adv = PGD(model, "public", eps=0.09, steps=10, seed=0)(x, y)
    public = is_adversarial(model, x_adv, y, "public").float().mean()
    vote = is_adversarial(model, x_adv, y, "vote").float().mean()
    assert public > vote


def test_restarts_only_add_successes():
    model = trained_plain_model()
    x, y = dataset(64, seed=5)
    for attack in (PGD, APGD):
        one = attack(model, eps=0.07, steps=5, seed=1)
        three = attack(model, eps=0.07, steps=5, restarts=3, seed=1)
        fooled_one, fooled_three = one.success(one(x, y), y), three.success(three(x, y), y)
        # The first restart replays the single run (same seed): restarts can only add to it.
        assert (fooled_three | ~fooled_one).all()
        assert fooled_three.sum() >= fooled_one.sum()


def test_adaptive_objectives_hit_what_they_aim_at():
    model = trained_aux_model()
    x, y = dataset(128, seed=4)
    assert not is_adversarial(model, x, y).any()

    def fooled(objective, rule):
        attack = PGD(model, objective, eps=0.09, steps=10, seed=0)
        return is_adversarial(model, attack(x, y), y, rule).float().mean()

    # Adp-PGD (joint) reaches the aux heads that the static attack misses...
    assert fooled("joint", "private") > fooled("public", "private") + 0.05
    # ...and the vote surrogate fools the majority vote more than the static attack and the
    # paper's joint loss do: the joint loss is not the strongest adaptive attack on a vote.
    assert fooled("vote-margin", "vote") > fooled("public", "vote") + 0.03
    assert fooled("vote-margin", "vote") > fooled("joint", "vote") + 0.1


def test_targeted_attacks_reach_the_target():
    model = trained_plain_model()
    x, y = dataset(32, seed=7)
    target = (y + 1) % 4
    for attack in (PGD(model, eps=0.3, steps=20, targeted=True, seed=0),
                   CW(model, steps=30, lr=0.05, targeted=True),
                   Square(model, eps=0.3, queries=300, targeted=True, seed=0)):
        x_adv = attack(x, target)
        assert (model(x_adv).argmax(1) == target).float().mean() >= 0.9, attack


def test_cw_finds_small_adversarials_and_returns_clean_inputs_when_it_fails():
    model = trained_plain_model()
    x, y = dataset(32, seed=8)
    x_adv = CW(model, steps=50, lr=0.05, search_steps=4)(x, y)
    changed = (x_adv != x).flatten(1).any(1)
    fooled = model(x_adv).argmax(1) != y
    assert fooled.float().mean() >= 0.9
    assert torch.equal(changed, fooled)  # what it returns either fools or is untouched
    # Minimum-norm: much closer than the PGD-L2 budget that fools the same samples.
    pgd = PGD(model, eps=3.0, norm="l2", steps=20, seed=0)
    assert (model(pgd(x, y)).argmax(1) != y).float().mean() >= 0.9
    assert (x_adv - x).flatten(1).norm(dim=1)[fooled].median() < 3.0


def test_square_needs_no_gradients():
    class NoGrad(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        @torch.no_grad()
        def forward(self, x):
            return self.model(x)

    model = NoGrad(trained_plain_model())
    x, y = dataset(32, seed=9)
    # A gradient attack sees a zero gradient (no graph reaches the input) and leaves the points as they were...
    blind = PGD(model, eps=0.15, random_start=False)(x, y)
    assert torch.equal(blind, x)
    x_adv = Square(model, eps=0.15, queries=200, seed=0)(x, y)  # ...the score-based one needs none
    assert is_adversarial(model, x_adv, y).float().mean() > 0.5


def test_boundary_walks_towards_the_input():
    model = trained_plain_model()
    x, y = dataset(16, seed=10)
    start = Boundary(model, steps=0, seed=0)(x, y)
    walked = Boundary(model, steps=150, seed=0)(x, y)
    assert is_adversarial(model, start, y).all() and is_adversarial(model, walked, y).all()
    dist_start = (start - x).flatten(1).norm(dim=1)
    dist_walked = (walked - x).flatten(1).norm(dim=1)
    assert (dist_walked <= dist_start + 1e-6).all()
    assert dist_walked.median() < 0.8 * dist_start.median()


class Brightness(nn.Module):
    """Class 1 for bright images, else 0: every uniform-noise draw (mean 0.5) is class 1."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(20.0))

    def forward(self, x):
        z = self.scale * (x.flatten(1).mean(1) - 0.4)
        return torch.stack([-z, z], 1)


def test_boundary_starts_from_other_inputs_when_noise_never_fools():
    x = torch.cat([torch.full((4, 1, 4, 4), 0.2), torch.full((4, 1, 4, 4), 0.7)])
    y = torch.tensor([0] * 4 + [1] * 4)
    model = Brightness()
    start = Boundary(model, steps=0, init_trials=5, seed=0)(x, y)
    # Noise only fools the dark images; the bright ones start from a dark input of the batch.
    assert is_adversarial(model, start, y).all()


def test_transfer_crafts_on_the_surrogate_and_judges_on_the_target():
    target = trained_aux_model()
    x, y = dataset(16, seed=11)
    # The paper's static adversary: PGD on the public backbone, judged by the vote.
    transfer = Transfer(target, PGD(target.public_model(), eps=0.1, steps=5, seed=0))
    with count_forwards(target) as target_calls:
        x_adv = transfer(x, y)
    assert target_calls[0] == 0
    # Same examples as attacking the AuxModel through its public head (one trunk pass), judged by
    # that head alone as the surrogate judges them (PGD keeps each sample's first fooling iterate).
    assert torch.equal(x_adv, PGD(target, "public", eps=0.1, steps=5, seed=0, rule="public")(x, y))
    assert torch.equal(transfer.success(x_adv, y), is_adversarial(target, x_adv, y, "vote"))


# ---- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, match", [
    (dict(eps=-0.1), r"eps must lie in \[0, 1\]"),
    (dict(eps=1.5), r"eps must lie in \[0, 1\]"),
    (dict(eps=0.0, norm="l2"), "l2 eps must be > 0"),
    (dict(objective="adaptive"), "Valid objectives: public, ensemble, joint"),
    (dict(norm="l1"), "supports norm"),
    (dict(rule="majority"), "valid rules: vote, score"),
    (dict(steps=0), "steps and restarts must be >= 1"),
    (dict(restarts=2, random_start=False), "need random_start"),
])
def test_bad_configuration_is_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PGD(aux_model(), **kwargs)


def test_attack_specific_configuration_errors():
    with pytest.raises(ValueError, match=r"linf eps must lie in \[0, 1\]"):
        Square(aux_model(), eps=1.5)
    with pytest.raises(ValueError, match="l2 eps must be > 0"):
        CW(aux_model(), eps=-1.0)
    with pytest.raises(ValueError, match="no targeted form"):
        PGD(aux_model(), "dlr-public", targeted=True)
    with pytest.raises(ValueError, match="needs a perturbation budget"):
        PGD(aux_model(), eps=None)
    with pytest.raises(ValueError, match="at least one aux head"):
        PGD(plain_model(), rule="private")
    with pytest.raises(ValueError, match="needs the true labels besides the targets"):
        PGD(aux_model(), "dlr-t-ensemble", targeted=True)
    with pytest.raises(ValueError, match="target_classes must be >= 1"):
        APGDT(aux_model(), target_classes=0)
    with pytest.raises(ValueError, match="gamma"):
        FMN(aux_model(), gamma_init=1.5)
    with pytest.raises(ValueError, match="supports norm"):
        FMN(aux_model(), norm="l1")


@pytest.mark.parametrize("x_transform, match", [
    (lambda x: x * 2 - 1, "normalisation belongs inside the model"),
    (lambda x: x * 255, "normalisation belongs inside the model"),
])
def test_inputs_outside_the_pixel_box_are_refused(x_transform, match):
    x, y = dataset(4)
    with pytest.raises(ValueError, match=match):
        PGD(aux_model())(x_transform(x), y)


@pytest.mark.parametrize("labels", [
    torch.zeros(3, dtype=torch.long), torch.zeros(4, 1, dtype=torch.long), torch.zeros(4), [0, 1, 2, 3],
])
def test_wrong_labels_are_refused(labels):
    x, _ = dataset(4)
    with pytest.raises(ValueError, match=r"labels must be an integer tensor of shape \(4,\)"):
        FGSM(aux_model())(x, labels)


def test_l2_budget_larger_than_the_box_is_refused():
    x, y = dataset(4)
    with pytest.raises(ValueError, match="exceeds sqrt"):
        PGD(aux_model(), eps=math.sqrt(NUMEL) + 0.1, norm="l2")(x, y)


def test_square_needs_images():
    model = torch.nn.Sequential(torch.nn.Linear(6, 4))
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        Square(model, eps=0.1, queries=5)(torch.rand(3, 6), torch.zeros(3, dtype=torch.long))


def test_base_class_is_abstract():
    with pytest.raises(NotImplementedError):
        Attack(plain_model())(*dataset(2))


def test_paper_rows_take_every_step_without_early_stopping():
    """The paper's PGD (BIM) judges one set of examples by every rule: no sample stops at its first fool."""
    model = trained_plain_model()
    x, y = dataset(32, seed=4, noise=0.3)
    full = PGD(model, eps=0.1, steps=5, step_size=0.04, random_start=False, early_stop=False)
    with count_forwards(model) as calls:
        x_full = full(x, y)
    assert calls[0] == 5  # five full-batch steps
    x_manual = x.clone()
    for _ in range(5):  # the textbook loop: step along the sign of the gradient, project
        x_manual.requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(model(x_manual), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x_manual)
        x_manual = torch.min(torch.max(x_manual.detach() + 0.04 * grad.sign(), x - 0.1), x + 0.1).clamp(0, 1)
    torch.testing.assert_close(x_full, x_manual, atol=1e-6, rtol=0)
