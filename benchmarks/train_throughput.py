"""Training throughput: the engine vs a hand-written loop, the cost of the heads, bf16 vs fp32,
and the share of an epoch spent loading (augmenting and collating) the data.

Every configuration trains one epoch of ``--steps`` batches of ``--data`` (the synthetic set, or
the first ``steps * batch`` images of CIFAR-10's training split with its padded random crop +
flip); the configurations are interleaved and repeated, and the median images/s is reported:

- ``hand``: a minimal torch loop (DataLoader, forward, summed CE, backward, SGD step) on the same
  model, the same augmented dataset (the engine's seeded view of it), batch, precision
  (``--amp``) and memory format (``--channels-last``): the ratio compares loops, not settings;
- ``engine``: :func:`auxsurgery.train.finetune` on the same AuxModel, batch and data;
- ``plain``: the engine on the backbone alone (the AuxModel's public model, same weights);
- ``other``: the engine in the other precision (fp32 when ``--amp bf16``, bf16 when ``off``);
- ``loader``: the engine's loader alone (same view, sampler, batch, workers) over the same batches:
  its time over the engine's epoch time is the data-loading share.

Usage:
  python benchmarks/train_throughput.py [--model resnet9_cifar] [--json out.json]
  python benchmarks/train_throughput.py --data cifar10 --data-root DIR --batch-size 256 --amp bf16 --channels-last
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from auxsurgery import attach_aux_blocks
from auxsurgery._utils import resolve_device
from auxsurgery.data import SeededAugmentation, load_dataset, make_loader
from auxsurgery.train import TrainConfig, finetune
from auxsurgery.train.distributed import DistContext

SEED = 0
DTYPES = {"off": None, "bf16": torch.bfloat16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def engine_loader(data, batch_size: int, workers: int, device: torch.device):
    """The loader the engine builds for epoch 0 of a one-process run: seeded view, sampler, batch."""
    view = SeededAugmentation(data, SEED)
    sampler = DistContext(rank=0, world_size=1, device=device).train_sampler(view, SEED)
    sampler.set_epoch(0)
    view.set_epoch(0)
    return make_loader(view, batch_size, num_workers=workers, drop_last=True, sampler=sampler)


def loader_alone(data, batch_size: int, workers: int, device: torch.device) -> float:
    """Images/s of the engine's loader on its own: augmentation and collation, no training."""
    loader = engine_loader(data, batch_size, workers, device)
    images, start = 0, time.perf_counter()
    for _, y in loader:
        images += len(y)
    return images / (time.perf_counter() - start)


def hand_loop(model, data, batch_size: int, amp: str, channels_last: bool, workers: int, device: torch.device) -> float:
    """Images/s of the simplest correct loop: SGD on the summed cross-entropy of every head."""
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    loader = make_loader(SeededAugmentation(data, SEED), batch_size, shuffle=True, num_workers=workers,
                         drop_last=True, seed=SEED)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    dtype = DTYPES[amp]
    model.train()
    images, start = 0, time.perf_counter()
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = sum(F.cross_entropy(logits, y) for logits in model(x))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        images += len(y)
    _sync(device)
    return images / (time.perf_counter() - start)


