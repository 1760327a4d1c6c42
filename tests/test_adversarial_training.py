"""Adversarial-training methods (auxsurgery.train.adversarial): registry, crafting objectives, cost, and
that each one buys worst-case accuracy over clean training on a task made to tell them apart."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from auxsurgery.attacks import PGD
from auxsurgery.attacks.objectives import get_objective
from auxsurgery.data import ImageTensorDataset
from auxsurgery.model import as_aux_model
from auxsurgery.train import AdversarialConfig, TrainConfig, finetune, get_training_method, list_training_methods
from auxsurgery.train.adversarial import adversarial_preset
from train_helpers import random_images, tiny_aux_model

EPS = 0.1


def robust_features_task(n: int, seed: int) -> ImageTensorDataset:
    """Two classes, two 4x4 channels (Tsipras et al.'s robust vs non-robust features, as images).

    Channel 0 is one robust feature: a flat image 0.3 away from grey, on the label's side 90% of the time
    (an eps of 0.1 cannot move it across). Channel 1 is weakly correlated noise: 0.04 per pixel towards the
    label under noise 0.1, predictive on clean images but flipped by any eps above 0.04. Clean training
    leans on channel 1 and is broken at eps 0.1; adversarial training has to keep to channel 0 (~90%).
    """
    generator = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=generator)
    side = (2 * y - 1).float().view(n, 1, 1, 1)
    flip = torch.where(torch.rand(n, generator=generator) < 0.1, -1.0, 1.0).view(n, 1, 1, 1)
    robust = (0.5 + 0.3 * side * flip).expand(n, 1, 4, 4)
    weak = 0.5 + 0.04 * side + 0.1 * torch.randn(n, 1, 4, 4, generator=generator)
    images = (torch.cat([robust, weak], 1).clamp(0, 1) * 255).round().to(torch.uint8)
    return ImageTensorDataset(images, y, ["dark", "bright"])


def _train(adversarial: AdversarialConfig | None, **overrides):
    aux = tiny_aux_model(in_channels=2, num_classes=2)
    config = TrainConfig.quick(epochs=6, batch_size=64, lr=1e-2, progress=False, adversarial=adversarial, **overrides)
    finetune(aux, robust_features_task(1024, seed=0), None, config)
    return aux.eval()


def _vote_accuracies(aux) -> tuple[float, float]:
    """(clean, worst case under a 20-step vote-margin PGD at EPS) of the vote on 256 test images."""
    test = robust_features_task(256, seed=1)
    x = torch.stack([test[i][0] for i in range(len(test))])
    y = torch.tensor([test[i][1] for i in range(len(test))])
    x_adv = PGD(aux, objective="vote-margin", eps=EPS, steps=20, rule="vote", seed=0)(x, y)
    with torch.no_grad():
        return ((aux.predict(x, rule="vote") == y).float().mean().item(),
                (aux.predict(x_adv, rule="vote") == y).float().mean().item())


@pytest.fixture(scope="module")
def clean_training():
    return _vote_accuracies(_train(None))


METHODS = {
    "pgd-joint": AdversarialConfig(eps=EPS, steps=5),
    "pgd-max-head": AdversarialConfig(eps=EPS, steps=5, objective="max-head"),
    "pgd-vote-margin": AdversarialConfig(eps=EPS, steps=5, objective="vote-margin"),
    "fgsm": AdversarialConfig(eps=EPS, method="fgsm"),
    "trades": AdversarialConfig(eps=EPS, method="trades", steps=5),
}


@pytest.mark.parametrize("name", METHODS)
def test_each_method_improves_worst_case_over_clean_training(name, clean_training):
    clean_accuracy, clean_worst = clean_training
    assert clean_accuracy > 0.95 and clean_worst < 0.3  # the task does tell robust training from clean
    accuracy, worst = _vote_accuracies(_train(METHODS[name]))
    assert worst > clean_worst + 0.4, (name, worst, clean_worst)
    assert accuracy > 0.8


def test_every_method_is_registered_and_a_typo_gets_the_close_match():
    assert set(list_training_methods()) >= {"pgd", "fgsm", "trades"}
    with pytest.raises(ValueError, match="unknown adversarial-training method 'trade'.*trades"):
        get_training_method("trade")
    with pytest.raises(ValueError, match="unknown adversarial-training method"):
        finetune(tiny_aux_model(), random_images(32), None,
                 TrainConfig.quick(epochs=1, batch_size=16, progress=False,
                                   adversarial=AdversarialConfig(eps=EPS, method="madry")))
    with pytest.raises(ValueError, match="unknown crafting objective 'max'"):
        AdversarialConfig(eps=EPS, objective="max")
    with pytest.raises(ValueError, match="beta"):
        AdversarialConfig(eps=EPS, method="trades", beta=float("nan"))


# ---- the crafting objectives attack what they claim ------------------------------------------------


def test_max_head_objective_is_the_worst_heads_cross_entropy_and_its_gradient():
    logits = torch.randn(3, 5, 4, dtype=torch.double, requires_grad=True)
    y = torch.randint(0, 4, (5,))
    objective = get_objective("max-head")
    per_head = torch.nn.functional.cross_entropy(logits.reshape(15, 4), y.repeat(3), reduction="none").view(3, 5)
    assert torch.allclose(objective(logits, y, torch.ones(3)), per_head.amax(0))
    # Away from ties the max is differentiable, and its gradient is the worst head's.
    assert torch.autograd.gradcheck(lambda z: objective(z, y, torch.ones(3)), (logits,))
    worst = per_head.argmax(0)
    (grad,) = torch.autograd.grad(objective(logits, y, torch.ones(3)).sum(), logits)
    for b in range(5):
        assert grad[worst[b], b].abs().sum() > 0
        assert all(grad[h, b].abs().sum() == 0 for h in range(3) if h != worst[b])
    with pytest.raises(ValueError, match="no targeted form"):
        get_objective("max-head", targeted=True)


def test_trades_climbs_the_kl_from_the_clean_prediction():
    from auxsurgery.train.adversarial import _kl_from

    torch.manual_seed(0)
    anchor = torch.randn(2, 4, 3, dtype=torch.double).log_softmax(-1)
    objective = _kl_from(anchor)
    alpha = torch.tensor([1.0, 0.5], dtype=torch.double)
    # Zero where the heads predict the anchor itself, positive elsewhere, and a true gradient.
    assert torch.allclose(objective(anchor.clone(), None, alpha), torch.zeros(4, dtype=torch.double))
    logits = torch.randn(2, 4, 3, dtype=torch.double, requires_grad=True)
    assert (objective(logits, None, alpha) > 0).all()
    assert torch.autograd.gradcheck(lambda z: objective(z, None, alpha), (logits,))


@pytest.mark.parametrize("name", ["pgd-joint", "pgd-max-head", "pgd-vote-margin", "trades"])
def test_crafted_examples_raise_their_objective(name):
    config = METHODS[name]
    aux = tiny_aux_model(in_channels=2, num_classes=2, seed=3).eval()
    data = robust_features_task(32, seed=2)
    x = torch.stack([data[i][0] for i in range(32)])
    y = torch.tensor([data[i][1] for i in range(32)])
    method = get_training_method(config.method)(aux, config, seed=0)
    x_adv = method.craft(x, y, step=0)
    assert (x_adv - x).abs().max() <= EPS + 1e-7 and x_adv.min() >= 0 and x_adv.max() <= 1
    objective = method.attack.objective
    x_random = (x + torch.empty_like(x).uniform_(-EPS, EPS, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    with torch.no_grad():
        before, noise, after = (objective(aux(z), y, aux.alpha).mean() for z in (x, x_random, x_adv))
    # Above the clean point and well above a random point of the same ball: the steps climbed the objective.
    assert after > before and after - before > 2 * (noise - before).abs()


@pytest.mark.parametrize("method", ["pgd", "fgsm", "trades"])
def test_every_method_crafts_in_the_l2_ball_where_asked(method):
    # An L2 radius above 1 (3x8x8 images: sqrt(192) ~ 13.9 is the box's diameter), out of the L-inf range.
    config = AdversarialConfig(eps=1.5, method=method, steps=2, norm="l2")
    crafting = get_training_method(method)(tiny_aux_model(seed=3), config, seed=0)
    assert crafting.attack.norm == "l2"
    x, y = torch.rand(8, 3, 8, 8), torch.randint(0, 10, (8,))
    x_adv = crafting.craft(x, y, step=0)
    l2 = (x_adv.double() - x.double()).flatten(1).norm(dim=1)
    assert l2.max() <= 1.5 and (x_adv - x).abs().max() > 0.1 and x_adv.min() >= 0 and x_adv.max() <= 1
    with pytest.raises(ValueError, match="<= 1 for linf"):
        AdversarialConfig(eps=1.5)
    with pytest.raises(ValueError, match="unknown norm 'l1'"):
        AdversarialConfig(eps=0.1, norm="l1")


def test_crafting_is_reproducible_per_step_and_restores_the_model():
    aux = tiny_aux_model().train()
    aux.trunk.eval()  # the mixed modes of mode="heads"
    x, y = torch.rand(8, 3, 8, 8), torch.randint(0, 10, (8,))
    for config in (adversarial_preset("cifar10"), AdversarialConfig(eps=8 / 255, method="trades", steps=2)):
        method = get_training_method(config.method)(aux, config, seed=0)
        first, again, other = method.craft(x, y, 3), method.craft(x, y, 3), method.craft(x, y, 4)
        assert torch.equal(first, again) and not torch.equal(first, other)
        assert (first - x).abs().max() <= 8 / 255 + 1e-7 and not torch.equal(first, x)
        assert aux.heads[0].training and not aux.trunk.training  # the modes it found
    assert get_training_method("pgd")(aux, adversarial_preset("cifar10"), 0).attack.objective_name == "joint"
    plain = as_aux_model(nn.Sequential(nn.Flatten(), nn.Linear(192, 10)))
    method = get_training_method("pgd")(plain, adversarial_preset("mnist"), 0)
    assert method.attack.objective_name == "public" and method.attack.eps == 0.2


@pytest.mark.parametrize("method, steps, step_size", [
    ("pgd", 10, 2.5 * EPS / 10), ("trades", 10, EPS / 4), ("fgsm", 1, 1.25 * EPS)])
def test_unset_steps_take_the_methods_published_defaults(method, steps, step_size):
    crafting = get_training_method(method)(tiny_aux_model(), AdversarialConfig(eps=EPS, method=method), 0)
    assert (crafting.steps, crafting.attack.steps) == (steps, steps)
    assert crafting.step_size == pytest.approx(step_size)


def test_fgsm_takes_one_step_of_1_25_eps():
    method = get_training_method("fgsm")(tiny_aux_model(), AdversarialConfig(eps=8 / 255, method="fgsm", steps=7), 0)
    assert method.attack.steps == 1 and method.attack.step_size == pytest.approx(1.25 * 8 / 255)


# ---- cost, resume, plain models -------------------------------------------------------------------


def test_a_run_resumes_when_its_crafting_is_the_same_however_it_was_written(tmp_path):
    """A resume state saved with ``steps=10`` on fgsm (0.2.0 wrote every unset ``steps`` as 10) resumes under an
    unset ``steps``: fgsm takes one step either way. A pgd run is refused when its steps really change."""
    def train(adversarial, out, resume=False):
        # A finished run resumed: the saved state is checked against the config, then nothing is left to do.
        finetune(tiny_aux_model(), random_images(32), None, TrainConfig.quick(
            epochs=1, batch_size=16, progress=False, adversarial=adversarial, out_dir=out, resume=resume))

    train(AdversarialConfig(eps=EPS, method="fgsm", steps=10), tmp_path / "fgsm")
    train(AdversarialConfig(eps=EPS, method="fgsm"), tmp_path / "fgsm", resume=True)
    train(AdversarialConfig(eps=EPS, steps=10), tmp_path / "pgd")
    train(AdversarialConfig(eps=EPS), tmp_path / "pgd", resume=True)  # pgd's own default: 10
    with pytest.raises(ValueError, match="different settings: adversarial"):
        train(AdversarialConfig(eps=EPS, steps=3), tmp_path / "pgd", resume=True)


@pytest.mark.parametrize("config, passes", [
    (None, 2), (AdversarialConfig(eps=EPS, steps=3), 8), (AdversarialConfig(eps=EPS, method="fgsm"), 4),
    (AdversarialConfig(eps=EPS, method="trades", steps=2), 9),
])
def test_every_epoch_records_its_training_budget_in_passes(tmp_path, config, passes):
    aux = tiny_aux_model()
    finetune(aux, random_images(32), None, TrainConfig.quick(epochs=2, batch_size=16, progress=False,
                                                             adversarial=config, out_dir=tmp_path))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["passes_per_image"] for r in records] == [passes, passes]
    assert [r["train_passes"] for r in records] == [32 * passes, 64 * passes]


class _Killed(Exception):
    pass


def test_trades_trains_a_plain_classifier_and_resumes_exactly(tmp_path):
    """Killed mid-run and resumed, TRADES on a plain classifier ends bit-identical to an uninterrupted run:
    the crafting randomness of a step depends only on (seed, step)."""
    def run(out, on_step=None, resume=False, model=None):
        torch.manual_seed(0)
        model = model or nn.Sequential(nn.Flatten(), nn.Linear(192, 10))
        config = TrainConfig.quick(epochs=2, batch_size=16, progress=False, out_dir=out, resume=resume, save_every=1,
                                   adversarial=AdversarialConfig(eps=8 / 255, method="trades", steps=2))
        finetune(model, random_images(48), None, config, on_step=on_step)
        return model

    def kill_at_step_4(info):
        if info.global_step == 4:
            raise _Killed

    straight = run(tmp_path / "a")
    with pytest.raises(_Killed):
        run(tmp_path / "b", on_step=kill_at_step_4)
    resumed = run(tmp_path / "b", resume=True)
    for p, q in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
