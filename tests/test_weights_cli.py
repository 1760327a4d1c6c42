"""Your weights on every command that builds a backbone: ``attach``, ``train``, ``place`` (``--weights``,
``--model-factory``, ``--mean``, ``--std``) and a recipe's ``[backbone] weights``; the training engine's own
``last.safetensors`` of a plain backbone as a weights file; one-line errors."""
import json

import pytest
import torch
import typer
from train_helpers import briefly_trained
from typer.testing import CliRunner

import auxsurgery.studies.placement as placement
from auxsurgery import build_backbone, load, load_dataset
from auxsurgery.backbones import WeightsError
from auxsurgery.cli import app
from auxsurgery.model import AuxModel
from auxsurgery.studies import experiment
from auxsurgery.studies.recipe import RecipeError, load_recipe
from auxsurgery.train.run_files import LAST_FILE, RunFiles

pytestmark = pytest.mark.usefixtures("single_thread")
runner = CliRunner()
COMMANDS = typer.main.get_command(app).commands
X = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _logits(model, x=X):
    with torch.no_grad():
        out = model.eval()(x)
    return out[0] if isinstance(model, AuxModel) else out  # an AuxModel's own head comes first


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small_cnn after a few SGD steps (BatchNorm statistics moved too), saved as a plain state dict and as
    the training engine saves a plain backbone (the whole NormalizedBackbone, normalize.* included)."""
    backbone = briefly_trained("small_cnn", batch=16, lr=0.05)
    folder = tmp_path_factory.mktemp("weights")
    torch.save(backbone.net.state_dict(), folder / "small_cnn.pth")
    RunFiles(folder, write=True).save_model(backbone, LAST_FILE)
    return backbone.eval(), folder / "small_cnn.pth", folder / LAST_FILE


def _one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and "Traceback" not in result.output
    return line


def test_the_options_are_declared_once_for_every_command_that_builds_a_backbone():
    for flag in ("--weights", "--model-factory", "--mean", "--std"):
        params = [next((p for p in COMMANDS[name].params if flag in p.opts), None)
                  for name in ("attach", "train", "place", "defend")]
        assert all(params), flag
        assert len({(p.help, p.default) for p in params}) == 1, flag


def test_engine_last_safetensors_loads_as_a_backbone_with_its_normalisation(trained, tmp_path):
    backbone, _, last = trained
    assert torch.equal(_logits(build_backbone("small_cnn", num_classes=10, weights=last)), _logits(backbone))
    # A backbone trained behind another normalisation: the file's wins over the model's default ...
    other = build_backbone("small_cnn", num_classes=10, mean=[0.4, 0.5, 0.6], std=[0.2, 0.3, 0.25])
    other.net.load_state_dict(backbone.net.state_dict())
    RunFiles(tmp_path, write=True).save_model(other, LAST_FILE)
    rebuilt = build_backbone("small_cnn", num_classes=10, weights=tmp_path / LAST_FILE)
    assert rebuilt.spec["mean"] == [0.4, 0.5, 0.6] and rebuilt.spec["std"] == [0.2, 0.3, 0.25]
    assert torch.equal(_logits(rebuilt), _logits(other))
    # ... and a normalisation asked for must agree with it.
    with pytest.raises(WeightsError, match=r"saved behind the input normalisation mean 0.4,0.5,0.6 .* drop --mean"):
        build_backbone("small_cnn", num_classes=10, weights=tmp_path / LAST_FILE, mean=[0.5] * 3, std=[0.25] * 3)


def test_attach_with_weights_keeps_the_backbone_logits(trained, tmp_path):
    backbone, path, last = trained
    for weights in (path, last):
        out = tmp_path / f"{weights.stem}.safetensors"
        result = runner.invoke(app, ["attach", "small_cnn", "--weights", str(weights), "--at", "stage1,stage2",
                                     "--out", str(out), "--json"])
        assert result.exit_code == 0, result.output
        aux = load(out)
        assert torch.equal(_logits(aux), _logits(backbone))
        assert aux.spec["backbone"]["weights"]["path"] == str(weights.resolve())


def test_train_starts_from_the_weights(trained, tmp_path):
    backbone, path, _ = trained
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "small_cnn", "--weights", str(path), "--data", "synthetic",
                                 "--train-subset", "64", "--val-subset", "16", "--epochs", "1", "--batch-size", "32",
                                 "--mode", "heads", "--amp", "off", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    # Heads-only training keeps the backbone as loaded: its logits are the original's, bit for bit.
    trained_aux = load(out / "last.safetensors")
    assert torch.equal(_logits(trained_aux), _logits(backbone))
    assert trained_aux.spec["backbone"]["weights"]["sha256"] == build_backbone(
        "small_cnn", num_classes=10, weights=path).spec["weights"]["sha256"]
    # A checkpoint carries its own weights: --weights beside one is an error, in one line.
    line = _one_error_line(runner.invoke(app, ["train", str(out / "last.safetensors"), "--weights", str(path),
                                               "--data", "synthetic", "--out", str(tmp_path / "again")]))
    assert "is a checkpoint, which carries its own weights" in line and "--weights" in line


def test_place_with_weights_uses_the_backbone_as_it_is(trained, tmp_path, monkeypatch):
    backbone, path, _ = trained
    trained_modules = []
    finetune = placement.finetune

    def recording(model, *args, **kwargs):
        trained_modules.append(type(model).__name__)
        return finetune(model, *args, **kwargs)

    monkeypatch.setattr(placement, "finetune", recording)
    result = runner.invoke(app, ["place", "small_cnn", "--weights", str(path), "--candidates", "stage2",
                                 "--data", "synthetic", "--train-subset", "128", "--epochs", "1", "--points", "16",
                                 "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    assert trained_modules == ["AuxModel"]  # the placement's heads only: no backbone training
    assert "loaded weights as they are" in result.stderr
    [row] = json.loads(result.stdout)["rows"]
    # The public head is the given backbone: its clean accuracy is the backbone's own on those images.
    test = load_dataset("synthetic", train=False, subset=16)
    x, y = torch.stack([test[i][0] for i in range(16)]), torch.tensor([test[i][1] for i in range(16)])
    assert row["clean_heads"]["public"] == pytest.approx((_logits(backbone, x).argmax(1) == y).float().mean().item())


RECIPE = """
[recipe]
name = "weights"
[data]
name = "synthetic"
[backbone]
name = "small_cnn"
weights = "{weights}"
"""


def test_recipe_backbone_weights_resolve_from_the_recipe_folder(trained, tmp_path, monkeypatch):
    backbone, _, last = trained
    folder = tmp_path / "recipes"
    folder.mkdir()
    (folder / "mine.safetensors").write_bytes(last.read_bytes())
    (folder / "r.toml").write_text(RECIPE.format(weights="mine.safetensors"))
    monkeypatch.chdir(tmp_path)  # not the recipe's folder
    recipe = load_recipe("recipes/r.toml")
    data = experiment.RunData(train=None, val=None, test=None, num_classes=10, input_size=(3, 32, 32))
    loaded = experiment._fresh_backbone(recipe, data, 0)
    assert torch.equal(_logits(loaded), _logits(backbone))
    assert loaded.spec["weights"]["path"] == str((folder / "mine.safetensors").resolve())

    # Errors name the file, the key and the folder a relative path is read from, before any data is loaded.
    (folder / "missing.toml").write_text(RECIPE.format(weights="nope.pth"))
    with pytest.raises(RecipeError, match=r"recipes/missing.toml: \[backbone\] weights: file not found: "
                                          r"recipes/nope.pth \(a relative path is read from the recipe's folder"):
        load_recipe("recipes/missing.toml")
    (folder / "factory.toml").write_text(RECIPE.format(weights="mine.safetensors").replace(
        'name = "small_cnn"', 'model_factory = "nets:make"'))
    with pytest.raises(RecipeError, match=r"\[backbone\] model_factory: needs mean and std"):
        load_recipe("recipes/factory.toml")


def test_wrong_weights_path_and_factory_fail_in_one_line(tmp_path):
    # In process, through the app's error handling (tests/test_cli.py runs that convention in a subprocess).
    result = runner.invoke(app, ["attach", "small_cnn", "--weights", str(tmp_path / "nope.pth")])
    assert _one_error_line(result) == f"error: weights file not found: {tmp_path / 'nope.pth'}"
    assert result.stdout == ""
    line = _one_error_line(runner.invoke(app, ["place", "--model-factory", "no_such_module:make", "--mean", "0.5",
                                               "--std", "0.25", "--train-subset", "128", "--candidates", "stage1",
                                               "--data", "synthetic", "--out", str(tmp_path)]))
    assert "cannot import 'no_such_module' for the model factory 'no_such_module:make'" in line
    line = _one_error_line(runner.invoke(app, ["train", "--data", "synthetic", "--out", str(tmp_path / "run")]))
    assert "name a model" in line and "--model-factory" in line


@pytest.mark.parametrize("args, expected", [
    (["small_cnn", "--model-kwargs", '{"width": 100000000}'],
     "building small_cnn with 10 classes and --model-kwargs '{\"width\": 100000000}' needs 3,600,000,038.0 GB of "
     "memory, more than the 64.0 GB this machine has available: give smaller sizes (--model-kwargs, --num-classes)"),
    (["small_cnn", "--num-classes", "1000000000"], "building small_cnn with 1,000,000,000 classes needs 516.0 GB"),
    (["small_cnn", "--model-kwargs", "width=-1"], "would have a negative size (Trying to create tensor with negative "
                                                  "dimension -1: [-1, 3, 3, 3]): give --model-kwargs sizes of 1 or more"),
    (["small_cnn", "--num-classes", "-3"], "--num-classes must be 1 or more, got -3"),
    (["small_cnn", "--model-kwargs", "width=" + "[" * 40000 + "]" * 40000], "--model-kwargs is nested too deeply"),
    (["small_cnn", "--mean", "0.5,0.5", "--std", "0.2,0.2"],
     "--mean/--std (mean=, std=) give 2 and 2 values, but small_cnn takes 3 input channels"),
    (["--model-factory", "os:getcwd", "--mean", "0.5", "--std", "0.5"],
     "the model factory 'os:getcwd' returned str, not a torch nn.Module"),
    (["--model-factory", "os:system", "--mean", "0.5", "--std", "0.5"],
     "the model factory 'os:system' cannot be called with no arguments"),
])
def test_a_network_that_cannot_be_built_is_one_line_before_anything_is_allocated(tmp_path, monkeypatch, args,
                                                                                  expected):
    monkeypatch.setattr("auxsurgery._utils.available_memory", lambda: 64 * 10**9)  # the same on every machine
    line = _one_error_line(runner.invoke(app, ["attach", *args, "--out", str(tmp_path / "m.safetensors")]))
    assert expected in line
    assert not (tmp_path / "m.safetensors").exists()


def test_a_model_factory_that_is_no_network_is_one_line_in_run(tmp_path):
    recipe = tmp_path / "factory.toml"
    recipe.write_text('[recipe]\nname = "f"\n[data]\nname = "synthetic"\ntrain_subset = 64\nheld_out = 16\n'
                      '[backbone]\nmodel_factory = "os:getcwd"\nmean = [0.5]\nstd = [0.5]\n')
    line = _one_error_line(runner.invoke(app, ["run", str(recipe), "--out", str(tmp_path / "run")]))
    assert "the model factory 'os:getcwd' returned str, not a torch nn.Module" in line


def test_synthetic_data_that_cannot_fit_in_memory_is_refused_before_it_is_drawn(tmp_path, monkeypatch):
    monkeypatch.setattr("auxsurgery._utils.available_memory", lambda: 64 * 10**9)  # the same on every machine
    line = _one_error_line(runner.invoke(app, ["train", "small_cnn", "--data", "synthetic", "--train-subset",
                                               "100000000", "--epochs", "1", "--out", str(tmp_path / "run")]))
    assert "the synthetic set of 100,000,000 images needs 308.1 GB of memory, more than the 64.0 GB" in line
    assert "ask for fewer images" in line
    line = _one_error_line(runner.invoke(app, ["train", "small_cnn", "--data", "synthetic", "--train-subset", "-5",
                                               "--out", str(tmp_path / "run")]))
    assert "'--train-subset'" in line
