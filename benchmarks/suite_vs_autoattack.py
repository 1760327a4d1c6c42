"""The strong suite against AutoAttack, point by point, on the same models, points and eps.

For each model (MNIST LeNet-5 + Table IX heads; a CIFAR-10 small_cnn with default heads at auto:3; or a
trained stage of a recipe run, ``--models RUN_FOLDER:STAGE``, such as the converged CIFAR-10 study's models),
each eps (in [0, 1] pixels; a radius in ``--norm``, L-inf or L2), each decision rule and the first N test points,
measured in one run:

* the strong suite's worst case for the rule (``run_suite(..., suite="strong", rules=(rule,))``),
* AutoAttack's standard protocol (APGD-CE, APGD-T and FAB-T with 100 steps and 9 targets, Square with 5,000
  queries, each in the norm's form; :mod:`auxsurgery.evaluation.autoattack`) on the ensemble's log-probabilities
  (a plain model's logits), every example re-judged by the rule,
* the per-point union (robust only if neither broke it) and ``misses``: the points the suite calls robust
  that AutoAttack fooled (must be 0),
* the cost of each in image-passes, counted by the same counter around the model (the headline:
  ``pass_ratio`` = suite / AutoAttack), with wall time beside it; with ``--bf16`` also the suite with
  bf16 attack steps.

One JSON record per (model, eps, rule), each with the command that produced it. Records are written only
with ``--out`` (the committed benchmark lives in benchmarks/results/suite_vs_autoattack); without it they are
printed. The models are trained here once and cached (weights are not committed). A rerun skips the records
this checkout's suite made; a record another suite made is measured again by this one and compared with the
per-point verdicts of AutoAttack it kept (AutoAttack's side does not depend on the suite and is not re-run); a
recipe run's stage takes them from the run's own AutoAttack check (``--run``, below) where that checked the same
points, eps and rule. ``--rerun`` redoes the records an invocation measures (AutoAttack included) and keeps the
others. With ``--out``, AutoAttack runs first, in chunks of 100 points kept in ``OUT/partial/`` as they land: an
interrupted record continues where it stopped when the same command is run again.

With ``--run FOLDER`` it cross-checks a recipe run instead (``auxsurgery run``): for each trained model and
eps reading of the run, AutoAttack's standard protocol on the first N points the recipe attacked, against the
per-point worst case the recipe's own evaluation recorded (every attack of its suites, read from its
results.json; nothing of ours is re-run), for each rule the recipe attacked. ``--limit MODEL=N`` caps the points
of one model (AutoAttack on a robust model costs far more than the suite's cascade). Written beside the run:
``autoattack_check.json`` and ``autoattack_check.md``.

Usage:
  OMP_NUM_THREADS=2 python benchmarks/suite_vs_autoattack.py --data-root ../shared/data --n 1000 \\
      --write-results [--bf16]
  OMP_NUM_THREADS=1 python benchmarks/suite_vs_autoattack.py --data-root ../shared/data --n 50 \\
      --models mnist-lenet5 --eps 0.1    # a small check: prints the records, writes nothing
  OMP_NUM_THREADS=1 python benchmarks/suite_vs_autoattack.py --data-root ../shared/data --n 50 \\
      --models mnist-lenet5 --norm l2    # the same in L2, at the model's L2 eps
  OMP_NUM_THREADS=2 python benchmarks/suite_vs_autoattack.py --data-root ../shared/data --n 1000 --write-results \\
      --models runs/cifar10-resnet9-cpu:undefended,runs/cifar10-resnet9-cpu:adversarial,runs/cifar10-resnet9-cpu:aux
  OMP_NUM_THREADS=2 python benchmarks/suite_vs_autoattack.py --data-root ../shared/data \\
      --run benchmarks/results/cifar10-resnet9-cpu --readings 8-255 --limit adversarial=250
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from auxsurgery import attach_aux_blocks, load, save
from auxsurgery._utils import atomic_write, markdown_table, resolve_device
from auxsurgery.attacks import Passes
from auxsurgery.data import dataset_classes, load_dataset
from auxsurgery.evaluation import collect, run_suite
from auxsurgery.evaluation.autoattack import autoattack
from auxsurgery.evaluation.presets import fmt_threat, get_preset
from auxsurgery.provenance import command_line, machine, source_commit, versions
from auxsurgery.studies import experiment
from auxsurgery.train import TrainConfig, finetune, paper_config

# name -> (dataset, eps values in pixels per norm). The L-inf radii leave part of these lightly trained models
# robust (the presets' 0.3 and 8/255 break an undefended model's every point). In L2 the LeNet-5 takes the MNIST
# preset's 2.0 (the published radius, presets.L2_PRESETS), which leaves about half of its points robust as L-inf
# 0.15 does (vote accuracy from one FMN run on the first 200 test points: 51% at L2 2.0, 53.5% at L-inf 0.15);
# the small_cnn takes CIFAR-10's RobustBench radius 0.5 and a fifth of it, as 2/255 is a quarter of 8/255.
MODELS = {
    "mnist-lenet5": ("mnist", {"linf": (0.1, 0.15), "l2": (get_preset("mnist", norm="l2").eps,)}),
    "cifar10-small_cnn": ("cifar10", {"linf": (2 / 255, 8 / 255), "l2": (0.1, 0.5)}),
}


COMMITTED = "benchmarks/results/suite_vs_autoattack"
# Points per AutoAttack call with --out, each chunk kept as it lands (a rerun continues after the last).
AUTOATTACK_CHUNK = 100
RUN_CHECK = "autoattack_check"  # a recipe run's check: RUN_FOLDER/autoattack_check.json and .md
RUN_CHUNK = 250  # points per AutoAttack call of a run check, written as each lands


def trained_model(name: str, data_root: str | None, folder: Path):
    """The benchmark's model, trained on the first call and loaded from ``folder`` afterwards."""
    path = folder / "models" / f"{name}.safetensors"
    if path.exists():
        return load(path)
    torch.manual_seed(0)
    dataset = MODELS[name][0]
    train = load_dataset(dataset, root=data_root, train=True)
    test = load_dataset(dataset, root=data_root, train=False, subset=2000)
    if name == "mnist-lenet5":
        aux = attach_aux_blocks("lenet5", at="auto:3", head="paper-mnist", num_classes=10)
        config = paper_config("mnist", epochs=3, amp="off")
    else:
        aux = attach_aux_blocks("small_cnn", at="auto:3", num_classes=10, input_size=(3, 32, 32))
        config = TrainConfig.quick(epochs=10, batch_size=128)
    finetune(aux, train, test, config)
    save(aux, path)
    return load(path)


