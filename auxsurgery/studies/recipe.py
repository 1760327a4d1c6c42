"""Recipes: one TOML file that describes a whole experiment, checked before anything runs.

A recipe names the data, the backbone, where the Aux Blocks go, how every model trains
(the defended one and the baselines: undefended, PGD adversarial training) and which attack
suites judge them. :func:`load_recipe` reads and validates it; every mistake (a typo in a
key, a wrong type, an unknown model, head, dataset, suite or choice) is reported with the
file, the ``[section] key`` and the valid choices, before a dataset is loaded.
:func:`auxsurgery.experiment.run_recipe` runs it. See ``recipes/*.toml`` for examples.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

import torch

from .. import synthetic
from .._utils import UnsafePath, check_name, did_you_mean
from ..attacks.base import NORMS
from ..backbones import FACTORY_PREFIX, build_backbone, is_weights_file, resolve_name, weights_file
from ..data import SOURCES, SYNTHETIC_NAMES
from ..evaluation import Budget, list_suites
from ..evaluation.presets import PRESETS as ATTACK_PRESETS
from ..heads import list_heads
from ..rules import get_rule
from ..surgery import check_attach_points
from ..train import AdversarialConfig, TrainConfig, adversarial_preset, get_training_method
from ..train.adversarial import PRESETS as ADVERSARIAL_PRESETS
from ..train.config import PAPER_PRESETS

__all__ = ["AUX_ADVERSARIAL_PREFIX", "Recipe", "RecipeError", "load_recipe", "parse_recipe"]

REQUIRED = object()
INITS = ("undefended", "scratch")
# The rules the rule-aware attacks target by default: the defended system's own decisions. Every rule
# of auxsurgery.rules.default_rules() is judged on every attack anyway; any registered rule may be attacked.
ATTACKED_RULES = ["vote", "score"]
PAPER_SETTINGS = (*ATTACK_PRESETS, "none")
# The accuracy-vs-eps run's name beside the eps readings' (its folder <model>/eval/curve, its report key).
CURVE = "curve"
MAX_NAME_LENGTH = 64  # of a recipe's names, which become folder names


class RecipeError(ValueError):
    """A recipe that cannot run: the message names the file, the key and the valid choices."""


@dataclass(frozen=True)
class Key:
    """One recipe key: its kind (``int``, ``float``, ``str``, ``bool``, ``str-list``,
    ``float-list``, ``int-list``, ``str-or-list``), default and, where closed, its choices."""

    kind: str
    default: Any = None
    choices: tuple | None = None


def _kind_of(value) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, tuple):
        return f"{_kind_of(value[0]) if value else 'int'}-list"
    return {int: "int", float: "float", str: "str"}[type(value)]


# Every TrainConfig setting that describes training (not where files go or how it is shown), and every
# Budget setting. They have no default here: an unset key keeps the paper preset's or the class's own.
_NOT_IN_RECIPES = {"out_dir", "resume", "progress", "adversarial", "device"}
_TRAIN_KIND_OVERRIDES = {"grad_clip": "float"}
TRAIN_KEYS = {f.name: Key(_TRAIN_KIND_OVERRIDES.get(f.name) or _kind_of(f.default))
              for f in dataclasses.fields(TrainConfig) if f.name not in _NOT_IN_RECIPES}
BUDGET_KEYS = {f.name: Key(_kind_of(f.default)) for f in dataclasses.fields(Budget)}
READING_KEYS = {
    "name": Key("str", REQUIRED), "eps": Key("float", REQUIRED), "step_size": Key("float"),
    "exclude": Key("str-list", []), "note": Key("str", ""),
}
CURVE_KEYS = {"eps": Key("float-list", REQUIRED), "apgd_steps": Key("int", 50)}
# An adversarial-training method and its settings (auxsurgery.train.AdversarialConfig); unset keys keep the
# preset's (when one is named) or the method's defaults.
ADVERSARIAL_KEYS = {"preset": Key("str", None, tuple(ADVERSARIAL_PRESETS)), "method": Key("str"), "eps": Key("float"),
                    "step_size": Key("float"), "steps": Key("int"), "objective": Key("str"), "beta": Key("float"),
                    "norm": Key("str", None, NORMS)}
AUX_ADVERSARIAL_PREFIX = "aux_adversarial_"

# section -> key -> Key; a dict value is a sub-table; a list of one dict is an array of tables.
SCHEMA: dict[str, dict] = {
    "recipe": {"name": Key("str", REQUIRED), "description": Key("str", ""),
               "paper": Key("str", "none", PAPER_SETTINGS), "seed": Key("int", 0)},
    # held_out: training images (drawn from [recipe] seed, un-augmented) that validate every epoch and are never
    # trained on; train_subset: train on that many of the others (the first train_subset + held_out, less those).
    "data": {"name": Key("str", REQUIRED), "root": Key("str"), "train_subset": Key("int"), "held_out": Key("int", 1000),
             "image_size": Key("int"), "augment": Key("bool"), "download": Key("bool", False)},
    # name, or model_factory (your network: imports and runs that code when the recipe runs, never on --check)
    # with mean and std; weights is a file (relative to the recipe's folder) or a torchvision weights name.
    "backbone": {"name": Key("str"), "model_factory": Key("str"), "pretrained": Key("bool", False),
                 "weights": Key("str"), "mean": Key("float-list"), "std": Key("float-list")},
    "train": {"preset": Key("str", None, tuple(PAPER_PRESETS)), **TRAIN_KEYS},
    "undefended": {"enabled": Key("bool", True), "train": TRAIN_KEYS},
    "adversarial": {"enabled": Key("bool", False), "init": Key("str", "undefended", INITS), **ADVERSARIAL_KEYS,
                    "train": TRAIN_KEYS},
    "aux": {"enabled": Key("bool", True), "at": Key("str-or-list", "auto:3"), "head": Key("str-or-list", "default"),
            "alpha": Key("float-list"), "init": Key("str", "undefended", INITS),
            "train": TRAIN_KEYS},
    # Aux Block models trained adversarially, one stage each ("aux_adversarial_<name>"): heads attached as in
    # [aux] (unless at/head/alpha are set here) to the init model, then backbone and heads (or, with
    # train.mode = "heads", the heads alone) trained by the method.
    "aux_adversarial": [{"name": Key("str", REQUIRED), "at": Key("str-or-list"), "head": Key("str-or-list"),
                         "alpha": Key("float-list"), "init": Key("str", "undefended", INITS), **ADVERSARIAL_KEYS,
                         "train": TRAIN_KEYS}],
    "attack": {"suites": Key("str-list", ["static", "adaptive", "strong"]), "n": Key("int", 1000),
               "rules": Key("str-list", ATTACKED_RULES), "batch_size": Key("int", 128),
               "preset": Key("str", None, tuple(ATTACK_PRESETS)), "norm": Key("str", "linf", NORMS),
               "readings": [READING_KEYS],
               "budget": BUDGET_KEYS, "curve": CURVE_KEYS,
               # run_suite's draws of a randomised model (unset: its defaults where the randomness check fires)
               "eot": Key("int", None), "judge_draws": Key("int", None)},
}
# Keys a recipe may no longer set: what to write instead.
_RETIRED_KEYS = {("data", "val_subset"): "recipes no longer validate on test images; write held_out = N to validate "
                                        "on N training images held out from training"}
_TYPE_NAMES = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false",
               "str-list": "a list of strings", "float-list": "a list of numbers", "int-list": "a list of integers",
               "str-or-list": "a string or a list of strings"}


@dataclass
class Recipe:
    """A validated recipe: ``sections[section][key]`` with every default filled in.

    Attributes:
        path: the file it came from (``<string>`` for :func:`parse_recipe` without one).
        sections: the values, sub-tables as dicts; unset optional keys are None.
        text: the TOML source, copied into the run folder.
    """

    path: str
    sections: dict
    text: str

    def __getitem__(self, section: str) -> dict:
        return self.sections[section]

    @property
    def name(self) -> str:
        """The recipe's name (``[recipe] name``)."""
        return self.sections["recipe"]["name"]

    def error(self, where: str, message: str) -> RecipeError:
        """A RecipeError for ``where`` (``[section] key``) in this recipe's file."""
        return RecipeError(f"{self.path}: {where}: {message}")

    @property
    def folder(self) -> Path:
        """The folder relative paths in the recipe are read from: the recipe file's (the current folder for a
        recipe given as text)."""
        return Path(self.path).parent if self.path != "<string>" else Path(".")

    def path_of(self, value: str) -> Path:
        """A path the recipe names: absolute as it is, relative from :attr:`folder`."""
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.folder / path

    def backbone_name(self) -> str:
        """The name :func:`auxsurgery.build_backbone` builds: ``[backbone] name``, or ``factory:`` and
        ``model_factory`` (a ``path/to/file.py`` module read from :attr:`folder`)."""
        b = self["backbone"]
        if not b.get("model_factory"):  # absent from run folders recorded before 0.2
            return b["name"]
        module, sep, function = b["model_factory"].partition(":")
        if module.endswith(".py"):
            module = str(self.path_of(module))
        return f"{FACTORY_PREFIX}{module}{sep}{function}"

    def backbone_weights(self) -> str | Path | None:
        """``[backbone] weights``: a file (a relative path is read from :attr:`folder`), a torchvision
        weights name (``DEFAULT``, ``IMAGENET1K_V1``) as it is, or None."""
        weights = self["backbone"]["weights"]
        if weights is None:
            return None
        local = self.path_of(weights)
        return local if weights_file(weights) is not None or local.is_file() else weights

    def stages(self) -> list[str]:
        """The enabled training stages, in the order they run: ``undefended``, ``adversarial``, ``aux``, then
        one ``aux_adversarial_<name>`` per ``[[aux_adversarial]]`` table."""
        fixed = [stage for stage in ("undefended", "adversarial", "aux") if self[stage]["enabled"]]
        return fixed + [AUX_ADVERSARIAL_PREFIX + table["name"] for table in self["aux_adversarial"]]

    def stage(self, stage: str) -> dict:
        """The recipe table of a training stage (``[aux]``, or the ``[[aux_adversarial]]`` table of
        ``aux_adversarial_<name>``)."""
        if stage.startswith(AUX_ADVERSARIAL_PREFIX):
            name = stage[len(AUX_ADVERSARIAL_PREFIX):]
            return next(table for table in self["aux_adversarial"] if table["name"] == name)
        return self[stage]

    @staticmethod
    def where(stage: str) -> str:
        """How an error names a stage's table: ``[aux]``, ``[[aux_adversarial]] name = "max"``."""
        if stage.startswith(AUX_ADVERSARIAL_PREFIX):
            return f'[[aux_adversarial]] name = "{stage[len(AUX_ADVERSARIAL_PREFIX):]}"'
        return f"[{stage}]"

    def adversarial_config(self, stage: str) -> AdversarialConfig:
        """The adversarial-training settings of ``stage`` (``adversarial`` or an ``aux_adversarial_*`` stage):
        its preset, if it names one, with the keys it sets."""
        table = self.stage(stage)
        chosen = {k: table[k] for k in ADVERSARIAL_KEYS if k != "preset" and table[k] is not None}
        try:
            config = (adversarial_preset(table["preset"], **chosen) if table["preset"]
                      else AdversarialConfig(**chosen))
            get_training_method(config.method)
        except (TypeError, ValueError) as err:
            raise self.error(self.where(stage), str(err)) from None
        return config

    def train_config(self, model: str, **fixed) -> TrainConfig:
        """The TrainConfig of stage ``model`` (undefended, adversarial, aux, aux_adversarial_<name>): the paper
        preset ``[train]`` names, then ``[recipe] seed``, ``[train]``, the stage's ``train`` table and ``fixed``,
        later ones winning."""
        base = {k: v for k, v in self["train"].items() if v is not None and k != "preset"}
        override = {k: v for k, v in self.stage(model)["train"].items() if v is not None}
        settings = {"seed": self["recipe"]["seed"], **base, **override, **fixed}
        if "milestones" in settings:
            settings["milestones"] = tuple(settings["milestones"])
        preset = self["train"]["preset"]
        defaults = PAPER_PRESETS[preset] if preset else {}
        try:
            return TrainConfig(**{**defaults, **settings})
        except ValueError as err:
            raise self.error(f"[train] or the train table of {self.where(model)}", str(err)) from None

    def changed(self, changes: dict[str, Any]) -> "Recipe":
        """This recipe with ``changes`` applied and validated again.

        ``changes`` maps dotted keys (``"recipe.seed"``, ``"attack.budget.apgd_steps"``) to values. The
        text becomes the changed recipe written out as TOML (its comments are lost), so the run folder's
        ``recipe.toml`` still describes exactly what ran; without a real change the recipe is returned as is.
        """
        def current(dotted: str):
            value = self.sections
            for name in dotted.split("."):
                value = value.get(name) if isinstance(value, dict) else None
            return value

        changes = {key: value for key, value in changes.items() if current(key) != value}
        if not changes:
            return self
        raw = tomllib.loads(self.text)
        for dotted, value in changes.items():
            *tables, key = dotted.split(".")
            table = raw
            for name in tables:
                table = table.setdefault(name, {})
            table[key] = value
        header = f"# {self.path}, changed: " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in changes.items())
        return parse_recipe(header + "\n" + _to_toml(raw), self.path)


