"""A recipe's comparison report: our accuracies beside the paper's, per eps reading, plus the eps curve.

It reads only the ``results.json`` documents of the run (schema ``auxsurgery.results/1``),
so a resumed run rebuilds the same report from disk. Rows follow Table II: the undefended
model (NA), PGD adversarial training, then the Aux Block model under each decision rule
(the paper reports its vote, "all", and its private heads); columns are Table II's attacks,
Table VII's Adp-PGD and our per-sample worst case, which the paper lacks. A recipe without
paper numbers (``paper = "none"``) gets our numbers alone.
"""
from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure
from rich.table import Table
from rich.text import Text

from .._utils import atomic_write, markdown_table
from ..evaluation.confidence import (
    paired_difference_interval,
    percent_with_interval,
    points_with_interval,
    wilson_interval,
)
from ..evaluation.presets import fmt_norm
from ..evaluation.report import fmt_eps
from ..rules import default_rules
from .paper import paper_value

__all__ = ["COLUMNS", "ROWS", "SCHEMA", "build_report", "plot_curves", "plot_heads", "reading_table",
           "reading_tables", "report_markdown"]

SCHEMA = "auxsurgery.recipe-report/1"
# The paper's method name of the Aux Block rules it reports ("all" is Algorithm 1's vote).
_AUX_PAPER_METHODS = {"vote": "Aux Block (all)", "private": "Aux Block (private)"}
# (row label, model, rule, the paper's method name or None); a baseline has one output, read as its vote.
ROWS = (
    ("NA (undefended)", "undefended", "vote", "NA"),
    ("Adversarial Training", "adversarial", "vote", "Adversarial Training"),
    *((f"Aux Block: {rule}", "aux", rule, _AUX_PAPER_METHODS.get(rule)) for rule in default_rules()),
)


def _attacked_beyond_defaults(documents: dict, model: str) -> list[str]:
    """The rules other than the paper's four that ``model``'s evaluations attacked (``[attack] rules``, e.g.
    ``crossmax``), in order: the paper has none of them."""
    attacked = (rule for doc in documents[model].values() for rule in doc["settings"]["rules"])
    return [rule for rule in dict.fromkeys(attacked) if rule not in default_rules()]


def _rows(documents: dict) -> list[tuple]:
    """:data:`ROWS` of the models a run has and any other rule its Aux Block model was attacked under, then every
    rule of each other (Aux Block) model, which the paper lacks: an ``aux_adversarial_<name>`` stage reads as
    ``Aux Block, adversarial <name>: <rule>``."""
    aux = [(f"Aux Block: {rule}", "aux", rule, None)
           for rule in (_attacked_beyond_defaults(documents, "aux") if "aux" in documents else [])]
    extra = [(f"Aux Block, adversarial {model.removeprefix('aux_adversarial_')}: {rule}", model, rule, None)
             for model in documents if model.startswith("aux_adversarial_")
             for rule in (*default_rules(), *_attacked_beyond_defaults(documents, model))]
    return [row for row in ROWS if row[1] in documents] + aux + extra
# column -> the attack row it reads (None: clean accuracy; "worst case": the per-sample worst case)
COLUMNS = {"clean": None, "PGD": "PGD", "CW": "CW-L2", "Boundary": "Boundary", "Adp-PGD": "Adp-PGD",
           "worst case": "worst case"}
# Unbounded attacks give the same result at every eps: a reading that skipped them borrows them.
EPS_FREE = ("CW", "Boundary")


def _ours(doc: dict, column: str, rule: str) -> float | None:
    """Our accuracy in % of ``rule`` under ``column`` in one results.json, or None if it did not run."""
    source = COLUMNS[column]
    if source is None:
        return 100 * doc["clean"]["rules"][rule]
    if source == "worst case":
        return 100 * doc["worst_case"]["rules"][rule]
    row = next((r for r in doc["attacks"] if r["name"] == source), None)
    return None if row is None else 100 * row["rules"][rule]