def benchmark_model(name: str, data_root: str | None, cache: Path, norm: str = "linf"):
    """``(record name, model, test set, default eps values)`` of a built-in model or of a trained stage of a recipe
    run (``RUN_FOLDER:STAGE``, e.g. the converged CIFAR-10 study's ``runs/cifar10-resnet9-cpu:adversarial``,
    recorded as ``cifar10-resnet9-cpu/adversarial``; its eps readings are the defaults in L-inf, its dataset's
    L2 preset in L2)."""
    if ":" in name:
        run, stage = name.rsplit(":", 1)
        if not (Path(run) / "recipe.json").is_file():
            raise SystemExit(f"model {name!r}: {run} is not a recipe run folder (no recipe.json); train it with "
                             f"auxsurgery run RECIPE --train-only --out {run}")
        recipe = experiment.recorded_recipe(run)
        test = load_dataset(recipe["data"]["name"], root=data_root, train=False)
        try:
            model = experiment.trained_model(run, stage, len(dataset_classes(test)))
        except FileNotFoundError as error:
            raise SystemExit(f"model {name!r}: {error}") from None
        eps_values = (tuple(r["eps"] for r in recipe["attack"]["readings"]) if norm == recipe["attack"]["norm"]
                      else (get_preset(recipe["data"]["name"], norm=norm).eps,))
        return f"{Path(run).name}/{stage}", model, test, eps_values
    if name not in MODELS:
        raise SystemExit(f"unknown model {name!r}; valid: {', '.join(MODELS)}, or RUN_FOLDER:STAGE")
    dataset, eps_values = MODELS[name]
    return (name, trained_model(name, data_root, cache), load_dataset(dataset, root=data_root, train=False),
            eps_values[norm])


