"""`auxsurgery demo`: the built-in recipe run by the recipe runner, end to end at --quick size."""
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from auxsurgery.cli import app
from auxsurgery.rules import default_rules
from auxsurgery.studies.demo import QUICK, demo_recipe
from auxsurgery.studies.recipe import load_recipe, parse_recipe

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, single_thread):
    out = tmp_path_factory.mktemp("demo")
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    return out, result


def test_repo_recipe_is_the_shipped_one():
    assert load_recipe(REPO / "recipes" / "demo.toml").text == demo_recipe().text
    recipe = demo_recipe()
    assert recipe["data"]["name"] == "synthetic" and recipe["backbone"]["name"] == "small_cnn"
    assert not recipe["adversarial"]["enabled"] and recipe["recipe"]["paper"] == "none"


def test_quick_and_seed_change_the_recipe_and_its_text():
    quick = demo_recipe(quick=True, seed=3)
    assert quick["recipe"]["seed"] == 3 and quick["attack"]["n"] == QUICK["attack.n"]
    assert quick.train_config("aux").epochs == 1 and quick.train_config("aux").optimizer == "adamw"
    # The text is the changed recipe, so the run folder's recipe.toml reproduces the run...
    assert parse_recipe(quick.text).sections == quick.sections
    # ...and without a real change the shipped, commented file stays as it is.
    assert demo_recipe(seed=0).text == demo_recipe().text


def test_quick_demo_writes_the_recipe_report(quick_run):
    out, result = quick_run
    report = json.loads(result.stdout)  # --json: stdout is the report document alone
    assert report == json.loads((out / "report.json").read_text())
    for name in ("report.md", "accuracy_vs_eps.png", "recipe.toml", "undefended/eval/default/results.json",
                 "aux/eval/default/report.md", "aux/eval/curve/results.json", "aux/train/metrics.jsonl"):
        assert (out / name).is_file(), name
    assert not (out / "adversarial").exists()
    table = report["tables"]["default"]
    assert [row["label"] for row in table] == ["NA (undefended)", *(f"Aux Block: {rule}" for rule in default_rules())]
    for row in table:
        cells = row["cells"]
        assert all(cell["paper"] is None for cell in cells.values())
        assert all(0.0 <= cells[c]["ours"] <= 100.0 for c in ("clean", "PGD", "Adp-PGD", "worst case"))
        # The worst case is over a superset of attacks: never above any single L-inf attack's accuracy.
        assert cells["worst case"]["ours"] <= min(cells[c]["ours"] for c in ("clean", "PGD", "Adp-PGD")) + 1e-9
    markdown = (out / "report.md").read_text()
    assert "| Aux Block: vote |" in markdown and " / " not in markdown.split("## eps reading")[1].split("##")[0]


def test_rerun_resumes_and_prints_the_table(quick_run):
    out, _ = quick_run
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "already evaluated" in result.stderr and "| Aux Block: vote |" in result.stdout
