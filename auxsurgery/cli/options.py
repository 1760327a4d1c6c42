"""Options shared by several commands, each defined once, and the output convention they share.

Commands declare ``--device``, ``--seed``, ``--data-root``, ``--json`` and ``--out`` only
through these aliases (``device: Device = "auto"``), so an option has one name, one help
text, one validation and one behaviour in every command that takes it.

Output: a command's result (its final table, or its ``--json`` document) goes to stdout
through :data:`results` or :func:`print_json`; progress, logs and messages ("wrote ...")
go to stderr through :data:`messages`. So ``--json`` output can be piped as it is.

Declarations import no torch (nor the registries that load it): ``auxsurgery --help`` and ``--version``
build every command's options and answer without it; a command imports what it runs when it runs.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Iterator, Optional

import typer

from .._output import OutputConsole
from .._utils import resolve_device

results = OutputConsole()  # tables keep every number: full width on a terminal, Markdown in a log file
messages = OutputConsole(stderr=True)


def _check_device(value: str) -> str:
    """Reject a device torch cannot parse or this machine lacks while parsing, not after loading data."""
    import torch

    try:
        device = resolve_device(value)
    except RuntimeError:
        raise typer.BadParameter(f"{value!r} is not a device; use auto, cpu, cuda, cuda:1, ...") from None
    # Counted, not touched: initialising CUDA here would claim GPU 0 in every torchrun process.
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise typer.BadParameter(f"{value!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return value


Device = Annotated[str, typer.Option(
    help="Device: auto (CUDA when available, else CPU), cpu, cuda, cuda:1, ...", callback=_check_device)]
Resume = Annotated[bool, typer.Option(
    "--resume", help="Continue the interrupted run in --out where it stopped (exactly: the same result as one run).")]
Seed = Annotated[int, typer.Option(
    help="Seed of every random choice: initial weights, data order, augmentation, attacks.")]
DataRoot = Annotated[Optional[Path], typer.Option(
    help="Folder of the named datasets (default $AUXSURGERY_DATA, else ./data).")]
Json = Annotated[bool, typer.Option(
    "--json", help="Print machine-readable JSON on stdout; progress and messages go to stderr.")]
Out = Annotated[Optional[Path], typer.Option(help="Folder for the command's files (created if missing).")]
Rules = Annotated[str, typer.Option(
    help="Decision rules to attack and judge, comma-separated: any registered rule (vote, score, public, private, "
         "crossmax, crossmax:k=2, mean-logits, or your own: auxsurgery.register_rule).")]
Data = Annotated[Optional[str], typer.Option(
    help="The data: mnist, fashion-mnist, cifar10, cifar100, svhn, synthetic (built-in shapes, no files), or an "
         "ImageFolder path; attack also takes a .pt file of {'x': images in [0, 1], 'y': labels[, 'classes': "
         "names]}.")]
TrainSubset = Annotated[Optional[int], typer.Option(min=1, help="Train on the first N training images (default: all).")]
# An eps is read before --norm is known: the command checks it against the norm (eps_in_norm).
Eps = Annotated[Optional[float], typer.Option(
    parser=lambda text: _user_value(_parse_eps, text), metavar="EPS",
    help="Radius of the --norm ball in [0, 1] pixels: 8/255, 0.031, 0.3 (L-inf), 0.5 (L2) (default: the threat "
         "preset's).")]
TrainEps = Annotated[Optional[float], typer.Option(
    parser=lambda text: _user_value(_parse_eps, text), metavar="EPS",
    help="Radius of adversarial training in --norm: 8/255, 0.031 (L-inf), 0.5 (L2) (default: --eps).")]
Norm = Annotated[str, typer.Option(
    parser=lambda text: _user_value(_check_norm, text.strip().lower()), metavar="NORM",
    help="The threat model's norm: linf or l2. Every eps and preset is a radius in it (L2: CIFAR-10 0.5 as "
         "RobustBench, MNIST 2.0, Mini-ImageNet 3.0).")]
ThreatPreset = Annotated[Optional[str], typer.Option(
    help="The threat model of a dataset (eps and PGD step in --norm): mnist, cifar10, mini-imagenet (default: the "
         "one of --data, else cifar10's).")]
# Not --n: torchrun's parser would claim it as an ambiguous prefix of its --nnodes, --nproc-per-node, ...
Points = Annotated[Optional[int], typer.Option(
    "--points", "-n", help="Test images to use: the first N of the test data.")]


def _parse_eps(text: str) -> float:
    from ..evaluation.presets import parse_eps

    return parse_eps(text, None)


def _check_norm(text: str) -> str:
    from ..evaluation.presets import check_norm

    return check_norm(text)


def _user_value(parse, text: str):
    """``parse(text)``, its ValueError shown as click's bad-value message (one line, exit 2)."""
    try:
        return parse(text)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None


def eps_in_norm(eps: float | None, norm: str, option: str = "--eps") -> float | None:
    """``eps`` (read before ``--norm``), now checked against the norm: a bad value is a usage error of ``option``."""
    from ..evaluation.presets import parse_eps

    if eps is None:
        return None
    try:
        return parse_eps(eps, norm)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint=f"'{option}'") from None


def require_data(data: str | None) -> str:
    """``--data``, which no command guesses (training on the synthetic shapes by default hid a forgotten option)."""
    if data is None:
        from ..data import dataset_names

        raise ValueError(f"name the data with --data: {', '.join(dataset_names())}, or an ImageFolder path")
    return data


def head_choice(head: str) -> str | list[str]:
    """A ``--head`` value: one preset for every attach point, or one per point (comma-separated)."""
    return head.split(",") if "," in head else head


@contextmanager
def resume_hint(how: str) -> Iterator[None]:
    """A stop (Ctrl-C, SIGTERM) in the block ends in one line that says where it stopped and ``how`` to resume,
    e.g. ``interrupted; rerun the same command to resume`` (printed by the app, which exits 130)."""
    try:
        yield
    except KeyboardInterrupt as stop:
        where = getattr(stop, "where", None) or "interrupted"  # a TrainingInterrupted says where training stopped
        raise KeyboardInterrupt(f"{where}; {how}") from None


def print_json(document) -> None:
    """The ``--json`` output: one JSON document on stdout."""
    typer.echo(json.dumps(document, indent=1))