def _run_check_verdicts(name: str, eps: float, rule: str, n: int, norm: str = "linf") -> dict | None:
    """AutoAttack's side of a record from the recipe run's own AutoAttack check (``--run``), where the stage
    ``RUN_FOLDER:STAGE`` was checked on exactly these ``n`` points at this eps and rule: the same model file and points,
    so the same verdicts (AutoAttack's side does not depend on the suite)."""
    if ":" not in name:
        return None
    run, stage = name.rsplit(":", 1)
    path = Path(run) / f"{RUN_CHECK}.json"
    checked = [r for r in json.loads(path.read_text())["records"].values() if r["model"] == stage
               and r["rule"] == rule and r["n"] == n and abs(r["eps"] - eps) < 1e-9
               and r.get("norm", "linf") == norm] if path.exists() else []
    if not checked:
        return None
    reference, commands = checked[0]["autoattack"], checked[0].get("commands", [checked[0]["command"]])
    return _reference(reference["robust"], reference["accuracy"], reference["passes"], reference["seconds"],
                      reference["stages"], reference["settings"],
                      f"{' ; '.join(commands)} (the run's AutoAttack check, {path})")


def _reference(robust: list, accuracy: float, passes: dict, seconds: float, stages: list, settings: dict,
               command: str) -> dict:
    """AutoAttack's side of a record: per-point verdicts, accuracy, cost, stages, settings and the command that ran it."""
    return {"autoattack_robust_points": robust, "autoattack_robust": accuracy, "autoattack_passes": passes,
            "autoattack_seconds": seconds, "autoattack_stages": stages, "autoattack_settings": settings,
            "autoattack_command": command}


def _ratio(suite: dict, reference: dict) -> float | None:
    total = reference["forward"] + reference["backward"]
    return (suite["forward"] + suite["backward"]) / total if total else None


def _autoattack_side(model, x, y, eps: float, rule: str, previous: dict | None, norm: str = "linf",
                     partial: Path | None = None) -> dict:
    """AutoAttack's standard protocol on these points, or the per-point verdicts a previous record of them kept
    (they do not depend on the suite, so a newer suite is compared with them without running AutoAttack again).

    With ``partial`` (a JSON file), AutoAttack runs in chunks of ``AUTOATTACK_CHUNK`` points, each kept there as it
    lands, and a rerun continues after the last kept chunk: on a CPU one record can take hours."""
    if previous and len(previous.get("autoattack_robust_points", [])) == len(x):
        return {key: value for key, value in previous.items() if key.startswith("autoattack_")}
    kept = json.loads(partial.read_text()) if partial and partial.exists() else None
    while kept is None or len(kept["autoattack_robust_points"]) < len(x):
        done = len(kept["autoattack_robust_points"]) if kept else 0
        stop = len(x) if partial is None else min(len(x), done + AUTOATTACK_CHUNK)
        print(f"AutoAttack on points {done}-{stop} of {len(x)}", flush=True)
        standard = autoattack(model, x[done:stop], y[done:stop], eps, rule=rule, protocol="standard", norm=norm)
        kept = _joined(kept, _reference(standard.robust.tolist(), standard.accuracy, standard.passes.to_dict(),
                                        standard.seconds, standard.stages, standard.settings, command_line()))
        if partial:
            partial.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(partial, lambda tmp: Path(tmp).write_text(json.dumps(kept)))
    return kept


def _joined(kept: dict | None, chunk: dict) -> dict:
    """AutoAttack's side of the points so far (``kept``) extended by ``chunk``, its side of the next points: verdicts
    appended; passes, seconds and each stage's counts summed."""
    if kept is None:
        return chunk
    robust = kept["autoattack_robust_points"] + chunk["autoattack_robust_points"]
    stages = _summed_stages(kept["autoattack_stages"], chunk["autoattack_stages"])
    settings = {**kept["autoattack_settings"],
                "unattacked": kept["autoattack_settings"]["unattacked"] + chunk["autoattack_settings"]["unattacked"]}
    return _reference(robust, sum(robust) / len(robust),
                      (Passes(**kept["autoattack_passes"]) + Passes(**chunk["autoattack_passes"])).to_dict(),
                      kept["autoattack_seconds"] + chunk["autoattack_seconds"], stages, settings,
                      chunk["autoattack_command"])


