"""Running a recipe end to end: train the models, attack them, compare with the paper; resumable.

:func:`run_recipe` trains the models of one recipe (the undefended backbone, its
adversarially trained copy, the Aux Block model, and any Aux Block models trained
adversarially: ``Recipe.stages``), runs the recipe's attack suites on each at every eps
*reading*, measures an accuracy-vs-eps curve, and writes one comparison report beside the
paper's numbers. Everything lands in the run folder::

    recipe.toml, recipe.json           the recipe as given, and as resolved (the resume check)
    <model>/train/                     metrics.jsonl, best/last checkpoints, train_state.pt
    <model>/eval/<reading>/            results.json, report.md, plots (one attack run)
    <model>/eval/curve/                the accuracy-vs-eps run
    report.md, report.json, accuracy_vs_eps.png, aux_heads.png

Running the same command again resumes: a training stage continues from its last saved
state (mid-epoch included) and finished evaluations are read back from their results.json.
"""
from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from rich.markup import escape
from torch import nn

from .._output import OutputConsole
from .._utils import atomic_write, check_output_folder, resolve_device, run_folder_lock, subfolder
from ..backbones import build_backbone
from ..checkpoint import load
from ..data import dataset_classes, held_out_split, load_dataset
from ..evaluation import Budget, get_preset, get_suite, run_suite, write_report
from ..evaluation.state import STATE_FOLDER
from ..provenance import command_line, machine, release, versions
from ..surgery import attach_aux_blocks
from ..train import evaluate, finetune
from ..train.config import AdversarialConfig
from ..train.run_files import LAST_FILE, METRICS_FILE, STATE_FILE
from .comparison import CURVES_PLOT, HEADS_PLOT, build_report, plot_curves, plot_heads, report_markdown
from .recipe import AUX_ADVERSARIAL_PREFIX, CURVE, Recipe, RecipeError

__all__ = ["RunData", "recorded_recipe", "run_recipe", "trained_model"]

console = OutputConsole(stderr=True)
# What a resumed run may change without changing what is computed.
_RESUME_FREE = {("data", "root")}


@dataclass
class RunData:
    """The datasets of a run and what they imply for the models."""

    train: torch.utils.data.Dataset
    val: torch.utils.data.Dataset
    test: torch.utils.data.Dataset
    num_classes: int
    input_size: tuple[int, int, int]


def _resolved(recipe: Recipe) -> dict:
    sections = copy.deepcopy(recipe.sections)
    for section, key in _RESUME_FREE:
        sections[section].pop(key, None)
    return sections


