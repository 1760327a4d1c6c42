"""The CLI: layers, attach (table, JSON, saving) and the error path's exit code."""
import json
import subprocess
import sys

from typer.testing import CliRunner

from auxsurgery import load
from auxsurgery.cli import app

runner = CliRunner()


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
    assert proc.returncode == 2
    assert "unknown layer 'layr1'" in proc.stderr and "layer1" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_help_shows_examples():
    result = runner.invoke(app, ["attach", "--help"])
    assert result.exit_code == 0 and "Example: auxsurgery attach resnet18" in result.output
