"""The placement study end to end on the embedded data, its CLI command, and its input checks."""
import json

import pytest
import torch
import typer
from typer.testing import CliRunner

import auxsurgery.studies.placement as placement
from auxsurgery.cli.place import place
from auxsurgery.data import load_dataset
from auxsurgery.rules import default_rules
from auxsurgery.studies.placement import (
    PlacementResult,
    PlacementRow,
    pareto_front,
    place_study,
    trained_backbone,
)
from auxsurgery.version import __version__

CANDIDATES = ["stage1", "stage2", "stage3"]


@pytest.fixture(scope="module")
def data(single_thread):
    return load_dataset("synthetic", train=True, subset=512), load_dataset("synthetic", train=False, subset=64)


@pytest.fixture(scope="module")
def backbone(data):
    torch.manual_seed(0)
    return trained_backbone("small_cnn", data[0], num_classes=10, epochs=1)


def _check_rows(rows: list[dict], names: list[str]) -> None:
    """Shared checks of the rows as written to placement.json."""
    assert [r["name"] for r in rows] == names
    for row in rows:
        assert list(row["clean_heads"]) == list(row["robust_heads"]) == ["public", *row["points"]]
        accuracies = [*row["clean_heads"].values(), *row["robust_heads"].values(),
                      *row["clean_rules"].values(), *row["robust_rules"].values()]
        assert list(row["clean_rules"]) == list(row["robust_rules"]) == list(default_rules())
        assert all(0.0 <= a <= 1.0 for a in accuracies)
        assert row["params"] > 0 and row["flops"] > 0
        assert row["params_overhead"] > 0 and row["flops_overhead"] > 0
    # Heads-only fine-tuning freezes the backbone and the attack has no random start, so every
    # placement has the same public model facing the same adversarial images.
    assert len({(r["clean_heads"]["public"], r["robust_heads"]["public"]) for r in rows}) == 1
    # The best flags are exactly the Pareto front of robust vote accuracy vs FLOP overhead.
    front = {r["name"] for r in rows if not any(
        o["robust_rules"]["vote"] >= r["robust_rules"]["vote"] and o["flops_overhead"] <= r["flops_overhead"]
        and (o["robust_rules"]["vote"] > r["robust_rules"]["vote"] or o["flops_overhead"] < r["flops_overhead"])
        for o in rows)}
    assert front and {r["name"] for r in rows if r["best"]} == front


def test_place_study_one_row_per_candidate_and_writes_files(data, backbone, tmp_path):
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    result = place_study(backbone, *data, CANDIDATES, epochs=1, n=32)
    # The study works on copies: the trained backbone is left as it was.
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())
    assert result.n == 32 and result.steps == 2 and result.eps == pytest.approx(8 / 255)
    _check_rows(result.to_dict()["rows"], CANDIDATES)
    # Deeper stages have more channels: their heads cost more parameters.
    params = [row.params for row in result.rows]
    assert params == sorted(params) and len(set(params)) == 3

    paths = result.write(tmp_path)
    assert [p.name for p in paths] == ["placement.json", "placement.md", "placement.png"]
    written = json.loads((tmp_path / "placement.json").read_text())
    # The result itself, stamped with the release that wrote it.
    stamp = {key: written.pop(key) for key in ("auxsurgery_version", "auxsurgery_commit")}
    assert stamp["auxsurgery_version"] == __version__ and stamp["auxsurgery_commit"]
    assert written == json.loads(json.dumps(result.to_dict()))
    markdown = (tmp_path / "placement.md").read_text()
    assert all(f"| {name} |" in markdown for name in CANDIDATES)
    assert (tmp_path / "placement.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_place_command_trains_backbone_runs_sets_and_writes(tmp_path, single_thread):
    app = typer.Typer()
    app.command()(place)
    result = CliRunner().invoke(app, [
        "small_cnn", "--candidates", "stage1,stage3", "--sets", "stage1+stage3", "--data", "synthetic",
        "--train-subset", "512", "--train-backbone-epochs", "1", "--epochs", "1", "--points", "32",
        "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "Placement study" in result.output and "stage1+stage3" in result.output
    rows = json.loads((tmp_path / "placement.json").read_text())["rows"]
    _check_rows(rows, ["stage1", "stage3", "stage1+stage3"])
    # A set's heads cost the sum of its members' heads.
    assert rows[2]["params"] == rows[0]["params"] + rows[1]["params"]
    assert (tmp_path / "placement.md").is_file() and (tmp_path / "placement.png").is_file()


def test_unknown_candidate_fails_before_any_training(data, backbone, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("trained before checking every placement")
    monkeypatch.setattr(placement, "finetune", no_training)
    with pytest.raises(ValueError, match=r"unknown layer 'stag3'.*Close matches.*stage3"):
        place_study(backbone, *data, ["stage1", "stag3"], epochs=1, n=32)
    with pytest.raises(ValueError, match="n=100 test images"):
        place_study(backbone, *data, ["stage1"], epochs=1, n=100)


def test_old_data_argument_names_still_work_with_a_warning(data, backbone, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("trained although the placement is refused first")
    monkeypatch.setattr(placement, "finetune", no_training)
    train_data, test_data = data
    with pytest.warns(DeprecationWarning) as caught:
        # Forwarded: the study got its test data (and refuses more images than it holds).
        with pytest.raises(ValueError, match="n=100 test images asked from a test set of 64"):
            place_study(backbone, train_set=train_data, test_set=test_data, candidates=["stage1"], n=100)
    assert sorted(str(w.message) for w in caught) == [
        f"place_study(): {old}= is deprecated and will be removed in 0.3.0; use {new}="
        for old, new in (("test_set", "test_data"), ("train_set", "train_data"))]
    with pytest.warns(DeprecationWarning, match="trained_backbone\\(\\): train_set= is deprecated"):
        assert trained_backbone(backbone, train_set=train_data, num_classes=10, epochs=0) is backbone


def test_pareto_front_keeps_only_undominated_rows():
    def row(name, vote, flops):
        return PlacementRow(name, [name], 1, 1, 0.1, flops, {}, {}, {}, {"vote": vote})
    rows = [row("cheap", 0.2, 0.1), row("dominated", 0.2, 0.3), row("strong", 0.5, 0.3), row("tie", 0.5, 0.3)]
    assert pareto_front(rows) == [0, 2, 3]


def test_a_placement_study_names_its_threat_model():
    l2 = PlacementResult([], eps=0.5, step_size=0.125, steps=2, n=10, mode="heads", epochs=1, norm="l2")
    assert "L2 eps 0.5, step 0.125" in l2._title() and l2.to_dict()["norm"] == "l2"
    linf = PlacementResult([], eps=8 / 255, step_size=2 / 255, steps=2, n=10, mode="heads", epochs=1)
    assert "L-inf eps 8/255, step 2/255" in linf._title() and linf.to_dict()["norm"] == "linf"