def _scalar(value, kind: str):
    """``value`` as ``kind``; TypeError if it is not one (an int is a number; a bool is not an int)."""
    if kind == "float" and type(value) in (int, float):
        return float(value)
    if type(value) is {"int": int, "str": str, "bool": bool}.get(kind):
        return value
    raise TypeError


def _check_type(where: str, value, kind: str, choices: tuple | None):
    """``value`` checked against ``kind`` and ``choices``; a RecipeError says what was expected."""
    try:
        if kind == "str-or-list":
            value = [_scalar(v, "str") for v in value] if isinstance(value, list) else _scalar(value, "str")
        elif kind.endswith("-list"):
            if not isinstance(value, list):
                raise TypeError
            value = [_scalar(v, kind.removesuffix("-list")) for v in value]
        else:
            value = _scalar(value, kind)
    except TypeError:
        raise RecipeError(f"{where} must be {_TYPE_NAMES[kind]}, got {value!r} ({type(value).__name__})") from None
    if choices is not None and value not in choices:
        raise RecipeError(f"{where}: unknown value {value!r}; valid: {', '.join(map(str, choices))}")
    return value


def _unknown_key(where: str, key: str, valid) -> RecipeError:
    return RecipeError(f"{where}: unknown key {key!r}.{did_you_mean(key, valid)} Valid keys: {', '.join(valid)}")


