"""Your model in, defended models out: one or more defences, each attacked, and the best one named.

:func:`defend` takes a trained classifier (a backbone built with your weights) and applies the
defences you pick (:func:`list_defences`), each to its own copy:

* ``heads``: Aux Blocks attached and trained on clean data with the backbone frozen (its weights and
  BatchNorm statistics stay exactly as they were: the defended model's own head is your model);
* ``heads-adversarial``: the same heads, trained on adversarial examples, backbone still frozen;
* ``adversarial``: adversarial training of the backbone itself (no heads);
* ``aux-adversarial``: Aux Blocks attached, then heads and backbone trained adversarially together.

Every resulting model and the undefended one are attacked with the strong suite on the same test
images (each model's decision rules: the vote and the score of a model with heads, the output of a
plain one), and one report (``defence.md``, ``defence.json``) answers plainly: which model has the
highest worst-case accuracy among those whose clean accuracy stays above the floor you set, by how
much it beats the undefended model, each with a 95% interval. The run folder resumes: training
continues from its saved state, evaluations from their state folders.
"""
from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from rich.console import Console
from torch import nn
from torch.utils.data import Dataset, Subset

from .._utils import atomic_write, did_you_mean, markdown_table, refuse_link, resolve_device, run_folder_lock, subfolder
from ..checkpoint import save
from ..data import dataset_classes, held_out_split, load_dataset
from ..evaluation import Budget, run_suite, write_report
from ..evaluation.confidence import paired_difference_interval, percent_with_interval, points_with_interval
from ..evaluation.presets import check_norm, fmt_eps, fmt_norm
from ..evaluation.state import STATE_FOLDER
from ..provenance import release
from ..rules import check_rule
from ..surgery import attach_aux_blocks
from ..train import AdversarialConfig, TrainConfig, finetune, get_training_method
from ..train.run_files import LAST_FILE, STATE_FILE

__all__ = ["Defence", "DefenceResult", "DefendConfig", "defend", "get_defence", "list_defences",
           "register_defence", "verdict"]

console = Console(stderr=True)
REPORT_MD, REPORT_JSON, MODEL_FILE = "defence.md", "defence.json", "model.safetensors"
UNDEFENDED = "undefended"


@dataclass(frozen=True)
class Defence:
    """One way to defend a trained backbone: what is attached, what trains, on what examples."""

    name: str
    description: str
    heads: bool  # attach Aux Blocks
    adversarial: bool  # train on adversarial examples (DefendConfig.adversarial)
    frozen_backbone: bool  # train only the heads (the backbone's weights and BatchNorm statistics stay)


_DEFENCES: dict[str, Defence] = {}


def register_defence(defence: Defence) -> Defence:
    """Register ``defence`` under its name (``defend --method NAME``)."""
    _DEFENCES[defence.name] = defence
    return defence


def list_defences() -> list[str]:
    """Names of the registered defences."""
    return list(_DEFENCES)


def get_defence(name: str) -> Defence:
    """The defence registered as ``name``; a ValueError names the close matches and the choices."""
    if name not in _DEFENCES:
        raise ValueError(f"unknown defence {name!r}.{did_you_mean(name, _DEFENCES)} Valid: {', '.join(_DEFENCES)}")
    return _DEFENCES[name]


for _defence in (
    Defence("heads", "Aux Blocks trained on clean data, backbone frozen", heads=True, adversarial=False,
            frozen_backbone=True),
    Defence("heads-adversarial", "Aux Blocks trained adversarially, backbone frozen", heads=True, adversarial=True,
            frozen_backbone=True),
    Defence("adversarial", "adversarial training of the backbone (no heads)", heads=False, adversarial=True,
            frozen_backbone=False),
    Defence("aux-adversarial", "Aux Blocks attached, heads and backbone trained adversarially together", heads=True,
            adversarial=True, frozen_backbone=False),
):
    register_defence(_defence)


