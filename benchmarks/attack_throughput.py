"""Attack throughput: our PGD/APGD against torchattacks, and PGD's cost per step against the
model's bare forward+backward pass, on the same model and inputs, in one run.

    python benchmarks/attack_throughput.py --json attack_throughput.json

Every contender is timed once per round over ``--repeats`` interleaved rounds and its
best time counts, which keeps the ratios steady when other processes share the machine.
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import torch
import torch.nn.functional as F
from torch import nn

from auxsurgery.attacks import APGD, PGD


def small_cnn(classes: int = 10) -> nn.Module:
    """A small VGG-style CIFAR network (the paper's smaller models are of this kind)."""

    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)]

    return nn.Sequential(*block(3, 32), *block(32, 64), *block(64, 128),
                         nn.Flatten(), nn.Linear(128 * 16, classes))


def build_model(name: str) -> nn.Module:
    if name == "cnn":
        return small_cnn()
    import torchvision

    return torchvision.models.resnet18(num_classes=10)


def timed(fn, device: torch.device) -> float:
    """Wall-clock seconds of one call of ``fn``."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def bare_forward_backward(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int):
    """``steps`` forward+backward passes to the input, the floor for ``steps`` PGD steps.

    They run as the attacks do: eval mode, no parameter gradients.
    """
    def run():
        grads = [p.requires_grad for p in model.parameters()]
        for p in model.parameters():
            p.requires_grad_(False)
        for _ in range(steps):
            x_req = x.detach().requires_grad_(True)
            loss = F.cross_entropy(model(x_req), y)
            torch.autograd.grad(loss, x_req)
        for p, requires_grad in zip(model.parameters(), grads):
            p.requires_grad_(requires_grad)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["cnn", "resnet18"], default="cnn")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10, help="PGD and APGD steps")
    parser.add_argument("--eps", type=float, default=8 / 255)
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds; the best of them counts")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (0: torch's default); one is steadiest on a shared machine")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", default=None, help="write the results to this JSON file")
    args = parser.parse_args()

    import torchattacks  # a benchmark (test) dependency only

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(args.model).to(device).eval()
    x = torch.rand(args.batch, 3, 32, 32, device=device)
    with torch.no_grad():
        # Labels the model gets right: torchattacks' APGD skips misclassified inputs, ours does not.
        y = model(x).argmax(1)
    n, steps = args.batch, args.steps

    runs = {
        "ours_pgd": lambda: PGD(model, eps=args.eps, step_size=args.eps / 4, steps=steps, seed=0)(x, y),
        "torchattacks_pgd": lambda: torchattacks.PGD(model, eps=args.eps, alpha=args.eps / 4, steps=steps)(x, y),
        "ours_apgd": lambda: APGD(model, eps=args.eps, steps=steps, seed=0)(x, y),
        "torchattacks_apgd": lambda: torchattacks.APGD(model, eps=args.eps, steps=steps, seed=0)(x, y),
        "bare_forward_backward": bare_forward_backward(model, x, y, steps),
    }
    for run in runs.values():  # warm-up
        run()
    timings = {name: float("inf") for name in runs}
    for _ in range(args.repeats):  # interleaved rounds, so drift hits every contender alike
        for name, run in runs.items():
            timings[name] = min(timings[name], timed(run, device))
    bare = timings.pop("bare_forward_backward")

    results = {
        "config": {**vars(args), "torch": torch.__version__, "torchattacks": torchattacks.__version__,
                   "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine()},
        "images_per_s": {name: n / t for name, t in timings.items()},
        "pgd_step_ms": 1000 * timings["ours_pgd"] / steps,
        "bare_forward_backward_ms": 1000 * bare / steps,
        "ratios": {
            "pgd_ours_over_torchattacks_throughput": timings["torchattacks_pgd"] / timings["ours_pgd"],
            "apgd_ours_over_torchattacks_throughput": timings["torchattacks_apgd"] / timings["ours_apgd"],
            "pgd_step_over_bare_forward_backward": timings["ours_pgd"] / bare,
        },
    }

    print(f"model={args.model} batch={n} steps={steps} device={device} threads={torch.get_num_threads()}")
    for name, rate in results["images_per_s"].items():
        print(f"  {name:<18} {rate:9.1f} images/s")
    print(f"  PGD step {results['pgd_step_ms']:.2f} ms, bare forward+backward "
          f"{results['bare_forward_backward_ms']:.2f} ms")
    for name, ratio in results["ratios"].items():
        print(f"  {name:<42} {ratio:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
