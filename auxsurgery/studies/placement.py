"""The placement study: where to attach Aux Blocks, robustness against cost.

For each candidate attach point (and each candidate set of points) a deep copy of a
trained backbone gets heads there, is fine-tuned (heads only by default: the backbone is
frozen, so every placement shares the same public model), and is measured the way the
paper's Table VI measures heads: a two-iteration PGD crafted on the PUBLIC model, at the
preset eps and step, judged by every head and by the vote and score rules. Each
placement's parameter and FLOP overhead comes from :func:`auxsurgery.cost.head_costs`;
the best placements are the Pareto front of robust vote accuracy against FLOP overhead.

    result = place_study(backbone, train_set, test_set, ["stage1", "stage2", "stage3"], epochs=3, n=200)
    result.print_table(); result.write("place-out")
"""
from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
from matplotlib.figure import Figure
from rich.console import Console
from rich.table import Table
from torch import nn
from torch.utils.data import Dataset

from .._utils import atomic_write
from ..attacks import PGD
from ..cost import head_costs
from ..model import rule_predict
from ..surgery import attach_aux_blocks, parse_points
from ..train import TrainConfig, finetune

__all__ = ["PlacementResult", "PlacementRow", "pareto_front", "place_study"]

RULES = ("vote", "score")
_BATCH = 128  # attack batch: bounds activation memory for large n


@dataclass
class PlacementRow:
    """One placement: its heads, their cost and their accuracy (fractions in [0, 1]).

    Attributes:
        name: the placement, points joined by ``+`` (``stage1+stage2``).
        points: the attach points.
        params, flops: the aux heads' parameters and FLOPs, summed.
        params_overhead, flops_overhead: those sums as fractions of the backbone's.
        clean_heads, robust_heads: each head's accuracy (``public`` first) on clean
            inputs and under PGD crafted on the public model.
        clean_rules, robust_rules: the same for the ``vote`` and ``score`` rules.
        best: on the Pareto front of robust vote accuracy vs FLOP overhead.
    """

    name: str
    points: list[str]
    params: int
    flops: int
    params_overhead: float
    flops_overhead: float
    clean_heads: dict[str, float]
    robust_heads: dict[str, float]
    clean_rules: dict[str, float]
    robust_rules: dict[str, float]
    best: bool = False


def pareto_front(rows: Sequence[PlacementRow]) -> list[int]:
    """Indices of rows no other row dominates (at least as robust under vote and as cheap in FLOPs, better in one)."""
    def dominates(a: PlacementRow, b: PlacementRow) -> bool:
        ra, rb = a.robust_rules["vote"], b.robust_rules["vote"]
        return ra >= rb and a.flops_overhead <= b.flops_overhead and (ra > rb or a.flops_overhead < b.flops_overhead)
    return [i for i, row in enumerate(rows) if not any(dominates(other, row) for other in rows)]


