"""Training throughput: the engine vs a hand-written loop, the cost of the heads, bf16 vs fp32.

Every configuration trains one epoch of ``--steps`` batches of the synthetic set; the
configurations are interleaved and repeated, and the median images/s is reported:

- ``hand``: a minimal torch loop (DataLoader, forward, summed CE, backward, SGD step);
- ``engine``: :func:`auxsurgery.train.finetune` on the same AuxModel, batch and data;
- ``plain``: the engine on the backbone alone (the AuxModel's public model, same weights);
- ``bf16``: the engine with bf16 autocast.

Usage: python benchmarks/train_throughput.py [--model small_cnn] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from auxsurgery import attach_aux_blocks
from auxsurgery.data import load_dataset
from auxsurgery.train import TrainConfig, finetune


def hand_loop(model, data, batch_size: int) -> float:
    """Images/s of the simplest correct loop: SGD on the summed cross-entropy of every head."""
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, drop_last=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    model.train()
    images, start = 0, time.perf_counter()
    for x, y in loader:
        loss = sum(F.cross_entropy(logits, y) for logits in model(x))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        images += len(y)
    return images / (time.perf_counter() - start)


def engine(model, data, batch_size: int, amp: str) -> float:
    """Images/s of one epoch of ``finetune`` (its own measurement: the training loop, no setup)."""
    config = TrainConfig(epochs=1, batch_size=batch_size, amp=amp, progress=False)
    return finetune(model, data, config=config).history[-1]["images_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="small_cnn", help="backbone name for attach_aux_blocks")
    parser.add_argument("--at", default="auto:3", help="attach points")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=6, help="batches per measured epoch")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repetitions (the median is reported)")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()

    torch.manual_seed(0)
    aux = attach_aux_blocks(args.model, at=args.at, num_classes=10, input_size=(3, 32, 32))
    data = load_dataset("synthetic", subset=args.steps * args.batch_size)
    runs = {
        "hand": lambda: hand_loop(aux, data, args.batch_size),
        "engine": lambda: engine(aux, data, args.batch_size, amp="off"),
        "plain": lambda: engine(aux.public_model(), data, args.batch_size, amp="off"),
        "bf16": lambda: engine(aux, data, args.batch_size, amp="bf16"),
    }
    for run in runs.values():  # warm-up: allocator, oneDNN primitive caches
        run()
    samples = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            samples[name].append(run())
    median = {name: statistics.median(values) for name, values in samples.items()}
    ratios = {
        "engine_over_hand": median["engine"] / median["hand"],
        "aux_over_plain": median["engine"] / median["plain"],
        "bf16_over_fp32": median["bf16"] / median["engine"],
    }

    print(f"images/s, median of {args.repeats} (batch {args.batch_size}, {args.steps} steps each; "
          f"{args.model} + {aux.num_heads - 1} heads; {torch.get_num_threads()} threads)")
    labels = {"hand": "hand-written loop, AuxModel fp32", "engine": "engine, AuxModel fp32",
              "plain": "engine, plain backbone fp32", "bf16": "engine, AuxModel bf16 autocast"}
    for name, label in labels.items():
        spread = ", ".join(f"{v:.0f}" for v in samples[name])
        print(f"  {label:34s} {median[name]:8.1f}   ({spread})")
    print("ratios")
    print(f"  engine / hand-written loop  {ratios['engine_over_hand']:.3f}  "
          f"(engine overhead {1 - ratios['engine_over_hand']:+.1%}; target within 10%)")
    print(f"  AuxModel / plain backbone   {ratios['aux_over_plain']:.3f}  "
          f"(the heads cost {1 - ratios['aux_over_plain']:.1%} of the backbone's throughput)")
    print(f"  bf16 / fp32 (engine)        {ratios['bf16_over_fp32']:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "heads": aux.head_names, "batch_size": args.batch_size,
                       "steps": args.steps, "repeats": args.repeats, "threads": torch.get_num_threads(),
                       "images_per_s": samples, "median": median, "ratios": ratios}, f, indent=1)


if __name__ == "__main__":
    main()