def _cell(documents: dict, model: str, reading: str, column: str, rule: str) -> tuple[float | None, str | None]:
    """(accuracy, the reading it was borrowed from or None)."""
    value = _ours(documents[model][reading], column, rule)
    if value is None and column in EPS_FREE:
        for other, doc in documents[model].items():
            if other != "curve" and (borrowed := _ours(doc, column, rule)) is not None:
                return borrowed, other
    return value, None


def _interval(accuracy: float | None, n: int) -> list[float] | None:
    """The 95% Wilson interval of an accuracy in %, in %."""
    return None if accuracy is None else [100 * bound for bound in wilson_interval(accuracy / 100, n)]


def _table(documents: dict, reading: str, setting: str) -> list[dict]:
    rows = []
    for label, model, rule, method in _rows(documents):
        cells = {}
        n = documents[model][reading]["data"]["n"]
        for column in COLUMNS:
            ours, borrowed = _cell(documents, model, reading, column, rule)
            paper = paper_value(setting, method, column) if method else None
            cells[column] = {"ours": ours, "interval": _interval(ours, n), "paper": paper, "from_reading": borrowed}
        # A rule no cascade attacked is judged only on the examples crafted against the others: an upper bound.
        cells["worst case"]["attacked"] = rule in documents[model][reading]["settings"]["rules"]
        rows.append({"label": label, "model": model, "rule": rule, "paper_method": method, "cells": cells})
    return rows


def _curve(doc: dict) -> dict:
    """``{series name: [[eps, accuracy %], ...]}`` of the rule the curve attacked."""
    rule = doc["settings"]["rules"][0]
    series: dict[str, list] = {}
    for row in doc["attacks"]:
        # Every attack row along eps (the ``curve`` suite's; ``sweep`` in reports before 0.2), no sanity probe.
        if row["series"] and row["series"][1] == "eps" and row["suite"] != "sanity":
            name, _, eps = row["series"]
            series.setdefault(name, []).append([eps, 100 * row["rules"][rule]])
    return {"rule": rule, "series": {name: sorted(points) for name, points in series.items()}}


# The model every other one is measured against where a run has it: the defence to beat.
BASELINE = "adversarial"


def _gains(documents: dict, reading: str) -> list[dict]:
    """Each other model's (and rule's) clean and worst-case difference to the adversarially trained backbone at
    ``reading``, paired point by point (every model is attacked on the same test points); empty without one."""
    base = documents.get(BASELINE, {}).get(reading)
    if base is None:
        return []
    rows = []
    for label, model, rule, _ in _rows(documents):
        doc = documents[model].get(reading)
        if (model == BASELINE or doc is None or rule not in doc["settings"]["rules"]
                or doc["per_sample"]["label"] != base["per_sample"]["label"]):
            continue  # the baseline itself, a rule no cascade attacked, or other points
        ours, theirs = doc["per_sample"], base["per_sample"]
        rows.append({"label": label, "model": model, "rule": rule,
                     "clean": paired_difference_interval(ours["clean"][rule], theirs["clean"]["vote"]),
                     "worst_case": paired_difference_interval(ours["robust"][rule], theirs["robust"]["vote"])})
    return rows


CURVES_PLOT, HEADS_PLOT = "accuracy_vs_eps.png", "aux_heads.png"
# The per-head panel: clean accuracy and the attacks that tell whether the heads fall together.
HEAD_COLUMNS = ("clean", "PGD", "Adp-PGD", "worst case")


def _heads(documents: dict, readings: list[dict]) -> dict:
    """``{reading: {column: {head: accuracy %}}}`` of the Aux Block model (empty without one)."""
    if "aux" not in documents:
        return {}
    panels = {}
    for reading in readings:
        doc = documents["aux"][reading["name"]]
        rows = {"clean": doc["clean"], "worst case": doc["worst_case"],
                **{r["name"]: r for r in doc["attacks"] if r["name"] in HEAD_COLUMNS}}
        panels[reading["name"]] = {column: {head: 100 * acc for head, acc in rows[column]["heads"].items()}
                                   for column in HEAD_COLUMNS if column in rows}
    return panels