def _fill(section: str, table, schema: dict) -> dict:
    """Check ``table`` (the TOML table ``[section]``) against ``schema``; return it with defaults filled in."""
    if not isinstance(table, dict):
        raise RecipeError(f"[{section}] must be a table, got {table!r}")
    for key in table:
        if (section, key) in _RETIRED_KEYS:
            raise RecipeError(f"[{section}] {key}: {_RETIRED_KEYS[section, key]}")
        if key not in schema:
            raise _unknown_key(f"[{section}]", key, schema)
    filled = {}
    for key, spec in schema.items():
        if isinstance(spec, dict):
            # An absent sub-table with required keys (like [attack.curve]) is simply off.
            optional = key not in table and any(k.default is REQUIRED for k in spec.values() if isinstance(k, Key))
            filled[key] = None if optional else _fill(f"{section}.{key}", table.get(key, {}), spec)
        elif isinstance(spec, list):
            items = table.get(key, [])
            if not isinstance(items, list):
                raise RecipeError(f"[{section}] {key} must be an array of tables ([[{section}.{key}]])")
            filled[key] = [_fill(f"{section}.{key}[{i}]", item, spec[0]) for i, item in enumerate(items)]
        elif key in table:
            filled[key] = _check_type(f"[{section}] {key}", table[key], spec.kind, spec.choices)
        elif spec.default is REQUIRED:
            raise RecipeError(f"[{section}] {key} is required")
        else:
            filled[key] = copy.deepcopy(spec.default)
    return filled


