"""What resumable and sharded evaluation cost: one process with and without a state folder, and N processes.

Runs the same evaluation (the strong suite on a small_cnn with default heads, trained briefly on the embedded
shapes data, on the first N test points) three ways, in one run, and reports the wall times and ratios:

* one process without a state folder (the baseline),
* one process keeping its state (per-batch records written atomically): the overhead of being resumable,
* ``--processes`` gloo processes under torchrun (the batches shared out), checked to give the same per-point
  outcomes as one process.

Usage: python benchmarks/eval_scaling.py [--n 256] [--processes 2] [--json FILE | --write-results]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

JOB = """
import os, sys, json, time
from auxsurgery import load
from auxsurgery.data import load_dataset
from auxsurgery.evaluation import Budget, collect, run_suite
model_path, n, state, out = sys.argv[1], int(sys.argv[2]), sys.argv[3] or None, sys.argv[4]
x, y, _ = collect(load_dataset("synthetic", train=False), n)
began = time.perf_counter()
result = run_suite(load(model_path), (x, y), suite="strong", rules=("vote", "score"), batch_size=32,
                   budget=Budget(apgd_steps=20, square_queries=200, target_classes=3), state_dir=state, progress=False)
seconds = time.perf_counter() - began
if int(os.environ.get("RANK", "0")) == 0:  # run_suite has left its process group by now
    worst = result.worst_case().outcome
    json.dump({"seconds": seconds, "robust": {r: worst.rules[r].tolist() for r in worst.rules},
               "processes": result.settings["processes"]}, open(out, "w"))
"""


COMMITTED = "benchmarks/results/eval_scaling.json"


def trained_model(folder: Path) -> Path:
    """A small_cnn with default heads, trained two epochs on the embedded data (seconds on a CPU)."""
    import torch

    from auxsurgery import attach_aux_blocks, save
    from auxsurgery.data import load_dataset
    from auxsurgery.train import TrainConfig, finetune

    torch.manual_seed(0)
    aux = attach_aux_blocks("small_cnn", at="auto:3", num_classes=10, input_size=(3, 32, 32))
    finetune(aux, load_dataset("synthetic", subset=3000), None, TrainConfig.quick(epochs=2, progress=False))
    return save(aux, folder / "model.safetensors")


def run(command: list[str], out: Path, env: dict) -> dict:
    subprocess.run(command, check=True, env=env)
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--json", default=None, help="write the results here (default: print them only)")
    parser.add_argument("--write-results", action="store_true", help=f"write the committed {COMMITTED}")
    args = parser.parse_args()
    args.json = args.json or (COMMITTED if args.write_results else None)

    from auxsurgery.provenance import command_line, machine, versions

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = str(trained_model(folder))
        threads = os.cpu_count() or 1
        single = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        # Each process gets its share of the cores, so the N-process run uses the machine as one process does.
        shared = {**os.environ, "OMP_NUM_THREADS": str(max(1, threads // args.processes))}
        job = [sys.executable, "-c", JOB, model, str(args.n)]
        plain = run([*job, "", str(folder / "plain.json")], folder / "plain.json", single)
        kept = run([*job, str(folder / "state"), str(folder / "kept.json")], folder / "kept.json", single)
        script = folder / "job.py"
        script.write_text(JOB)
        many = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                    str(args.processes), str(script), model, str(args.n), "", str(folder / "many.json")],
                   folder / "many.json", shared)
    doc = {
        "command": command_line(), "machine": machine(), "versions": versions(), "n": args.n,
        "seconds": {"one_process": plain["seconds"], "one_process_with_state": kept["seconds"],
                    f"{args.processes}_processes": many["seconds"]},
        "state_overhead": kept["seconds"] / plain["seconds"] - 1,
        "processes_speedup": plain["seconds"] / many["seconds"],
        "same_outcomes": plain["robust"] == kept["robust"] == many["robust"],
        "processes": many["processes"],
    }
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(doc, indent=1))
    print(json.dumps({k: doc[k] for k in ("seconds", "state_overhead", "processes_speedup", "same_outcomes")},
                     indent=1))


if __name__ == "__main__":
    main()
