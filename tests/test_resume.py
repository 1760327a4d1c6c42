"""Interrupted runs resume exactly: same final weights and metrics as an uninterrupted run."""
from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from torchvision import transforms as T

from auxsurgery.train import TrainConfig, TrainingInterrupted, finetune
from auxsurgery.train.run_files import STATE_FILE

from train_helpers import random_images, tiny_aux_model


class Interrupt(Exception):
    """Raised by a test's on_step callback to kill a run mid-epoch."""


def augmented_images():
    # Random crops and flips, so a resumed run must replay the augmentation too.
    data = random_images(64)
    data.transform = T.Compose([T.RandomCrop(8, padding=2), T.RandomHorizontalFlip()])
    return data


def run(out_dir, on_step=None, resume=False, **overrides):
    """2 epochs x 4 steps of a model with dropout and BatchNorm, SGD momentum, one-cycle schedule."""
    aux = tiny_aux_model(dropout=0.3)
    settings = dict(epochs=2, batch_size=16, lr=0.05, schedule="onecycle", amp="off", progress=False,
                    log_every=1, save_every=3, out_dir=str(out_dir), resume=resume)
    result = finetune(aux, augmented_images(), random_images(32, seed=1), TrainConfig(**{**settings, **overrides}),
                      on_step=on_step)
    return aux, result


def metrics(out_dir):
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    for record in records:
        record.pop("images_per_s"), record.pop("seconds")  # wall-clock, differs run to run
    return records


def assert_same_run(aux, out_dir, reference, reference_dir):
    state, expected = aux.state_dict(), reference.state_dict()
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k]) for k in state), "weights differ after resume"
    assert metrics(out_dir) == metrics(reference_dir)


def stop_at(global_step, action):
    def on_step(info):
        if info.global_step == global_step:
            action()
    return on_step


def kill():
    raise Interrupt


def test_kill_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path):
    reference, _ = run(tmp_path / "ref")
    # Killed after global step 7 (epoch 2, step 3): the last saved state is step 6 (save_every=3),
    # so the resumed run skips epoch 2's first two batches and replays step 7.
    with pytest.raises(Interrupt):
        run(tmp_path / "cut", on_step=stop_at(7, kill))
    saved = torch.load(tmp_path / "cut" / STATE_FILE, weights_only=True)
    assert (saved["epoch"], saved["step"]) == (1, 2)
    assert len(metrics(tmp_path / "cut")) == 1
    # The resumed run may use loader workers: augmentation does not depend on them.
    resumed, result = run(tmp_path / "cut", resume=True, num_workers=1)
    assert_same_run(resumed, tmp_path / "cut", reference, tmp_path / "ref")
    assert [r["epoch"] for r in result.history] == [2]


def test_a_stop_signal_saves_the_exact_step_and_resume_continues(tmp_path):
    reference, _ = run(tmp_path / "ref")
    handler = signal.getsignal(signal.SIGINT)  # SIG_IGN, not Python's default, under `nohup ... &`
    # SIGINT during global step 5: the run saves its state at the next check (step 6) and stops.
    with pytest.raises(TrainingInterrupted, match="stopped at epoch 2, step 2"):
        run(tmp_path / "cut", on_step=stop_at(5, lambda: os.kill(os.getpid(), signal.SIGINT)), save_every=0)
    saved = torch.load(tmp_path / "cut" / STATE_FILE, weights_only=True)
    assert (saved["epoch"], saved["step"]) == (1, 2)
    assert signal.getsignal(signal.SIGINT) is handler  # handler restored
    resumed, _ = run(tmp_path / "cut", resume=True, save_every=0)
    assert_same_run(resumed, tmp_path / "cut", reference, tmp_path / "ref")


def test_resume_refuses_changed_settings_and_a_fresh_run_refuses_an_existing_one(tmp_path):
    with pytest.raises(Interrupt):
        run(tmp_path, on_step=stop_at(3, kill))
    with pytest.raises(ValueError, match="cannot resume .* with different settings: batch_size, lr"):
        run(tmp_path, resume=True, lr=0.1, batch_size=32)
    with pytest.raises(FileExistsError, match="pass resume=True"):
        run(tmp_path)


@pytest.mark.parametrize("other, message", [
    (random_images(32), "it trained on 64 images, this run has 32"),  # another --train-subset
    (random_images(64, seed=5), "other images than the 64 it trained on"),  # another dataset of the same shape
])
def test_resume_refuses_other_training_data(tmp_path, other, message):
    config = dict(epochs=2, batch_size=16, amp="off", progress=False, save_every=2, out_dir=str(tmp_path))
    with pytest.raises(Interrupt):
        finetune(tiny_aux_model(), random_images(64), None, TrainConfig(**config), on_step=stop_at(3, kill))
    with pytest.raises(ValueError, match=f"cannot resume .* with other training data \\({message}\\): resume with "
                                         "the data and --train-subset the run started with"):
        finetune(tiny_aux_model(), other, None, TrainConfig(**config, resume=True))
    result = finetune(tiny_aux_model(), random_images(64), None, TrainConfig(**config, resume=True))
    assert len(result.history) == 2  # the same data resumes


def test_train_resume_with_another_train_subset_is_one_line(tmp_path):
    from typer.testing import CliRunner

    from auxsurgery.cli import app

    def train(subset, *extra):
        return CliRunner().invoke(app, ["train", "small_cnn", "--data", "synthetic", "--train-subset", subset,
                                        "--val-subset", "16", "--epochs", "1", "--batch-size", "16", "--out",
                                        str(tmp_path), *extra])

    assert train("64").exit_code == 0
    metrics = (tmp_path / "metrics.jsonl").read_text()
    refused = train("32", "--resume")
    assert refused.exit_code == 2 and refused.stderr.strip().splitlines() == [
        f"error: cannot resume {tmp_path} with other training data (it trained on 64 images, this run has 32): resume "
        "with the data and --train-subset the run started with, or choose another --out"]
    assert (tmp_path / "metrics.jsonl").read_text() == metrics


def test_the_data_digest_tells_dtype_shape_and_values_apart():
    from auxsurgery._utils import tensor_digest

    zeros = torch.zeros(4, dtype=torch.uint8)
    assert tensor_digest([zeros]) == tensor_digest([zeros.clone()])
    assert len({tensor_digest([zeros]), tensor_digest([zeros.reshape(2, 2)]), tensor_digest([zeros.to(torch.int8)]),
                tensor_digest([zeros + 1])}) == 4
