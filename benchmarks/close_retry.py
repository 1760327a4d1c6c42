"""How often one of the suite's targeted stages breaks a point that ends close to success, by the longer runs it
gets there (``Budget.close_steps`` steps, up to ``Budget.close_restarts`` of them; 0 steps: none), over many seeds.

A point the suite calls robust and AutoAttack breaks (a ``missed_points`` entry of suite_vs_autoattack) is often one
whose targeted objective ends a hair below success: a coin flip for both attacks. This measures the flip: the stage
exactly as the strong suite builds it (:class:`auxsurgery.evaluation.presets.Budget`'s targets, screening and
margin), on one point, from ``--seeds`` seeds per (``close_steps``, ``close_restarts``) pair. ``--stage dlr-t`` is
the targeted DLR on the ensemble (AutoAttack's APGD-T); ``--stage vote-tie`` the vote's tie-break stage. Prints a
table; writes nothing.

Usage (the converged CIFAR-10 study's Aux Block model: ``auxsurgery run recipes/cifar10-resnet9-cpu.toml
--train-only --data-root ../shared/data --out runs/cifar10-resnet9-cpu`` first, about 25 minutes on 2 cores):
  OMP_NUM_THREADS=2 python benchmarks/close_retry.py --data-root ../shared/data \\
      --model runs/cifar10-resnet9-cpu:aux --point 92 --eps 2/255 --seeds 24 --close-steps 0,300,600 \\
      [--first-seed 100]
The MNIST LeNet-5 of suite_vs_autoattack in L2 (trained and cached there on first use, about a minute):
  OMP_NUM_THREADS=1 python benchmarks/close_retry.py --data-root ../shared/data --model mnist-lenet5 \\
      --norm l2 --eps 2 --point 647 --stage vote-tie --seeds 24 --close-steps 0,600 --close-restarts 1,3
"""
from __future__ import annotations

import argparse
from pathlib import Path

from suite_vs_autoattack import benchmark_model

from auxsurgery._utils import markdown_table
from auxsurgery.attacks import APGDT
from auxsurgery.evaluation import collect
from auxsurgery.evaluation.presets import Budget, parse_eps

# The two targeted stages of the strong cascade as plans.py builds them: (objective, targets, screened).
STAGES = {"dlr-t": ("dlr-t-ensemble", "screened_targets", True), "vote-tie": ("vote-tie", "target_classes", False)}


def stage(model, name: str, eps: float, norm: str, rule: str, seed: int, close_steps: int, close_restarts: int):
    """The strong cascade's ``name`` stage at these close-run settings (the rest: :class:`Budget`'s)."""
    budget = Budget()
    objective, targets, screened = STAGES[name]
    return APGDT(model, objective, eps=eps, norm=norm, steps=budget.apgd_steps, target_classes=getattr(budget, targets),
                 target_candidates=budget.target_candidates, screen_steps=budget.screen_steps if screened else None,
                 close_steps=close_steps, close_margin=budget.close_margin, close_restarts=close_restarts, rule=rule,
                 seed=seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--model", required=True, help="RUN_FOLDER:STAGE (a trained stage of a recipe run) or a "
                                                       "built-in model of suite_vs_autoattack")
    parser.add_argument("--model-cache", default="benchmarks/results/suite_vs_autoattack",
                        help="where a built-in model is cached (models/<name>.safetensors), as in suite_vs_autoattack")
    parser.add_argument("--point", type=int, required=True, help="index of the test point")
    parser.add_argument("--eps", default="2/255")
    parser.add_argument("--norm", default="linf", choices=("linf", "l2"))
    parser.add_argument("--rule", default="vote")
    parser.add_argument("--stage", default="dlr-t", choices=tuple(STAGES))
    parser.add_argument("--seeds", type=int, default=24)
    parser.add_argument("--first-seed", type=int, default=0, help="the seeds are FIRST_SEED .. FIRST_SEED + SEEDS - 1")
    parser.add_argument("--close-steps", default="0,300,600", help="comma-separated values of close_steps")
    parser.add_argument("--close-restarts", default="1", help="comma-separated values of close_restarts")
    args = parser.parse_args()

    _, model, test, _ = benchmark_model(args.model, args.data_root, Path(args.model_cache), args.norm)
    x, y, _ = collect(test, args.point + 1)
    x, y = x[args.point:], y[args.point:]
    eps = parse_eps(args.eps, norm=args.norm)
    rows = []
    for close_steps in (int(value) for value in args.close_steps.split(",")):
        for close_restarts in (int(value) for value in args.close_restarts.split(",")):
            if close_steps == 0 and close_restarts > 1:
                continue  # no close run, nothing to restart
            broken = 0
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                attack = stage(model, args.stage, eps, args.norm, args.rule, seed, close_steps, close_restarts)
                broken += int(attack.success(attack(x, y), y).item())
            rows.append([str(close_steps), str(close_restarts), f"{broken} of {args.seeds}"])
            print(f"close_steps {close_steps}, close_restarts {close_restarts}: broken from {broken} of "
                  f"{args.seeds} seeds", flush=True)
    print(f"\n{args.model}, test point {args.point}, {args.norm} eps {args.eps}, rule {args.rule}, stage "
          f"{args.stage}, seeds {args.first_seed} to {args.first_seed + args.seeds - 1}:\n")
    print("\n".join(markdown_table(["close_steps", "close_restarts", "seeds that break it"], rows)))


if __name__ == "__main__":
    main()