# The eps readings' range in each norm: an L-inf ball of radius 1 holds the whole box; an L2 radius has no such cap
# short of the image's diagonal.
_RADII = {"linf": "(0, 1] (pixels in [0, 1])", "l2": "(0, inf)"}


def _is_radius(eps: float, norm: str) -> bool:
    return 0 < eps <= 1 if norm == "linf" else 0 < eps < float("inf")


def _check_folder_name(r: Recipe, where: str, name: str) -> None:
    try:
        check_name(name, "the name")
    except UnsafePath as err:
        raise r.error(where, str(err)) from None
    # Beyond what any run folder refuses: a recipe's names stay plain ASCII words (no bidi controls or lookalikes
    # in folder names and reports) and short enough for every file system's name limit with the suffixes added.
    plain = name.isascii() and name[0].isalnum() and all(c.isalnum() or c in "-_.+" for c in name)
    if len(name) > MAX_NAME_LENGTH or not plain:
        raise r.error(where, f"{name[:40]!r}{'...' if len(name) > 40 else ''} ({len(name)} characters) becomes a "
                             f"folder name: use at most {MAX_NAME_LENGTH} ASCII letters, digits and - _ . +, starting "
                             "with a letter or digit, such as 'cifar10-resnet9'")


def _check_names(r: Recipe) -> None:
    """Names the schema cannot check: models, heads, datasets, suites, rules, folder names, cross-key rules."""
    # Both become folder names: the default run folder runs/<name>, and <model>/eval/<reading name>.
    _check_folder_name(r, "[recipe] name", r.name)
    for key in ("n", "batch_size", "eot", "judge_draws"):
        if r["attack"][key] is not None and r["attack"][key] < 1:
            raise r.error(f"[attack] {key}", f"must be >= 1, got {r['attack'][key]}")
    if (r["attack"]["judge_draws"] or 1) % 2 == 0:
        raise r.error("[attack] judge_draws", f"must be odd (a majority of an even count can tie), got "
                                              f"{r['attack']['judge_draws']}")
    if r["data"]["held_out"] < 1:
        raise r.error("[data] held_out", f"must be >= 1 (the training images held out to validate on), got "
                                         f"{r['data']['held_out']}")
    _check_backbone(r)
    _check_attach_points(r)
    data = r["data"]["name"]
    size = r["data"]["train_subset"]
    if size is not None and size < 1:
        raise r.error("[data] train_subset", f"must be >= 1, got {size}")
    if size is not None and data.lower() in SYNTHETIC_NAMES:
        try:
            synthetic.check_size(size + r["data"]["held_out"])
        except ValueError as err:
            raise r.error("[data] train_subset", str(err)) from None
    known_data = [*SOURCES, *SYNTHETIC_NAMES]
    if data.lower() not in known_data and "/" not in data and not Path(data).is_dir():
        raise r.error("[data] name", f"unknown dataset {data!r}; valid: {', '.join(known_data)}, "
                                     "or an ImageFolder directory path")
    for table, where in [(r["aux"], "[aux]"), *((t, r.where(AUX_ADVERSARIAL_PREFIX + t["name"]))
                                                 for t in r["aux_adversarial"])]:
        chosen = table["head"] or []
        for head in chosen if isinstance(chosen, list) else [chosen]:
            if head.split(":")[0] not in list_heads():
                raise r.error(f"{where} head", f"unknown head preset {head!r}; valid: {', '.join(list_heads())}")
    for suite in r["attack"]["suites"]:
        if suite not in list_suites():
            raise r.error("[attack] suites", f"unknown suite {suite!r}; valid: {', '.join(list_suites())}")
    for rule in r["attack"]["rules"]:
        try:
            get_rule(rule)
        except ValueError as error:
            raise r.error("[attack] rules", str(error)) from None
    if r["attack"]["norm"] != "linf" and r["recipe"]["paper"] != "none":
        raise r.error("[attack] norm", f"the paper's tables ([recipe] paper = {r['recipe']['paper']!r}) are L-inf "
                                       f"numbers, not comparable with {r['attack']['norm']}: set paper = \"none\"")
    names = [reading["name"] for reading in r["attack"]["readings"]]
    if len(set(names)) != len(names):
        raise r.error("[attack.readings] name", f"reading names must differ, got {names}")
    for i, reading in enumerate(r["attack"]["readings"]):
        _check_folder_name(r, f"[attack.readings[{i}]] name", reading["name"])
        if reading["name"] == CURVE:
            raise r.error(f"[attack.readings[{i}]] name", f"{CURVE!r} is the accuracy-vs-eps run's own name; "
                                                           "choose another")
        if not _is_radius(reading["eps"], r["attack"]["norm"]):
            raise r.error(f"[attack.readings[{i}]] eps", f"must lie in {_RADII[r['attack']['norm']]} for "
                                                         f"{r['attack']['norm']}, got {reading['eps']}")
    for eps in r["attack"]["curve"]["eps"] if r["attack"]["curve"] else []:
        if not _is_radius(eps, r["attack"]["norm"]):
            raise r.error("[attack.curve] eps", f"every eps must lie in {_RADII[r['attack']['norm']]} for "
                                                f"{r['attack']['norm']}, got {eps}")
    names = [table["name"] for table in r["aux_adversarial"]]
    for name in names:  # the stage aux_adversarial_<name> and its folder
        _check_folder_name(r, "[[aux_adversarial]] name", name)
    if len(set(names)) != len(names):
        raise r.error("[[aux_adversarial]] name", f"names must differ, got {names}")
    for stage in r.stages():
        if stage != "undefended" and r.stage(stage)["init"] == "undefended" and not r["undefended"]["enabled"]:
            raise r.error(f"{r.where(stage)} init", "'undefended' needs [undefended] enabled = true (or use 'scratch')")
        if stage == "adversarial" or stage.startswith(AUX_ADVERSARIAL_PREFIX):
            if not (r.stage(stage)["preset"] or r.stage(stage)["eps"]):
                raise r.error(r.where(stage), f"set preset ({', '.join(ADVERSARIAL_PRESETS)}) or eps")
            r.adversarial_config(stage)  # raises on a bad method, objective or setting
        r.train_config(stage)  # raises on bad choices (optimizer, schedule, ...)


