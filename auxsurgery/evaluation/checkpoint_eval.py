"""Evaluating a saved checkpoint end to end: what ``auxsurgery attack`` does, one import away.

Checks the cheap things first (suites, preset, rules, sizes), then the data against the
checkpoint's spec, then runs the suites on this process's device and writes the report. With an
output folder the run holds the folder's lock and keeps its progress in ``<out>/state``, so the
same call after an interruption continues where it stopped; under ``torchrun`` every process
takes its share of the batches and rank 0 alone writes.
"""
from __future__ import annotations

import os
from contextlib import nullcontext
from pathlib import Path
from typing import Sequence

from torch import nn

from .._utils import check_output_folder, renamed_kwargs, resolve_device, run_folder_lock
from ..checkpoint import load, read_spec
from ..graph.discovery import check_input_size
from ..rules import check_rule
from ..train.distributed import launched_rank
from .inputs import check_compatible, load_eval_data
from .plans import list_suites, parse_suites
from .presets import PRESETS, Budget, get_preset
from .report import write_adversarial, write_report
from .results import SuiteResult
from .runner import run_suite
from .state import STATE_FOLDER

__all__ = ["ADVERSARIAL_FILE", "evaluate_checkpoint"]

ADVERSARIAL_FILE = "adversarial.safetensors"


@renamed_kwargs(attack_dtype="precision")
def evaluate_checkpoint(checkpoint: str | os.PathLike | nn.Module, data: str,
                        suite: str = "strong", *,
                        data_root: str | os.PathLike | None = None, n: int = 1000, eps: float | None = None,
                        step_size: float | None = None, steps: int | None = None, preset: str | None = None,
                        rules: Sequence[str] = ("vote", "score"), seed: int = 0, batch_size: int = 128,
                        device: str = "auto", budget: Budget | None = None, standalone: bool = False,
                        precision: str = "fp32", out: str | os.PathLike | None = None, progress: bool = True,
                        save_adversarial: bool = False, eot: int | None = None, judge_draws: int | None = None,
                        transfer_from: str | os.PathLike | nn.Module | None = None, norm: str = "linf",
                        ) -> tuple[SuiteResult, list[Path]]:
    """Attack ``checkpoint`` on the first ``n`` test samples of ``data``; returns the result and the files written.

    ``checkpoint`` is a checkpoint file, or a model already built (a plain classifier such as
    ``build_backbone("resnet18", weights="my.pth")``, or an AuxModel). ``data`` is a dataset name, an
    ImageFolder path or a ``.pt`` file (see :func:`load_eval_data`); the other arguments are
    :func:`run_suite`'s; ``transfer_from`` may also be a checkpoint file (loaded onto the same device). Files
    (results.json, report.md, plots; with ``save_adversarial``, the adversarial examples and per-point outcomes in
    ``adversarial.safetensors``) go to ``out`` on rank 0 only.
    """
    suites = parse_suites(suite)
    if not suites:
        raise ValueError(f"no suite named; valid suites: {', '.join(list_suites())}")
    if standalone and "strong" not in suites:
        raise ValueError(f"--standalone runs the strong suite's attacks alone on every point, but the suites are "
                         f"{', '.join(suites)}; add strong to --suite, or drop --standalone")
    if (steps is not None or step_size is not None) and suites == ["strong"]:
        raise ValueError("steps and step_size must be unset with the strong suite alone, which sets its own (they set "
                         "the PGD of the static, adaptive, sweep, curve and heads suites): add one of those suites, or "
                         "drop them")
    if preset is not None and get_preset(preset).name == "default":
        raise ValueError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    get_preset(preset or data, eps, step_size, steps, norm)
    if n < 1 or batch_size < 1:
        raise ValueError(f"n and batch_size must be >= 1, got {n} and {batch_size}")
    if out is not None:
        check_output_folder(out)
    if save_adversarial and out is None:
        raise ValueError("saving the adversarial examples needs an output folder (--out)")
    built = isinstance(checkpoint, nn.Module)
    spec = None if built else read_spec(checkpoint)
    surrogate_file = None if transfer_from is None or isinstance(transfer_from, nn.Module) else transfer_from
    if surrogate_file is not None:
        if not Path(surrogate_file).is_file():
            raise ValueError(f"the surrogate checkpoint (--transfer-from) {surrogate_file} is not a file")
        read_spec(surrogate_file)
    rules = [check_rule(r) for r in rules]
    samples, classes, shape = load_eval_data(data, data_root, n)
    if spec is not None:
        check_compatible(spec, classes, shape, data)
    else:  # a model built here: its spec has no input size to compare
        check_input_size(checkpoint, shape, (getattr(checkpoint, "spec", None) or {}).get("name", "the model"))
    # Under torchrun each process evaluates on its own GPU.
    where = str(resolve_device(device, int(os.environ.get("LOCAL_RANK", "0"))))
    model = checkpoint.to(where) if built else load(checkpoint, map_location=where)
    if transfer_from is not None:
        transfer_from = load(surrogate_file, map_location=where) if surrogate_file else transfer_from.to(where)
    # Only rank 0 holds the folder: the other processes of the same run share it.
    with run_folder_lock(out, "auxsurgery attack") if out is not None and launched_rank() == 0 else nullcontext():
        result = run_suite(model, samples, suite=suites, eps=eps, step_size=step_size, steps=steps,
                           dataset=preset or data, seed=seed, rules=rules, batch_size=batch_size, budget=budget,
                           standalone=standalone, precision=precision, progress=progress,
                           state_dir=Path(out) / STATE_FOLDER if out is not None else None,
                           keep_adversarial=save_adversarial, eot=eot, judge_draws=judge_draws,
                           transfer_from=transfer_from, norm=norm)
        if built:  # where a plain model's weights came from (a backbone's spec: name, weights file, sha256)
            result.model_info["backbone"] = getattr(checkpoint, "spec", None)
        else:
            result.model_info["checkpoint"] = str(checkpoint)
        result.data_info["source"] = data
        if surrogate_file is not None:
            result.settings["transfer_from"]["checkpoint"] = str(surrogate_file)
        written = []
        if out is not None and launched_rank() == 0:
            written = write_report(result, out)
            if save_adversarial:
                written.append(write_adversarial(result, Path(out) / ADVERSARIAL_FILE))
    return result, written
