"""The paper's MNIST setting on real data: LeNet-5 (Table VIII) with Table IX Aux Blocks.

Trains with the Table III MNIST parameters (SGD lr 0.01, momentum 0.5, batch 128; the
paper runs 20 epochs, the default here is fewer to fit a CPU budget) and reports the
clean test accuracy of every head and decision rule per epoch, next to the paper's
Table II clean accuracies (98.88% undefended, 98.49% Aux Block "all").

Usage: python benchmarks/mnist_lenet.py [--data-root ../shared/data] [--epochs 3] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from auxsurgery import attach_aux_blocks
from auxsurgery.data import load_dataset
from auxsurgery.train import finetune, paper_config

PAPER_CLEAN = {"undefended LeNet-5": 0.9888, "Aux Block (all)": 0.9849, "Aux Block (private)": 0.9821}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=None, help="folder holding MNIST/raw (default $AUXSURGERY_DATA)")
    parser.add_argument("--epochs", type=int, default=3, help="the paper trains 20")
    parser.add_argument("--at", default="auto:3", help="attach points (the paper: the first three layers)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the per-epoch metrics to this file")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    aux = attach_aux_blocks("lenet5", at=args.at, head="paper-mnist", num_classes=10)
    train = load_dataset("mnist", root=args.data_root, train=True)
    test = load_dataset("mnist", root=args.data_root, train=False)
    config = paper_config("mnist", epochs=args.epochs, seed=args.seed, amp="off")
    start = time.perf_counter()
    result = finetune(aux, train, test, config)
    elapsed = time.perf_counter() - start

    print(f"LeNet-5 + Aux Blocks at {', '.join(aux.attach_points)}; {args.epochs} epochs in {elapsed:.0f} s "
          f"({torch.get_num_threads()} threads)")
    final = result.history[-1]
    for key in sorted(k for k in final if k.startswith("val/")):
        print(f"  {key.removeprefix('val/'):16s} {final[key]:.4f}")
    print("paper (Table II, 20 epochs): " + ", ".join(f"{k} {v:.4f}" for k, v in PAPER_CLEAN.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"heads": aux.head_names, "epochs": args.epochs, "seconds": elapsed,
                       "history": result.history, "paper_clean": PAPER_CLEAN}, f, indent=1)


if __name__ == "__main__":
    main()