def build_report(recipe, documents: dict, readings: list[dict]) -> dict:
    """The comparison as a JSON-able dict (schema ``auxsurgery.recipe-report/1``)."""
    setting = recipe["recipe"]["paper"]
    return {
        "schema": SCHEMA,
        "recipe": {"name": recipe.name, "path": recipe.path, "description": recipe["recipe"]["description"],
                   "paper_setting": setting},
        "readings": readings,
        "norm": recipe["attack"]["norm"],
        "n": {model: next(iter(docs.values()))["data"]["n"] for model, docs in documents.items()},
        "tables": {r["name"]: _table(documents, r["name"], setting) for r in readings},
        "gains": {r["name"]: _gains(documents, r["name"]) for r in readings},
        "curve": {model: _curve(docs["curve"]) for model, docs in documents.items() if "curve" in docs},
        "heads": _heads(documents, readings),
        "eval_seconds": {model: {reading: doc["timings"]["total_seconds"] for reading, doc in docs.items()}
                         for model, docs in documents.items()},
        "warnings": [f"{model} / {reading}: {f['message']}" for model, docs in documents.items()
                     for reading, doc in docs.items() for f in doc["sanity"] if f["level"] == "warning"],
        "reports": {model: {reading: f"{model}/eval/{reading}/report.md" for reading in docs}
                    for model, docs in documents.items()},
    }


def _decision(accuracies: dict, prefix: str = "") -> float | None:
    """The accuracy of a model's own decision in an ``evaluate`` record: the vote of an Aux Block model, the
    one head of a plain classifier."""
    return accuracies.get(f"{prefix}rule/vote", accuracies.get(f"{prefix}head/public"))


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _cell_text(cell: dict, with_paper: bool) -> str:
    text = _fmt(cell["ours"]) + ("*" if cell["from_reading"] else "") + ("†" if cell.get("attacked") is False else "")
    if cell.get("interval"):  # reports written before 0.2 have none
        text += " ({:.1f}-{:.1f})".format(*cell["interval"])
    return f"{text} / {_fmt(cell['paper'], 2)}" if with_paper else text


def _with_paper(report: dict) -> bool:
    """Whether the recipe names a paper setting (``paper = "none"``, such as the demo's synthetic data, does not)."""
    return report["recipe"]["paper_setting"] != "none"


def _reading_rows(report: dict, reading: str) -> tuple[list[str], list[list[str]]]:
    """The header and rows of one eps reading's table: a row per model and rule, cells *ours / the paper's*
    (ours alone without a paper setting, and in the worst case column, which the paper lacks)."""
    with_paper = _with_paper(report)
    return ["model", *COLUMNS], [
        [row["label"], *(_cell_text(row["cells"][c], with_paper and c != "worst case") for c in COLUMNS)]
        for row in report["tables"][reading]]


def _reading_title(report: dict, reading: dict) -> str:
    # Reports from before the L2 threat model carry no norm: they were L-inf.
    norm = fmt_norm(report.get("norm", "linf"), prose=True)
    return f"eps reading '{reading['name']}': {norm} eps = {fmt_eps(reading['eps'])}"


def reading_table(report: dict, reading: str) -> list[str]:
    """The Markdown table of one eps reading (see :func:`_reading_rows`)."""
    return markdown_table(*_reading_rows(report, reading))


def reading_tables(report: dict) -> list[Table]:
    """Every eps reading's table as a rich Table titled with its eps: what a run prints when it ends."""
    tables = []
    for reading in report["readings"]:
        header, rows = _reading_rows(report, reading["name"])
        table = Table(title=_reading_title(report, reading))
        for column in header:
            table.add_column(column, justify="left" if column == "model" else "right")
        for row in rows:
            table.add_row(*map(Text, row))  # Text: a cell's brackets are values, not rich markup
        tables.append(table)
    return tables