def engine(model, data, batch_size: int, amp: str, channels_last: bool, workers: int, device: torch.device) -> float:
    """Images/s of one epoch of ``finetune`` (its own measurement: the training loop, no setup)."""
    config = TrainConfig(epochs=1, batch_size=batch_size, amp=amp, channels_last=channels_last, num_workers=workers,
                         device=str(device), seed=SEED, progress=False)
    return finetune(model, data, config=config).history[-1]["images_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="synthetic", choices=["synthetic", "cifar10"],
                        help="synthetic: the embedded set (no augmentation); cifar10: the training split, augmented")
    parser.add_argument("--data-root", help="data root holding cifar-10-batches-py (default $AUXSURGERY_DATA, else ./data)")
    parser.add_argument("--model", default="resnet9_cifar", help="backbone name for attach_aux_blocks")
    parser.add_argument("--at", default="auto:3", help="attach points")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=6, help="batches per measured epoch")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repetitions (the median is reported)")
    parser.add_argument("--amp", default="off", choices=list(DTYPES), help="autocast of the hand loop and the engine")
    parser.add_argument("--channels-last", action="store_true", help="NHWC model and inputs in both loops")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes in every loop")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()

    device = resolve_device(args.device)
    torch.manual_seed(SEED)
    aux = attach_aux_blocks(args.model, at=args.at, num_classes=10, input_size=(3, 32, 32))
    n = args.steps * args.batch_size
    data = load_dataset(args.data, root=args.data_root, subset=n)
    other_amp = "bf16" if args.amp == "off" else "off"
    settings = {"batch_size": args.batch_size, "channels_last": args.channels_last, "workers": args.workers,
                "device": device}
    runs = {
        "hand": lambda: hand_loop(aux, data, amp=args.amp, **settings),
        "engine": lambda: engine(aux, data, amp=args.amp, **settings),
        "plain": lambda: engine(aux.public_model(), data, amp=args.amp, **settings),
        "other": lambda: engine(aux, data, amp=other_amp, **settings),
        "loader": lambda: loader_alone(data, args.batch_size, args.workers, device),
    }
    for run in runs.values():  # warm-up: allocator, oneDNN primitive caches, the data's pages
        run()
    samples = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            samples[name].append(run())
    median = {name: statistics.median(values) for name, values in samples.items()}
    bf16, fp32 = (median["engine"], median["other"]) if args.amp == "bf16" else (median["other"], median["engine"])
    ratios = {
        "engine_over_hand": median["engine"] / median["hand"],
        "aux_over_plain": median["engine"] / median["plain"],
        "bf16_over_fp32": bf16 / fp32,
        # The loader's time for the epoch's batches over the engine's epoch time (same images).
        "loading_share": median["engine"] / median["loader"],
    }
    per_image_us = {"loading": 1e6 / median["loader"], "engine_step": 1e6 / median["engine"]}

    precision = "bf16 autocast" if args.amp == "bf16" else "fp32"
    layout = ", channels_last" if args.channels_last else ""
    print(f"images/s, median of {args.repeats} ({args.data}, batch {args.batch_size}, {args.steps} steps each; "
          f"{args.model} + {aux.num_heads - 1} heads; {precision}{layout}; {args.workers} loader workers; "
          f"{torch.get_num_threads()} threads, {device})")
    labels = {"hand": "hand-written loop, AuxModel", "engine": "engine, AuxModel", "plain": "engine, plain backbone",
              "other": f"engine, AuxModel {'fp32' if args.amp == 'bf16' else 'bf16 autocast'}",
              "loader": "engine's loader alone (no training)"}
    for name, label in labels.items():
        spread = ", ".join(f"{v:.0f}" for v in samples[name])
        print(f"  {label:36s} {median[name]:9.1f}   ({spread})")
    print("ratios")
    print(f"  engine / hand-written loop  {ratios['engine_over_hand']:.3f}  "
          f"(engine overhead {1 - ratios['engine_over_hand']:+.1%}; target within 10%)")
    print(f"  AuxModel / plain backbone   {ratios['aux_over_plain']:.3f}  "
          f"(the heads cost {1 - ratios['aux_over_plain']:.1%} of the backbone's throughput)")
    print(f"  bf16 / fp32 (engine)        {ratios['bf16_over_fp32']:.3f}")
    print(f"  data-loading share          {ratios['loading_share']:.1%}  "
          f"(loading {per_image_us['loading']:.1f} us of the engine's {per_image_us['engine_step']:.1f} us per image; "
          "target under 10%)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"data": args.data, "model": args.model, "at": args.at, "heads": aux.head_names,
                       "batch_size": args.batch_size, "steps": args.steps, "repeats": args.repeats,
                       "amp": args.amp, "channels_last": args.channels_last, "workers": args.workers,
                       "device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
                       "images_per_s": samples, "median": median, "ratios": ratios, "per_image_us": per_image_us},
                      f, indent=1)


if __name__ == "__main__":
    main()
