"""The output convention, end to end through ``python -m auxsurgery``: with ``--json`` stdout holds
exactly one JSON document; progress, logs and messages go to stderr."""
import json
import os
import subprocess
import sys
from pathlib import Path


def auxsurgery(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "auxsurgery", *args], capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_train_json_is_the_only_stdout_and_progress_goes_to_stderr(tmp_path):
    done = auxsurgery("train", "small_cnn", "--data", "synthetic", "--subset", "64", "--val-subset", "32",
                      "--epochs", "1", "--batch-size", "32", "--amp", "off", "--device", "cpu", "--out", str(tmp_path),
                      "--json")
    summary = json.loads(done.stdout)
    assert summary["best_epoch"] == 1 and summary["epochs_run"] == 1
    assert summary["final"]["epoch"] == 1 and summary["best_accuracy"] == summary["final"]["val/rule/vote"]
    assert str(tmp_path / "last.safetensors") in summary["files"]
    assert all(Path(path).is_file() for path in summary["files"])
    assert "epoch 1: loss" in done.stderr  # the progress display's epoch line
    assert "wrote " + str(tmp_path / "metrics.jsonl") in done.stderr


def test_attach_json_is_the_only_stdout_and_the_saved_message_goes_to_stderr(tmp_path):
    out = tmp_path / "m.safetensors"
    done = auxsurgery("attach", "lenet5", "--at", "pool1,pool2", "--head", "paper-mnist", "--out", str(out), "--json")
    document = json.loads(done.stdout)
    assert [c["name"] for c in document["costs"]] == ["public", "pool1", "pool2"] and document["saved"] == str(out)
    assert done.stderr.strip() == f"saved to {out}"