@dataclass
class DefendConfig:
    """Settings of :func:`defend`.

    Args:
        methods: the defences to apply, each to its own copy of the backbone (:func:`list_defences`).
        at: attach points (``auto:3``, or names).
        head: head preset (or one per point).
        epochs: training epochs of every defence (AdamW, one-cycle; :meth:`TrainConfig.quick`).
        lr, batch_size: the optimiser settings.
        n: test images evaluated (the first ``n``).
        train_subset: train on the first N training images (None: all).
        val_fraction: share of the training images held out (un-augmented) to validate each epoch.
        eps: budget of the evaluation, a radius in ``norm`` (default: the dataset's preset of that norm; for unknown
            datasets CIFAR-10's, 8/255 or L2 0.5).
        norm: the threat model's norm, ``linf`` or ``l2``, of the evaluation and of the adversarial training.
        adversarial: the adversarial-training method of the adversarial defences: an AdversarialConfig, or its
            settings as a dict whose eps defaults to the evaluation's (default: FGSM with a random start at the
            evaluation's eps, on the joint loss of all heads).
        min_clean: the clean-accuracy floor of the verdict, a fraction (None: no floor): the best model is the
            one with the highest worst-case accuracy among those at or above it.
        dataset: preset name when ``data`` is not a dataset name (mnist, cifar10, ...).
        rules: the decision rules of every defence with heads, each attacked with its own cascade and compared with
            the undefended model (any registered rule: :mod:`auxsurgery.rules`); a model without heads has one.
        quick: smoke test: tiny attack budget, at most 100 test and 1000 training images.
        resume: continue the run in the output folder (training from its saved state, evaluations from theirs).
        seed, device: as everywhere.
    """

    methods: Sequence[str] = ("heads",)
    at: str | Sequence[str] = "auto:3"
    head: str | Sequence[str] = "default"
    epochs: int = 5
    lr: float = 3e-3
    batch_size: int = 128
    n: int = 1000
    train_subset: int | None = None
    val_fraction: float = 0.1
    eps: float | None = None
    norm: str = "linf"
    adversarial: AdversarialConfig | dict | None = None
    min_clean: float | None = None
    dataset: str | None = None
    rules: Sequence[str] = ("vote", "score")
    quick: bool = False
    resume: bool = False
    seed: int = 0
    device: str = "auto"

    def __post_init__(self):
        check_norm(self.norm)
        if self.epochs < 1 or self.n < 1 or self.batch_size < 1:
            raise ValueError("epochs, n and batch_size must be >= 1")
        if self.train_subset is not None and self.train_subset < 1:
            raise ValueError(f"train_subset (--train-subset) must be >= 1, got {self.train_subset}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must lie in (0, 1), got {self.val_fraction}")
        if self.min_clean is not None and not 0 <= self.min_clean <= 1:
            raise ValueError(f"the clean-accuracy floor is a fraction in [0, 1], got {self.min_clean}")
        self.methods = tuple(self.methods)
        if not self.methods or len(set(self.methods)) != len(self.methods):
            raise ValueError(f"name one or more different defences, got {list(self.methods)}")
        for name in self.methods:
            get_defence(name)
        self.rules = tuple(dict.fromkeys(check_rule(rule) for rule in self.rules))
        if not self.rules:
            raise ValueError("name one or more decision rules to attack the defences with heads under")
        if self.adversarial is not None:
            get_training_method(self.training_config(self.eps or 8 / 255).method)  # a bad setting fails here

    def training_config(self, eps: float) -> AdversarialConfig:
        """The adversarial training of the adversarial defences, for an evaluation at ``eps``."""
        if isinstance(self.adversarial, AdversarialConfig):
            return self.adversarial
        return AdversarialConfig(**{"eps": eps, "method": "fgsm", "norm": self.norm, **(self.adversarial or {})})