def _differences(old, new, where: str = "") -> list[str]:
    """The dotted keys whose values differ; an array of named tables is compared table by table
    (``aux_adversarial[max].eps``), so adding or changing one names only that one."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for key in sorted(old.keys() | new.keys())
                for d in _differences(old.get(key), new.get(key), f"{where}.{key}" if where else key)]
    if _named_tables(old) and _named_tables(new):
        old, new = ({table["name"]: table for table in tables} for tables in (old, new))
        return [d for name in sorted(old.keys() | new.keys()) for d in _differences(old.get(name), new.get(name),
                                                                                    f"{where}[{name}]")]
    return [] if old == new else [where]


def _named_tables(value) -> bool:
    return isinstance(value, list) and all(isinstance(table, dict) and "name" in table for table in value)


def _redone_by(key: str, out: Path, stages: list[str]) -> list[Path] | None:
    """The run folders whose work a change of recipe key ``key`` (``section.key``) invalidates;
    None when it invalidates everything (data, backbone, shared training, the undefended model)."""
    if key.startswith("aux_adversarial["):  # one named table: its own stage
        return [out / (AUX_ADVERSARIAL_PREFIX + key[len("aux_adversarial["):key.index("]")])]
    section = key.split(".")[0]
    if section == "aux":  # the aux_adversarial stages take their heads from [aux] unless they set their own
        return [out / "aux", *sorted(out.glob(AUX_ADVERSARIAL_PREFIX + "*"))]
    if section == "adversarial":
        return [out / section]
    if section == "attack":
        return [out / stage / "eval" for stage in stages]
    if key in ("recipe.name", "recipe.description", "recipe.paper"):
        return []  # only the report changes, and it is rewritten at every run
    return None


def _claim_out_dir(recipe: Recipe, out: Path) -> None:
    """Record the recipe in ``out``, or check that the run there can continue under it.

    A changed recipe is accepted when the work it invalidates is not on disk (say, ``[aux.train]``
    changed and ``out/aux`` was deleted); otherwise the error says what to delete.
    """
    lock, resolved = out / "recipe.json", _resolved(recipe)
    if lock.exists():
        changed = _differences(json.loads(lock.read_text()), resolved)
        if not changed:
            console.print(f"resuming the run in {out}")
            return
        invalidated = [_redone_by(key, out, recipe.stages()) for key in changed]
        if any(folders is None for folders in invalidated):
            raise RecipeError(f"{recipe.path}: {out} holds a run of a different recipe (changed: {', '.join(changed)}); "
                              "choose another --out, or delete the folder to start over")
        stale = sorted({str(f) for folders in invalidated for f in folders if f.exists()})
        if stale:
            raise RecipeError(f"{recipe.path}: the recipe changed ({', '.join(changed)}) since {out} was run; delete "
                              f"{', '.join(stale)} to redo that work with the new settings, or choose another --out")
        # Escaped: a key such as aux_adversarial[joint] is not rich markup.
        console.print(escape(f"recipe changed ({', '.join(changed)}); the affected stages will run with the new "
                             "settings"))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "recipe.toml", lambda tmp: Path(tmp).write_text(recipe.text))
    atomic_write(lock, lambda tmp: Path(tmp).write_text(json.dumps(resolved, indent=1)))


def _load_data(recipe: Recipe, data_root: str | None) -> RunData:
    """The run's datasets: ``[data] held_out`` training images (drawn from ``[recipe] seed``, un-augmented)
    validate every epoch and are never trained on; the test split is only attacked."""
    d = recipe["data"]
    options = dict(root=data_root or d["root"], download=d["download"], image_size=d["image_size"],
                   fetch_hint="set download = true under [data] in the recipe")
    pool = d["train_subset"] + d["held_out"] if d["train_subset"] is not None else None
    try:
        train, val = held_out_split(load_dataset(d["name"], train=True, augment=d["augment"], subset=pool, **options),
                                    load_dataset(d["name"], train=True, augment=False, subset=pool, **options),
                                    d["held_out"], recipe["recipe"]["seed"])
    except ValueError as err:
        if "subset of" not in str(err) and "hold out" not in str(err):
            raise
        raise recipe.error("[data] train_subset, held_out", f"{err}; lower them") from None
    test = load_dataset(d["name"], train=False, **options)
    classes = dataset_classes(train)
    if classes is None:
        raise recipe.error("[data] name", f"dataset {d['name']!r} names no classes; cannot size the classifier")
    return RunData(train, val, test, len(classes), tuple(train[0][0].shape))


def _fresh_backbone(recipe: Recipe, data: RunData, seed_offset: int) -> nn.Module:
    """A new copy of ``[backbone]``: its weights file when the recipe names one, else weights drawn from the seed."""
    torch.manual_seed(recipe["recipe"]["seed"] + seed_offset)
    b = recipe["backbone"]
    return build_backbone(recipe.backbone_name(), num_classes=data.num_classes, pretrained=b["pretrained"],
                          in_chans=data.input_size[0], mean=b["mean"], std=b["std"], weights=recipe.backbone_weights())


def _has_heads(stage: str) -> bool:
    return stage == "aux" or stage.startswith(AUX_ADVERSARIAL_PREFIX)


def trained_model(out: str | Path, stage: str, num_classes: int) -> nn.Module:
    """The model that stage ``stage`` (undefended, adversarial, aux, aux_adversarial_<name>) of the finished run
    in ``out`` trained and evaluated (its last checkpoint), in eval mode: an AuxModel for the Aux Block stages,
    else the plain backbone."""
    out = Path(out)
    path = out / stage / "train" / LAST_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no trained {stage} model in {out} (looked for {path}); run the recipe first")
    if _has_heads(stage):
        return load(path).eval()
    return build_backbone(recorded_recipe(out).backbone_name(), num_classes=num_classes, weights=path).eval()


def recorded_recipe(out: str | Path) -> Recipe:
    """The recipe of the run in ``out`` as that run resolved it (its ``recipe.json``), not validated again: its own
    weights file need not be at hand any more, and a run made before a key was retired (``[data] val_subset``)
    still reads."""
    out = Path(out)
    recorded = json.loads((out / "recipe.json").read_text())
    # A run made before the L2 threat model recorded no norm: its radii are L-inf.
    recorded.setdefault("attack", {}).setdefault("norm", "linf")
    return Recipe(str(out / "recipe.toml"), recorded, "")


def _train(model: nn.Module, name: str, recipe: Recipe, data: RunData, out: Path, device: str,
           adversarial: AdversarialConfig | None = None) -> nn.Module:
    """Train ``model`` as recipe stage ``name``, continuing from its saved state if there is one."""
    folder = subfolder(out, name, "train")
    config = recipe.train_config(name, out_dir=str(folder), resume=(folder / STATE_FILE).exists(), device=device,
                                 adversarial=adversarial)
    console.rule(f"train: {name} ({config.epochs} epochs{', resumed' if config.resume else ''})")
    finetune(model, data.train, data.val, config)
    return model.eval()


def _seed_offset(recipe: Recipe, stage: str) -> int:
    """What a stage adds to ``[recipe] seed`` for its fresh weights: fixed per stage, whichever others run."""
    fixed = {"undefended": 0, "adversarial": 1, "aux": 2}
    if stage in fixed:
        return fixed[stage]
    names = [table["name"] for table in recipe["aux_adversarial"]]
    return 3 + names.index(stage[len(AUX_ADVERSARIAL_PREFIX):])


def train_models(recipe: Recipe, data: RunData, out: Path, device: str) -> dict[str, nn.Module]:
    """The recipe's trained models by stage name (only the enabled ones), in :meth:`Recipe.stages` order."""
    models = {}
    for stage in recipe.stages():
        offset = _seed_offset(recipe, stage)
        table = recipe.stage(stage)
        if stage == "undefended" or table["init"] == "scratch":
            model = _fresh_backbone(recipe, data, offset)
        else:
            model = copy.deepcopy(models["undefended"])
        if _has_heads(stage):
            heads = recipe["aux"] if stage == "aux" else {k: table[k] or recipe["aux"][k] for k in ("at", "head")}
            torch.manual_seed(recipe["recipe"]["seed"] + offset)  # the heads' initial weights
            model = attach_aux_blocks(model, at=heads["at"], num_classes=data.num_classes, input_size=data.input_size,
                                      head=heads["head"], alpha=table["alpha"] or recipe["aux"]["alpha"])
        adversarial = recipe.adversarial_config(stage) if stage not in ("undefended", "aux") else None
        models[stage] = _train(model, stage, recipe, data, out, device, adversarial)
    return models


