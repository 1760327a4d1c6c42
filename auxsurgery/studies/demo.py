"""The end-to-end demo on the embedded dataset: train, attach, fine-tune, attack, report.

It is the README's first command: no download, no GPU, a few minutes on two CPU cores.
An undefended ``small_cnn`` is trained on the synthetic shapes task; a copy of it gets
Aux Blocks and is fine-tuned on the joint objective; both are attacked (the defended
model with the static, adaptive and strong suites) and the numbers go side by side into
one table, ``summary.json`` and ``summary.md``, beside each model's full report.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from .._utils import atomic_write
from ..backbones import build_backbone
from ..checkpoint import save
from ..data import load_dataset
from ..evaluation import Budget, run_suite, write_report
from ..surgery import attach_aux_blocks
from ..train import TrainConfig, finetune

console = Console(stderr=True)


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo run (defaults fit about five minutes on two CPU cores)."""

    backbone: str = "small_cnn"
    attach: str = "stage1,stage2"
    train_size: int = 5000
    eval_size: int = 100
    backbone_epochs: int = 6
    finetune_epochs: int = 6
    lr: float = 3e-3
    seed: int = 0
    quick: bool = False
    device: str = "auto"  # as TrainConfig.device; the attacks run where the trained models are

    @classmethod
    def smoke(cls) -> "DemoConfig":
        """A seconds-long run for tests: the same pipeline, nothing measured seriously."""
        return cls(train_size=500, eval_size=32, backbone_epochs=1, finetune_epochs=1, quick=True)


def _train(model, train_set, test_set, config: DemoConfig, epochs: int, out_dir: Path):
    """AdamW with a one-cycle schedule: converges in a handful of epochs on this task."""
    train_config = TrainConfig(epochs=epochs, batch_size=128, optimizer="adamw", lr=config.lr, weight_decay=5e-4,
                               schedule="onecycle", seed=config.seed, out_dir=str(out_dir), amp="off",
                               select_best="vote", device=config.device)
    return finetune(model, train_set, test_set, train_config)


def _accuracy(result, row_name: str | None, rule: str) -> float | None:
    """Accuracy in % of one rule, on clean inputs (``row_name`` None), one attack row or the worst case."""
    if row_name is None:
        outcome = result.clean
    elif row_name == "worst case":
        outcome = result.worst_case().outcome
    else:
        outcome = result.row(row_name).outcome
    return 100 * outcome.accuracy(rule)


def summarize(undefended, defended) -> list[dict]:
    """One row per model and decision rule: clean, static PGD, Adp-PGD and the strong worst case."""
    rows = [{"model": "undefended small_cnn", "rule": "its own output",
             "clean": _accuracy(undefended, None, "vote"),
             "static PGD": _accuracy(undefended, "Adp-PGD", "vote"),
             "adaptive PGD": _accuracy(undefended, "Adp-PGD", "vote"),
             "strong worst case": _accuracy(undefended, "worst case", "vote")}]
    for rule in ("vote", "score", "public", "private"):
        rows.append({"model": "Aux Blocks", "rule": rule,
                     "clean": _accuracy(defended, None, rule),
                     "static PGD": _accuracy(defended, "PGD", rule),
                     "adaptive PGD": _accuracy(defended, "Adp-PGD", rule),
                     "strong worst case": _accuracy(defended, "worst case", rule)})
    return rows


COLUMNS = ("clean", "static PGD", "adaptive PGD", "strong worst case")


