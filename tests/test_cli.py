"""The CLI: layers, attach (table, JSON, saving), the shared options, help examples, errors and exit codes."""
import errno
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from auxsurgery import attach_aux_blocks, load, save
from auxsurgery.cli import app
from auxsurgery.train import TrainingInterrupted

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]
COMMANDS = typer.main.get_command(app).commands


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    monkeypatch.delenv("AUXSURGERY_DEBUG", raising=False)


def test_layers_table_lists_points_with_shapes():
    result = runner.invoke(app, ["layers", "resnet18", "--input-size", "3x32x32", "--depth", "1"])
    assert result.exit_code == 0, result.output
    assert "layer1" in result.output and "64x8x8" in result.output and "classifier" in result.output


def test_attach_prints_cost_and_saves(tmp_path):
    out = tmp_path / "m.safetensors"
    result = runner.invoke(app, ["attach", "resnet18", "--at", "layer1,layer2", "--input-size", "3x32x32",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "FLOPs" in result.output and "layer2" in result.output and "Conv3x3(64->64)" in result.output
    assert load(out).attach_points == ["layer1", "layer2"]


def test_attach_json_is_machine_readable():
    result = runner.invoke(app, ["attach", "lenet5", "--at", "pool1,pool2", "--head", "paper-mnist", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert [c["name"] for c in data["costs"]] == ["public", "pool1", "pool2"]
    assert data["spec"]["heads"] == ["paper-mnist", "paper-mnist"]


def test_user_errors_exit_2_with_one_clear_line():
    proc = subprocess.run([sys.executable, "-m", "auxsurgery", "attach", "resnet18", "--at", "layr1",
                           "--input-size", "3x32x32"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("error: unknown layer 'layr1'") and "layer1" in line


def test_help_shows_examples():
    result = runner.invoke(app, ["attach", "--help"])
    assert result.exit_code == 0 and "Example: auxsurgery attach resnet18" in result.output


def _option(command: str, flag: str):
    """The click parameter behind ``flag`` of ``command``, or None."""
    return next((p for p in COMMANDS[command].params if flag in p.opts), None)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_help_ends_with_an_example(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0 and "Example: auxsurgery " + command in result.output
    assert COMMANDS[command].help.strip().splitlines()[-1].startswith("Example: ")


def test_top_level_help_has_an_example_per_command():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert all(f"auxsurgery {name} " in result.output for name in COMMANDS)


# Which commands take each shared option: new commands get all of them unless listed here.
@pytest.mark.parametrize("flag, without", [
    ("--json", set()),
    ("--seed", {"models", "layers", "run", "export"}),  # run's seed is the recipe file's; export draws nothing
    ("--device", {"models", "layers", "attach", "export"}),  # export traces and checks parity on the CPU
    ("--data-root", {"models", "layers", "attach", "demo"}),
])
def test_shared_options_are_taken_by_every_command(flag, without):
    found = {name: _option(name, flag) for name in COMMANDS if name not in without}
    assert all(found.values()), [name for name, param in found.items() if param is None]


@pytest.mark.parametrize("command, args", [
    ("attack", ["CKPT", "--data", "cifar10"]), ("export", ["CKPT", "--check", "cifar10"]),
    ("train", ["small_cnn", "--data", "cifar10"]), ("defend", ["small_cnn", "--data", "cifar10"]),
    ("run", [str(REPO / "recipes" / "cifar10-resnet9-cpu.toml")]),
])
def test_a_missing_data_root_names_only_options_the_command_has(tmp_path, command, args):
    """Only train can --download; a recipe asks for it under [data]; attack, export and defend read files only."""
    checkpoint = save(attach_aux_blocks("small_cnn", at="auto:1", num_classes=10), tmp_path / "model.safetensors")
    args = [str(checkpoint) if arg == "CKPT" else arg for arg in args]
    result = runner.invoke(app, [command, *args, "--data-root", str(tmp_path / "nothing"), "--out",
                                 str(tmp_path / "out")])
    message = result.output.strip()
    assert result.exit_code == 2 and message.startswith("error: cifar10: no data at") and "\n" not in message
    assert "--data-root or AUXSURGERY_DATA" in message
    assert all(_option(command, flag) for flag in re.findall(r"--[a-z][a-z-]*", message)), message
    assert ("--download" in message) == (command == "train")
    assert ("download = true under [data]" in message) == (command == "run")


# Options whose meaning differs by command, with the reason; every other option is declared once, the same way.
OWN_MEANING = {
    "--out": "attach writes one checkpoint file (--out FILE); every other command writes into a folder",
    "--batch-size": "train's is the global batch of SGD; attack's the points one attack batch holds",
    "--epochs": "train trains the model, place each placement's heads, defend the heads",
    "--mode": "place offers two of train's modes",
    "--quick": "each command's smoke test shrinks its own work",
}
# Options declared the same way whose default is the command's own.
OWN_DEFAULT = {"--out", "--points", "--num-classes", "--data"}


def test_every_command_declares_the_shared_options_identically():
    """One concept, one declaration (the aliases in cli/options.py and cli/backbone_options.py): an option that
    several commands take has the same names, help, type and default everywhere."""
    by_flag: dict[str, dict] = {}
    for name, command in COMMANDS.items():
        for param in command.params:
            if param.param_type_name == "option":
                by_flag.setdefault(param.opts[0], {})[name] = param
    shared = {flag: params for flag, params in by_flag.items() if len(params) > 1}
    assert {"--weights", "--model-kwargs", "--train-subset", "--eps", "--threat-preset", "--points"} <= set(shared)
    for flag, params in shared.items():
        if flag in OWN_MEANING:
            continue
        declarations = {(tuple(p.opts), tuple(p.secondary_opts), p.help, p.type_descriptor.annotation, p.is_flag,
                         p.metavar, None if flag in OWN_DEFAULT else repr(p.default)) for p in params.values()}
        assert len(declarations) == 1, (flag, sorted(params))


@pytest.mark.parametrize("command, old, new, value", [
    ("train", "--subset", "--train-subset", "64"), ("place", "--train-size", "--train-subset", "64"),
    ("attack", "--preset", "--threat-preset", "mnist"), ("attack", "--attack-dtype", "--precision", "bf16"),
    ("run", "--check", "--validate", None),
])
def test_a_renamed_option_still_works_with_a_warning(command, old, new, value):
    from auxsurgery.cli.app import renamed_options

    args = ["x", old, *([value] if value else []), "--json"]
    result = runner.invoke(app, [command, "--help"])  # the new name is listed
    assert result.exit_code == 0 and new in result.output
    assert renamed_options(command, args) == ["x", new, *([value] if value else []), "--json"]
    assert renamed_options(command, [f"{old}={value}"]) == [f"{new}={value}"]


def test_run_validate_replaces_check_and_the_old_name_warns(tmp_path):
    recipe = REPO / "recipes" / "mnist-lenet5-cpu.toml"
    done = subprocess.run([sys.executable, "-m", "auxsurgery", "run", str(recipe), "--check"], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert "warning: `auxsurgery run --check` is deprecated" in done.stderr and "use --validate" in done.stderr
    assert done.stderr.strip().endswith("ok (mnist-lenet5-cpu)")


def test_device_defaults_to_auto():
    assert _option("attack", "--device").default == "auto"


@pytest.mark.parametrize("args", [["train", "small_cnn", "--out", "unused"],
                                  ["attack", "m.safetensors", "--data", "mnist"]])
def test_unknown_device_is_a_usage_error(args):
    result = runner.invoke(app, [*args, "--device", "nonsense"])
    assert result.exit_code == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: Invalid value for '--device'") and "'nonsense' is not a device" in line
    assert line.endswith(f"{args[0]} --help')")


def _models_raises(monkeypatch, error: BaseException) -> None:
    def fail():
        raise error
    monkeypatch.setattr("auxsurgery.backbones.available_backbones", fail)  # `models` imports it when it runs


@pytest.mark.parametrize("raised, line", [(KeyboardInterrupt(), "interrupted"),
                                          (TrainingInterrupted("stopped at epoch 2"), "stopped at epoch 2")])
def test_interrupt_exits_130_with_one_line(monkeypatch, raised, line):
    _models_raises(monkeypatch, raised)
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 130 and result.output.strip().splitlines() == [line]


@pytest.mark.parametrize("error, status, line", [
    (ValueError("unknown model 'x'"), 2, "error: unknown model 'x'"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "x.pt"), 2,
     "error: No such file or directory: 'x.pt'"),
    (FileExistsError("runs/a already holds a run"), 2, "error: runs/a already holds a run"),
    (PermissionError(errno.EACCES, "Permission denied", "runs/a"), 1, "error: Permission denied: 'runs/a'"),
    (OSError(errno.ENOSPC, "No space left on device"), 1, "error: No space left on device"),
])
def test_user_errors_exit_2_and_environment_errors_exit_1_with_one_line(monkeypatch, error, status, line):
    _models_raises(monkeypatch, error)
    result = runner.invoke(app, ["models"])
    assert result.exit_code == status and result.stdout == ""
    assert result.stderr.strip().splitlines() == [line]


@pytest.mark.parametrize("bug", [KeyError("spec"), TypeError("unsupported operand"), RuntimeError("shape mismatch")])
def test_other_exceptions_are_bugs_and_keep_their_traceback(monkeypatch, bug):
    _models_raises(monkeypatch, bug)
    result = runner.invoke(app, ["models"])
    assert result.exception is bug  # not turned into a line: it reaches Python, which prints the traceback
    assert "error:" not in result.output


@pytest.mark.parametrize("args, env", [(["--debug", "models"], {}), (["models"], {"AUXSURGERY_DEBUG": "1"})])
def test_debug_adds_the_traceback_to_one_line_errors(monkeypatch, args, env):
    _models_raises(monkeypatch, ValueError("unknown model 'x'"))
    result = runner.invoke(app, args, env=env)
    assert result.exit_code == 2
    assert result.stderr.startswith("Traceback (most recent call last)")
    assert "ValueError: unknown model 'x'" in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "error: unknown model 'x'"


def test_no_option_of_any_command_can_be_claimed_by_torchrun():
    """torchrun parses the whole command line: an option of ours that is an ambiguous prefix of one of its
    options (``--n`` of ``--nnodes``, ``--nproc-per-node``, ...) ends the run before auxsurgery starts."""
    from torch.distributed.run import get_args_parser

    torchrun = get_args_parser()
    for name, command in COMMANDS.items():
        for param in command.params:
            for flag in param.opts + param.secondary_opts:
                args = ["--standalone", "--nproc_per_node", "2", "-m", "auxsurgery", name, flag, "1"]
                try:
                    parsed = torchrun.parse_args(args)
                except SystemExit:
                    pytest.fail(f"torchrun refuses `auxsurgery {name} {flag}`")
                assert parsed.training_script_args == [name, flag, "1"], (name, flag)


@pytest.mark.parametrize("command", [["train", "small_cnn"], ["place", "small_cnn", "--candidates", "stage1"],
                                     ["attack", "model.safetensors"]])
def test_a_command_without_data_names_the_choices_instead_of_guessing(command, tmp_path):
    """`train` used to train on the synthetic shapes without a word when --data was left out."""
    result = runner.invoke(app, [*command, "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    [line] = result.stderr.strip().splitlines()
    assert line == ("error: name the data with --data: mnist, fashion-mnist, cifar10, cifar100, svhn, synthetic, or "
                    "an ImageFolder path")
    assert not (tmp_path / "out").exists()


# Help texts name their choices without importing the registries (which load torch; see test_layers):
# each list must still name every registered choice.
def _registered(option: str) -> list[str]:
    from auxsurgery.evaluation import PRESETS, list_suites
    from auxsurgery.rules import list_rules
    from auxsurgery.studies.defend import list_defences
    from auxsurgery.train import list_training_methods
    from auxsurgery.train.config import CRAFTING_OBJECTIVES

    return {"--suite": list_suites(), "--method": list_defences(), "--adversarial-method": list_training_methods(),
            "--objective": CRAFTING_OBJECTIVES, "--rule": [*list_rules(), "all"], "--rules": list_rules(),
            "--threat-preset": PRESETS}[option]


@pytest.mark.parametrize("command, flag", [("attack", "--suite"), ("defend", "--method"),
                                           ("defend", "--adversarial-method"), ("defend", "--objective"),
                                           ("export", "--rule"), ("attack", "--rules"), ("attack", "--threat-preset")])
def test_help_names_every_registered_choice(command, flag):
    named = set(re.findall(r"[\w-]+", _option(command, flag).help))
    assert [name for name in _registered(flag) if name not in named] == []


def test_help_states_the_defaults_it_does_not_import():
    from auxsurgery.evaluation.runner import DEFAULT_EOT, DEFAULT_JUDGE_DRAWS

    assert f"default {DEFAULT_EOT} " in _option("attack", "--eot").help
    assert f"default {DEFAULT_JUDGE_DRAWS} " in _option("attack", "--judge-draws").help


@pytest.mark.parametrize("args, line", [
    (["attack", "CKPT", "--data", "synthetic", "--points", "0"],
     "error: --points and --batch-size must be >= 1, got 0 and 128"),
    (["attack", "CKPT", "--data", "synthetic", "-n", "4", "--steps", "3"],
     "error: --steps and --step-size must be unset with the strong suite alone"),
])
def test_messages_name_options_as_typed_not_python_arguments(tmp_path, args, line):
    checkpoint = tmp_path / "never-read.safetensors"
    checkpoint.write_bytes(b"")
    result = runner.invoke(app, [str(checkpoint) if arg == "CKPT" else arg for arg in args])
    assert result.exit_code == 2 and result.stderr.startswith(line), result.output


def test_only_arguments_in_argument_position_become_options():
    from auxsurgery.cli.app import _as_typed

    train = COMMANDS["train"]
    assert _as_typed("epochs, batch_size and log_every must be >= 1 and save_every >= 0", train) == \
        "--epochs, --batch-size and log_every must be >= 1 and --save-every >= 0"
    assert _as_typed("needs 0 < eps <= 1", COMMANDS["defend"]) == "needs 0 < --eps <= 1"
    prose = "the data at layer1 has no head layout, and the seed of epoch 2 is derived"
    assert _as_typed(prose, train) == prose


def _stops(where: str):
    def stop(*args, **kwargs):
        raise TrainingInterrupted(where, "runs/x") if where else KeyboardInterrupt
    return stop


@pytest.mark.parametrize("command, stopped, args, line", [
    ("attack", "auxsurgery.evaluation.checkpoint_eval.evaluate_checkpoint", ["CKPT", "--data", "synthetic", "--out", "R"],
     "interrupted; rerun the same command to resume (the progress is in R/state)"),
    ("attack", "auxsurgery.evaluation.checkpoint_eval.evaluate_checkpoint", ["CKPT", "--data", "synthetic"],
     "interrupted; nothing was kept: with --out FOLDER an interrupted attack resumes where it stopped"),
    ("train", "auxsurgery.train.finetune", ["small_cnn", "--data", "synthetic", "--train-subset", "8", "--out", "R"],
     "stopped at epoch 2, step 3; rerun the same command with --resume to continue"),
    ("run", "auxsurgery.studies.experiment.run_recipe", ["recipes/demo.toml", "--out", "R"],
     "stopped at epoch 2, step 3; rerun the same command to resume"),
])
def test_an_interrupted_command_says_how_to_resume(monkeypatch, tmp_path, command, stopped, args, line):
    monkeypatch.setattr(stopped, _stops("" if command == "attack" else "stopped at epoch 2, step 3"))
    (tmp_path / "CKPT").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "demo.toml").write_text((REPO / "recipes" / "demo.toml").read_text())
    result = runner.invoke(app, [command, *args])
    assert result.exit_code == 130 and result.output.strip().splitlines() == [line]


def test_run_prints_the_comparison_table_of_each_reading(monkeypatch):
    report = json.loads((REPO / "benchmarks/results/cifar10-resnet9-adversarial-cpu/report.json").read_text())
    monkeypatch.setattr("auxsurgery.studies.experiment.run_recipe", lambda *args, **kwargs: report)
    result = runner.invoke(app, ["run", str(REPO / "recipes/cifar10-resnet9-adversarial-cpu.toml")])
    assert result.exit_code == 0, result.output
    for reading in report["readings"]:  # a log file (not a terminal) gets each table as Markdown
        assert f"eps reading '{reading['name']}'" in result.stdout
    assert "| model | clean | PGD |" in result.stdout and "| NA (undefended) | 88.5" in result.stdout
