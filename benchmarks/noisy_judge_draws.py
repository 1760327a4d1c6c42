"""How many forwards the any_defence benchmark's noisy record needs for its judge to repeat itself on >= 99% of points.

Record (b) of benchmarks/any_defence.py judges EOT examples on a randomised model (CrossMax over the committed
small_cnn's heads, Gaussian input noise std 0.05, 2/255). Those examples are driven to the randomised boundary,
where a verdict is hardest to repeat. This estimates each point's chance ``p`` of a right answer in one forward
from ``--estimate-draws`` forwards, on the clean inputs and on the examples of the record's two external attacks
(torchattacks' APGD-CE and APGD-DLR, ``eot_iter=20``, 100 steps, crafted on the noisy mean logits), and computes the
chance that two runs of a majority-of-M judge agree, ``q^2 + (1 - q)^2`` with ``q = P(Binomial(M, p) > M / 2)``,
averaged over the points, for each M of ``--draws``. Prints a table; writes nothing.
:data:`any_defence.NOISY_JUDGE_DRAWS` says which M the record takes from it.

Usage (about 5 minutes on one core):
  OMP_NUM_THREADS=1 python benchmarks/noisy_judge_draws.py --data-root ../shared/data --n 100
"""
from __future__ import annotations

import argparse

import torch

from any_defence import RuleView, _external_attacks, noisy_copy
from auxsurgery import load
from auxsurgery._utils import markdown_table
from auxsurgery.data import load_dataset
from auxsurgery.evaluation import collect
from auxsurgery.evaluation.runner import DEFAULT_EOT

MODEL = "benchmarks/results/any_defence/small_cnn-w8-aux.safetensors"


@torch.no_grad()
def right_share(model, x: torch.Tensor, y: torch.Tensor, draws: int) -> torch.Tensor:
    """Per point, the share of ``draws`` forwards whose CrossMax decision is the true label: ``[N]``."""
    right = torch.zeros(len(x))
    for _ in range(draws):
        right += (model.scores(x, "crossmax").argmax(1) == y).float()
    return right / draws


def majority_right(p: torch.Tensor, draws: int) -> torch.Tensor:
    """Per point, the chance that more than half of ``draws`` forwards are right when one is right with chance ``p``."""
    wins = torch.arange(draws // 2 + 1, draws + 1, dtype=torch.float64)
    binomial = torch.distributions.Binomial(draws, probs=p.double().clamp(1e-12, 1 - 1e-12).unsqueeze(1))
    return binomial.log_prob(wins).exp().sum(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--n", type=int, default=100, help="first N test points")
    parser.add_argument("--draws", default="9,101,301,1001,3001", help="comma-separated judge sizes M (odd)")
    parser.add_argument("--estimate-draws", type=int, default=2001, help="forwards that estimate each point's p")
    args = parser.parse_args()
    noisy = noisy_copy(load(args.model).eval())
    x, y, _ = collect(load_dataset("cifar10", root=args.data_root, train=False), args.n)
    torch.manual_seed(0)
    shares = {"clean": right_share(noisy, x, y, args.estimate_draws)}
    for name, attack in _external_attacks(noisy.as_classifier("crossmax"), RuleView(noisy, "mean-logits"), 2 / 255,
                                          DEFAULT_EOT, 100):
        x_adv = torch.cat([attack(x[i:i + 128], y[i:i + 128]).detach() for i in range(0, len(x), 128)])
        shares[name] = right_share(noisy, x_adv, y, args.estimate_draws)
        print(f"{name}: examples made", flush=True)
    sizes = [int(m) for m in args.draws.split(",")]
    rows = []
    for name, p in shares.items():
        agree = []
        for m in sizes:
            q = majority_right(p, m)
            agree.append(f"{100 * (q ** 2 + (1 - q) ** 2).mean().item():.2f}")
        rows.append([name, *agree])
    print(f"\n{args.model} with noise, CrossMax, first {args.n} test points; p from {args.estimate_draws} forwards. "
          "Expected agreement (%) of two runs of the majority-of-M judge:\n")
    print("\n".join(markdown_table(["examples", *(f"M={m}" for m in sizes)], rows)))


if __name__ == "__main__":
    main()
