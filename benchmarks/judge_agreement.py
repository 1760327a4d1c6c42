"""How many forwards a randomised model's verdict needs: two runs of the majority-of-M judge, how often they agree.

The model: the committed adversarially trained CIFAR-10 Aux Block ResNet-9 with Gaussian noise (std 0.05) added to
its input inside the model, before its normalisation (issue 29's randomisation). The points: the first ``--points``
test images, and the examples of a single-draw APGD on the vote margin at ``--eps`` (each point's first fooling
iterate, else its best one: examples that sit at the decision boundary, where a verdict is hardest to repeat). For
each M, the vote's verdict (right or wrong) of two independent runs of the judge is compared point by point;
:data:`auxsurgery.evaluation.runner.DEFAULT_JUDGE_DRAWS` says which M ``run_suite`` takes from it and why.

Usage (writes benchmarks/results/judge_agreement/judge_agreement.{json,md}; about 10 minutes on 2 CPU cores):
  OMP_NUM_THREADS=2 python benchmarks/judge_agreement.py --data-root ../shared/data
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import nn

from auxsurgery import load
from auxsurgery._utils import markdown_table
from auxsurgery.attacks import APGD, is_adversarial
from auxsurgery.evaluation import collect, load_eval_data
from auxsurgery.evaluation.presets import parse_eps

HERE = Path(__file__).resolve().parent
MODEL = HERE / "results" / "cifar10-resnet9-adversarial-cpu" / "aux_adversarial_joint" / "train" / "last.safetensors"
OUT = HERE / "results" / "judge_agreement"


class GaussianNoise(nn.Module):
    """Adds Gaussian noise of standard deviation ``std`` to the [0, 1] pixels, at every forward."""

    def __init__(self, std: float):
        super().__init__()
        self.std = std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.std * torch.randn_like(x)


def render(doc: dict) -> str:
    """The Markdown report of a judge_agreement.json document."""
    s = doc["settings"]
    lines = ["# Two runs of the majority judge: how often they agree", "",
             f"Model {s['model']} with Gaussian input noise (std {s['noise_std']}, before its normalisation); "
             f"rule {s['rule']}; {s['points']} CIFAR-10 test points; examples of single-draw APGD on the vote margin "
             f"at eps {s['eps']} ({s['apgd_steps']} steps, seed {s['seed']}). Command: `{s['command']}`.", ""]
    body = [[str(r["draws"]), f"{100 * r['clean']:.1f}%", f"{100 * r['examples']:.1f}%"] for r in doc["records"]]
    lines += markdown_table(["M (forwards per verdict)", "agreement, clean points", "agreement, APGD examples"], body)
    lines += ["", f"Smallest M with at least 99% agreement on both: {doc['smallest_m_at_99']}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--model", default=str(MODEL.relative_to(HERE.parent)))
    parser.add_argument("--points", type=int, default=200)
    parser.add_argument("--eps", default="2/255")
    parser.add_argument("--noise-std", type=float, default=0.05)
    parser.add_argument("--draws", default="1,3,5,7,9,11,15")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()

    torch.manual_seed(0)
    model = load(args.model).eval()
    model.normalize = nn.Sequential(GaussianNoise(args.noise_std), model.normalize)
    samples, _, _ = load_eval_data("cifar10", args.data_root, args.points)
    x, y, _ = collect(samples, args.points)
    seed, steps = 0, 10
    x_adv = APGD(model, "vote-margin", eps=parse_eps(args.eps), steps=steps, rule="vote", seed=seed)(x, y)
    records = []
    for draws in (int(m) for m in args.draws.split(",")):
        agree = {}
        for name, inputs in (("clean", x), ("examples", x_adv)):
            first, second = (is_adversarial(model, inputs, y, "vote", draws=draws) for _ in range(2))
            agree[name] = (first == second).float().mean().item()
        records.append({"draws": draws, **agree})
        print(f"M={draws}: clean {agree['clean']:.3f}, examples {agree['examples']:.3f}", flush=True)
    smallest = next((r["draws"] for r in records if min(r["clean"], r["examples"]) >= 0.99), None)
    command = "OMP_NUM_THREADS=2 python benchmarks/judge_agreement.py --data-root ../shared/data"
    doc = {"settings": {"model": args.model, "noise_std": args.noise_std, "rule": "vote", "points": len(x),
                        "eps": args.eps, "apgd_steps": steps, "seed": seed, "torch_seed": 0, "command": command},
           "records": records, "smallest_m_at_99": smallest}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "judge_agreement.json").write_text(json.dumps(doc, indent=1) + "\n")
    (out / "judge_agreement.md").write_text(render(doc))
    print(render(doc))


if __name__ == "__main__":
    main()
