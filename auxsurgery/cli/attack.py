"""``auxsurgery attack``: run the evaluation suites on a saved checkpoint, or on your own model, and report."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .backbone_options import (
    Mean,
    ModelFactory,
    ModelKwargs,
    NumClasses,
    Std,
    Weights,
    backbone_from_options,
    load_checkpoint,
)
from .options import (
    Data,
    DataRoot,
    Device,
    Eps,
    Json,
    Norm,
    Out,
    Points,
    Rules,
    Seed,
    ThreatPreset,
    eps_in_norm,
    messages,
    print_json,
    require_data,
    results,
    resume_hint,
)


def attack(
    model: Optional[str] = typer.Argument(None, help="A checkpoint (from `auxsurgery attach`, `train`, `defend` or "
                                          "auxsurgery.save), or with --weights the name of your plain model's "
                                          "network (resnet18, timm:convnext_atto, ...; omit it with --model-factory)."),
    data: Data = None,
    suite: str = typer.Option("strong", help="Suites, comma-separated: strong (the default: the strongest attacks on "
                                             "each decision rule, the number to quote), static and adaptive (the "
                                             "paper's Tables II and VII; --suite static,adaptive,strong adds their "
                                             "rows), sweep, curve, heads. The worst case counts every attack of the "
                                             "suites run."),
    weights: Weights = None,
    model_factory: ModelFactory = None,
    model_kwargs: ModelKwargs = None,
    mean: Mean = None,
    std: Std = None,
    num_classes: NumClasses = None,
    data_root: DataRoot = None,
    n: Points = 1000,
    eps: Eps = None,
    norm: Norm = "linf",
    step_size: Optional[float] = typer.Option(None, help="PGD step of the paper's suites (static, adaptive, sweep, "
                                                         "curve, heads; default: the preset's, scaled with --eps)."),
    steps: Optional[int] = typer.Option(None, help="PGD iterations of the paper's suites (default 5)."),
    threat_preset: ThreatPreset = None,
    rules: Rules = "vote,score",
    seed: Seed = 0,
    batch_size: int = typer.Option(128, help="Samples per attack batch."),
    device: Device = "auto",
    quick: bool = typer.Option(False, help="Smoke-test budget: every attack runs, none seriously."),
    standalone: bool = typer.Option(False, help="Strong suite: also run each attack alone on every point (rows "
                                                "for tables); by default only the cascade runs."),
    precision: str = typer.Option("fp32", help="Precision of the gradient attacks' steps: fp32, or bf16 "
                                                "(faster on CPUs and GPUs with bf16 units; every success is "
                                                "re-verified in fp32 before it counts)."),
    save_adversarial: bool = typer.Option(False, help="Also write OUT/adversarial.safetensors: per point its label, "
                                                      "clean and worst-case outcome per rule, the attack that "
                                                      "broke it, and that adversarial example."),
    eot: Optional[int] = typer.Option(None, help="Draws of a randomised model averaged per gradient step "
                                                 "(expectation over transformation; default 20 where two "
                                                 "forwards differ, else 1)."),
    judge_draws: Optional[int] = typer.Option(None, help="Forwards (odd) whose majority is every verdict, clean "
                                                         "included (default 9 on a randomised "
                                                         "model, else 1)."),
    transfer_from: Optional[Path] = typer.Option(None, help="A checkpoint of a surrogate (same classes and heads): "
                                                            "the gradient attacks craft on it, the attacked model "
                                                            "judges every example (for hidden, non-differentiable "
                                                            "aggregations)."),
    out: Out = None,
    as_json: Json = False,
):
    """Attack a checkpoint, or your own model, with the evaluation suites; judge by its own decision rules; report.

    MODEL is a checkpoint file, or with --weights (or --model-factory) the network your plain weights belong to:
    a one-head model, attacked through its only head. Runs the strong suite (--suite static,adaptive,strong adds
    the paper's static and adaptive rows beside it). Prints every attack's accuracy, the worst case over all
    of them, and each cascade's accuracy after each stage. With --out, writes results.json, report.md and PNG
    plots there and keeps the evaluation's progress in OUT/state: the same command after an interruption
    continues where it stopped. Under `torchrun --nproc_per_node N -m auxsurgery attack ...` the processes share
    the work.

    Example: auxsurgery attack resnet18 --weights my_resnet18.pth --data cifar10 --points 1000 --out report

    Example: auxsurgery attack model.safetensors --data mnist --suite static,adaptive,strong --points 1000 --out report

    Example: auxsurgery attack model.safetensors --data cifar10 --norm l2 --eps 0.5 --suite strong --out report-l2
    """
    from ..evaluation import Budget, load_eval_data, print_table, results_document
    from ..evaluation.checkpoint_eval import evaluate_checkpoint
    from ..evaluation.state import STATE_FOLDER

    data, eps = require_data(data), eps_in_norm(eps, norm)
    checkpoint = model is not None and Path(model).is_file() and not weights
    if checkpoint and (mean or std or num_classes or model_kwargs):
        raise ValueError(f"{model} is a checkpoint, which carries its own normalisation and classes: --mean, --std, "
                         "--num-classes and --model-kwargs describe a network built from --weights")
    if checkpoint:  # a checkpoint made from a model factory is rebuilt with it
        target = load_checkpoint(model, model_factory) if model_factory else model
    elif weights or model_factory:  # your plain model: one head, attacked through it
        if num_classes is None:
            _, classes, _ = load_eval_data(data, data_root, 1)
            if classes is None:
                raise ValueError(f"{data} names no classes: pass --num-classes")
            num_classes = len(classes)
        target = backbone_from_options(model, num_classes=num_classes, weights=weights, model_factory=model_factory,
                                       mean=mean, std=std, model_kwargs=model_kwargs).eval()
    elif model is None:
        raise ValueError("name a checkpoint, or your network with --weights FILE (or --model-factory)")
    else:
        raise ValueError(f"checkpoint not found: {model} (to attack the network {model!r} with your weights, pass "
                         "--weights FILE)")
    with resume_hint(f"rerun the same command to resume (the progress is in {out / STATE_FOLDER})" if out is not None else
                     "nothing was kept: with --out FOLDER an interrupted attack resumes where it stopped"):
        result, written = evaluate_checkpoint(
            target, data, suite, data_root=data_root, n=n, eps=eps, step_size=step_size, steps=steps,
            preset=threat_preset, rules=[r.strip() for r in rules.split(",") if r.strip()], seed=seed,
            batch_size=batch_size, device=device, budget=Budget.quick() if quick else None, standalone=standalone,
            precision=precision, out=out, save_adversarial=save_adversarial, eot=eot, judge_draws=judge_draws,
            transfer_from=transfer_from, norm=norm)
    if not written and out is not None:
        return  # a torchrun process other than rank 0: rank 0 prints and writes
    if as_json:
        print_json(results_document(result))
    else:
        print_table(result, results)
    for path in written:
        messages.print(f"wrote {path}")