def measure(model, x, y, eps: float, rule: str, bf16: bool, previous: dict | None = None, norm: str = "linf",
            partial: Path | None = None) -> dict:
    """One (model, eps, rule) record: the suite and AutoAttack's standard protocol on the same points (AutoAttack's
    verdicts taken from ``previous`` where it kept them; with ``partial``, kept there chunk by chunk and run first,
    as the longer of the two), the per-point union and misses, and each one's cost in image-passes (the headline)
    beside wall time."""
    reference = _autoattack_side(model, x, y, eps, rule, previous, norm, partial)
    began = time.perf_counter()
    suite = run_suite(model, (x, y), suite="strong", eps=eps, rules=(rule,), progress=True, norm=norm)
    suite_seconds = time.perf_counter() - began
    suite_robust = suite.worst_case().outcome.rules[rule]
    robust = torch.tensor(reference["autoattack_robust_points"], dtype=torch.bool)
    missed = suite_robust & ~robust
    suite_passes = suite.passes().to_dict()
    record = {
        "command": command_line(), "machine": machine(), "suite_commit": source_commit(), "norm": norm, "eps": eps,
        "rule": rule,
        "n": len(x),
        "clean": suite.clean.accuracy(rule), "suite_robust": suite_robust.float().mean().item(),
        "union_robust": (suite_robust & robust).float().mean().item(),
        "misses": int(missed.sum()), "missed_points": missed.nonzero().flatten().tolist(),
        "autoattack_robust_suite_fooled": int((robust & ~suite_robust).sum()),
        "suite_passes": suite_passes, "pass_ratio": _ratio(suite_passes, reference["autoattack_passes"]),
        "sanity_passes": suite.passes(sanity=True).to_dict(),
        "suite_seconds": suite_seconds,
        "time_ratio": suite_seconds / reference["autoattack_seconds"] if reference["autoattack_seconds"] else None,
        "suite_rows": [{"name": r.name, "robust": r.outcome.accuracy(rule), "attacked": r.attacked,
                        "seconds": r.seconds, "passes": r.passes.to_dict()} for r in suite.rows],
        "findings": [f.to_dict() for f in suite.findings if f.level == "warning" or f.check == "indicators"],
        **reference,
    }
    if bf16:
        began = time.perf_counter()
        half = run_suite(model, (x, y), suite="strong", eps=eps, rules=(rule,), precision="bf16", norm=norm)
        seconds = time.perf_counter() - began
        record["suite_bf16"] = {"robust": half.worst_case().outcome.accuracy(rule), "seconds": seconds,
                                "passes": half.passes().to_dict(), "speedup_vs_fp32": suite_seconds / seconds}
    return record


def _passes(p: dict) -> str:
    return f"{(p['forward'] + p['backward']) / 1e3:,.1f}k"


def report(doc: dict) -> str:
    """The results as Markdown: the pass ratio first, wall time beside it."""
    header = ["model", "eps", "rule", "n", "clean", "suite robust", "AutoAttack robust", "union", "misses",
              "suite passes", "AA passes", "suite / AA passes", "suite s", "AA s", "suite / AA time"]
    rows = []
    for key, r in doc["records"].items():
        # An L2 record names its norm; L-inf ones print as they did before the L2 threat model.
        eps = f"{r['eps']:.4g}" if r.get("norm", "linf") == "linf" else fmt_threat({"norm": r["norm"], "eps": r["eps"]})
        rows.append([key.split("@")[0], eps, r["rule"], str(r["n"]), f"{100 * r['clean']:.1f}",
                     f"{100 * r['suite_robust']:.1f}", f"{100 * r['autoattack_robust']:.1f}",
                     f"{100 * r['union_robust']:.1f}", str(r["misses"]), _passes(r["suite_passes"]),
                     _passes(r["autoattack_passes"]), f"{r['pass_ratio']:.3f}" if r["pass_ratio"] else "-",
                     f"{r['suite_seconds']:.0f}", f"{r['autoattack_seconds']:.0f}",
                     f"{r['time_ratio']:.2f}" if r["time_ratio"] else "-"])
    lines = ["# Strong suite vs AutoAttack", "", f"Last run: `{doc['command']}`", "", f"Machine: {doc['machine']}", "",
             "Each record of the JSON keeps the command, machine and suite commit that made it.", "",
             "Robust accuracy in %, judged by the rule; *misses*: points the suite calls robust that AutoAttack "
             "(standard protocol: APGD-CE, APGD-T and FAB-T with 9 targets and 100 steps, Square with 5,000 queries) "
             "fooled. Passes: forward + backward image-passes counted by the same counter around the model, the "
             "judging forwards included; the suite's sanity probes are costed apart (not in these columns).", ""]
    lines += markdown_table(header, rows)
    half = [(k, r["suite_bf16"]) for k, r in doc["records"].items() if "suite_bf16" in r]
    if half:
        lines += ["", "bf16 attack steps (successes re-verified in fp32):", ""]
        lines += markdown_table(["record", "fp32 robust", "bf16 robust", "speed-up"],
                                [[k, f"{100 * doc['records'][k]['suite_robust']:.1f}",
                                  f"{100 * h['robust']:.1f}", f"{h['speedup_vs_fp32']:.2f}"] for k, h in half])
    return "\n".join(lines) + "\n"