def verdict(before: dict, after: dict) -> dict:
    """Whether a defence helped: the worst-case and clean differences with their intervals, in words.

    ``before`` and ``after`` hold per-point outcomes on the same test images (``{"clean": bools,
    "worst_case": bools}``), so each difference gets a paired interval
    (:func:`~auxsurgery.evaluation.confidence.paired_difference_interval`). ``helped`` is ``yes`` when the whole
    interval of the worst-case gain lies above 0, ``worse`` when it lies below, else ``no measurable gain``;
    ``clean_kept`` is ``lost`` when the clean accuracy's interval lies below 0, else ``kept``.
    """
    worst = paired_difference_interval(after["worst_case"], before["worst_case"])
    clean = paired_difference_interval(after["clean"], before["clean"])
    if worst["low"] > 0:
        helped = "yes"
    elif worst["high"] < 0:
        helped = "worse"
    else:
        helped = "no measurable gain"
    clean_kept = "lost" if clean["high"] < 0 else "kept"
    return {"helped": helped, "clean_kept": clean_kept, "worst_case": worst, "clean": clean}


@dataclass
class DefenceResult:
    """What :func:`defend` measured (accuracies are fractions) and where it wrote its files.

    ``models`` maps ``undefended`` and each defence to ``{"rules": {rule: {"clean": acc, "worst_case": acc}},
    "description": ...}``; ``candidates`` lists every (model, rule) with its verdict against the undefended
    model and whether its clean accuracy clears the floor; ``best`` is the chosen candidate (None when none
    clears the floor).
    """

    model: str
    data: str
    n: int
    eps: float
    quick: bool
    attach_points: list[str]
    min_clean: float | None
    models: dict
    candidates: list[dict]
    best: dict | None
    warnings: list[str] = field(default_factory=list)
    training: dict = field(default_factory=dict)
    files: dict = field(default_factory=dict)
    norm: str = "linf"

    def to_dict(self) -> dict:
        return asdict(self)

    def headline(self) -> str:
        """The answer, in one sentence."""
        undefended = self.models[UNDEFENDED]["rules"]["vote"]
        where = f"at {fmt_norm(self.norm, prose=True)} eps {fmt_eps(self.eps)} on {self.n} test images"
        if self.best is None:
            return (f"No defence kept clean accuracy at or above the floor of {100 * self.min_clean:.1f}%; the "
                    f"undefended model's worst case is {100 * undefended['worst_case']:.1f}% {where}.")
        best, w = self.best, self.best["verdict"]["worst_case"]
        answer = {"yes": "Best defence", "worse": "Every defence did worse; the least bad",
                  "no measurable gain": "No measurable gain; the best defence"}[best["verdict"]["helped"]]
        return (f"{answer}: {best['label']}, worst-case accuracy {100 * best['worst_case']:.1f}% vs "
                f"{100 * undefended['worst_case']:.1f}% undefended ({100 * w['difference']:+.1f} pp, 95% interval "
                f"{100 * w['low']:+.1f} to {100 * w['high']:+.1f} pp) {where}; clean accuracy "
                f"{100 * undefended['clean']:.1f}% -> {100 * best['clean']:.1f}%.")

    def markdown(self) -> str:
        """The report ``defence.md``."""
        lines = [f"# Defence report: {self.model} on {self.data}", ""]
        if self.quick:
            lines += ["> **Quick run**: a smoke-test attack budget and few images. These numbers prove nothing about "
                      "robustness; rerun without `--quick` for the real answer.", ""]
        lines += [f"**{self.headline()}**", ""]
        n = self.n
        floor = "none" if self.min_clean is None else f"{100 * self.min_clean:.1f}%"
        lines += [f"Accuracy in % on {n} test images (with its 95% Wilson interval); worst case = per image over "
                  f"every attack of the strong suite within {fmt_norm(self.norm, prose=True)} eps {fmt_eps(self.eps)} (APGD on "
                  "the rule's own "
                  "objective and on the ensemble, targeted APGD, Square, run as a cascade on each rule): an image "
                  "counts as robust only if no attack fooled it. Gain = worst case minus the undefended model's, "
                  f"with a 95% interval. Clean-accuracy floor: {floor}.", ""]
        rows = []
        for candidate in self.candidates:
            gain = "-" if candidate["model"] == UNDEFENDED else points_with_interval(candidate["verdict"]["worst_case"])
            chosen = " **best**" if self.best and candidate["label"] == self.best["label"] else ""
            rows.append([candidate["label"] + chosen, percent_with_interval(candidate["clean"], n),
                         percent_with_interval(candidate["worst_case"], n), gain,
                         "yes" if candidate["above_floor"] else "no"])
        lines += markdown_table(["model (rule)", "clean", "worst case", "gain (pp)", "clean >= floor"], rows)
        lines += ["", "- Every model is attacked on the same images, so a gain's interval is paired: it comes from the "
                  "images where the two models disagree (Agresti and Min's interval). An interval that contains 0 "
                  "means this evaluation cannot tell.", "- The defences: " + "; ".join(
                      f"`{name}`: {self.models[name]['description']}" for name in self.models if name != UNDEFENDED)]
        if any(get_defence(name).frozen_backbone for name in self.models if name != UNDEFENDED):
            lines.append("- A defence with a frozen backbone keeps your model as its own head (rule `public`), bit "
                         "for bit.")
        lines.append("")
        if self.warnings:
            lines += ["## Warnings from the sanity checks", "", "Read these before trusting any number above:", ""]
            lines += [f"- {message}" for message in self.warnings] + [""]
        lines += ["## Setup", "", f"- Attach points: {', '.join(self.attach_points) or '-'}"]
        lines += [f"- `{name}`: {t['epochs']} epoch(s) on {t['train_images']} images, validated on {t['val_images']} "
                  f"held-out un-augmented training images" + (f"; adversarial training: {t['adversarial']}"
                                                              if t.get("adversarial") else "")
                  for name, t in self.training.items()]
        lines += ["- Files: " + ", ".join(f"{k}: `{v}`" for k, v in self.files.items()), ""]
        return "\n".join(lines)