@dataclass
class PlacementResult:
    """The study's rows plus the attack and data settings they were measured under."""

    rows: list[PlacementRow]
    eps: float
    step_size: float
    steps: int
    n: int
    mode: str
    epochs: int

    def to_dict(self) -> dict:
        """JSON-able values: the settings and one dict per row."""
        return {"eps": self.eps, "step_size": self.step_size, "steps": self.steps, "n": self.n,
                "mode": self.mode, "epochs": self.epochs, "rows": [asdict(row) for row in self.rows]}

    def _title(self) -> str:
        return (f"Placement study: accuracy (%) on {self.n} test images, PGD-{self.steps} crafted on the public model, "
                f"L-inf eps {self.eps * 255:g}/255, step {self.step_size * 255:g}/255")

    # Short headers: the table must fit an 80-column terminal; the Markdown report says more.
    _COLUMNS = ("placement", "+params %", "+FLOPs %", "clean vote", "PGD public", "PGD aux", "PGD vote",
                "PGD score", "best")

    def _cells(self, row: PlacementRow) -> list[str]:
        aux = "/".join(f"{100 * row.robust_heads[p]:.1f}" for p in row.points)
        return [row.name, f"{100 * row.params_overhead:.1f}", f"{100 * row.flops_overhead:.1f}",
                f"{100 * row.clean_rules['vote']:.1f}", f"{100 * row.robust_heads['public']:.1f}", aux,
                f"{100 * row.robust_rules['vote']:.1f}", f"{100 * row.robust_rules['score']:.1f}",
                "*" if row.best else ""]

    def print_table(self, console: Console | None = None) -> None:
        """The rows as a rich table on stdout (or ``console``)."""
        table = Table(title=self._title())
        widest = max(len(row.name) for row in self.rows) + 2
        table.add_column("placement", no_wrap=True, min_width=widest)
        for column in self._COLUMNS[1:-1]:
            table.add_column(column, justify="right")
        for row in self.rows:
            cells = self._cells(row)
            # The best flag rides on the name: one column less keeps the table within 80 characters.
            table.add_row(row.name + (" *" if row.best else ""), *cells[1:-1], style="bold" if row.best else None)
        table.caption = ("PGD aux: each aux head in placement order. * best: Pareto front of PGD vote accuracy vs "
                         "FLOP overhead. A static attack ranks placements; it proves no robustness.")
        (console or Console()).print(table)

    def markdown(self) -> str:
        """The rows as a Markdown table with how to read it."""
        lines = [
            "# Placement study", "",
            self._title() + f". Heads fine-tuned for {self.epochs} epoch(s) in mode `{self.mode}`. "
            "Overheads are the aux heads' parameters and FLOPs as % of the backbone's. 'best' marks the Pareto front "
            "of PGD vote accuracy vs FLOP overhead. The attack is the paper's static one (Table VI): it ignores the "
            "heads, so it ranks placements but is no evaluation of robustness; run `auxsurgery attack` on the winner.",
            "", "| " + " | ".join(self._COLUMNS) + " |", "|---" * len(self._COLUMNS) + "|",
        ]
        lines += ["| " + " | ".join(self._cells(row)) + " |" for row in self.rows]
        lines += ["", "Every head and rule, clean / PGD (%):", "",
                  "| placement | head or rule | clean | PGD |", "|---|---|---|---|"]
        for row in self.rows:
            for name in row.clean_heads:
                lines.append(f"| {row.name} | {name} | {100 * row.clean_heads[name]:.1f} | {100 * row.robust_heads[name]:.1f} |")
            for rule in RULES:
                lines.append(f"| {row.name} | rule: {rule} | {100 * row.clean_rules[rule]:.1f} | {100 * row.robust_rules[rule]:.1f} |")
        return "\n".join(lines) + "\n"

    def plot(self, path: str | Path) -> Path:
        """``placement.png``: PGD vote accuracy against FLOP overhead, one point per placement, best starred."""
        fig = Figure(figsize=(6.5, 4.5))
        ax = fig.subplots()
        xs = [100 * r.flops_overhead for r in self.rows]
        ys = [100 * r.robust_rules["vote"] for r in self.rows]
        ax.scatter(xs, ys, color="tab:blue", label="placement")
        front = sorted((x, y) for x, y, r in zip(xs, ys, self.rows) if r.best)
        ax.plot(*zip(*front), color="tab:red", marker="*", markersize=14, linestyle="--", label="best (Pareto front)")
        for x, y, row in zip(xs, ys, self.rows):
            ax.annotate(row.name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel("FLOP overhead of the heads (% of backbone)")
        ax.set_ylabel("accuracy under PGD, vote rule (%)")
        ax.set_title(f"Placement: robustness vs cost (n={self.n}, eps {self.eps * 255:g}/255)")
        ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))

    def write(self, out_dir: str | Path) -> list[Path]:
        """Write ``placement.json``, ``placement.md`` and ``placement.png`` under ``out_dir``; return their paths."""
        out_dir = Path(out_dir)
        text = json.dumps(self.to_dict(), indent=1)
        return [atomic_write(out_dir / "placement.json", lambda tmp: Path(tmp).write_text(text)),
                atomic_write(out_dir / "placement.md", lambda tmp: Path(tmp).write_text(self.markdown())),
                self.plot(out_dir / "placement.png")]