def _summed_stages(kept: list[dict], chunk: list[dict]) -> list[dict]:
    """AutoAttack's stages over the points so far (``kept``) and the next points' (``chunk``): points attacked and
    costs add up."""
    stages = {(stage["name"], stage["view"]): dict(stage) for stage in kept}
    for stage in chunk:
        total = stages.setdefault((stage["name"], stage["view"]), {**stage, "attacked": 0, "robust_after": 0,
                                                                   "seconds": 0.0, "passes": Passes().to_dict()})
        # A head's view runs only in the chunks where the surrogate missed a point: summed over the chunks it ran
        # in, the points left robust after it would count only those chunks' points.
        on_every_chunk = not stage["view"].startswith("head")
        total.update(attacked=total["attacked"] + stage["attacked"],
                     robust_after=total["robust_after"] + stage["robust_after"] if on_every_chunk else None,
                     seconds=total["seconds"] + stage["seconds"],
                     passes=(Passes(**total["passes"]) + Passes(**stage["passes"])).to_dict())
    return list(stages.values())


def _grown(record: dict | None, chunk, suite_robust: torch.Tensor, name: str, reading: str, rule: str,
           eps: float, norm: str = "linf") -> dict:
    """``record`` (None: a new one) extended by the AutoAttack result ``chunk`` on the points that follow it."""
    previous = record["autoattack"] if record else {"robust": [], "seconds": 0.0, "stages": [],
                                                     "passes": Passes().to_dict()}
    robust = torch.tensor(previous["robust"] + chunk.robust.tolist(), dtype=torch.bool)
    settings = dict(chunk.settings)
    settings["unattacked"] += record["autoattack"]["settings"]["unattacked"] if record else 0
    commands = record.get("commands", [record["command"]]) if record else []
    return {
        "command": command_line(), "commands": commands + [command_line()] * (command_line() not in commands),
        "model": name, "reading": reading, "rule": rule, "norm": norm, "eps": eps, "n": len(robust),
        "autoattack": {"accuracy": robust.float().mean().item(), "seconds": previous["seconds"] + chunk.seconds,
                       "passes": (Passes(**previous["passes"]) + chunk.passes).to_dict(), "settings": settings,
                       "stages": _summed_stages(previous["stages"], chunk.stages), "robust": robust.tolist()},
        **{k: record[k] for k in ("missed_at_default_budget", "missed_checked", "missed_checked_by", "suite_commit")
           if record and k in record},
    } | _compared(suite_robust, robust)


def _compared(suite_robust: torch.Tensor, robust: torch.Tensor) -> dict:
    """The suite's side of a record: its per-point worst case against AutoAttack's ``robust`` on the same points."""
    suite_robust = suite_robust[:len(robust)]
    return {"suite": suite_robust.float().mean().item(), "union": (suite_robust & robust).float().mean().item(),
            "suite_robust_autoattack_fooled": (suite_robust & ~robust).nonzero().flatten().tolist(),
            "autoattack_robust_suite_fooled": int((robust & ~suite_robust).sum())}