@torch.no_grad()
def _output_classes(model: nn.Module, x: torch.Tensor) -> int | None:
    was = model.training
    model.eval()
    try:
        out = model(x.unsqueeze(0).to(next(model.parameters()).device))
    finally:
        model.train(was)
    return out.shape[-1] if torch.is_tensor(out) and out.dim() == 2 else None


def _candidate(model: str, rule: str, accuracies: dict, outcomes: dict, reference: dict, floor: float | None) -> dict:
    label = model if model == UNDEFENDED or rule == "vote" and "score" not in accuracies else f"{model} ({rule})"
    clean, worst = accuracies[rule]["clean"], accuracies[rule]["worst_case"]
    return {"model": model, "rule": rule, "label": label, "clean": clean, "worst_case": worst,
            "above_floor": floor is None or clean >= floor, "verdict": verdict(reference, outcomes[rule])}


def _check_fresh(out: Path, resume: bool) -> None:
    """Refuse to mix a new run into a folder that holds one, unless resuming it."""
    started = (out / REPORT_JSON).exists() or any(out.glob(f"*/train/{STATE_FILE}")) or any(out.glob(f"*/{STATE_FOLDER}"))
    if started and not resume:
        raise FileExistsError(f"{out} already holds a defend run; pass --resume to continue it, or choose another "
                              "--out")


def _make_folders(out: Path, methods: Sequence[str]) -> None:
    """Make every folder the run writes in (one per model, a training folder per defence) before any work: a
    symbolic link planted at one, or at an evaluation's state folder, is refused instead of written through."""
    for name in (UNDEFENDED, *methods):
        refuse_link(subfolder(out, name) / STATE_FOLDER, "the state folder")
    for method in methods:
        subfolder(out, method, "train")