def _check_backbone(r: Recipe) -> None:
    """``[backbone]``: a known model name or a model factory (not imported here), both or neither of mean and
    std, and a weights file that exists."""
    b = r["backbone"]
    if b["name"] and b["model_factory"]:
        raise r.error("[backbone]", "set name or model_factory, not both")
    if not b["name"] and not b["model_factory"]:
        raise RecipeError(f'{r.path}: [backbone] name is required (or model_factory = "package.module:function" '
                          "for your own network)")
    if b["name"]:
        if b["name"].startswith(FACTORY_PREFIX):
            raise r.error("[backbone] name", f'write your own network as model_factory = '
                                             f'"{b["name"][len(FACTORY_PREFIX):]}", with mean and std')
        try:
            resolve_name(b["name"])
        except ValueError as err:
            raise r.error("[backbone] name", str(err)) from None
    if (b["mean"] is None) != (b["std"] is None):
        raise r.error("[backbone] mean, std", "give both, or neither (the model's own normalisation)")
    if b["mean"] is not None and (not b["mean"] or len(b["mean"]) != len(b["std"]) or min(b["std"]) <= 0):
        raise r.error("[backbone] mean, std", f"need one value per channel each (or one for all), std > 0; got "
                                              f"mean {b['mean']}, std {b['std']}")
    if b["model_factory"]:
        module, sep, function = b["model_factory"].partition(":")
        if not (module and sep and function):
            raise r.error("[backbone] model_factory", "write it as package.module:function or "
                                                      f"path/to/file.py:function, got {b['model_factory']!r}")
        if module.endswith(".py") and not r.path_of(module).is_file():
            raise r.error("[backbone] model_factory", f"file not found: {r.path_of(module)} (a relative path is read "
                                                      f"from the recipe's folder, {r.folder.resolve()})")
        if b["mean"] is None:
            raise r.error("[backbone] model_factory", "needs mean and std, the normalisation your network expects "
                                                      "(mean = [0.0], std = [1.0] for one that takes [0, 1] pixels)")
        if b["pretrained"]:
            raise r.error("[backbone] pretrained", "a model factory builds its own network; load your weights with "
                                                   "weights = PATH")
    weights = r.backbone_weights()
    if weights is not None:
        if b["pretrained"]:
            raise r.error("[backbone] weights", "pretrained = true loads the library's weights and weights your own; "
                                                "pick one")
        if isinstance(weights, Path) and not weights.is_file():
            raise r.error("[backbone] weights", f"file not found: {weights} (a relative path is read from the "
                                                f"recipe's folder, {r.folder.resolve()})")
        if isinstance(weights, Path) and not is_weights_file(weights):
            raise r.error("[backbone] weights", f"{weights} is not a weights file: its first bytes are neither "
                                                "safetensors nor torch.save's (zip or pickle)")