def _write_run_check(run: Path, path: Path, doc: dict) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(doc, indent=1)))
    atomic_write(run / f"{RUN_CHECK}.md", lambda tmp: Path(tmp).write_text(run_report(doc)))


def cross_check_run(run: Path, data_root: str | None, readings: list[str] | None, rules: list[str] | None,
                    limits: dict[str, int], rerun: bool, device: torch.device) -> None:
    """AutoAttack against the per-point worst case a recipe run recorded, per model, reading and rule."""
    recipe = experiment.recorded_recipe(run)
    test = load_dataset(recipe["data"]["name"], root=data_root, train=False)
    path = run / f"{RUN_CHECK}.json"
    doc = json.loads(path.read_text()) if path.exists() else {"records": {}}
    # Records accumulate over invocations (a reading, a model at a time): keep every command that added to them.
    commands = doc.get("commands", [doc["command"]] if "command" in doc else [])
    doc.update(command=command_line(), commands=commands + [command_line()] * (command_line() not in commands),
               machine=machine(), versions=versions())
    for name in recipe.stages():
        if not (run / name / "train" / "last.safetensors").exists():
            continue
        model = None
        for reading in [r["name"] for r in recipe["attack"]["readings"]]:
            if readings and reading not in readings:
                continue
            evaluated = run / name / "eval" / reading / "results.json"
            if not evaluated.exists():
                continue  # not attacked yet: the recipe run continues there
            results = json.loads(evaluated.read_text())
            n = min(results["data"]["n"], limits.get(name, results["data"]["n"]))
            eps, norm = results["worst_case"]["threat"]["eps"], results["worst_case"]["threat"]["norm"]
            x, y, _ = collect(test, n)
            for rule in results["settings"]["rules"]:
                if rules and rule not in rules:
                    continue
                key = f"{name}@{reading}@{rule}"
                if rerun:  # this check's records are redone, the others kept
                    doc["records"].pop(key, None)
                if key in doc["records"] and doc["records"][key]["n"] > n:
                    continue  # a wider check already holds these points
                suite_robust = torch.tensor(results["per_sample"]["robust"][rule][:n])
                while doc["records"].get(key, {}).get("n", 0) < n:
                    # AutoAttack treats each point on its own, so a check grows a chunk at a time from where it
                    # stopped and an interrupted one loses at most a chunk.
                    done = doc["records"].get(key, {}).get("n", 0)
                    stop = min(n, done + RUN_CHUNK)
                    model = model or experiment.trained_model(run, name, len(dataset_classes(test))).to(device)
                    print(f"== {key} (points {done}-{stop} of {n})", flush=True)
                    chunk = autoattack(model, x[done:stop], y[done:stop], eps, rule=rule, protocol="standard",
                                       norm=norm)
                    doc["records"][key] = _grown(doc["records"].get(key), chunk, suite_robust[:stop], name, reading,
                                                 rule, eps, norm)
                    _write_run_check(run, path, doc)
                record = doc["records"][key]
                # AutoAttack's verdicts do not depend on the suite: a run re-evaluated by a newer suite is compared
                # afresh with them, and its misses are rechecked at the default budget of today's suite.
                if (record.get("suite_commit"), record.get("missed_checked_by")) != (results.get("auxsurgery_commit"),
                                                                                     source_commit()):
                    # The recheck below is by the suite of this checkout: a newer one checks the misses again.
                    record.pop("missed_checked", None)
                    record.pop("missed_at_default_budget", None)
                record.update(_compared(suite_robust, torch.tensor(record["autoattack"]["robust"], dtype=torch.bool)),
                              suite_commit=results.get("auxsurgery_commit"))
                # What the recipe's evaluation spent on all its points (every rule's cascade; probes apart).
                record.pop("suite_seconds_all_points", None)
                record["suite_all_points"] = {"n": results["data"]["n"], "seconds": results["timings"]["total_seconds"],
                                              "passes": results["timings"]["passes"],
                                              "sanity_passes": results["timings"]["sanity_passes"],
                                              "rules": results["settings"]["rules"]}
                missed = record["suite_robust_autoattack_fooled"]
                unchecked = [i for i in missed if i not in record.get("missed_checked", [])]
                if unchecked:
                    # The recipe's cascade may run on a reduced budget: the suite at its default budget (AutoAttack's
                    # steps and target count) on the points it missed says whether the budget or the suite fell short.
                    model = model or experiment.trained_model(run, name, len(dataset_classes(test))).to(device)
                    full = run_suite(model, (x[unchecked], y[unchecked]), suite="strong", eps=eps, rules=(rule,),
                                     seed=results["settings"]["seed"], norm=norm)
                    still = full.worst_case().outcome.rules[rule]
                    record["missed_at_default_budget"] = record.get("missed_at_default_budget", []) + [
                        i for i, robust in zip(unchecked, still.tolist()) if robust]
                    record["missed_checked"] = record.get("missed_checked", []) + unchecked
                    record["missed_checked_by"] = source_commit()
                    _write_run_check(run, path, doc)
    _write_run_check(run, path, doc)
    print(run_report(doc), flush=True)