def defend(
    backbone: nn.Module,
    data: str | tuple[Dataset, Dataset],
    out_dir: str | Path | None = None,
    config: DefendConfig | None = None,
    data_root: str | Path | None = None,
    image_size: int | None = None,
    name: str | None = None,
) -> DefenceResult:
    """Apply each defence of ``config.methods`` to a copy of ``backbone``, attack them all, and name the best.

    Args:
        backbone: the trained classifier, taking [0, 1] pixels (e.g. ``build_backbone(name, weights=PATH)``).
            It is not modified: every defence works on a copy.
        data: a dataset name or ImageFolder path (its train and test splits), or ``(train, test)`` datasets
            (then validation uses ``train`` as it is, augmentation included).
        out_dir: where ``defence.md``, ``defence.json``, each defence's training folder and model, and every
            evaluation report go (None: write nothing). Held under a lock; ``config.resume`` continues it.
        config: see :class:`DefendConfig`.
        data_root, image_size: as :func:`auxsurgery.load_dataset`.
        name: the model's name in the report (default: the backbone's spec name).
    """
    config = config or DefendConfig()
    if out_dir is None:
        return _defend(backbone, data, None, config, data_root, image_size, name)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file; defend writes a folder")
    with run_folder_lock(out, "auxsurgery defend"):
        _make_folders(out, config.methods)
        _check_fresh(out, config.resume)
        return _defend(backbone, data, out, config, data_root, image_size, name)


def _datasets(data, data_root, image_size, train_subset: int | None):
    """(train, the same images un-augmented, test, the data's name)."""
    if isinstance(data, str):
        options = dict(root=data_root, image_size=image_size)
        train_data = load_dataset(data, train=True, **options)
        plain_train_data = load_dataset(data, train=True, augment=False, **options)
        test_data = load_dataset(data, train=False, **options)
        data_name = data
    else:
        train_data, test_data = data
        plain_train_data = train_data
        data_name = "custom data"
    if train_subset is not None and train_subset < len(train_data):
        subset = range(train_subset)
        train_data, plain_train_data = Subset(train_data, subset), Subset(plain_train_data, subset)
    return train_data, plain_train_data, test_data, data_name


