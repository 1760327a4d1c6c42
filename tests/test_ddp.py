"""DDP: two gloo processes under torchrun train exactly like one process on the same global batch."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from train_helpers import ddp_run

HELPERS = Path(__file__).with_name("train_helpers.py")


def test_two_processes_match_one_process(tmp_path):
    single = ddp_run(str(tmp_path / "single")).state_dict()
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(HELPERS), str(tmp_path / "ddp")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    ddp = torch.load(tmp_path / "ddp" / "final_weights.pt", weights_only=True)
    assert ddp.keys() == single.keys()
    for name, value in single.items():
        assert torch.allclose(ddp[name], value, atol=1e-5), f"{name} differs between 1 and 2 processes"

    def records(run):
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines]

    one, two = records("single"), records("ddp")
    assert len(two) == 2  # rank 0 alone writes
    for a, b in zip(one, two):
        # Accuracies are counts reduced over both processes' shards: exactly equal.
        assert {k: v for k, v in a.items() if "/head/" in k or "/rule/" in k} == \
               {k: v for k, v in b.items() if "/head/" in k or "/rule/" in k}
        assert abs(a["train/loss"] - b["train/loss"]) < 1e-5