def _missed_at_default(record: dict) -> str:
    missed = record.get("missed_at_default_budget")
    return "-" if missed is None else str(len(missed))


def run_report(doc: dict) -> str:
    """The cross-check of a recipe run as Markdown."""
    rows = [[r["model"], r["reading"], r["rule"], str(r["n"]), f"{100 * r['suite']:.1f}",
             f"{100 * r['autoattack']['accuracy']:.1f}", f"{100 * r['union']:.1f}",
             str(len(r["suite_robust_autoattack_fooled"])), _missed_at_default(r), str(r["autoattack_robust_suite_fooled"]),
             f"{r['autoattack']['seconds'] / 60:.1f}", r.get("suite_commit", "-")] for r in doc["records"].values()]
    lines = ["# AutoAttack cross-check of a recipe run", "", "Commands (each added records):", "",
             *(f"- `{command}`" for command in doc.get("commands") or [doc["command"]]), "",
             f"Machine: {doc['machine']}", "",
             "Accuracy in % on the first n test points the recipe attacked. *suite*: the recipe's own per-point worst "
             "case over all its attacks at the reading's eps (from its results.json); *AutoAttack*: the standard "
             "protocol (APGD-CE, APGD-T with 9 targets, FAB-T, Square with 5,000 queries) on the ensemble's "
             "log-probabilities, each example judged by the rule; *union*: robust only if neither broke it. "
             "*suite robust, AA fooled* are the suite's misses (must be 0). *suite commit*: the auxsurgery commit whose "
             "suite made the recipe's evaluation (AutoAttack's side does not depend on it).", ""]
    lines += ["*of those, robust at the default budget*: the misses rerun through the strong suite of the commit that "
              "last ran this check at its default budget (`Budget()`: its own steps, targets and Square queries), which "
              "the recipe may have reduced; rechecked whenever a newer suite runs the check.", ""]
    lines += markdown_table(["model", "reading", "rule", "n", "suite", "AutoAttack", "union", "suite robust, AA fooled",
                             "of those, robust at the default budget", "AA robust, suite fooled", "AutoAttack min",
                             "suite commit"], rows)
    costs = _run_costs(doc)
    if costs:
        lines += ["", "## Cost in image-passes", "",
                  "Where AutoAttack checked every rule the recipe attacked on all its points: the recipe's evaluation "
                  "(every attack of its suites, each rule's cascade; its sanity probes apart) against AutoAttack run "
                  "once per rule. Forward + backward image-passes, counted by the same counter around the model.", ""]
        lines += markdown_table(["model", "reading", "n", "suite passes", "AutoAttack passes", "suite / AutoAttack",
                                 "suite min", "AutoAttack min"], costs)
    return "\n".join(lines) + "\n"