def _check_attach_points(r: Recipe) -> None:
    """Every ``at`` names points the backbone has, so that a typo fails here rather than after a stage has
    trained. The backbone is built on the meta device (no memory, no weights, no data); a model factory's
    network is not imported before the run."""
    if r["backbone"]["model_factory"]:
        return
    try:
        with torch.device("meta"):
            backbone = build_backbone(r["backbone"]["name"])
    except (NotImplementedError, RuntimeError):  # an init that reads its weights (torchvision's RegNets)
        return  # attach_aux_blocks checks the points when the stage attaches them
    for table, where in [(r["aux"], "[aux]"), *((t, r.where(AUX_ADVERSARIAL_PREFIX + t["name"]))
                                                 for t in r["aux_adversarial"])]:
        if table["at"] is None:  # [[aux_adversarial]] without its own: [aux]'s
            continue
        try:
            check_attach_points(backbone, table["at"])
        except ValueError as err:
            raise r.error(f"{where} at", str(err)) from None


def _to_toml(table: dict, name: str = "", array: bool = False) -> str:
    """A parsed recipe table as TOML text: a JSON scalar or list of scalars is valid TOML, which covers every
    value a recipe holds; sub-tables follow the keys (``[name.key]``), arrays of tables as ``[[name.key]]``."""
    def is_array(value) -> bool:
        return isinstance(value, list) and bool(value) and isinstance(value[0], dict)

    lines = [f"[[{name}]]" if array else f"[{name}]"] if name else []
    lines += [f"{key} = {json.dumps(value)}" for key, value in table.items()
              if not isinstance(value, dict) and not is_array(value)]
    for key, value in table.items():
        path = f"{name}.{key}" if name else key
        if isinstance(value, dict):
            lines.append(_to_toml(value, path))
        elif is_array(value):
            lines += [_to_toml(item, path, array=True) for item in value]
    return "\n".join(lines) + "\n"


