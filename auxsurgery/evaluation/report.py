"""Reporting a :class:`~auxsurgery.evaluation.suites.SuiteResult`: screen table, results.json, report.md, plots.

``results.json`` follows the versioned schema ``auxsurgery.results/1`` (see
:data:`TOP_LEVEL_FIELDS` and :func:`validate_results`); ``report.md`` lays the static and
adaptive suites out like the paper's Tables II and VII (one row per decision rule, one
column per attack, clean accuracy first). Plots are drawn on matplotlib's Agg canvas
without touching pyplot's global state.
"""
from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from safetensors.torch import save_file

from .._output import OutputConsole
from .._utils import atomic_write, markdown_table
from ..provenance import release
from ..rules import get_rule
from .plans import Suite, get_suite
from .presets import fmt_eps, fmt_norm, fmt_threat
from .results import protocol_lines, stage_line

__all__ = [
    "ROW_FIELDS", "SCHEMA", "TOP_LEVEL_FIELDS", "markdown_report", "plot_sweep", "plot_transfer", "print_table",
    "results_document", "rule_label", "validate_results", "write_adversarial", "write_report",
]

SCHEMA = "auxsurgery.results/1"
# field -> JSON type of results.json's top level; None-able fields accept null too.
TOP_LEVEL_FIELDS = {
    "schema": str, "auxsurgery_version": str, "created": str, "model": dict, "data": dict, "settings": dict,
    "clean": dict, "attacks": list, "worst_case": dict, "per_sample": dict, "heads_study": (dict, type(None)),
    "sanity": list, "timings": dict,
}
ROW_FIELDS = {
    "name": str, "suite": str, "kind": str, "config": dict, "threat": dict, "rules": dict, "heads": dict,
    "head_loss": dict, "seconds": (int, float), "passes": dict, "attacked": int, "perturbation": dict,
}
SWEEP_PLOT, TRANSFER_PLOT = "accuracy_vs_eps.png", "transfer_heatmap.png"


def rule_label(rule: str) -> str:
    """How reports name ``rule``: its registered label, or the name itself for a rule this process has not
    registered (a report rebuilt from a results.json of another session's rule)."""
    try:
        return get_rule(rule).label
    except ValueError:
        return rule


def _pct(accuracy: float) -> str:
    return f"{100 * accuracy:.1f}"


def _passes(passes) -> str:
    return f"{passes.forward:,} / {passes.backward:,}"


# ---- results.json ------------------------------------------------------------------------------


def results_document(result) -> dict:
    """The whole evaluation as a JSON-able dict with schema ``auxsurgery.results/1``."""
    worst = result.worst_case()
    study = result.heads_study()
    return {
        "schema": SCHEMA,
        **release(),  # auxsurgery_version, auxsurgery_commit
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": result.model_info,
        "data": result.data_info,
        "settings": result.settings,
        "clean": result.clean.summary(result.head_names),
        "attacks": [row.to_dict(result.head_names) for row in result.rows],
        "worst_case": worst.to_dict(result.head_names),
        "per_sample": {
            "label": result.labels.tolist(),
            "clean": {r: c.tolist() for r, c in result.clean.rules.items()},
            "robust": {r: c.tolist() for r, c in worst.outcome.rules.items()},
            "first_broken_by": worst.first_broken_by,
        },
        "heads_study": study.to_dict() if study else None,
        "sanity": [finding.to_dict() for finding in result.findings],
        "timings": {"total_seconds": result.seconds, "attacks": {row.name: row.seconds for row in result.rows},
                    "passes": result.passes().to_dict(), "sanity_passes": result.passes(sanity=True).to_dict()},
    }


def _check_fields(where: str, obj: dict, fields: dict) -> None:
    for key, kind in fields.items():
        if key not in obj:
            raise ValueError(f"{where}: missing field {key!r}")
        if not isinstance(obj[key], kind):
            raise ValueError(f"{where}: field {key!r} is {type(obj[key]).__name__}, expected {kind}")


