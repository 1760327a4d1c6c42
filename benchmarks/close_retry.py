"""How often the suite's targeted DLR stage breaks a point that ends close to success, by the length of the longer
run it gets there (``Budget.close_steps``; 0: none), each over many seeds.

A point the suite calls robust and AutoAttack breaks (a ``missed_points`` entry of suite_vs_autoattack) is often one
whose targeted DLR ends a hair below success: a coin flip for both attacks. This measures the flip: the stage exactly
as the strong suite builds it (:class:`auxsurgery.evaluation.presets.Budget`'s targets, screening and margin), on
one point, from ``--seeds`` seeds per ``close_steps`` value. Prints a table; writes nothing.

Usage (the converged CIFAR-10 study's Aux Block model: ``auxsurgery run recipes/cifar10-resnet9-cpu.toml
--train-only --data-root ../shared/data --out runs/cifar10-resnet9-cpu`` first, about 25 minutes on 2 cores):
  OMP_NUM_THREADS=2 python benchmarks/close_retry.py --data-root ../shared/data \\
      --model runs/cifar10-resnet9-cpu:aux --point 92 --eps 2/255 --seeds 24 --close-steps 0,300,600 \
      [--first-seed 100]
"""
from __future__ import annotations

import argparse

from suite_vs_autoattack import benchmark_model

from auxsurgery._utils import markdown_table
from auxsurgery.attacks import APGDT
from auxsurgery.evaluation import collect
from auxsurgery.evaluation.presets import Budget, parse_eps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--model", required=True, help="RUN_FOLDER:STAGE, a trained stage of a recipe run")
    parser.add_argument("--point", type=int, required=True, help="index of the test point")
    parser.add_argument("--eps", default="2/255")
    parser.add_argument("--rule", default="vote")
    parser.add_argument("--seeds", type=int, default=24)
    parser.add_argument("--first-seed", type=int, default=0, help="the seeds are FIRST_SEED .. FIRST_SEED + SEEDS - 1")
    parser.add_argument("--close-steps", default="0,300,600", help="comma-separated values of close_steps")
    args = parser.parse_args()

    _, model, test, _ = benchmark_model(args.model, args.data_root, cache=None)
    x, y, _ = collect(test, args.point + 1)
    x, y = x[args.point:], y[args.point:]
    budget = Budget()
    rows = []
    for close_steps in (int(value) for value in args.close_steps.split(",")):
        broken = 0
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            attack = APGDT(model, "dlr-t-ensemble", eps=parse_eps(args.eps), steps=budget.apgd_steps,
                           target_classes=budget.screened_targets, target_candidates=budget.target_candidates,
                           screen_steps=budget.screen_steps, close_steps=close_steps,
                           close_margin=budget.close_margin, rule=args.rule, seed=seed)
            broken += int(attack.success(attack(x, y), y).item())
        rows.append([str(close_steps), f"{broken} of {args.seeds}"])
        print(f"close_steps {close_steps}: broken from {broken} of {args.seeds} seeds", flush=True)
    print(f"\n{args.model}, test point {args.point}, eps {args.eps}, rule {args.rule}, seeds {args.first_seed} to "
          f"{args.first_seed + args.seeds - 1}:\n")
    print("\n".join(markdown_table(["close_steps", "seeds that break it"], rows)))


if __name__ == "__main__":
    main()