# ---- attacks -------------------------------------------------------------------------------------


def readings(recipe: Recipe) -> list[dict]:
    """The eps readings to evaluate: the recipe's, or the one of its attack preset."""
    if recipe["attack"]["readings"]:
        return recipe["attack"]["readings"]
    preset = get_preset(_preset_name(recipe), norm=recipe["attack"]["norm"])
    return [{"name": preset.name, "eps": preset.eps, "step_size": None, "exclude": [], "note": "the preset's eps"}]


def _preset_name(recipe: Recipe) -> str:
    return recipe["attack"]["preset"] or recipe["data"]["name"]


def _budget(recipe: Recipe) -> Budget:
    chosen = recipe["attack"]["budget"]
    return Budget(**{k: tuple(v) if isinstance(v, list) else v for k, v in chosen.items() if v is not None})


def _curve_budget(recipe: Recipe) -> Budget:
    """The budget of the ``curve`` suite: the recipe's eps values and APGD steps."""
    curve = recipe["attack"]["curve"]
    return replace(_budget(recipe), curve_eps=tuple(curve["eps"]), apgd_steps=curve["apgd_steps"])


def _results(folder: Path, run) -> dict:
    """The results.json in ``folder``; with it or its report.md missing, ``run(state_dir)`` (a SuiteResult)
    computes them first, continuing from the evaluation's state folder (a finished one is read back)."""
    path = folder / "results.json"
    if path.exists() and (folder / "report.md").exists():
        console.print(f"already evaluated: {folder}")
    else:
        write_report(run(folder / STATE_FOLDER), folder)
    return json.loads(path.read_text())


def attack_models(recipe: Recipe, models: dict[str, nn.Module], data: RunData, out: Path, device: str) -> dict:
    """``{model: {reading or "curve": results.json document}}`` for every trained model."""
    a = recipe["attack"]
    common = dict(dataset=_preset_name(recipe), n=min(a["n"], len(data.test)), seed=recipe["recipe"]["seed"],
                  batch_size=a["batch_size"], budget=_budget(recipe), eot=a["eot"], judge_draws=a["judge_draws"],
                  norm=a["norm"])
    documents: dict[str, dict] = {name: {} for name in models}
    plans = {}  # name -> (rules, suites)
    for name, model in models.items():
        model.to(device)
        plain = not hasattr(model, "head_names")
        plans[name] = (("vote",) if plain else tuple(a["rules"]),
                       [s for s in a["suites"] if not (plain and get_suite(s).needs_heads)])
    # Every model at the first reading before any at the next: a run stopped part-way has whole comparisons.
    for reading in readings(recipe):
        for name, model in models.items():
            rules, suites = plans[name]
            console.rule(f"attack: {name}, eps reading '{reading['name']}' (eps {reading['eps']:.4g})")
            documents[name][reading["name"]] = _results(
                subfolder(out, name, "eval", reading["name"]),
                lambda state: run_suite(model, data.test, suite=suites, eps=reading["eps"],
                                        step_size=reading["step_size"], rules=rules, exclude=reading["exclude"],
                                        state_dir=state, **common))
    for name, model in models.items() if a["curve"] else ():
        console.rule(f"attack: {name}, accuracy against eps")
        documents[name]["curve"] = _results(
            subfolder(out, name, "eval", CURVE),
            lambda state: run_suite(model, data.test, suite="curve", rules=plans[name][0][:1], state_dir=state,
                                    **dict(common, budget=_curve_budget(recipe))))
    return documents