def validate_results(doc: dict) -> None:
    """Raise ValueError unless ``doc`` is a well-formed ``auxsurgery.results/1`` document."""
    if doc.get("schema") != SCHEMA:
        raise ValueError(f"not an {SCHEMA} document (schema: {doc.get('schema')!r})")
    _check_fields("results", doc, TOP_LEVEL_FIELDS)
    rules, heads = doc["clean"].get("rules"), doc["clean"].get("heads")
    if not rules or not heads or list(heads) != doc["model"].get("head_names"):
        raise ValueError("results: clean accuracies must list every rule and every model head")
    for i, row in enumerate(doc["attacks"]):
        _check_fields(f"attacks[{i}]", row, ROW_FIELDS)
        if set(row["rules"]) != set(rules) or list(row["heads"]) != list(heads):
            raise ValueError(f"attacks[{i}] ({row['name']}): accuracies must cover every rule and head")
        accuracies = [*row["rules"].values(), *row["heads"].values()]
        if not all(0 <= a <= 1 for a in accuracies):
            raise ValueError(f"attacks[{i}] ({row['name']}): accuracies must lie in [0, 1]")
    n = doc["data"].get("n")
    for key in ("label", "clean", "robust", "first_broken_by"):
        if key not in doc["per_sample"]:
            raise ValueError(f"per_sample: missing field {key!r}")
    if len(doc["per_sample"]["label"]) != n or any(len(v) != n for v in doc["per_sample"]["robust"].values()):
        raise ValueError(f"per_sample: every list must have one entry per sample ({n})")
    for finding in doc["sanity"]:
        _check_fields("sanity", finding, {"check": str, "level": str, "message": str})


# ---- screen --------------------------------------------------------------------------------------


def print_table(result, console: Console | None = None) -> None:
    """One rich table: clean accuracy, every attack's accuracy per attacked rule, the worst case; then findings."""
    console = console or OutputConsole()
    table = Table(title=f"accuracy (%) under each attack, n={result.n}", title_justify="left")
    table.add_column("suite")
    table.add_column("attack", no_wrap=True)
    table.add_column("kind")
    table.add_column("threat", no_wrap=True)
    rules = [rule for rule, _ in result.shown_rules]
    for _, label in result.shown_rules:
        table.add_column(label, justify="right")
    table.add_column("img/s", justify="right")
    table.add_row("-", "clean (no attack)", "-", "-", *(_pct(result.clean.accuracy(r)) for r in rules), "")
    table.add_section()
    for row in result.rows:
        speed = f"{row.attacked / row.seconds:,.0f}" if row.attacked and row.seconds > 0 else "-"
        table.add_row(row.suite, escape(row.name), row.kind, fmt_threat(row.threat),
                      *(_pct(row.outcome.accuracy(r)) for r in rules), speed)
    worst = result.worst_case()
    table.add_section()
    threat = fmt_threat({"norm": worst.norm, "eps": worst.eps})
    table.add_row("all", "worst case", f"{len(worst.attacks)} attacks", threat,
                  *(_pct(worst.outcome.accuracy(r)) for r in rules), "")
    table.caption = f"budget {result.budget.describe()}"
    console.print(table)
    for cascade in result.cascade_stages():
        console.print(stage_line(cascade, result.accuracy_label(cascade["rule"])), markup=False, highlight=False)
    for finding in result.findings:
        style = "bold yellow" if finding.level == "warning" else "dim"
        console.print(f"[{style}]{finding.level}[/{style}] ({finding.check}): {escape(finding.message)}",
                      highlight=False)


# ---- report.md -----------------------------------------------------------------------------------


def _suite(name: str) -> Suite:
    """How to present a suite's rows: its registration, or a plain list for rows of unregistered
    suites (extra plans passed to run_suite, the sanity probes)."""
    try:
        return get_suite(name)
    except ValueError:
        return Suite(name, build=lambda context: [], title=f"{name.capitalize()} attacks")


def _paper_layout(result, rows) -> list[str]:
    """Rows: decision rules then heads; columns: clean, then one per attack (Tables II and VII)."""
    header = ["Model decision", "Clean", *(row.name for row in rows)]
    body = [[rule_label(r), _pct(result.clean.accuracy(r)), *(_pct(row.outcome.accuracy(r)) for row in rows)]
            for r in result.eval_rules]
    heads = [[f"head {name}", _pct(clean), *(_pct(row.outcome.head_accuracy()[k]) for row in rows)]
             for k, (name, clean) in enumerate(zip(result.head_names, result.clean.head_accuracy()))]
    return markdown_table(header, body + heads)


def _list_layout(result, rows) -> list[str]:
    """One line per attack: its kind, threat model and accuracy under each attacked rule."""
    header = ["Attack", "Kind", "Threat", *(f"{label} (clean {_pct(result.clean.accuracy(r))})"
                                            for r, label in result.shown_rules), "Seconds", "Passes fwd / bwd"]
    body = [[row.name, row.kind, fmt_threat(row.threat), *(_pct(row.outcome.accuracy(r)) for r, _ in result.shown_rules),
             f"{row.seconds:.1f}", _passes(row.passes)] for row in rows]
    return markdown_table(header, body)


