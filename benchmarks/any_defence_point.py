"""How often the strong suite breaks one test point of an any_defence record, over seeds: is a miss the suite's luck?

On a randomised model every run of the suite draws its own noise (EOT and the judge), so a point it leaves robust in
one run may fall in another. This runs the suite exactly as ``benchmarks/any_defence.py`` runs it for the record
(``--record``, default the noisy CrossMax one), on the one test point ``--point`` alone, once per seed, and prints
each cascade stage's verdict. With ``--apgd OBJECTIVES`` it runs instead one APGD per objective alone, with the
suite's steps and draws (EOT and judge), once per seed: which stage breaks the point how often. Writes nothing.

Usage (a few minutes per seed on one core at 1,001 judge forwards):
  OMP_NUM_THREADS=1 python benchmarks/any_defence_point.py --data-root ../shared/data --point 208 --seeds 0,1,2,3
  OMP_NUM_THREADS=1 python benchmarks/any_defence_point.py --data-root ../shared/data --point 208 \
      --seeds 0,1,2,3,4,5 --apgd dlr-mean-logits,mean-logits
"""
from __future__ import annotations

import argparse

from any_defence import records
from auxsurgery import load
from auxsurgery.attacks import APGD, is_adversarial
from auxsurgery.data import load_dataset
from auxsurgery.evaluation import Budget, collect, run_suite
from auxsurgery.evaluation.runner import DEFAULT_EOT

MODEL = "benchmarks/results/any_defence/small_cnn-w8-aux.safetensors"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--record", default="noisy-crossmax@0.007843")
    parser.add_argument("--point", type=int, required=True, help="index of the test point")
    parser.add_argument("--seeds", default="0,1,2,3", help="comma-separated seeds of the suite")
    parser.add_argument("--judge-draws", type=int, help="the judge's forwards (default: the record's)")
    parser.add_argument("--apgd", help="comma-separated objectives: run APGD on each alone instead of the suite")
    args = parser.parse_args()
    spec = records(load(args.model).eval())[args.record]
    x, y, _ = collect(load_dataset("cifar10", root=args.data_root, train=False), args.point + 1)
    x, y = x[args.point:], y[args.point:]
    settings = dict(spec["suite"], **({"judge_draws": args.judge_draws} if args.judge_draws else {}))
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.apgd:
        for objective in args.apgd.split(","):
            apgd_alone(spec, objective, x, y, seeds, settings.get("judge_draws", 1))
        return
    broken = 0
    for seed in seeds:
        suite = run_suite(spec["model"], (x, y), suite="strong", eps=spec["eps"],
                          rules=(spec["rule"],), seed=seed, progress=False, **settings)
        stages = [(row.name.split(": ", 1)[-1], row.outcome.rules[spec["rule"]].item())
                  for row in suite.rows if row.cascade]
        robust = suite.worst_case().outcome.rules[spec["rule"]].item()
        broken += not robust
        print(f"seed {seed}: {'robust' if robust else 'broken'}; robust after each stage: "
              + ", ".join(f"{name} {'yes' if kept else 'no'}" for name, kept in stages), flush=True)
    print(f"{args.record}, test point {args.point}: broken from {broken} of {len(seeds)} seeds "
          f"(judge: {settings.get('judge_draws', 'the suite default')} forwards)")


def apgd_alone(spec: dict, objective: str, x, y, seeds: list[int], judge_draws: int) -> None:
    """APGD on ``objective`` alone, as a suite stage runs it on this record (steps, EOT, judge), once per seed."""
    rule, broken = spec["rule"], 0
    for seed in seeds:
        attack = APGD(spec["model"], objective=objective, eps=spec["eps"], steps=Budget().apgd_steps, rule=rule,
                      seed=seed).with_draws(DEFAULT_EOT, judge_draws)
        fooled = is_adversarial(spec["model"], attack(x, y), y, rule, draws=judge_draws).item()
        broken += fooled
        print(f"APGD [{objective}], seed {seed}: {'broken' if fooled else 'robust'}", flush=True)
    print(f"APGD [{objective}] alone: broken from {broken} of {len(seeds)} seeds (judge: {judge_draws} forwards)")


if __name__ == "__main__":
    main()
