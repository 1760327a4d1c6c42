"""Evaluation at scale: killed runs resume to the same results, and processes share the work."""
import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from auxsurgery import attach_aux_blocks, build_backbone, save
from auxsurgery.evaluation import Budget, run_suite
from auxsurgery.evaluation.state import StateError

from attack_helpers import dataset, trained_aux_model

JOB = Path(__file__).parent / "eval_job.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def comparable(folder: Path) -> dict:
    """results.json without what legitimately differs between runs: times, the state folder, throughput."""
    doc = json.loads((folder / "results.json").read_text())
    for key in ("created", "timings"):
        doc.pop(key, None)
    doc["settings"].pop("state_dir", None)
    for row in doc["attacks"]:
        row.pop("seconds"), row.pop("images_per_second")
    return doc


def test_a_killed_evaluation_resumes_to_the_uninterrupted_result(tmp_path):
    state = tmp_path / "state"
    job = subprocess.Popen([sys.executable, str(JOB), str(tmp_path / "killed"), str(state)], env=ENV)
    deadline = time.time() + 120
    # Kill it inside an attack: once the second attack has kept a batch but not finished.
    while not list(state.glob("001/batch-*.pt")) and time.time() < deadline and job.poll() is None:
        time.sleep(0.05)
    assert job.poll() is None, "the evaluation ended before it could be killed"
    job.send_signal(signal.SIGKILL)
    job.wait()
    assert not (tmp_path / "killed" / "results.json").exists()
    subprocess.run([sys.executable, str(JOB), str(tmp_path / "killed"), str(state)], env=ENV, check=True)
    subprocess.run([sys.executable, str(JOB), str(tmp_path / "whole")], env=ENV, check=True)
    assert comparable(tmp_path / "killed") == comparable(tmp_path / "whole")


@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
def test_two_gloo_processes_give_the_single_process_result(tmp_path):
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                    str(JOB), str(tmp_path / "two")], env=ENV, check=True, capture_output=True)
    subprocess.run([sys.executable, str(JOB), str(tmp_path / "one")], env=ENV, check=True)
    two, one = comparable(tmp_path / "two"), comparable(tmp_path / "one")
    assert two["settings"].pop("processes") == 2 and one["settings"].pop("processes") == 1
    two["settings"].pop("devices"), one["settings"].pop("devices")
    assert two == one  # accuracies, worst case and every per-point outcome


def test_a_state_folder_of_another_evaluation_is_refused(tmp_path):
    x, y = dataset(16, seed=3)
    model = trained_aux_model()
    kwargs = dict(suite="adaptive", eps=0.1, budget=Budget.quick(), batch_size=8, progress=False,
                  state_dir=tmp_path)
    run_suite(model, (x, y), **kwargs)
    with pytest.raises(StateError, match=r"another setting \(data changed\)"):
        run_suite(model, (x.flip(0), y.flip(0)), **kwargs)
    with pytest.raises(StateError, match=r"another setting \(plans, preset changed\)"):
        run_suite(model, (x, y), **{**kwargs, "eps": 0.2})
    with pytest.raises(StateError, match=r"under the linf threat model, not l2: rerun with --norm linf"):
        run_suite(model, (x, y), **{**kwargs, "norm": "l2"})
    other_weights = copy.deepcopy(model)
    with torch.no_grad():
        next(other_weights.parameters()).add_(0.01)
    with pytest.raises(StateError, match=r"another setting \(model changed\)"):
        run_suite(other_weights, (x, y), **kwargs)
    batch = next(tmp_path.glob("000/batch-*.pt"))
    batch.write_bytes(batch.read_bytes()[:20])
    with pytest.raises(StateError, match="is corrupt .*delete it to recompute that batch"):
        run_suite(model, (x, y), **kwargs)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(StateError, match="manifest.json is corrupt"):
        run_suite(model, (x, y), **kwargs)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "manifest.json").write_text(json.dumps({"schema": "something else"}))
    with pytest.raises(StateError, match="not an auxsurgery evaluation state folder"):
        run_suite(model, (x, y), **{**kwargs, "state_dir": foreign})


@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
def test_the_readme_torchrun_command_gives_the_one_process_result(tmp_path):
    """The README's one-machine command, ``torchrun --nproc_per_node 2 -m auxsurgery attack CK --data synthetic
    --suite strong --points 64 --out d`` (two gloo processes on the CPU), equals one process's results."""
    checkpoint = tmp_path / "ck.safetensors"
    torch.manual_seed(0)
    save(attach_aux_blocks(build_backbone("small_cnn", num_classes=10), at="auto:2", input_size=(3, 32, 32)),
         checkpoint)
    command = ["attack", str(checkpoint), "--data", "synthetic", "--suite", "strong", "--quick", "--points", "64"]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "auxsurgery", *command, "--out", str(tmp_path / "two")],
                         env=ENV, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    subprocess.run([sys.executable, "-m", "auxsurgery", *command, "--out", str(tmp_path / "one")], env=ENV,
                   check=True, capture_output=True, timeout=300)
    two, one = comparable(tmp_path / "two"), comparable(tmp_path / "one")
    assert two["settings"].pop("processes") == 2 and one["settings"].pop("processes") == 1
    two["settings"].pop("devices"), one["settings"].pop("devices")
    two["model"].pop("checkpoint"), one["model"].pop("checkpoint")
    assert two == one