def _defend(backbone, data, out: Path | None, config: DefendConfig, data_root, image_size, name) -> DefenceResult:
    quick = config.quick
    n = min(config.n, 100) if quick else config.n
    train_subset = config.train_subset if not quick else min(config.train_subset or 1000, 1000)
    train_data, plain_train_data, test_data, data_name = _datasets(data, data_root, image_size, train_subset)
    classes = dataset_classes(train_data)
    sample = train_data[0][0]
    num_classes = len(classes) if classes is not None else None
    name = name or getattr(backbone, "spec", {}).get("name") or type(backbone).__name__
    outputs = _output_classes(backbone, sample)
    if num_classes is not None and outputs is not None and outputs != num_classes:
        raise ValueError(f"{name} outputs {outputs} classes but {data_name} has {num_classes}: load weights trained on "
                         "this data (or build the model with that num_classes)")
    held_out = max(1, int(round(len(train_data) * config.val_fraction)))
    train_part, val_part = held_out_split(train_data, plain_train_data, held_out, config.seed)

    budget = Budget.quick() if quick else None
    preset = config.dataset or (data_name if isinstance(data, str) else None)
    settings = dict(n=n, seed=config.seed, budget=budget, dataset=preset, eps=config.eps, norm=config.norm)
    steps = len(config.methods) + 1
    # The user's module stays where it is: the undefended model is evaluated as a copy, where the defences train.
    reference = copy.deepcopy(backbone).eval().to(resolve_device(config.device))
    console.rule(f"1/{steps} attack the undefended model (strong suite)")
    undefended = _evaluate(reference, test_data, UNDEFENDED, out, settings, ("vote",))
    eps = undefended.preset.eps
    adversarial = config.training_config(eps)
    accuracies, reference = _summary(undefended, ("vote",))
    models = {UNDEFENDED: {"description": "your model as given", "rules": accuracies}}
    outcomes = {UNDEFENDED: reference}  # per model, rule and point: for the paired intervals
    warnings = [f"{UNDEFENDED}: {f.message}" for f in undefended.warnings]
    training, files, attach_points = {}, {}, []
    for k, method in enumerate(config.methods, start=2):
        defence = get_defence(method)
        console.rule(f"{k}/{steps} {method}: {defence.description}; then the strong suite")
        model, record = _train(defence, backbone, train_part, val_part, out, config,
                               adversarial if defence.adversarial else None, outputs, tuple(sample.shape))
        training[method] = {"epochs": config.epochs, "train_images": len(train_part), "val_images": len(val_part),
                            **record}
        if defence.heads:
            attach_points = list(model.attach_points)
        if out:
            files[f"{method} model"] = str(out / method / (MODEL_FILE if defence.heads else f"train/{LAST_FILE}"))
        rules = config.rules if defence.heads else ("vote",)
        evaluated = _evaluate(model, test_data, method, out, settings, rules)
        accuracies, outcomes[method] = _summary(evaluated, rules)
        models[method] = {"description": defence.description, "rules": accuracies}
        warnings += [f"{method}: {f.message}" for f in evaluated.warnings]

    n_points = undefended.n
    candidates = [_candidate(model, rule, entry["rules"], outcomes[model], outcomes[UNDEFENDED]["vote"],
                             config.min_clean) for model, entry in models.items() for rule in entry["rules"]]
    eligible = [c for c in candidates if c["model"] != UNDEFENDED and c["above_floor"]]
    best = max(eligible, key=lambda c: (c["worst_case"], c["clean"]), default=None)
    result = DefenceResult(
        model=name, data=data_name, n=n_points, eps=eps, quick=quick, attach_points=attach_points,
        min_clean=config.min_clean, models=models, candidates=candidates, best=best, warnings=warnings,
        training=training, files=files, norm=config.norm)
    if out:
        result.files.update({"report": str(out / REPORT_MD), "json": str(out / REPORT_JSON)})
        document = {**release(), **result.to_dict(), "headline": result.headline(),
                    "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()}}
        atomic_write(out / REPORT_JSON, lambda tmp: Path(tmp).write_text(json.dumps(document, indent=1, default=str)))
        atomic_write(out / REPORT_MD, lambda tmp: Path(tmp).write_text(result.markdown()))
    return result


def _train(defence: Defence, backbone: nn.Module, train_part: Dataset, val_part: Dataset, out: Path | None,
           config: DefendConfig, adversarial: AdversarialConfig | None, outputs: int | None, input_size: tuple):
    """A copy of ``backbone`` defended by ``defence`` and trained (or its training continued); with the record of
    its last epoch."""
    torch.manual_seed(config.seed)  # the heads' initial weights
    model = copy.deepcopy(backbone)
    if defence.heads:
        model = attach_aux_blocks(model, at=config.at, num_classes=outputs, input_size=input_size, head=config.head)
    folder = subfolder(out, defence.name, "train") if out else None
    train_config = TrainConfig.quick(
        config.epochs, lr=config.lr, mode="heads" if defence.frozen_backbone else "full", seed=config.seed,
        batch_size=min(config.batch_size, len(train_part)), device=config.device, adversarial=adversarial,
        out_dir=str(folder) if folder else None, resume=bool(folder and (folder / STATE_FILE).exists()),
        select_best="vote")
    trained = finetune(model, train_part, val_part, train_config)
    model.eval()
    if out and defence.heads:
        save(model, subfolder(out, defence.name) / MODEL_FILE)
    record = {"best_epoch": trained.best_epoch, "final": trained.history[-1] if trained.history else None}
    if adversarial is not None:
        record["adversarial"] = asdict(adversarial)
    return model, record


def _evaluate(model: nn.Module, test_data: Dataset, name: str, out: Path | None, settings: dict, rules: tuple):
    """The strong suite on ``model`` (resumable in ``out/name``), its report written there."""
    folder = subfolder(out, name) if out else None
    result = run_suite(model, test_data, suite="strong", rules=rules, state_dir=folder / STATE_FOLDER if out else None,
                       **settings)
    if out:
        write_report(result, folder)
    return result


def _summary(result, rules: tuple) -> tuple[dict, dict]:
    """Per rule: the clean and worst-case accuracies, and per point whether the rule is right on the clean image
    and robust to every attack."""
    worst = result.worst_case().outcome
    accuracies = {rule: {"clean": result.clean.accuracy(rule), "worst_case": worst.accuracy(rule)} for rule in rules}
    outcomes = {rule: {"clean": result.clean.rules[rule].tolist(), "worst_case": worst.rules[rule].tolist()}
                for rule in rules}
    return accuracies, outcomes