def _epoch_records(folder: Path) -> list[dict]:
    """The epoch records of a training run (train and validation metrics, wall time)."""
    return [json.loads(line) for line in (folder / METRICS_FILE).read_text().splitlines()]


def _train_seconds(records: list[dict], batch_size: int) -> float | None:
    """The training wall time summed over epochs. An epoch recorded before 0.2 (no ``seconds``) counts its
    images over its throughput, which leaves out its validation; None if that is unknown too."""
    total, previous_step = 0.0, 0
    for record in records:
        seconds = record.get("seconds")
        if seconds is None and record.get("images_per_s"):
            seconds = (record["step"] - previous_step) * batch_size / record["images_per_s"]
        if seconds is None:
            return None
        total, previous_step = total + seconds, record["step"]
    return total


def run_recipe(recipe: Recipe, out: str | Path | None = None, data_root: str | None = None,
               device: str = "auto", train_only: bool = False) -> dict:
    """Run ``recipe`` (resuming whatever a previous run in ``out`` finished) and write its report.

    Args:
        recipe: from :func:`auxsurgery.recipe.load_recipe`.
        out: the run folder (default ``runs/<recipe name>``).
        data_root: folder of the named datasets (overrides ``[data] root``; default ``$AUXSURGERY_DATA``).
        device: ``auto``, ``cpu``, ``cuda``, ...
        train_only: train (or finish training) every stage and stop before the attacks: say, train on a GPU
            machine, or train now and evaluate later with code whose attacks are final; the same call without
            it then continues with the attacks.

    Returns:
        the report document (also written to ``out/report.json``); with ``train_only``, ``{"trained": {stage:
        its last epoch record}}``.
    """
    out = check_output_folder(Path(out) if out else Path("runs") / recipe.name, "the run folder")
    device = str(resolve_device(device))
    with run_folder_lock(out, "auxsurgery run"):
        return _run_recipe(recipe, out, data_root, device, train_only)


def _run_recipe(recipe: Recipe, out: Path, data_root: str | None, device: str, train_only: bool) -> dict:
    """The body of :func:`run_recipe`, inside the run folder's lock."""
    _claim_out_dir(recipe, out)
    began = time.perf_counter()
    data = _load_data(recipe, data_root)
    models = train_models(recipe, data, out, device)
    if train_only:
        console.print(f"trained {', '.join(models)} in {out}; run again without --train-only for the attacks")
        return {"trained": {name: _epoch_records(out / name / "train")[-1] for name in models}}
    documents = attack_models(recipe, models, data, out, device)
    report = build_report(recipe, documents, readings(recipe))
    # The attacks see the first [attack] n test points; clean accuracy is cheap enough for the whole split.
    report["test_accuracy"] = {name: {"n": len(data.test), **evaluate(model, data.test)} for name, model in models.items()}
    records = {name: _epoch_records(out / name / "train") for name in models}
    report.update(training={name: epochs[-1] for name, epochs in records.items()},
                  train_seconds={name: _train_seconds(epochs, recipe.train_config(name).batch_size)
                                 for name, epochs in records.items()},
                  **release(), command=command_line(), machine=machine(), versions=versions(),
                  seconds_this_session=time.perf_counter() - began)
    atomic_write(out / "report.json", lambda tmp: Path(tmp).write_text(json.dumps(report, indent=1)))
    plots = [p.name for p in [plot_curves(report, out / CURVES_PLOT), plot_heads(report, out / HEADS_PLOT)] if p]
    atomic_write(out / "report.md", lambda tmp: Path(tmp).write_text(report_markdown(report, plots)))
    console.print(f"wrote {out / 'report.md'}, {out / 'report.json'}")
    return report
