"""``auxsurgery defend``: your weights in, heads trained with the backbone frozen, both models attacked with the
strong suite, one plain verdict out (smoke-sized here: --quick)."""
import json

import pytest
import torch
import torch.nn.functional as F
import typer
from typer.testing import CliRunner

from auxsurgery import build_backbone, load, load_dataset
from auxsurgery.cli import app
from auxsurgery.data import held_out_split
from auxsurgery.cli.backbone_options import backbone_from_options, load_checkpoint, parse_floats
from auxsurgery.studies.defend import verdict

pytestmark = pytest.mark.usefixtures("single_thread")


def _cli():
    from auxsurgery.cli.defend import defend

    app = typer.Typer()
    app.command()(defend)
    return app


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A small_cnn trained for a few steps on the synthetic shapes, saved as a plain state dict."""
    torch.manual_seed(0)
    backbone = build_backbone("small_cnn", num_classes=10)
    data = load_dataset("synthetic", train=True, subset=256)
    x = torch.stack([data[i][0] for i in range(len(data))])
    y = torch.tensor([data[i][1] for i in range(len(data))])
    optimizer = torch.optim.AdamW(backbone.parameters(), lr=5e-3)
    backbone.train()
    for step in range(10):
        idx = torch.arange(step * 25, step * 25 + 25) % len(x)
        optimizer.zero_grad()
        F.cross_entropy(backbone(x[idx]), y[idx]).backward()
        optimizer.step()
    path = tmp_path_factory.mktemp("defend") / "small_cnn.pth"
    torch.save(backbone.net.state_dict(), path)
    return path


def test_defend_smoke_run_writes_one_plain_report(weights, tmp_path):
    out = tmp_path / "defence"
    args = ["small_cnn", "--weights", str(weights), "--data", "synthetic", "--quick", "--points", "40",
            "--train-subset", "300", "--out", str(out), "--json"]
    result = CliRunner().invoke(_cli(), args)
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["quick"] and document["n"] == 40 and document["attach_points"] == ["stage1", "stage2", "stage3"]
    assert [c["label"] for c in document["candidates"]] == ["undefended", "heads (vote)", "heads (score)"]
    best = document["best"]
    assert best["model"] == "heads" and best["worst_case"] == max(c["worst_case"] for c in document["candidates"][1:])
    assert best["verdict"]["helped"] in ("yes", "worse", "no measurable gain")
    worst = best["verdict"]["worst_case"]
    undefended = document["models"]["undefended"]["rules"]["vote"]
    assert worst["difference"] == pytest.approx(best["worst_case"] - undefended["worst_case"])
    assert worst["low"] <= worst["difference"] <= worst["high"]
    assert json.loads((out / "defence.json").read_text())["headline"] == document["headline"]
    report = (out / "defence.md").read_text()
    assert "Quick run" in report and document["headline"] in report and "**best**" in report
    assert (out / "undefended" / "report.md").is_file() and (out / "heads" / "report.md").is_file()

    # The backbone stayed frozen: the defended model's own head is the undefended model, bit for bit,
    # and its checkpoint says where the weights came from.
    defended = load(out / "heads" / "model.safetensors")
    original = build_backbone("small_cnn", num_classes=10, weights=weights).eval()
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(defended(x)[0], original(x))
    assert defended.spec["backbone"]["weights"]["path"] == str(weights.resolve())
    # `auxsurgery --help` exports what its defend example (`--out defence`) writes.
    exported = next(line.split()[2] for line in app.info.help.splitlines()
                    if line.strip().startswith("auxsurgery export"))
    assert str(tmp_path / exported) in document["files"].values() and (tmp_path / exported).is_file()

    # The same command again is refused in one line; with --resume it continues: nothing retrains.
    again = CliRunner().invoke(_cli(), args)
    assert again.exit_code != 0 and "pass --resume" in str(again.exception or again.output)
    metrics = (out / "heads" / "train" / "metrics.jsonl").read_text()
    resumed = CliRunner().invoke(_cli(), [*args, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout)["headline"] == document["headline"]
    assert (out / "heads" / "train" / "metrics.jsonl").read_text() == metrics
    # Another --train-subset is another training run: refused, not mixed into this one.
    other = CliRunner().invoke(_cli(), [*args[:-4], "200", *args[-3:], "--resume"])
    assert other.exit_code != 0 and "other training data (it trained on" in str(other.exception)
    assert (out / "heads" / "train" / "metrics.jsonl").read_text() == metrics


def test_defend_compares_two_methods_and_honours_the_clean_floor(weights, tmp_path):
    out = tmp_path / "defence"
    result = CliRunner().invoke(_cli(), [
        "small_cnn", "--weights", str(weights), "--data", "synthetic", "--quick", "--points", "24", "--train-subset", "200",
        "--method", "heads,aux-adversarial", "--adversarial-method", "trades", "--attack-steps", "1", "--min-clean", "1.0",
        "--rules", "vote,crossmax", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert list(document["models"]) == ["undefended", "heads", "aux-adversarial"]
    # --rules: each defence with heads is attacked and compared under each rule named.
    assert [(c["model"], c["rule"]) for c in document["candidates"]] == [
        ("undefended", "vote"), ("heads", "vote"), ("heads", "crossmax"), ("aux-adversarial", "vote"),
        ("aux-adversarial", "crossmax")]
    assert document["training"]["aux-adversarial"]["adversarial"]["method"] == "trades"
    assert document["training"]["aux-adversarial"]["adversarial"]["eps"] == pytest.approx(document["eps"])
    assert "adversarial" not in document["training"]["heads"]
    assert document["training"]["aux-adversarial"]["final"]["passes_per_image"] == 7  # TRADES, --attack-steps 1
    # A floor of 100% clean accuracy rules every defence out, and the verdict says so.
    assert document["best"] is None and document["headline"].startswith("No defence kept clean accuracy")
    assert all(c["above_floor"] == (c["clean"] >= 1.0) for c in document["candidates"])
    # Training backbone and heads together moved the backbone: its own head is no longer the original.
    defended, heads_only = load(out / "aux-adversarial" / "model.safetensors"), load(out / "heads" / "model.safetensors")
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert not torch.equal(defended(x)[0], heads_only(x)[0])


def test_defend_validates_on_unaugmented_images(monkeypatch):
    from auxsurgery.studies import defend as module

    calls = []
    real = module.load_dataset
    monkeypatch.setattr(module, "load_dataset", lambda *a, **k: calls.append(k) or real("synthetic", **{
        key: v for key, v in k.items() if key in ("train", "augment")}, subset=64))
    train, plain, _, _ = module._datasets("cifar10", None, None, None)
    assert [k.get("augment") for k in calls if k["train"]] == [None, False]
    _, val = held_out_split(train, plain, 16, seed=0)
    assert val.dataset is plain and len(val) == 16


def test_bad_defend_settings_fail_in_one_line():
    from auxsurgery.studies.defend import DefendConfig

    with pytest.raises(ValueError, match="unknown defence 'head'.*heads"):
        DefendConfig(methods=["head"])
    with pytest.raises(ValueError, match="unknown adversarial-training method 'trade'.*trades"):
        DefendConfig(methods=["adversarial"], adversarial={"method": "trade"})
    with pytest.raises(ValueError, match="floor is a fraction"):
        DefendConfig(min_clean=80)
    with pytest.raises(ValueError, match="unknown prediction rule 'crosmax'.*Did you mean 'crossmax'"):
        DefendConfig(rules=["crosmax"])
    assert DefendConfig(rules=["vote", "crossmax:k=3"]).rules == ("vote", "crossmax")
    with pytest.raises(ValueError, match=r"train_subset \(--train-subset\) must be >= 1, got -5"):
        DefendConfig(train_subset=-5)
    with pytest.raises(ValueError, match="unknown norm 'L2'.*Valid norms: linf, l2"):
        DefendConfig(norm="L2")


def test_an_l2_defence_trains_and_evaluates_in_l2():
    from auxsurgery.studies.defend import DefenceResult, DefendConfig

    config = DefendConfig(methods=["adversarial"], norm="l2", adversarial={"method": "pgd"})
    assert config.training_config(0.5) == config.training_config(0.5) and config.training_config(0.5).norm == "l2"
    assert config.training_config(1.5).eps == 1.5  # an L2 radius above 1
    result = DefenceResult(model="m", data="d", n=10, eps=0.5, quick=True, attach_points=[], min_clean=0.5,
                           models={"undefended": {"rules": {"vote": {"clean": 0.9, "worst_case": 0.2}}}},
                           candidates=[], best=None, norm="l2")
    assert "at L2 eps 0.5 on 10 test images" in result.headline() and result.to_dict()["norm"] == "l2"


def test_defend_passes_model_kwargs_to_the_constructor(monkeypatch, tmp_path):
    built = {}

    def capture(backbone, *args, **kwargs):
        built["backbone"] = backbone
        raise KeyboardInterrupt  # stop before any training: the backbone is all this test checks
    monkeypatch.setattr("auxsurgery.studies.defend.defend", capture)  # the command imports it when it runs
    args = ["small_cnn", "--data", "synthetic", "--out", str(tmp_path / "d")]
    CliRunner().invoke(_cli(), [*args, "--model-kwargs", "width=16"])
    assert built["backbone"].net.stage1[0].out_channels == 16
    result = CliRunner().invoke(_cli(), [*args, "--model-kwargs", "depth=3"])
    assert isinstance(result.exception, ValueError)
    assert "--model-kwargs 'depth=3' does not fit small_cnn's constructor" in str(result.exception)


def test_defend_prints_each_warning_once_with_its_rule_tag(monkeypatch, tmp_path):
    """A warning's [rule] tag is text, not console markup: two rules' warnings stay two different lines."""
    import auxsurgery.studies.defend as defend_study

    class Result:
        warnings = ["heads: [vote] accuracy stays at 9.0%", "heads: [score] accuracy stays at 9.0%"]
        files = {"report": "defence.md", "json": "defence.json"}

        def headline(self):
            return "No measurable gain"

    # The command imports the study when it runs (its module loads no torch for --help).
    monkeypatch.setattr(defend_study, "defend", lambda *args, **kwargs: Result())
    result = CliRunner().invoke(_cli(), ["small_cnn", "--data", "synthetic", "--out", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    printed = [line for line in result.output.splitlines() if line.startswith("warning: ")]
    assert printed == [f"warning: {message}" for message in Result.warnings]


def _points(first: int, then: int, n: int) -> list[bool]:
    """``first`` points wrong, ``then`` right, the rest wrong."""
    return [False] * first + [True] * then + [False] * (n - first - then)


def test_verdict_pairs_the_outcomes_point_by_point():
    before = {"clean": _points(0, 900, 1000), "worst_case": _points(0, 100, 1000)}
    # Clean: 10 images lost and 9 others gained, within the noise; 10 lost and none gained is a real loss.
    helped = verdict(before, {"clean": _points(10, 899, 1000), "worst_case": _points(0, 400, 1000)})
    assert helped["helped"] == "yes" and helped["clean_kept"] == "kept"
    assert verdict(before, {"clean": _points(10, 890, 1000), "worst_case": _points(0, 400, 1000)})["clean_kept"] == "lost"
    assert helped["worst_case"]["difference"] == pytest.approx(0.30) and helped["worst_case"]["gained"] == 300
    # 2 more of 100 robust, on images the model already got right: no measurable gain.
    noise = verdict({"clean": _points(0, 90, 100), "worst_case": _points(0, 10, 100)},
                    {"clean": _points(0, 90, 100), "worst_case": _points(0, 12, 100)})
    assert noise["helped"] == "no measurable gain" and noise["worst_case"]["low"] < 0 < noise["worst_case"]["high"]
    worse = verdict({"clean": _points(0, 900, 1000), "worst_case": _points(0, 300, 1000)},
                    {"clean": _points(0, 700, 1000), "worst_case": _points(0, 50, 1000)})
    assert worse["helped"] == "worse" and worse["clean_kept"] == "lost"


FACTORY = '''
from torch import nn

def net(num_classes=10):
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))
'''


def test_backbone_options_and_factory_checkpoints(tmp_path, monkeypatch):
    (tmp_path / "user_nets.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert parse_floats("0.5, 0.25,1", "mean") == (0.5, 0.25, 1.0) and parse_floats(None, "mean") is None
    with pytest.raises(ValueError, match="--std must be comma-separated numbers"):
        parse_floats("a,b", "std")
    with pytest.raises(ValueError, match="name a model"):
        backbone_from_options(None)
    with pytest.raises(ValueError, match="give both --mean and --std"):
        backbone_from_options("small_cnn", mean="0.5")
    with pytest.raises(ValueError, match="not both"):
        backbone_from_options("resnet18", model_factory="user_nets:net", mean="0.5", std="0.25")
    backbone = backbone_from_options(None, num_classes=4, model_factory="user_nets:net", mean="0.5", std="0.25")
    assert backbone.spec["source"] == "factory" and backbone.spec["mean"] == [0.5] * 3

    from auxsurgery import attach_aux_blocks, save

    aux = attach_aux_blocks(backbone, at="1,4", input_size=(3, 16, 16))
    path = save(aux, tmp_path / "aux.safetensors")
    with pytest.raises(ValueError, match="pass --model-factory user_nets:net"):
        load_checkpoint(path)
    with pytest.raises(ValueError, match="drop --model-factory"):
        load_checkpoint(save(attach_aux_blocks(build_backbone("small_cnn", num_classes=10), at="stage1",
                                               input_size=(3, 32, 32)), tmp_path / "plain.safetensors"), "x:y")
    rebuilt = load_checkpoint(path, "user_nets:net")
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), aux.eval()(x))


@pytest.mark.parametrize("linked", ["undefended", "heads", "heads/train", "adversarial", "adversarial/train"])
def test_defend_refuses_a_linked_folder_and_writes_nothing_through_it(tmp_path, linked):
    from auxsurgery._utils import UnsafePath
    from auxsurgery.studies.defend import DefendConfig, defend

    out, elsewhere = tmp_path / "defence", tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / linked).parent.mkdir(parents=True)
    (out / linked).symlink_to(elsewhere, target_is_directory=True)
    data = load_dataset("synthetic", train=True, subset=32), load_dataset("synthetic", train=False, subset=8)
    config = DefendConfig(methods=("heads", "adversarial"), epochs=1, n=8, batch_size=16, quick=True)
    with pytest.raises(UnsafePath, match=f"{linked} is a symbolic link"):
        defend(build_backbone("small_cnn", num_classes=10), data, out, config)
    assert not any(elsewhere.iterdir())