def _first(dataset: Dataset, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` samples as ``(x [n, C, H, W], y [n])``: every placement sees the same images."""
    if not 0 < n <= len(dataset):
        raise ValueError(f"n={n} test images asked from a test set of {len(dataset)}")
    xs, ys = zip(*(dataset[i] for i in range(n)))
    return torch.stack(xs), torch.as_tensor(ys, dtype=torch.long)


def _accuracies(logits: torch.Tensor, y: torch.Tensor, names: list[str], alpha: torch.Tensor):
    """Per-head and per-rule accuracy of stacked logits ``[H, B, C]``."""
    heads = {name: (logits[h].argmax(1) == y).float().mean().item() for h, name in enumerate(names)}
    rules = {rule: (rule_predict(logits, rule, alpha) == y).float().mean().item() for rule in RULES}
    return heads, rules


def _measure(aux, x, y, eps: float, step_size: float, steps: int):
    """Clean and PGD-on-public logits of ``aux`` on ``(x, y)``, stacked ``[H, n, C]``."""
    # Deterministic start (as in the paper's PGD): every placement faces the same attack,
    # and with a frozen backbone the very same adversarial images.
    attack = PGD(aux, objective="public", rule="public", eps=eps, step_size=step_size, steps=steps,
                 random_start=False)
    clean, robust = [], []
    for start in range(0, len(x), _BATCH):
        xb, yb = x[start:start + _BATCH], y[start:start + _BATCH]
        x_adv = attack(xb, yb)
        with torch.no_grad():
            clean.append(aux(xb))
            robust.append(aux(x_adv))
    return torch.cat(clean, 1), torch.cat(robust, 1)


def place_study(
    backbone: nn.Module,
    train_set: Dataset,
    test_set: Dataset,
    candidates: str | Sequence[str],
    sets: Sequence[str | Sequence[str]] | None = None,
    head: str = "default",
    mode: str = "heads",
    epochs: int = 3,
    eps: float = 8 / 255,
    step_size: float = 2 / 255,
    steps: int = 2,
    n: int = 200,
    seed: int = 0,
    input_size: Sequence[int] | None = None,
    lr: float = 3e-3,
    batch_size: int = 128,
    device: str = "auto",
) -> PlacementResult:
    """Compare Aux Block placements on a trained ``backbone``: one row per candidate point and per set.

    Args:
        backbone: the trained classifier (left untouched: each placement gets a deep copy).
        train_set, test_set: data to fine-tune the heads on and to measure on.
        candidates: single attach points (``"stage1,stage2"`` or a list); each is one placement.
        sets: extra placements of several points each (``["stage1,stage2", ["stage2", "stage3"]]``).
        head: the head preset (see :func:`auxsurgery.attach_aux_blocks`).
        mode: fine-tuning mode: ``heads`` (backbone frozen) or ``full``.
        epochs, lr, batch_size: fine-tuning of each placement (AdamW, one-cycle schedule).
        eps, step_size, steps: the PGD crafted on the public model (default: Table VI at CIFAR-10's budget).
        n: test images measured (the first ``n``).
        seed: seeds the heads' initial weights and the data order.
        input_size: ``(C, H, W)`` (default: the backbone's design size).
        device: where to fine-tune and attack (see :attr:`auxsurgery.train.TrainConfig.device`).
    """
    if mode not in ("heads", "full"):
        raise ValueError(f"unknown mode {mode!r}; valid: heads, full")
    placements = [[p] for p in parse_points(candidates)] if candidates else []
    placements += [parse_points(s) for s in sets or []]
    if not placements:
        raise ValueError("no placements: give candidate points and/or sets")
    x, y = _first(test_set, n)
    # Attach every placement before training any: a misspelt point fails in seconds, not after minutes.
    for points in placements:
        attach_aux_blocks(copy.deepcopy(backbone), at=points, input_size=input_size, head=head)
    config = TrainConfig(epochs=epochs, batch_size=batch_size, mode=mode, optimizer="adamw", lr=lr,
                         weight_decay=5e-4, schedule="onecycle", seed=seed, out_dir=None, progress=False, amp="off",
                         device=device)
    rows = []
    for points in placements:
        torch.manual_seed(seed)  # same head initialisation whatever ran before
        aux = attach_aux_blocks(copy.deepcopy(backbone), at=points, input_size=input_size, head=head)
        finetune(aux, train_set, None, config)
        aux.eval()
        clean, robust = _measure(aux, x.to(aux.alpha.device), y.to(aux.alpha.device), eps, step_size, steps)
        costs = head_costs(aux, input_size)[1:]
        clean_heads, clean_rules = _accuracies(clean, y.to(clean.device), aux.head_names, aux.alpha)
        robust_heads, robust_rules = _accuracies(robust, y.to(robust.device), aux.head_names, aux.alpha)
        rows.append(PlacementRow(
            name="+".join(points), points=list(points),
            params=sum(c.params for c in costs), flops=sum(c.flops for c in costs),
            params_overhead=sum(c.params_ratio for c in costs), flops_overhead=sum(c.flops_ratio for c in costs),
            clean_heads=clean_heads, robust_heads=robust_heads, clean_rules=clean_rules, robust_rules=robust_rules))
    for i in pareto_front(rows):
        rows[i].best = True
    return PlacementResult(rows, eps=eps, step_size=step_size, steps=steps, n=n, mode=mode, epochs=epochs)