def _worst_case_section(result) -> list[str]:
    worst = result.worst_case()
    lines = [f"## Worst case per sample ({fmt_threat({'norm': worst.norm, 'eps': worst.eps})})", "",
             "A sample counts as robust only if no attack within the budget fooled it "
             f"({len(worst.attacks)} attacks: {', '.join(worst.attacks) or 'none'}).", ""]
    body = [[rule_label(r), _pct(result.clean.accuracy(r)), _pct(worst.outcome.accuracy(r))]
            for r in result.eval_rules]
    return lines + markdown_table(["Model decision", "Clean", "Worst case"], body)


def _stages_section(result) -> list[str]:
    """Each cascade's accuracy under its rule after each stage (AutoAttack's log, as a table)."""
    lines = []
    for cascade in result.cascade_stages():
        lines += ["", f"## {cascade['cascade']}: {result.accuracy_label(cascade['rule'])} by stage", ""]
        body = [[cascade["start"], _pct(cascade["start_accuracy"])],
                *([stage["attack"], _pct(stage["accuracy"])] for stage in cascade["stages"])]
        lines += markdown_table(["After", "Accuracy"], body)
    return lines


def _heads_section(study, plots: Sequence[str]) -> list[str]:
    names = study.head_names
    lines = ["## Per-head study (Table VI, Fig. 5)", "", "Table VI: each head's accuracy under PGD crafted on the "
             "public head:", ""]
    lines += markdown_table(["", *names], [["clean", *map(_pct, study.clean)],
                                      ["PGD on public", *map(_pct, study.matrix[0])]])
    lines += ["", "Transfer matrix: row = head the PGD was crafted on, column = head judged.", ""]
    lines += markdown_table(["crafted on \\ judged", *names],
                       [[name, *map(_pct, row)] for name, row in zip(names, study.matrix)])
    lines += ["", "Fig. 5 loss ratio l_avg / l_i (below 1: attacking head i barely hurts the others):", ""]
    lines += markdown_table(["", *names], [["l_avg / l_i", *(f"{r:.3f}" for r in study.loss_ratio)]])
    return lines + (["", f"![transfer matrix]({TRANSFER_PLOT})"] if TRANSFER_PLOT in plots else [])


def markdown_report(result, plots: Sequence[str] = ()) -> str:
    """The report as Markdown; ``plots`` are the plot file names written beside it."""
    p = result.preset
    lines = [
        "# auxsurgery robustness report", "",
        f"- model: {result.model_info['class']}, heads {', '.join(result.head_names)}, "
        f"alpha {result.model_info['alpha']}",
        f"- data: {result.data_info['source']}, n={result.n}, "
        f"shape {'x'.join(map(str, result.data_info['shape']))}",
        f"- threat model: {fmt_norm(p.norm)} eps={fmt_eps(p.eps)} (preset {p.name}); PGD step "
        f"{fmt_eps(p.step_size)}, {p.steps} steps; seed {result.settings['seed']}",
        f"- budget: {result.budget.describe()}",
        f"- suites: {', '.join(result.suites)}; attacked rules: {', '.join(result.rules)}; "
        f"{result.seconds:.1f} s in all",
        f"- cost: {_passes(result.passes())} image-passes in the attacks, {_passes(result.passes(sanity=True))} "
        "in the sanity probes (forward / backward)",
        *(f"- {line}" for line in protocol_lines(result.settings)), "",
        "Accuracies in %. Success is judged by the defended model's own decision rules; a sample misclassified "
        "without attack never counts as robust.", "",
        "## Sanity checks", "",
    ]
    lines += [f"- **{f.level}** ({f.check}): {f.message}" for f in result.findings] or ["- all checks passed"]
    for name in dict.fromkeys(row.suite for row in result.rows):
        rows, suite = result.rows_of(name), _suite(name)
        if suite.layout == "paper":
            lines += ["", f"## {suite.title}", ""] + _paper_layout(result, rows)
        elif suite.layout == "list":
            lines += ["", f"## {suite.title}", ""] + _list_layout(result, rows)
        lines += ["", suite.caption] if suite.caption and suite.layout != "study" else []
        if suite.plots_series and SWEEP_PLOT in plots:
            lines += ["", f"![accuracy vs eps and steps]({SWEEP_PLOT})"]
            plots = [p for p in plots if p != SWEEP_PLOT]
    lines += _stages_section(result)
    lines += [""] + _worst_case_section(result)
    study = result.heads_study()
    if study:
        lines += [""] + _heads_section(study, plots)
    return "\n".join(lines) + "\n"


