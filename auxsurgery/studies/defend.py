"""Your model in, the defended model out: attach Aux Blocks, train only them, and say whether they helped.

:func:`defend` takes a trained classifier (a backbone built with your weights), attaches heads,
trains them with the backbone frozen (``TrainConfig(mode="heads")``: its weights and BatchNorm
statistics stay exactly as they were), evaluates the undefended and the defended model with the
strong suite on the same test images, and writes one report (``defence.md``, ``defence.json``)
that answers plainly: was clean accuracy kept, and is the defended vote's worst-case accuracy
above the undefended model's, by how much, with a rough 95% interval?
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

from .._utils import atomic_write, markdown_table
from ..checkpoint import save
from ..data import dataset_classes, load_dataset
from ..evaluation import Budget, run_suite, write_report
from ..evaluation.confidence import difference_interval, percent_with_interval
from ..evaluation.report import fmt_eps
from ..provenance import release
from ..surgery import attach_aux_blocks
from ..train import TrainConfig, finetune

__all__ = ["DefenceResult", "DefendConfig", "defend", "verdict"]

console = Console(stderr=True)
REPORT_MD, REPORT_JSON, MODEL_FILE = "defence.md", "defence.json", "defended.safetensors"


@dataclass
class DefendConfig:
    """Settings of :func:`defend`.

    Args:
        at: attach points (``auto:3``, or names).
        head: head preset (or one per point).
        epochs: training epochs of the heads (AdamW, one-cycle; :meth:`TrainConfig.quick`).
        lr, batch_size: the heads' optimiser settings.
        n: test images evaluated (the first ``n``).
        train_subset: train on the first N training images (None: all).
        val_fraction: share of the training images held out to validate each epoch.
        eps: L-inf budget (default: the dataset's preset, 8/255 for unknown datasets).
        dataset: preset name when ``data`` is not a dataset name (mnist, cifar10, ...).
        quick: smoke test: tiny attack budget, at most 100 test and 1000 training images.
        seed, device: as everywhere.
    """

    at: str | Sequence[str] = "auto:3"
    head: str | Sequence[str] = "default"
    epochs: int = 5
    lr: float = 3e-3
    batch_size: int = 128
    n: int = 1000
    train_subset: int | None = None
    val_fraction: float = 0.1
    eps: float | None = None
    dataset: str | None = None
    quick: bool = False
    seed: int = 0
    device: str = "auto"

    def __post_init__(self):
        if self.epochs < 1 or self.n < 1 or self.batch_size < 1:
            raise ValueError("epochs, n and batch_size must be >= 1")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must lie in (0, 1), got {self.val_fraction}")


def verdict(clean_before: float, clean_after: float, worst_before: float, worst_after: float, n: int) -> dict:
    """Whether the heads helped: the worst-case and clean differences with their intervals, in words.

    ``helped`` is ``yes`` when the whole interval of the worst-case gain lies above 0, ``worse`` when it
    lies below, else ``no measurable gain``; ``clean_kept`` is ``lost`` when the clean accuracy's interval
    lies below 0, else ``kept``.
    """
    worst = difference_interval(worst_after, worst_before, n)
    clean = difference_interval(clean_after, clean_before, n)
    if worst["low"] > 0:
        helped = "yes"
    elif worst["high"] < 0:
        helped = "worse"
    else:
        helped = "no measurable gain"
    clean_kept = "kept" if clean["low"] <= 0 <= clean["high"] or clean["difference"] >= 0 else "lost"
    return {"helped": helped, "clean_kept": clean_kept, "worst_case": worst, "clean": clean}


@dataclass
class DefenceResult:
    """What :func:`defend` measured (accuracies are fractions) and where it wrote its files."""

    model: str
    data: str
    n: int
    eps: float
    quick: bool
    attach_points: list[str]
    clean: dict  # "undefended", "vote", "score"
    worst_case: dict  # same keys
    verdict: dict
    warnings: list[str] = field(default_factory=list)
    training: dict = field(default_factory=dict)
    files: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def headline(self) -> str:
        """The answer, in one sentence."""
        v, w = self.verdict, self.verdict["worst_case"]
        before, after = self.worst_case["undefended"], self.worst_case["vote"]
        answer = {"yes": "Yes, the heads helped", "worse": "No, the heads made it worse",
                  "no measurable gain": "No measurable gain from the heads"}[v["helped"]]
        clean = (f"clean accuracy {'kept' if v['clean_kept'] == 'kept' else 'lost'} "
                 f"({100 * self.clean['undefended']:.1f}% -> {100 * self.clean['vote']:.1f}%)")
        return (f"{answer}: worst-case accuracy of the defended vote {100 * after:.1f}% vs {100 * before:.1f}% "
                f"undefended ({100 * w['difference']:+.1f} pp, 95% interval {100 * w['low']:+.1f} to "
                f"{100 * w['high']:+.1f} pp) at L-inf eps {fmt_eps(self.eps)} on {self.n} test images; {clean}.")

    def markdown(self) -> str:
        """The report ``defence.md``."""
        lines = [f"# Defence report: {self.model} on {self.data}", ""]
        if self.quick:
            lines += ["> **Quick run**: a smoke-test attack budget and few images. These numbers prove nothing about "
                      "robustness; rerun without `--quick` for the real answer.", ""]
        lines += [f"**{self.headline()}**", ""]
        n = self.n
        rows = []
        for key, label in (("undefended", "undefended model (its own output)"), ("vote", "defended, vote rule"),
                           ("score", "defended, score rule")):
            clean, worst = self.clean[key], self.worst_case[key]
            rows.append([label, percent_with_interval(clean, n), percent_with_interval(worst, n)])
        lines += [f"Accuracy in % on {n} test images (with its 95% Wilson interval); worst case = "
                  f"per image over every attack of the strong suite within L-inf eps {fmt_eps(self.eps)} "
                  "(APGD on the rule's own objective and on the ensemble, targeted APGD, Square, run as a "
                  "cascade): an image counts as robust only if no attack fooled it.", ""]
        lines += markdown_table(["model", "clean", "worst case"], rows)
        w, c = self.verdict["worst_case"], self.verdict["clean"]
        lines += ["", "## Did the heads help?", "",
                  f"- Worst case, defended vote minus undefended: {100 * w['difference']:+.1f} pp "
                  f"(95% interval {100 * w['low']:+.1f} to {100 * w['high']:+.1f} pp): **{self.verdict['helped']}**.",
                  f"- Clean accuracy, defended vote minus undefended: {100 * c['difference']:+.1f} pp "
                  f"(95% interval {100 * c['low']:+.1f} to {100 * c['high']:+.1f} pp): "
                  f"**{self.verdict['clean_kept']}**.",
                  "- The interval treats the two accuracies as independent; they are measured on the same images, "
                  "so it is conservative. An interval that contains 0 means this evaluation cannot tell.",
                  "- The backbone was frozen while the heads trained: the defended model's own head (rule `public`) "
                  "is the undefended model, bit for bit.", ""]
        if self.warnings:
            lines += ["## Warnings from the sanity checks", "",
                      "Read these before trusting any number above:", ""]
            lines += [f"- {message}" for message in self.warnings] + [""]
        lines += ["## Setup", "", f"- Attach points: {', '.join(self.attach_points)}",
                  f"- Heads trained: {self.training.get('epochs')} epoch(s) on {self.training.get('train_images')} "
                  f"images (backbone frozen), validated on {self.training.get('val_images')} held-out training images",
                  "- Files: " + ", ".join(f"{k}: `{v}`" for k, v in self.files.items()), ""]
        return "\n".join(lines)


def _split(train_set: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """A seeded split of the training images into (train, validation)."""
    order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(seed)).tolist()
    held = max(1, int(round(len(train_set) * fraction)))
    return Subset(train_set, sorted(order[held:])), Subset(train_set, sorted(order[:held]))


@torch.no_grad()
def _output_classes(model: nn.Module, x: torch.Tensor) -> int | None:
    was = model.training
    model.eval()
    try:
        out = model(x.unsqueeze(0).to(next(model.parameters()).device))
    finally:
        model.train(was)
    return out.shape[-1] if torch.is_tensor(out) and out.dim() == 2 else None


def defend(
    backbone: nn.Module,
    data: str | tuple[Dataset, Dataset],
    out_dir: str | Path | None = None,
    config: DefendConfig | None = None,
    data_root: str | Path | None = None,
    image_size: int | None = None,
    name: str | None = None,
) -> DefenceResult:
    """Attach Aux Blocks to a trained ``backbone``, train only the heads, and report whether they helped.

    Args:
        backbone: the trained classifier, taking [0, 1] pixels (e.g. ``build_backbone(name, weights=PATH)``).
            It is not modified: the heads are attached to a copy.
        data: a dataset name or ImageFolder path (its train and test splits), or ``(train, test)`` datasets.
        out_dir: where ``defence.md``, ``defence.json``, the defended checkpoint and the two full
            evaluation reports go (None: write nothing).
        config: see :class:`DefendConfig`.
        data_root, image_size: as :func:`auxsurgery.load_dataset`.
        name: the model's name in the report (default: the backbone's spec name).
    """
    config = config or DefendConfig()
    out = Path(out_dir) if out_dir is not None else None
    quick = config.quick
    n = min(config.n, 100) if quick else config.n
    train_subset = config.train_subset if not quick else min(config.train_subset or 1000, 1000)
    if isinstance(data, str):
        train_set = load_dataset(data, root=data_root, train=True, image_size=image_size, subset=None)
        test_set = load_dataset(data, root=data_root, train=False, image_size=image_size)
        data_name = data
    else:
        train_set, test_set = data
        data_name = "custom data"
    if train_subset is not None and train_subset < len(train_set):
        train_set = Subset(train_set, range(train_subset))
    classes = dataset_classes(train_set)
    sample = train_set[0][0]
    num_classes = len(classes) if classes is not None else None
    name = name or getattr(backbone, "spec", {}).get("name") or type(backbone).__name__
    outputs = _output_classes(backbone, sample)
    if num_classes is not None and outputs is not None and outputs != num_classes:
        raise ValueError(f"{name} outputs {outputs} classes but {data_name} has {num_classes}: load weights trained on "
                         "this data (or build the model with that num_classes)")
    train_part, val_part = _split(train_set, config.val_fraction, config.seed)

    console.rule(f"1/3 attach Aux Blocks to {name} and train them (backbone frozen)")
    torch.manual_seed(config.seed)  # the heads' initial weights
    aux = attach_aux_blocks(copy.deepcopy(backbone), at=config.at, num_classes=outputs,
                            input_size=tuple(sample.shape), head=config.head)
    train_config = TrainConfig.quick(config.epochs, lr=config.lr, mode="heads", seed=config.seed,
                                     batch_size=min(config.batch_size, len(train_part)), device=config.device,
                                     out_dir=str(out / "train") if out else None, select_best="vote")
    trained = finetune(aux, train_part, val_part, train_config)
    aux.eval()
    files = {}
    if out:
        files["defended model"] = str(save(aux, out / MODEL_FILE))

    budget = Budget.quick() if quick else None
    preset = config.dataset or (data_name if isinstance(data, str) else None)
    settings = dict(n=n, seed=config.seed, budget=budget, dataset=preset, eps=config.eps)
    device = next(aux.parameters()).device
    console.rule("2/3 attack the undefended model (strong suite)")
    # The user's module stays where it is: a copy moves to the device the heads trained on.
    param = next(backbone.parameters())
    reference = backbone if param.device == device else copy.deepcopy(backbone).to(device)
    undefended = run_suite(reference, test_set, suite="strong", rules=("vote",), **settings)
    console.rule("3/3 attack the defended model (strong suite, vote and score rules)")
    defended = run_suite(aux, test_set, suite="strong", rules=("vote", "score"), **settings)
    if out:
        files["undefended report"] = str(out / "undefended" / "report.md")
        files["defended report"] = str(out / "defended" / "report.md")
        write_report(undefended, out / "undefended")
        write_report(defended, out / "defended")

    worst_u, worst_d = undefended.worst_case().outcome, defended.worst_case().outcome
    clean = {"undefended": undefended.clean.accuracy("vote"), "vote": defended.clean.accuracy("vote"),
             "score": defended.clean.accuracy("score")}
    worst = {"undefended": worst_u.accuracy("vote"), "vote": worst_d.accuracy("vote"),
             "score": worst_d.accuracy("score")}
    warnings = ([f"undefended: {f.message}" for f in undefended.warnings]
                + [f"defended: {f.message}" for f in defended.warnings])
    result = DefenceResult(
        model=name, data=data_name, n=defended.n, eps=defended.preset.eps, quick=quick,
        attach_points=list(aux.attach_points), clean=clean, worst_case=worst,
        verdict=verdict(clean["undefended"], clean["vote"], worst["undefended"], worst["vote"], defended.n),
        warnings=warnings,
        training={"epochs": config.epochs, "train_images": len(train_part), "val_images": len(val_part),
                  "best_epoch": trained.best_epoch, "final": trained.history[-1] if trained.history else None},
        files=files,
    )
    if out:
        result.files.update({"report": str(out / REPORT_MD), "json": str(out / REPORT_JSON)})
        document = {**release(), **result.to_dict(), "headline": result.headline(),
                    "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()}}
        atomic_write(out / REPORT_JSON, lambda tmp: Path(tmp).write_text(json.dumps(document, indent=1, default=str)))
        atomic_write(out / REPORT_MD, lambda tmp: Path(tmp).write_text(result.markdown()))
    return result