def report_markdown(report: dict, plots: list[str]) -> str:
    """The comparison report as Markdown."""
    setting = report["recipe"]["paper_setting"]
    description = [report["recipe"]["description"], ""] if report["recipe"]["description"] else []
    norm = fmt_norm(report.get("norm", "linf"), prose=True)  # reports before the L2 threat model were L-inf
    paper_note = (f", ours / the paper's ({setting} column of Tables II and VII; its 'Aux Block (all)' is our vote "
                  "rule)" if _with_paper(report) else "")
    lines = [f"# Recipe report: {report['recipe']['name']}", "", *description,
             f"- command: `{report['command']}`", f"- machine: {report['machine']}",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
             "- test samples attacked: " + ", ".join(f"{m} {n}" for m, n in report["n"].items()),
             f"- wall time of the invocation that wrote this report: {report['seconds_this_session'] / 60:.1f} min "
             "(work that an earlier, interrupted invocation finished is not counted)", "",
             "Accuracy in %" + paper_note
             + ". PGD, CW and Boundary are the static adversary (crafted on the backbone alone, then judged by "
             "each model's own decision): a baseline, not an evaluation of the defence. Adp-PGD is the paper's "
             f"adaptive attack on the joint loss. *worst case* is per sample over every {norm} attack run within the "
             "reading's eps (with the strong suite: its cascades of APGD, targeted APGD and Square on each attacked "
             "rule); the paper has no such column, and it is the number to quote. In brackets: the 95% Wilson "
             "interval of each of our accuracies over the attacked test points.", ""]
    lines += ["## Training", ""]
    training = []
    tested = report.get("test_accuracy", {})
    for model, record in report["training"].items():
        accuracy = _decision(record, "val/")
        seconds = report.get("train_seconds", {}).get(model)
        test = tested.get(model)
        training.append([model, str(record["epoch"]), _fmt(None if accuracy is None else 100 * accuracy, 2),
                         "-" if test is None else percent_with_interval(_decision(test), test["n"], 2),
                         _fmt(record["images_per_s"], 0), _fmt(None if seconds is None else seconds / 60),
                         _fmt(record["train_passes"] / 1e6, 2) if "train_passes" in record else "-"])
    n_test = next(iter(tested.values()))["n"] if tested else None
    lines += markdown_table(["model", "epochs", "validation accuracy (its decision)",
                             f"test accuracy, all {n_test or '-'} test images (its decision)", "images/s (last epoch)",
                             "training wall time (min)",
                             "training budget (M image-passes, forward + backward, crafting included)"], training)
    lines.append("")
    if report.get("eval_seconds"):
        names = [r["name"] for r in report["readings"]] + ["curve"]
        lines += ["Evaluation wall time (min) per model and eps reading:", ""]
        lines += markdown_table(["model", *names], [
            [model, *(_fmt(seconds[name] / 60 if name in seconds else None) for name in names)]
            for model, seconds in report["eval_seconds"].items()])
        lines.append("")
    for reading in report["readings"]:
        lines += [f"## {_reading_title(report, reading)}" + (f" ({reading['note']})" if reading["note"] else ""), ""]
        lines += reading_table(report, reading["name"])
        if any(c["from_reading"] for row in report["tables"][reading["name"]] for c in row["cells"].values()):
            lines.append("")
            lines.append("\\* unbounded attack (independent of eps), measured in another reading of this run.")
        if any(row["cells"]["worst case"].get("attacked") is False for row in report["tables"][reading["name"]]):
            lines.append("")
            lines.append("† a rule the strong suite did not attack (the recipe's `[attack] rules`): judged only on the "
                         "examples crafted against the other rules, so an upper bound, not a robust accuracy.")
        lines.append("")
        lines += _gains_markdown(report.get("gains", {}).get(reading["name"], []))
    if report["curve"]:
        lines += ["## Accuracy against eps", "",
                  "Each model's own decision (vote for the Aux Block model) under Adp-PGD with the paper's steps "
                  "and under the minimum-norm attack FMN on the rule's margin (one run, read at every eps).", ""]
        for model, curve in report["curve"].items():
            series = list(curve["series"])
            eps_values = [eps for eps, _ in curve["series"][series[0]]]
            lines += [f"**{model}** (rule {curve['rule']})", ""]
            lines += markdown_table(["eps", *series], [[fmt_eps(eps), *(_fmt(curve["series"][s][i][1]) for s in series)]
                                                       for i, eps in enumerate(eps_values)])
            lines.append("")
        lines += [f"![{p}]({p})" for p in plots if p == CURVES_PLOT] + [""]
    if report.get("heads"):
        lines += ["## The Aux Block model's heads", "",
                  "Each head's own accuracy in % (the vote needs a majority of them right): clean, under the static "
                  "PGD (crafted on the backbone), the paper's Adp-PGD and the per-sample worst case of the vote.", ""]
        for reading, panel in report["heads"].items():
            heads = list(next(iter(panel.values())))
            lines += [f"**reading '{reading}'**", ""]
            lines += markdown_table(["head", *panel], [[head, *(_fmt(panel[c][head]) for c in panel)] for head in heads])
            lines.append("")
        lines += [f"![{p}]({p})" for p in plots if p == HEADS_PLOT] + [""]
    if report["warnings"]:
        lines += ["## Sanity warnings", ""] + [f"- {w}" for w in report["warnings"]] + [""]
    lines += ["## Full reports", ""] + [f"- {model} / {reading}: [{path}]({path})"
                                        for model, paths in report["reports"].items()
                                        for reading, path in paths.items()]
    return "\n".join(lines) + "\n"


