"""Peak memory of a *bare* backbone's train step, to tell the machine's limit from surgery overhead.

    python benchmarks/bare_memory.py timm:cait_m48_448 --max-mem-gb 21

For each model: build it with ``build_backbone(name, num_classes=10)`` (random weights), then in a
child process run one train step at its default input size, batch 2 (forward, cross-entropy,
backward), exactly the step the coverage benchmark runs on the Aux Block model, but with no
surgery at all. The child's resident memory is polled and the child is killed above the cap, so a
model that needs more than the machine has ends as "over the cap" instead of taking the machine
down. When the bare model alone goes over the cap the coverage run's ``memory`` failure for it is
the machine's limit, not auxsurgery's.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time


def _train_step(name: str, threads: int) -> None:
    import torch
    import torch.nn.functional as F

    from auxsurgery import build_backbone

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_backbone(name, num_classes=10).train()
    x = torch.rand(2, *model.default_input_size)
    y = torch.tensor([0, 1])
    F.cross_entropy(model(x), y).backward()


def _rss_gb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    return 0.0


def measure(name: str, max_mem_gb: float, timeout: float, threads: int) -> dict:
    """Run one bare train step in a forked child under a memory cap and a time limit."""
    proc = mp.get_context("fork").Process(target=_train_step, args=(name, threads), daemon=True)
    start = time.perf_counter()
    proc.start()
    peak, outcome = 0.0, None
    while proc.is_alive():
        try:
            peak = max(peak, _rss_gb(proc.pid))
        except OSError:  # the child ended between the check and the read
            break
        if peak > max_mem_gb:
            outcome = f"over the {max_mem_gb:g} GiB cap"
        elif time.perf_counter() - start > timeout:
            outcome = f"no result within {timeout:g} s"
        if outcome:
            proc.kill()
            break
        time.sleep(0.2)
    proc.join()
    if outcome is None:
        outcome = "ok" if proc.exitcode == 0 else f"child exited with code {proc.exitcode}"
    return {"model": name, "outcome": outcome, "peak_rss_gb": round(peak, 2),
            "seconds": round(time.perf_counter() - start, 1), "max_mem_gb": max_mem_gb, "threads": threads}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="model names as build_backbone takes them (timm:NAME, ...)")
    ap.add_argument("--max-mem-gb", type=float, default=21.0, help="kill the child above this RSS (default 21)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per model (default 600)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads in the child (default 2)")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args(argv)
    results = []
    for name in args.models:
        results.append(measure(name, args.max_mem_gb, args.timeout, args.threads))
        print(json.dumps(results[-1]), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