def _run_costs(doc: dict) -> list[list[str]]:
    """Per (model, reading) whose every attacked rule AutoAttack checked on all the recipe's points: the cost row."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in doc["records"].values():
        groups.setdefault((r["model"], r["reading"]), []).append(r)
    rows = []
    for (model, reading), records in groups.items():
        suite = records[0].get("suite_all_points")
        if not suite or {r["rule"] for r in records if r["n"] == suite["n"]} != set(suite["rules"]):
            continue
        reference = [r["autoattack"] for r in records if r["n"] == suite["n"]]
        aa_passes = sum((Passes(**a["passes"]) for a in reference), start=Passes()).to_dict()
        rows.append([model, reading, str(suite["n"]), _passes(suite["passes"]), _passes(aa_passes),
                     f"{_ratio(suite['passes'], aa_passes):.3f}", f"{suite['seconds'] / 60:.1f}",
                     f"{sum(a['seconds'] for a in reference) / 60:.1f}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"comma-separated: {', '.join(MODELS)}, or a recipe run's stage as RUN_FOLDER:STAGE")
    parser.add_argument("--n", type=int, default=500, help="first N test points")
    parser.add_argument("--out", default=None,
                        help="folder to write suite_vs_autoattack.json and .md into; without it (or --write-results) "
                             "the records are printed only")
    parser.add_argument("--write-results", action="store_true", help=f"--out {COMMITTED} (the committed results)")
    parser.add_argument("--model-cache", default="benchmarks/results/suite_vs_autoattack",
                        help="without --out: where the trained models are cached (models/<name>.safetensors)")
    parser.add_argument("--eps", help="comma-separated eps values in pixels, radii in --norm (default: the model's)")
    parser.add_argument("--norm", default="linf", choices=("linf", "l2"),
                        help="the threat model's norm, of the suite and of AutoAttack (default: linf)")
    parser.add_argument("--rules", help="comma-separated decision rules to attack (default: vote; with --run: every "
                                        "rule the run attacked)")
    parser.add_argument("--bf16", action="store_true", help="also run the suite with bf16 attack steps")
    parser.add_argument("--rerun", action="store_true",
                        help="redo the records this invocation measures (AutoAttack too); the file keeps the others")
    parser.add_argument("--device", default="auto", help="where the models and attacks run (auto: cuda if available)")
    parser.add_argument("--run", help="cross-check this recipe run folder instead (see above)")
    parser.add_argument("--readings", help="with --run: comma-separated eps readings (default: all of the run's)")
    parser.add_argument("--limit", action="append", default=[], metavar="MODEL=N",
                        help="with --run: AutoAttack on the first N points only for MODEL (repeatable)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    if args.run:
        limits = {model: int(n) for model, n in (item.split("=") for item in args.limit)}
        readings = args.readings.split(",") if args.readings else None
        rules = args.rules.split(",") if args.rules else None
        cross_check_run(Path(args.run), args.data_root, readings, rules, limits, args.rerun, device)
        return

    doc = {"records": {}}
    out = Path(args.out) if args.out else Path(COMMITTED) if args.write_results else None
    path = out / "suite_vs_autoattack.json" if out else None
    if path and path.exists():  # --rerun redoes the records this invocation measures, and keeps the others
        doc = json.loads(path.read_text())
    doc.update(command=command_line(), machine=machine(), versions=versions())
    cache = out or Path(args.model_cache)
    for model_name in args.models.split(","):
        name, model, test, eps_values = benchmark_model(model_name, args.data_root, cache, args.norm)
        model.to(device)
        x, y, _ = collect(test, args.n)
        for eps in [float(e) for e in args.eps.split(",")] if args.eps else eps_values:
            for rule in (args.rules or "vote").split(","):
                # L-inf records keep the keys they had before the L2 threat model.
                key = f"{name}@{eps:.4g}@{rule}" if args.norm == "linf" else f"{name}@{args.norm}={eps:.4g}@{rule}"
                previous = doc["records"].get(key) if not args.rerun else None
                if previous and previous["n"] == args.n and (previous.get("suite_commit") == source_commit()
                                                             or "autoattack_robust_points" not in previous):
                    continue  # measured by this suite, or by an older one whose AutoAttack verdicts were not kept
                previous = previous or (None if args.rerun else _run_check_verdicts(model_name, eps, rule, args.n,
                                                                                   args.norm))
                print(f"== {key} (n={args.n})", flush=True)
                partial = out / "partial" / f"{key.replace('/', '+')}.json" if out else None
                doc["records"][key] = measure(model, x, y, eps, rule, args.bf16, previous, args.norm, partial)
                if path:
                    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(doc, indent=1)))
                    atomic_write(path.with_suffix(".md"), lambda tmp: Path(tmp).write_text(report(doc)))
                    partial.unlink(missing_ok=True)  # the record holds its AutoAttack side now
                print(report(doc), flush=True)
    if not path:
        print(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