def _gains_markdown(gains: list[dict]) -> list[str]:
    if not gains:
        return []
    lines = [f"Against `{BASELINE}` (the adversarially trained backbone), in percentage points, on the same test "
             "points: the difference with its paired 95% interval (Agresti and Min's, from the points where the two "
             "disagree); *gained / lost*: points robust under this model only / under the baseline only.", ""]
    lines += markdown_table(["model", "clean", "worst case", "worst case gained / lost"], [
        [g["label"], points_with_interval(g["clean"]), points_with_interval(g["worst_case"]),
         f"{g['worst_case']['gained']} / {g['worst_case']['lost']}"] for g in gains])
    return lines + [""]


def plot_curves(report: dict, path: str | Path) -> Path | None:
    """Accuracy against eps for every model and series, the readings' eps marked; None without a curve."""
    if not report["curve"]:
        return None
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    # One colour per model; the paper's attack dashed, the stronger one solid.
    for colour, (model, curve) in enumerate(report["curve"].items()):
        for k, (series, points) in enumerate(curve["series"].items()):
            ax.plot([e for e, _ in points], [a for _, a in points], marker="o", linestyle="-" if k else "--",
                    color=f"C{colour}", label=f"{model}: {series}")
    for reading in report["readings"]:
        ax.axvline(reading["eps"], color="grey", linestyle=":")
        ax.annotate(f"reading '{reading['name']}'", (reading["eps"], 50), rotation=90, va="center", ha="right",
                    fontsize=8, color="grey")
    ax.set_xlabel(f"eps ({fmt_norm(report.get('norm', 'linf'), prose=True)}, pixels in [0, 1])")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.legend(fontsize=7, loc="lower left")
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


def plot_heads(report: dict, path: str | Path) -> Path | None:
    """Per-head accuracy of the Aux Block model, one panel per eps reading; None without one."""
    panels = report.get("heads") or {}
    if not panels:
        return None
    fig = Figure(figsize=(4 * len(panels) + 1, 4), layout="constrained")
    for ax, (reading, panel) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels.items()):
        heads = list(next(iter(panel.values())))
        width = 0.8 / len(panel)
        for k, (column, accuracies) in enumerate(panel.items()):
            ax.bar([i + k * width for i in range(len(heads))], [accuracies[h] for h in heads], width, label=column)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(heads))], heads, fontsize=8)
        ax.set_title(f"reading '{reading}'", fontsize=9)
        ax.set_ylabel("head accuracy (%)")
        ax.set_ylim(0, 100)
    ax.legend(fontsize=7)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
