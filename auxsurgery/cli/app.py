"""The ``auxsurgery`` command line: a thin Typer layer over the Python API."""
from __future__ import annotations

import sys

import typer
from typer.core import TyperGroup

from . import attach as attach_commands
from . import attack as attack_commands
from . import demo as demo_commands
from . import place as place_commands
from . import run as run_commands
from . import train as train_commands


class _Commands(TyperGroup):
    """The app's commands; Ctrl-C in any of them ends with one line on stderr and exit status 130."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as stop:
            # Typer would exit 130 silently; a stopped training run's message says how to resume it.
            typer.secho(str(stop) or "interrupted", fg=typer.colors.YELLOW, err=True)
            raise typer.Exit(130) from None


app = typer.Typer(
    cls=_Commands,
    help="Attach Aux Block heads to timm/torchvision classifiers and measure their robustness honestly.\n\n"
    "Examples:\n\n"
    "  auxsurgery demo --out demo-out\n"
    "  auxsurgery models convnext\n"
    "  auxsurgery layers resnet18 --input-size 3x32x32\n"
    "  auxsurgery attach small_cnn --at stage1,stage2 --out model.safetensors\n"
    "  auxsurgery train small_cnn --data synthetic --epochs 10 --out runs/demo\n"
    "  auxsurgery attack runs/demo/best.safetensors --data synthetic --out report\n"
    "  auxsurgery place small_cnn --candidates stage1,stage2,stage3\n"
    "  auxsurgery run recipes/mnist-lenet5-cpu.toml --data-root ../shared/data\n\n"
    "Every command takes --json (machine-readable output on stdout) and shows its options with --help.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command()(demo_commands.demo)
app.command()(attach_commands.models)
app.command()(attach_commands.layers)
app.command()(attach_commands.attach)
app.command()(train_commands.train)
app.command()(attack_commands.attack)
app.command()(place_commands.place)
app.command()(run_commands.run)


def main() -> None:
    """Console-script entry point: a user error prints one clear line and exits with status 2.

    Other exceptions keep their traceback (and a non-zero status): they are bugs to report.
    """
    try:
        app()
    except (ValueError, TypeError, FileNotFoundError, KeyError) as err:
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        sys.exit(2)