def summary_markdown(rows: list[dict], eps: float, n: int) -> str:
    """The demo's table as Markdown, with how to read it."""
    lines = [
        "# auxsurgery demo: embedded shapes dataset, small_cnn",
        "",
        f"Accuracy in % on {n} test images, L-inf eps = {eps * 255:.0f}/255. 'static PGD' is crafted on the "
        "backbone alone (the paper's static adversary, a baseline); 'adaptive PGD' is the paper's Adp-PGD on the "
        "joint loss; 'strong worst case' is per sample over every attack of the strong and adaptive suites "
        "(APGD-CE/DLR on the ensemble, APGD on the vote margin, Square, a cascade). Only the last column is an "
        "evaluation of robustness. For the undefended model the static and adaptive attacks coincide.",
        "",
        "| model | rule | " + " | ".join(COLUMNS) + " |",
        "|---|---|" + "---|" * len(COLUMNS),
    ]
    for row in rows:
        lines.append(f"| {row['model']} | {row['rule']} | " + " | ".join(f"{row[c]:.1f}" for c in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def print_summary(rows: list[dict], eps: float, n: int) -> None:
    """The demo's table on screen."""
    table = Table(title=f"auxsurgery demo: accuracy (%) on {n} test images, L-inf eps {eps * 255:.0f}/255")
    for column in ("model", "rule", *COLUMNS):
        table.add_column(column, justify="left" if column in ("model", "rule") else "right")
    for row in rows:
        table.add_row(row["model"], row["rule"], *(f"{row[c]:.1f}" for c in COLUMNS))
    table.caption = "static = crafted on the backbone only (baseline); strong worst case = the honest number"
    Console().print(table)


def run_demo(out_dir: str | Path = "demo-out", config: DemoConfig | None = None, show_table: bool = True) -> list[dict]:
    """Run the whole demo and write its reports under ``out_dir``; return the summary rows.

    Progress and warnings go to stderr; the summary table to stdout unless ``show_table`` is False.
    """
    config = config or DemoConfig()
    out_dir = Path(out_dir)
    torch.manual_seed(config.seed)
    train_set = load_dataset("synthetic", train=True, subset=config.train_size)
    test_set = load_dataset("synthetic", train=False)
    # Lighter than the library default (AutoAttack-sized) so the demo fits minutes on a CPU;
    # `auxsurgery attack` runs the full budget.
    budget = Budget.quick() if config.quick else Budget(
        apgd_steps=30, square_queries=300, cw_steps=30, cw_search_steps=3, boundary_steps=200,
        cascade_steps=(20, 40), cascade_restarts=2)

    console.rule("1/4 train the undefended backbone")
    backbone = build_backbone(config.backbone, num_classes=10)
    _train(backbone, train_set, test_set, config, config.backbone_epochs, out_dir / "undefended" / "train")

    console.rule("2/4 attach Aux Blocks to a copy and fine-tune on the joint objective")
    aux = attach_aux_blocks(copy.deepcopy(backbone), at=config.attach, input_size=(3, 32, 32))
    _train(aux, train_set, test_set, config, config.finetune_epochs, out_dir / "defended" / "train")
    save(aux, out_dir / "defended" / "model.safetensors")

    console.rule("3/4 attack the undefended backbone")
    evaluation = dict(n=config.eval_size, seed=config.seed, budget=budget, dataset="synthetic")
    undefended = run_suite(backbone.eval(), test_set, suite="adaptive,strong", rules=("vote",), **evaluation)
    write_report(undefended, out_dir / "undefended")

    console.rule("4/4 attack the defended model: static, adaptive and strong suites")
    defended = run_suite(aux.eval(), test_set, suite="static,adaptive,strong", **evaluation)
    write_report(defended, out_dir / "defended")

    rows = summarize(undefended, defended)
    eps, n = defended.preset.eps, defended.n
    atomic_write(out_dir / "summary.json", lambda tmp: Path(tmp).write_text(
        json.dumps({"config": config.__dict__, "eps": eps, "n": n, "rows": rows}, indent=1)))
    atomic_write(out_dir / "summary.md", lambda tmp: Path(tmp).write_text(summary_markdown(rows, eps, n)))
    if show_table:
        print_summary(rows, eps, n)
    for finding in defended.findings + undefended.findings:
        if finding.level == "warning":
            console.print(f"[yellow]warning[/yellow]: {finding.message}")
    console.print(f"reports: {out_dir}/summary.md, {out_dir}/defended/report.md, {out_dir}/undefended/report.md")
    return rows
