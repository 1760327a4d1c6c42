"""The placement study: where to attach Aux Blocks, robustness against cost.

For each candidate attach point (and each candidate set of points) a deep copy of a
trained backbone gets heads there, is fine-tuned (heads only by default: the backbone is
frozen, so every placement shares the same public model), and is measured by the ``heads``
suite: its Table VI (a two-iteration PGD crafted on the PUBLIC model, at the preset eps and
step) judged by every head and every decision rule. Each placement's parameter and FLOP
overhead comes from :func:`auxsurgery.cost.head_costs`; the best placements are the Pareto
front of robust vote accuracy against FLOP overhead.

    backbone = trained_backbone("small_cnn", train_data, num_classes=10)
    result = place_study(backbone, train_data, test_data, ["stage1", "stage2", "stage3"], epochs=3, n=200)
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

from .._output import OutputConsole
from .._utils import atomic_write, markdown_table, renamed_kwargs
from ..backbones import PROVENANCE_KEYS, build_backbone
from ..cost import head_costs
from ..evaluation import collect, run_suite
from ..evaluation.plans import HEADS_SUITE
from ..evaluation.presets import fmt_eps, fmt_norm
from ..provenance import release
from ..surgery import attach_aux_blocks, parse_points
from ..train import TrainConfig, finetune

__all__ = ["PlacementResult", "PlacementRow", "pareto_front", "place_study", "trained_backbone"]

console = OutputConsole(stderr=True)
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
            inputs and under PGD crafted on the public model (right on the clean input too).
        clean_rules, robust_rules: the same for every decision rule.
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
    norm: str = "linf"

    def to_dict(self) -> dict:
        """JSON-able values: the settings and one dict per row."""
        return {"eps": self.eps, "norm": self.norm, "step_size": self.step_size, "steps": self.steps, "n": self.n,
                "mode": self.mode, "epochs": self.epochs, "rows": [asdict(row) for row in self.rows]}

    def _title(self) -> str:
        return (f"Placement study: accuracy (%) on {self.n} test images, PGD-{self.steps} crafted on the public model, "
                f"{fmt_norm(self.norm, prose=True)} eps {fmt_eps(self.eps)}, step {fmt_eps(self.step_size)}")

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
        (console or OutputConsole()).print(table)

    def markdown(self) -> str:
        """The rows as a Markdown table with how to read it."""
        lines = [
            "# Placement study", "",
            self._title() + f". Heads fine-tuned for {self.epochs} epoch(s) in mode `{self.mode}`. "
            "Overheads are the aux heads' parameters and FLOPs as % of the backbone's. 'best' marks the Pareto front "
            "of PGD vote accuracy vs FLOP overhead. The attack is the paper's static one (Table VI): it ignores the "
            "heads, so it ranks placements but is no evaluation of robustness; run `auxsurgery attack` on the winner.",
            "",
        ]
        lines += markdown_table(self._COLUMNS, map(self._cells, self.rows))
        body = []
        for row in self.rows:
            body += [[row.name, name, f"{100 * row.clean_heads[name]:.1f}", f"{100 * row.robust_heads[name]:.1f}"]
                     for name in row.clean_heads]
            body += [[row.name, f"rule: {rule}", f"{100 * row.clean_rules[rule]:.1f}",
                      f"{100 * row.robust_rules[rule]:.1f}"] for rule in row.clean_rules]
        lines += ["", "Every head and rule, clean / PGD (%):", ""]
        lines += markdown_table(["placement", "head or rule", "clean", "PGD"], body)
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
        ax.set_title(f"Placement: robustness vs cost (n={self.n}, {fmt_norm(self.norm, prose=True)} eps "
                     f"{fmt_eps(self.eps)})")
        ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))

    def write(self, out_dir: str | Path) -> list[Path]:
        """Write ``placement.json``, ``placement.md`` and ``placement.png`` under ``out_dir``; return their paths."""
        out_dir = Path(out_dir)
        text = json.dumps({**release(), **self.to_dict()}, indent=1)
        return [atomic_write(out_dir / "placement.json", lambda tmp: Path(tmp).write_text(text)),
                atomic_write(out_dir / "placement.md", lambda tmp: Path(tmp).write_text(self.markdown())),
                self.plot(out_dir / "placement.png")]


@renamed_kwargs(train_set="train_data")
def trained_backbone(model: str | nn.Module, train_data: Dataset, num_classes: int, pretrained: bool = False,
                     epochs: int | None = None, seed: int = 0, device: str = "auto") -> nn.Module:
    """The backbone the placements share, trained for ``epochs``.

    ``model`` is a backbone name (built for ``num_classes`` and the data's channels, with the library's
    weights if ``pretrained``) or a backbone already built, e.g. ``build_backbone(name, weights=PATH)``.
    ``epochs`` defaults to 3 for random weights and 0 for loaded ones (``pretrained``, a backbone whose spec
    records a weights file or pretrained weights, or a module of yours without a spec): a trained backbone
    is used as it is.
    """
    if isinstance(model, nn.Module):
        backbone = model
        spec = getattr(model, "spec", None)
        loaded = pretrained or not spec or any(key in spec for key in PROVENANCE_KEYS)
    else:
        backbone = build_backbone(model, num_classes=num_classes, pretrained=pretrained,
                                  in_chans=train_data[0][0].shape[0])
        loaded = pretrained
    name = getattr(backbone, "spec", {}).get("name") or type(backbone).__name__
    if epochs is None:
        # Heads on a random-weight backbone measure nothing: train it unless weights were loaded.
        epochs = 0 if loaded else 3
    if epochs > 0:
        console.rule(f"train {name} for {epochs} epoch(s)")
        finetune(backbone, train_data, None, TrainConfig.quick(epochs, seed=seed, out_dir=None, device=device))
    elif loaded:
        console.print(f"using {name}'s loaded weights as they are (no backbone training)")
    else:
        console.print("[yellow]warning[/yellow]: the backbone has random weights, so the placements measure "
                      "nothing; train it first (epochs > 0) or load trained weights (--weights, --pretrained)")
    return backbone


@renamed_kwargs(train_set="train_data", test_set="test_data")
def place_study(
    backbone: nn.Module,
    train_data: Dataset,
    test_data: Dataset,
    candidates: str | Sequence[str],
    sets: Sequence[str | Sequence[str]] | None = None,
    head: str = "default",
    mode: str = "heads",
    epochs: int = 3,
    eps: float = 8 / 255,
    step_size: float = 2 / 255,
    n: int = 200,
    seed: int = 0,
    input_size: Sequence[int] | None = None,
    lr: float = 3e-3,
    batch_size: int = 128,
    device: str = "auto",
    norm: str = "linf",
) -> PlacementResult:
    """Compare Aux Block placements on a trained ``backbone``: one row per candidate point and per set.

    Args:
        backbone: the trained classifier (left untouched: each placement gets a deep copy).
        train_data, test_data: data to fine-tune the heads on and to measure on (``train_set``, ``test_set``
            before 0.2.0).
        candidates: single attach points (``"stage1,stage2"`` or a list); each is one placement.
        sets: extra placements of several points each (``["stage1,stage2", ["stage2", "stage3"]]``).
        head: the head preset (see :func:`auxsurgery.attach_aux_blocks`).
        mode: fine-tuning mode: ``heads`` (backbone frozen) or ``full``.
        epochs, lr, batch_size: fine-tuning of each placement (:meth:`TrainConfig.quick`: AdamW, one-cycle).
        eps, step_size: the ``heads`` suite's PGD (its preset's two steps, Table VI; default: CIFAR-10's budget).
        norm: the ball of ``eps`` and ``step_size``, ``linf`` or ``l2``.
        n: test images measured (the first ``n``).
        seed: seeds the heads' initial weights, the data order and the attacks.
        input_size: ``(C, H, W)`` (default: the backbone's design size).
        device: where to fine-tune and attack (see :attr:`auxsurgery.train.TrainConfig.device`).
    """
    if mode not in ("heads", "full"):
        raise ValueError(f"unknown mode {mode!r}; valid: heads, full")
    placements = [[p] for p in parse_points(candidates)] if candidates else []
    placements += [parse_points(s) for s in sets or []]
    if not placements:
        raise ValueError("no placements: give candidate points and/or sets")
    if not 0 < n <= len(test_data):
        raise ValueError(f"n={n} test images asked from a test set of {len(test_data)}")
    x, y, _ = collect(test_data, n)  # every placement sees the same images
    # Attach every placement before training any: a misspelt point fails in seconds, not after minutes.
    for points in placements:
        attach_aux_blocks(copy.deepcopy(backbone), at=points, input_size=input_size, head=head)
    config = TrainConfig.quick(epochs, lr=lr, batch_size=batch_size, mode=mode, seed=seed, out_dir=None,
                               progress=False, device=device)
    rows = []
    for points in placements:
        torch.manual_seed(seed)  # same head initialisation whatever ran before
        aux = attach_aux_blocks(copy.deepcopy(backbone), at=points, input_size=input_size, head=head)
        finetune(aux, train_data, None, config)
        # The heads suite's PGD has a deterministic start (as in the paper): every placement faces the
        # same attack, and with a frozen backbone the very same adversarial images.
        result = run_suite(aux.eval(), (x, y), suite=HEADS_SUITE, eps=eps, step_size=step_size, seed=seed,
                           batch_size=_BATCH, progress=False, norm=norm)
        clean, study = result.clean.summary(aux.head_names), result.heads_study()
        costs = head_costs(aux, input_size)[1:]
        rows.append(PlacementRow(
            name="+".join(points), points=list(points),
            params=sum(c.params for c in costs), flops=sum(c.flops for c in costs),
            params_overhead=sum(c.params_ratio for c in costs), flops_overhead=sum(c.flops_ratio for c in costs),
            clean_heads=clean["heads"], robust_heads=study.table_vi(), clean_rules=clean["rules"],
            robust_rules=study.table_vi_rules))
    for i in pareto_front(rows):
        rows[i].best = True
    return PlacementResult(rows, eps=eps, step_size=step_size, steps=result.preset.heads_steps, n=n, mode=mode,
                           epochs=epochs, norm=norm)