# ---- plots ---------------------------------------------------------------------------------------


def plot_sweep(result, path: str | Path) -> Path | None:
    """Accuracy against eps and against steps (Fig. 4), one line per attacked rule; None without a sweep."""
    rows = [row for row in result.rows if row.series and _suite(row.suite).plots_series]
    if not rows:
        return None
    axes_names = list(dict.fromkeys(row.series[1] for row in rows))
    from matplotlib.figure import Figure  # plotting is imported only when a plot is drawn

    fig = Figure(figsize=(5 * len(axes_names), 4), layout="constrained")
    for ax, axis in zip(fig.subplots(1, len(axes_names), squeeze=False)[0], axes_names):
        members = sorted((row for row in rows if row.series[1] == axis), key=lambda row: row.series[2])
        # Several series can share an axis (a recipe's curve: Adp-PGD and APGD against eps): one line each.
        series_names = list(dict.fromkeys(row.series[0] for row in members))
        for series in series_names:
            line = [row for row in members if row.series[0] == series]
            for rule in result.rules:
                label = rule if len(series_names) == 1 else f"{series} [{rule}]"
                ax.plot([row.series[2] for row in line], [100 * row.outcome.accuracy(rule) for row in line],
                        marker="o", label=label)
        xs = sorted({row.series[2] for row in members})
        ax.set_xlabel(f"eps ({fmt_norm(result.preset.norm, prose=True)}, pixels)" if axis == "eps" else "PGD steps")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(-2, 102)
        ax.set_title(members[0].series[0] if len(series_names) == 1 else f"accuracy vs {axis}")
        if axis == "steps":
            ax.set_xscale("log")
            ax.set_xticks(xs, [f"{x:g}" for x in xs])
            ax.minorticks_off()
        ax.legend()
    return _save(fig, path)


def plot_transfer(study, path: str | Path) -> Path:
    """Head x head transfer heatmap (accuracy of each judged head) beside Fig. 5's loss ratios."""
    from matplotlib.figure import Figure  # plotting is imported only when a plot is drawn

    fig = Figure(figsize=(10, 4.2), layout="constrained")
    heat, bars = fig.subplots(1, 2, width_ratios=[3, 2])
    names = study.head_names
    image = heat.imshow([[100 * a for a in row] for row in study.matrix], vmin=0, vmax=100, cmap="viridis")
    for i, row in enumerate(study.matrix):
        for j, accuracy in enumerate(row):
            heat.text(j, i, f"{100 * accuracy:.0f}", ha="center", va="center",
                      color="white" if accuracy < 0.5 else "black")
    heat.set_xticks(range(len(names)), names, rotation=30, ha="right")
    heat.set_yticks(range(len(names)), names)
    heat.set_xlabel("head judged")
    heat.set_ylabel("PGD crafted on")
    fig.colorbar(image, ax=heat, label="accuracy (%)")
    bars.bar(names, [r if math.isfinite(r) else 0.0 for r in study.loss_ratio])
    bars.axhline(1.0, color="grey", linestyle="--")
    bars.set_ylabel("l_avg / l_i")
    bars.set_title("Fig. 5: loss ratio")
    bars.tick_params(axis="x", rotation=30)
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


# ---- everything ------------------------------------------------------------------------------------


def write_adversarial(result, path: str | Path) -> Path:
    """:meth:`SuiteResult.adversarial_examples` as a safetensors file; its metadata names the attacks and
    probes that ``broken_by/<rule>`` indexes and the threat model."""
    worst = result.worst_case()
    tensors = {key: value.contiguous() for key, value in result.adversarial_examples().items()}
    metadata = {"attacks": json.dumps(worst.breakers), "threat": json.dumps({"norm": worst.norm, "eps": worst.eps}),
                "rules": json.dumps(list(result.eval_rules)), **release()}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def write_report(result, out_dir: str | Path) -> list[Path]:
    """Write results.json, report.md and the plots into ``out_dir``; return the paths written."""
    out_dir = Path(out_dir)
    written = [p for p in (plot_sweep(result, out_dir / SWEEP_PLOT),) if p]
    study = result.heads_study()
    if study:
        written.append(plot_transfer(study, out_dir / TRANSFER_PLOT))
    doc = results_document(result)
    validate_results(doc)
    text = json.dumps(doc, indent=1)
    written.append(atomic_write(out_dir / "results.json", lambda tmp: Path(tmp).write_text(text)))
    report = markdown_report(result, [p.name for p in written])
    written.append(atomic_write(out_dir / "report.md", lambda tmp: Path(tmp).write_text(report)))
    return written
