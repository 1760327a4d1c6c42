"""The ``auxsurgery`` command line: a thin Typer layer over the Python API."""
from __future__ import annotations

import sys

import typer

from .commands import attach as attach_commands
from .commands import attack as attack_commands
from .commands import demo as demo_commands
from .commands import place as place_commands
from .commands import train as train_commands

app = typer.Typer(
    help="Attach Aux Block heads to timm/torchvision classifiers and measure their robustness honestly.\n\n"
    "Examples:\n\n"
    "  auxsurgery demo\n\n"
    "  auxsurgery layers resnet18 --input-size 3x32x32\n\n"
    "  auxsurgery place small_cnn --candidates stage1,stage2,stage3 --data synthetic\n\n"
    "  auxsurgery attach resnet18 --at layer1,layer2 --input-size 3x32x32 --out model.safetensors",
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


def main() -> None:
    """Console-script entry point: a user error prints one clear line and exits with status 2."""
    try:
        app()
    except (ValueError, TypeError, FileNotFoundError, KeyError) as err:
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        sys.exit(2)
