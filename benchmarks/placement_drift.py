"""Which coverage records would pick other attach points with today's code?

    python benchmarks/placement_drift.py --json benchmarks/results/coverage/coverage.json --max-seconds 15

After a change to the ``auto:k`` rule, this re-derives ``auto:3`` for each record of a coverage
run (building the model at the record's input size, random weights, and running the same point
discovery ``attach_aux_blocks`` runs, with no training) and lists the models whose picks differ
from the recorded ones: those are the records to run again with
``coverage.py --resume --rerun all --models ...``. ``--max-seconds`` skips records whose whole
coverage check took longer, to keep this cheap on large samples. Prints a JSON summary.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings

import torch

from auxsurgery import build_backbone
from auxsurgery.graph import auto_points, list_attach_points, list_module_points_by_hooks


def current_picks(record: dict) -> list[str]:
    """``auto:3`` for the record's model at its input size, by the method the record used."""
    torch.manual_seed(0)
    net = build_backbone(f"{record['source']}:{record['name']}", num_classes=10).net
    size = tuple(record["input_size"])
    candidates = (list_module_points_by_hooks(net, size, depth=3) if record.get("method") == "hooks"
                  else list_attach_points(net, size, depth=3, ops=False))
    return auto_points(candidates, 3)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default="benchmarks/results/coverage/coverage.json", help="a coverage run's records")
    ap.add_argument("--max-seconds", type=float, default=None, help="skip records whose check took longer")
    ap.add_argument("--min-seconds", type=float, default=0.0,
                    help="skip records whose check took this long or less (to check a sample in slices)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    with open(args.json) as f:
        records = [r for r in json.load(f)["records"] if r["status"] == "ok"]
    to_check = [r for r in records if r.get("seconds", 0) > args.min_seconds
                and (args.max_seconds is None or r.get("seconds", 0) <= args.max_seconds)]
    drifted = []
    for r in to_check:
        picks = current_picks(r)
        if picks != r["attach_points"]:
            drifted.append({"model": f"{r['source']}:{r['name']}", "recorded": r["attach_points"], "now": picks})
            print(f"{r['source']}:{r['name']}: {r['attach_points']} -> {picks}", file=sys.stderr, flush=True)
    print(json.dumps({"checked": len(to_check), "skipped": len(records) - len(to_check), "drifted": drifted,
                      "rerun": ",".join(d["model"] for d in drifted)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