def parse_recipe(text: str, path: str = "<string>") -> Recipe:
    """Validate the TOML ``text`` of a recipe; :class:`RecipeError` names ``path``, the key and the choices."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise RecipeError(f"{path}: not valid TOML: {err}") from None
    for section in raw:
        if section not in SCHEMA:
            raise RecipeError(f"{path}: unknown section [{section}].{did_you_mean(section, SCHEMA)} Valid sections: {', '.join(SCHEMA)}")
    sections = {}
    for section, schema in SCHEMA.items():
        try:
            if isinstance(schema, list):  # an array of tables, [[section]]
                tables = raw.get(section, [])
                if not isinstance(tables, list):
                    raise RecipeError(f"[{section}] must be an array of tables: write [[{section}]]")
                sections[section] = [_fill(f"{section}[{i}]", table, schema[0]) for i, table in enumerate(tables)]
            else:
                sections[section] = _fill(section, raw.get(section, {}), schema)
        except RecipeError as err:
            raise RecipeError(f"{path}: {err}") from None
    recipe = Recipe(str(path), sections, text)
    _check_names(recipe)
    return recipe


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate the recipe at ``path``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no recipe at {path}; see the recipes/ folder for examples")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise RecipeError(f"{path}: not UTF-8 text (byte {err.start} is {err.object[err.start:err.start + 1]!r}): "
                          "save the recipe as UTF-8") from None
    return parse_recipe(text, str(path))
