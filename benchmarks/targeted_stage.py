"""The strong suite's targeted stage against variants of it, on the same points: what each breaks and what it costs.

The stage (AutoAttack's APGD-T on the ensemble's targeted DLR: 10-step runs at all 9 top classes, full runs at the
2 closest, a longer run where the best target came close) is most of the suite's passes on a robust model. The
variants ask whether something cheaper is as strong:

* ``margin``: the same schedule on the targeted margin of the ensemble's log-probabilities (the target's lead over
  every other class), the minimum-margin objective of MM (Gao et al. 2022, arXiv 2206.07314);
* ``mm3``: MM's own spending, the targeted margin at the 3 most likely classes with 20-step runs and no screening;
* ``dlr-t top-3``: the targeted DLR at the 3 most likely classes in full (AutoAttack's loss at a third of its
  targets).

The points are those of the first N test points that the suite's untargeted stages leave robust under the rule
(APGD on the rule's objective, then APGD-CE on the ensemble, the cascade's stages 1-2), so each variant sees what
the targeted stage sees in the cascade. Robust accuracy is over all N points, judged by the rule; passes are
counted around the model. Prints a table and, per pair of variants, the points one breaks and the other leaves.
Writes nothing.

Usage:
  OMP_NUM_THREADS=2 python benchmarks/targeted_stage.py --data-root ../shared/data --n 1000 --eps 8/255 \\
      --model benchmarks/results/cifar10-resnet9-adversarial-cpu:aux_adversarial_joint
"""
from __future__ import annotations

import argparse
import itertools
import time

from suite_vs_autoattack import benchmark_model

from auxsurgery._utils import markdown_table, resolve_device
from auxsurgery.attacks import APGD, APGDT, PassCounter, is_adversarial
from auxsurgery.evaluation import collect
from auxsurgery.evaluation.presets import Budget, parse_eps
from auxsurgery.rules import get_rule, list_rules


def variants(budget: Budget) -> dict[str, dict]:
    """Each variant's APGDT arguments (the default budget's steps unless said)."""
    screened = {"target_classes": budget.screened_targets, "target_candidates": budget.target_candidates,
                "screen_steps": budget.screen_steps, "close_steps": budget.close_steps,
                "close_margin": budget.close_margin}
    return {
        "dlr-t screened (the suite's)": {"objective": "dlr-t-ensemble", **screened},
        "margin screened": {"objective": "margin-ensemble", **screened},
        "mm3 (margin, top-3 x 20 steps)": {"objective": "margin-ensemble", "target_classes": 3, "steps": 20},
        "dlr-t top-3": {"objective": "dlr-t-ensemble", "target_classes": 3},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--model", required=True, help="RUN_FOLDER:STAGE (a trained stage of a recipe run)")
    parser.add_argument("--n", type=int, default=1000, help="first N test points")
    parser.add_argument("--eps", default="8/255")
    parser.add_argument("--rule", default="vote", choices=list_rules())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="where the model and attacks run (auto: cuda if available)")
    args = parser.parse_args()

    name, model, test, _ = benchmark_model(args.model, args.data_root, cache=None)
    device = resolve_device(args.device)
    model.to(device).eval()
    x, y, _ = collect(test, args.n)
    x, y = x.to(device), y.to(device)
    eps, budget = parse_eps(args.eps), Budget()
    survivors = ~is_adversarial(model, x, y, args.rule)
    untargeted = [get_rule(args.rule).surrogate] + (["ensemble"] if args.rule == "vote" else [])
    for objective in untargeted:
        todo = survivors.nonzero().squeeze(1)
        attack = APGD(model, objective, eps=eps, steps=budget.apgd_steps, rule=args.rule, seed=args.seed)
        survivors[todo] = ~is_adversarial(model, attack(x[todo], y[todo]), y[todo], args.rule)
    todo = survivors.nonzero().squeeze(1)
    print(f"{name}, eps {args.eps}, rule {args.rule}: {len(todo)} of {args.n} points robust after "
          f"{' and '.join(untargeted)}", flush=True)

    rows, robust = [], {}
    for label, settings in variants(budget).items():
        settings = {"steps": budget.apgd_steps, **settings}
        attack = APGDT(model, eps=eps, rule=args.rule, seed=args.seed, **settings)
        began = time.perf_counter()
        with PassCounter(model) as passes:
            x_adv = attack(x[todo], y[todo])
        seconds = time.perf_counter() - began
        left = survivors.clone()
        left[todo] = ~is_adversarial(model, x_adv, y[todo], args.rule)
        robust[label] = left
        rows.append([label, f"{100 * left.float().mean():.1f}", f"{passes.forward + passes.backward:,}",
                     f"{seconds:.0f}"])
        print(f"{label}: robust {100 * left.float().mean():.1f}%, {passes.forward + passes.backward:,} passes",
              flush=True)
    print()
    print("\n".join(markdown_table(["variant", "robust %", "passes", "seconds"], rows)))
    print()
    for first, second in itertools.permutations(robust, 2):
        broken = (robust[second] & ~robust[first]).nonzero().flatten().tolist()
        print(f"broken by {first!r}, left by {second!r}: {len(broken)} {broken}")


if __name__ == "__main__":
    main()
