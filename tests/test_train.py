"""The joint objective and the fine-tuning engine: modes, schedules, AMP, errors, adversarial training."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from torch import nn

from auxsurgery.data import load_dataset
from auxsurgery.model import as_aux_model, rule_predict
from auxsurgery.train import (
    AdversarialConfig,
    HeadAccuracy,
    NonFiniteLossError,
    TrainConfig,
    evaluate,
    finetune,
    joint_loss,
    paper_config,
)
from auxsurgery.train.setup import amp_dtype, make_scheduler

from train_helpers import random_images, tiny_aux_model


def quick(**overrides) -> TrainConfig:
    """A small, quiet, full-precision config for tests."""
    settings_ = dict(epochs=1, batch_size=16, lr=0.05, amp="off", progress=False, log_every=1)
    return TrainConfig(**{**settings_, **overrides})


# ---- objective ------------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(heads=st.integers(1, 4), batch=st.integers(1, 6), classes=st.integers(2, 5),
       smoothing=st.sampled_from([0.0, 0.1]), seed=st.integers(0, 2**16))
def test_joint_loss_is_the_alpha_weighted_sum_of_head_cross_entropies(heads, batch, classes, smoothing, seed):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(heads, batch, classes, generator=generator)
    y = torch.randint(0, classes, (batch,), generator=generator)
    alpha = torch.rand(heads, generator=generator)
    expected = sum(a * F.cross_entropy(z, y, label_smoothing=smoothing) for a, z in zip(alpha, logits))
    assert torch.allclose(joint_loss(logits, y, alpha, smoothing), expected, atol=1e-6)


def test_head_accuracy_counts_every_head_and_rule():
    generator = torch.Generator().manual_seed(0)
    logits, y = torch.randn(3, 50, 4, generator=generator), torch.randint(0, 4, (50,), generator=generator)
    alpha = torch.tensor([1.0, 0.5, 2.0])
    accuracy = HeadAccuracy(["public", "a", "b"], torch.device("cpu"))
    accuracy.update(logits[:, :20], y[:20], alpha)
    accuracy.update(logits[:, 20:], y[20:], alpha)
    result = accuracy.compute()
    assert result["head/a"] == pytest.approx((logits[1].argmax(-1) == y).float().mean().item())
    for rule in ("vote", "score", "private"):
        assert result[f"rule/{rule}"] == pytest.approx((rule_predict(logits, rule, alpha) == y).float().mean().item())


# ---- modes ------------------------------------------------------------------------------------------


def _backbone_state(aux):
    return {k: v.clone() for k, v in aux.trunk.state_dict().items()}


def test_heads_mode_freezes_backbone_weights_and_batchnorm_statistics():
    aux = tiny_aux_model()
    before, heads_before = _backbone_state(aux), [p.clone() for p in aux.heads.parameters()]
    finetune(aux, random_images(64), config=quick(mode="heads", epochs=2))
    after = aux.trunk.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # incl. bn1.running_mean/var
    assert "bn1.running_mean" in before and "bn1.num_batches_tracked" in before
    assert any(not torch.equal(a, b) for a, b in zip(heads_before, aux.heads.parameters()))
    assert all(p.requires_grad for p in aux.parameters())  # unfrozen again afterwards


def test_backbone_lr_scale_zero_keeps_backbone_weights_but_not_batchnorm_statistics():
    aux = tiny_aux_model()
    before = _backbone_state(aux)
    finetune(aux, random_images(32), config=quick(mode="backbone-lr-scale", backbone_lr_scale=0.0))
    after = aux.trunk.state_dict()
    assert torch.equal(before["conv1.weight"], after["conv1.weight"])
    assert not torch.equal(before["bn1.running_mean"], after["bn1.running_mean"])  # it trains in train mode


def test_plain_classifier_trains_as_one_head_and_saves_its_own_weights(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    result = finetune(net, random_images(64), random_images(32, seed=1), quick(epochs=2, out_dir=str(tmp_path)))
    assert set(k for k in result.history[-1] if k.startswith("val/")) == {"val/head/public"}
    saved = load_file(tmp_path / "last.safetensors")
    assert saved.keys() == net.state_dict().keys()
    assert all(torch.equal(saved[k], v) for k, v in net.state_dict().items())
    assert as_aux_model(net)(torch.rand(2, 3, 8, 8)).shape == (1, 2, 10)


# ---- outputs -------------------------------------------------------------------------------------


def test_run_writes_metrics_per_epoch_and_best_last_checkpoints(tmp_path):
    aux = tiny_aux_model()
    val = random_images(32, seed=1)
    result = finetune(aux, random_images(64), val, quick(epochs=2, out_dir=str(tmp_path)))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and records == result.history
    expected = {f"val/head/{h}" for h in ("public", "f1", "f2")} | {f"val/rule/{r}" for r in ("vote", "score", "private")}
    assert expected <= records[-1].keys()
    assert records[-1]["val/rule/vote"] == pytest.approx(evaluate(aux, val)["rule/vote"])
    assert result.best_accuracy == max(r["val/rule/vote"] for r in records)
    assert result.best_epoch == 1 + [r["val/rule/vote"] for r in records].index(result.best_accuracy)
    last, state = load_file(tmp_path / "last.safetensors"), aux.state_dict()
    assert last.keys() == state.keys() and all(torch.equal(last[k], state[k]) for k in state)
    assert load_file(tmp_path / "best.safetensors").keys() == state.keys()


def test_multistep_cosine_and_onecycle_schedules_step_per_batch():
    def lrs(schedule, **kw):
        optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9)
        scheduler = make_scheduler(optimizer, TrainConfig(epochs=4, lr=0.1, schedule=schedule, **kw), steps_per_epoch=5)
        values = []
        for _ in range(20):
            values.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return values

    multistep = lrs("multistep", milestones=(1, 3), gamma=0.1)
    assert multistep[:5] == [0.1] * 5 and multistep[5:15] == pytest.approx([0.01] * 10)
    assert multistep[15:] == pytest.approx([0.001] * 5)
    cosine = lrs("cosine")
    assert cosine[0] == 0.1 and cosine[-1] < 0.002 and cosine == sorted(cosine, reverse=True)
    onecycle = lrs("onecycle")
    assert max(onecycle) == pytest.approx(0.1) and onecycle[0] < 0.01 and onecycle[-1] < 1e-4
    assert lrs("none") == [0.1] * 20


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_optimizers_and_gradient_clipping_bound_the_update(optimizer):
    aux = tiny_aux_model()
    before = torch.cat([p.detach().flatten().clone() for p in aux.parameters()])
    # One step of plain SGD: the update is exactly lr * the clipped gradient.
    clip, lr = 1e-3, 1.0
    finetune(aux, random_images(16), config=quick(optimizer=optimizer, lr=lr, momentum=0.0, weight_decay=0.0,
                                                  schedule="none", grad_clip=clip))
    change = (torch.cat([p.detach().flatten() for p in aux.parameters()]) - before).norm().item()
    assert change > 0
    if optimizer == "sgd":
        assert change <= lr * clip * 1.0001


def test_amp_auto_picks_bf16_only_where_the_cpu_has_native_bf16():
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert amp_dtype("auto", torch.device("cpu")) == (torch.bfloat16 if native else None)
    assert amp_dtype("off", torch.device("cpu")) is None and amp_dtype("fp16", torch.device("cpu")) == torch.float16


def test_amp_and_channels_last_train_close_to_fp32():
    initial = torch.cat([p.detach().flatten() for p in tiny_aux_model().parameters()])
    results = {}
    for name, overrides in {"fp32": {}, "bf16": {"amp": "bf16"}, "fp16": {"amp": "fp16"},
                            "nhwc": {"channels_last": True}}.items():
        aux = tiny_aux_model()
        finetune(aux, random_images(32), config=quick(**overrides))
        results[name] = torch.cat([p.detach().flatten() for p in aux.parameters()])
    assert torch.allclose(results["nhwc"], results["fp32"], atol=1e-5)
    assert torch.allclose(results["bf16"], results["fp32"], atol=5e-2) and not torch.equal(results["bf16"], results["fp32"])
    # fp16 goes through the gradient scaler, which may skip a first overflowing step.
    assert torch.isfinite(results["fp16"]).all() and not torch.equal(results["fp16"], initial)


# ---- bad input --------------------------------------------------------------------------------------


def test_label_count_mismatch_fails_before_any_step():
    steps = []
    with pytest.raises(ValueError, match="label count mismatch: the data has 5 classes but the model predicts 10"):
        finetune(tiny_aux_model(num_classes=10), random_images(32, num_classes=5), config=quick(),
                 on_step=steps.append)
    assert steps == []


def test_images_the_model_cannot_take_fail_before_any_step():
    with pytest.raises(ValueError, match=r"does not accept the dataset's images \(shape \[1, 8, 8\]\)"):
        finetune(tiny_aux_model(in_channels=3), random_images(32, channels=1), config=quick())


def test_nan_loss_stops_with_step_and_head_and_keeps_the_last_good_checkpoint(tmp_path):
    aux = tiny_aux_model()
    saved = {}

    def poison_head_f1(info):
        if info.epoch == 1 and info.step == 1:
            saved.update({name: (tmp_path / name).read_bytes() for name in ("last.safetensors", "train_state.pt")})
            with torch.no_grad():
                aux.heads[0][-1].weight.fill_(float("nan"))

    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step 2 \(global step 6\) in head\(s\) f1;"):
        finetune(aux, random_images(64), config=quick(epochs=3, out_dir=str(tmp_path)), on_step=poison_head_f1)
    assert all((tmp_path / name).read_bytes() == data for name, data in saved.items())
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1


def test_config_rejects_unknown_choices_and_paper_presets_match_table_iii():
    with pytest.raises(ValueError, match="unknown schedule 'linear'; valid: multistep, cosine, onecycle, none"):
        TrainConfig(schedule="linear")
    mnist = paper_config("mnist")
    assert (mnist.lr, mnist.momentum, mnist.weight_decay, mnist.batch_size, mnist.epochs) == (0.01, 0.5, 0.0, 128, 20)
    assert paper_config("mini-imagenet").batch_size == 32 and paper_config("cifar10").milestones == (50,)


# ---- adversarial training ----------------------------------------------------------------------------


def test_adversarial_training_trains_on_pgd_examples():
    pytest.importorskip("auxsurgery.attacks")
    weights = {}
    for name, adversarial in {"clean": None, "pgd": AdversarialConfig(eps=8 / 255, step_size=2 / 255, steps=3)}.items():
        aux = tiny_aux_model()
        result = finetune(aux, random_images(32), random_images(16, seed=1), quick(adversarial=adversarial))
        weights[name] = torch.cat([p.detach().flatten() for p in aux.parameters()])
        assert torch.isfinite(torch.tensor(result.history[-1]["train/loss"]))
    assert not torch.allclose(weights["clean"], weights["pgd"])


# ---- end to end: the synthetic set is learnable ----------------------------------------------------


def small_cnn(width: int = 16) -> nn.Module:
    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)]

    return nn.Sequential(*block(3, width), *block(width, 2 * width), *block(2 * width, 4 * width),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, 10))


@pytest.fixture(scope="module")
def synthetic_cnn():
    """A small CNN trained on the synthetic set for 8 epochs (about 15 s on 2 idle cores), and its result."""
    torch.manual_seed(0)
    net = small_cnn()
    config = TrainConfig(epochs=8, batch_size=64, lr=0.1, schedule="onecycle", amp="off", progress=False)
    return net, finetune(net, load_dataset("synthetic"), load_dataset("synthetic", train=False), config)


def test_a_small_cnn_learns_the_synthetic_set_to_90_percent(synthetic_cnn):
    _, result = synthetic_cnn
    assert result.history[-1]["val/head/public"] >= 0.90


def test_pgd_at_8_255_breaks_the_undefended_synthetic_model(synthetic_cnn):
    attacks = pytest.importorskip("auxsurgery.attacks")
    net, _ = synthetic_cnn
    test = load_dataset("synthetic", train=False, subset=200)
    x, y = torch.stack([test[k][0] for k in range(200)]), test.labels[:200]
    x_adv = attacks.PGD(net, objective="public", eps=8 / 255, step_size=2 / 255, steps=10, seed=0)(x, y)
    with torch.no_grad():
        clean, robust = ((net(v).argmax(1) == y).float().mean().item() for v in (x, x_adv))
    assert clean >= 0.9 and robust <= 0.2


# ---- the CLI command ------------------------------------------------------------------------------


def test_train_command_attaches_heads_trains_and_writes_a_loadable_checkpoint(tmp_path):
    import typer
    from typer.testing import CliRunner

    from auxsurgery import load
    from auxsurgery.cli.train import train

    app = typer.Typer()
    app.command()(train)
    args = ["small_cnn", "--at", "auto:2", "--data", "synthetic", "--train-subset", "32", "--val-subset", "64",
            "--epochs", "2", "--batch-size", "16", "--schedule", "cosine", "--amp", "off", "--out", str(tmp_path)]
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.output
    assert "best epoch" in done.output
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and "val/rule/vote" in records[0]
    model = load(tmp_path / "last.safetensors")
    assert model.num_heads == 3
