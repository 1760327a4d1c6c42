"""The ``auxsurgery`` command line: a thin Typer layer over the Python API.

One error convention for every command:

- a user error (a ValueError, such as CheckpointError or RecipeError; a path that does not
  exist or already holds a run; a bad option) prints one red ``error: ...`` line on stderr
  and exits 2;
- an OSError from the environment (permissions, a full disk) prints one line and exits 1;
- Ctrl-C prints one line and exits 130;
- anything else is a bug and keeps its traceback.

``auxsurgery --debug COMMAND`` (or AUXSURGERY_DEBUG=1) adds the traceback to the one-line errors.
"""
from __future__ import annotations

import re
import traceback
from contextlib import contextmanager
from typing import Iterator

import typer
from typer.core import TyperGroup

from .._utils import RENAMED_UNTIL
from ..version import __version__
from . import attach as attach_commands
from . import attack as attack_commands
from . import defend as defend_commands
from . import demo as demo_commands
from . import export as export_commands
from . import place as place_commands
from . import run as run_commands
from . import train as train_commands

# The OSErrors that mean a path the user named is wrong, not that the machine failed.
_PATH_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError)
# click's UsageError (unknown option or command, missing argument, bad value). Reached through typer's
# public BadParameter: typer >= 0.29 ships its own copy of click, older versions use click itself.
_UsageError = typer.BadParameter.__base__


def _fail(ctx: typer.Context, err: BaseException, message: str, status: int) -> None:
    if ctx.params.get("debug"):
        traceback.print_exception(err)
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(status) from None


@contextmanager
def _one_line_errors(ctx: typer.Context) -> Iterator[None]:
    try:
        yield
    except _UsageError as err:
        hint = f" (see '{err.ctx.command_path} --help')" if err.ctx else ""
        _fail(ctx, err, err.format_message() + hint, 2)
    except (ValueError, *_PATH_ERRORS) as err:
        _fail(ctx, err, _os_message(err) if isinstance(err, OSError) else _as_typed(str(err), _invoked(ctx)), 2)
    except BrokenPipeError:
        raise  # stdout closed by its reader (`| head`): click ends quietly
    except OSError as err:
        _fail(ctx, err, _os_message(err), 1)
    except KeyboardInterrupt as stop:
        # Typer would exit 130 silently; a stopped training run's message says how to resume it.
        typer.secho(str(stop) or "interrupted", fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(130) from None


def _invoked(ctx: typer.Context):
    """The command being run under the app's context ``ctx``, or None before one is resolved."""
    name = ctx.invoked_subcommand
    return ctx.command.get_command(ctx, name) if name else None


def _as_typed(message: str, command) -> str:
    """``message`` with the Python argument names of ``command``'s options spelled as the user types them:
    ``n and batch_size must be >= 1`` -> ``--points and --batch-size must be >= 1``.

    The API's messages name its arguments; the CLI's name options. Only names in argument position change
    (subjects of a constraint: before ``must`` or a comparison), so prose such as "the model at layer1" stays.
    """
    options = {p.name: max(p.opts, key=len) for p in getattr(command, "params", ()) if p.param_type_name == "option"}
    if not options:
        return message
    names = "|".join(sorted(map(re.escape, options), key=len, reverse=True))
    subject = re.compile(rf"(?<![\w-])({names})(?=(?:(?:, | and )\w+)*(?: must\b| [<>]=? ))")
    return subject.sub(lambda match: options[match[1]], message)


def _os_message(err: OSError) -> str:
    """``No such file or directory: 'x.pt'`` rather than ``[Errno 2] No such file or directory: 'x.pt'``."""
    if not err.strerror:
        return str(err)
    return err.strerror if err.filename is None else f"{err.strerror}: {str(err.filename)!r}"


# Options renamed so that one concept has one name in every command: the old name still works until
# RENAMED_UNTIL, with a warning. command -> {old option: new option}.
RENAMED_OPTIONS = {
    "attack": {"--preset": "--threat-preset", "--attack-dtype": "--precision"},
    "defend": {"--preset": "--threat-preset"},
    "train": {"--subset": "--train-subset"},
    "place": {"--train-size": "--train-subset"},
    "run": {"--check": "--validate"},
}


def renamed_options(command: str, args: list[str]) -> list[str]:
    """``args`` with the old names of renamed options replaced by the new ones, warning once per name."""
    renames, new_args = RENAMED_OPTIONS.get(command, {}), []
    for arg in args:
        if arg == "--":  # what follows is not an option
            return new_args + args[len(new_args):]
        name, sep, value = arg.partition("=")
        if name in renames:
            typer.secho(f"warning: `auxsurgery {command} {name}` is deprecated and will be removed in "
                        f"{RENAMED_UNTIL}; use {renames[name]}", fg=typer.colors.YELLOW, err=True)
            arg = renames[name] + sep + value
        new_args.append(arg)
    return new_args


class _Commands(TyperGroup):
    """The app's commands, parsed and run under :func:`_one_line_errors` (the options before the
    command name are parsed before: their errors keep click's usage message)."""

    def resolve_command(self, ctx: typer.Context, args: list[str]):
        name, command, rest = super().resolve_command(ctx, args)
        return name, command, renamed_options(name, rest)

    def invoke(self, ctx: typer.Context):
        with _one_line_errors(ctx):
            return super().invoke(ctx)


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
    "  auxsurgery place small_cnn --candidates stage1,stage2,stage3 --data synthetic\n"
    "  auxsurgery run recipes/mnist-lenet5-cpu.toml --data-root ../shared/data\n"
    "  auxsurgery defend resnet18 --weights my_resnet.pth --data cifar10 --out defence\n"
    "  auxsurgery export defence/heads/model.safetensors --format both --check cifar10\n\n"
    "Every command takes --json (machine-readable output on stdout) and shows its options with --help. "
    "A user error prints one line and exits 2; --debug adds its traceback.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"auxsurgery {__version__}")
        raise typer.Exit()


@app.callback()
def _global_options(
    debug: bool = typer.Option(False, "--debug", envvar="AUXSURGERY_DEBUG",
                               help="Show the traceback of one-line errors too (before the command name)."),
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print the auxsurgery version and exit."),
):
    # debug is read through the click context by _one_line_errors; --version has acted in its callback.
    del debug, version


app.command()(demo_commands.demo)
app.command()(attach_commands.models)
app.command()(attach_commands.layers)
app.command()(attach_commands.attach)
app.command()(train_commands.train)
app.command()(attack_commands.attack)
app.command()(place_commands.place)
app.command()(run_commands.run)
app.command()(defend_commands.defend)
app.command()(export_commands.export)

# The click command Typer builds from the app, for tools that read click commands (the docs' CLI reference).
click_command = typer.main.get_command(app)


def main() -> None:
    """Console-script entry point (``auxsurgery``, ``python -m auxsurgery``)."""
    app()
