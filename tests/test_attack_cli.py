"""`auxsurgery attack`: end to end on a tiny saved checkpoint, and its user errors."""
import inspect
import json
import re

import pytest
import torch
import typer
from typer.testing import CliRunner

from safetensors import safe_open
from safetensors.torch import load_file

from auxsurgery import attach_aux_blocks, build_backbone, load_dataset, save
from auxsurgery.cli import attack as attack_command
from auxsurgery.data import ImageTensorDataset
from auxsurgery.evaluation import inputs, validate_results

runner = CliRunner()
app = typer.Typer(pretty_exceptions_enable=False)
app.command()(attack_command.attack)


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    aux = attach_aux_blocks("lenet5", at="pool1,pool2", num_classes=10, head="paper-mnist")
    return save(aux, tmp_path_factory.mktemp("ckpt") / "lenet.safetensors")


def write_data(path, x=None, y=None, **extra):
    g = torch.Generator().manual_seed(0)
    x = torch.rand((12, 1, 28, 28), generator=g) if x is None else x
    y = torch.randint(0, 10, (len(x),), generator=g) if y is None else y
    torch.save({"x": x, "y": y, **extra}, path)
    return str(path)


def invoke(checkpoint, data, *args):
    return runner.invoke(app, [str(checkpoint), "--data", data, "--quick", "--batch-size", "6", *args])


def test_end_to_end_writes_the_report(checkpoint, tmp_path):
    data = write_data(tmp_path / "test.pt", classes=[str(d) for d in range(10)])
    out = tmp_path / "report"
    result = invoke(checkpoint, data, "--suite", "static,adaptive,heads", "--threat-preset", "mnist", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "worst case" in result.output and "Adp-PGD" in result.output
    assert {p.name for p in out.iterdir()} == {"results.json", "report.md", "transfer_heatmap.png", "state",
                                               ".auxsurgery.lock"}  # the resumable progress and the folder lock
    doc = json.loads((out / "results.json").read_text())
    validate_results(doc)
    assert doc["data"]["n"] == 12 and doc["settings"]["preset"]["name"] == "mnist"
    assert doc["model"]["checkpoint"] == str(checkpoint) and doc["data"]["source"] == data
    assert doc["model"]["head_names"] == ["public", "pool1", "pool2"]
    assert [a["name"] for a in doc["attacks"] if a["suite"] == "adaptive"] == ["Adp-FGSM", "Adp-PGD"]
    assert next(a for a in doc["attacks"] if a["name"] == "Adp-PGD")["threat"] == {"norm": "linf", "eps": 0.3}


def test_json_output_is_the_results_document(checkpoint, tmp_path):
    data = write_data(tmp_path / "test.pt")
    result = invoke(checkpoint, data, "--suite", "adaptive", "--points", "6", "--eps", "0.1", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    validate_results(doc)
    assert doc["data"]["n"] == 6 and doc["settings"]["preset"]["eps"] == 0.1


@pytest.mark.parametrize("eps, message", [
    ("-0.1", r"eps must be a finite number >= 0"), ("1.5", r"eps must lie in \[0, 1\] for linf"),
    ("8/0", "fraction such as 8/255"),
    ("eight", "fraction such as 8/255"),
])
def test_bad_eps_is_a_usage_error(checkpoint, tmp_path, eps, message):
    result = invoke(checkpoint, write_data(tmp_path / "test.pt"), "--eps", eps)
    assert result.exit_code == 2 and re.search(message, result.output)


def test_the_strong_suite_in_l2_reports_its_norm(checkpoint, tmp_path):
    out = tmp_path / "report"
    result = invoke(checkpoint, write_data(tmp_path / "test.pt"), "--norm", "l2", "--eps", "1.5", "--suite", "strong",
                    "--points", "6", "--rules", "vote", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "L2 1.5" in result.output and "- threat model: L2 eps=1.5" in (out / "report.md").read_text()
    doc = json.loads((out / "results.json").read_text())
    validate_results(doc)
    assert doc["settings"]["preset"]["norm"] == "l2" and doc["worst_case"]["threat"] == {"norm": "l2", "eps": 1.5}
    cascade = [a for a in doc["attacks"] if a["suite"] == "strong"]
    assert cascade and all(a["threat"] == {"norm": "l2", "eps": 1.5} for a in cascade)
    resumed = invoke(checkpoint, write_data(tmp_path / "test.pt"), "--norm", "linf", "--eps", "0.1", "--suite",
                     "strong", "--points", "6", "--rules", "vote", "--out", str(out))
    # A ValueError: the command line prints its one line and exits 2 (this test app calls the command bare).
    assert isinstance(resumed.exception, ValueError)
    assert "under the l2 threat model, not linf: rerun with --norm l2" in str(resumed.exception)
    bad = invoke(checkpoint, write_data(tmp_path / "test.pt"), "--norm", "l3")
    assert bad.exit_code == 2 and "Valid norms: linf, l2" in bad.output


def test_eps_takes_the_fraction_every_report_prints(checkpoint, tmp_path):
    result = invoke(checkpoint, write_data(tmp_path / "test.pt"), "--suite", "static", "--points", "4", "--eps",
                    "8/255", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["settings"]["preset"]["eps"] == 8 / 255


def test_the_default_suite_is_the_strong_one(checkpoint, tmp_path):
    """The default answers "how robust is this model?": the strong suite, not the paper's static baseline (whose
    Boundary attack took tens of minutes at 1,000 points); --suite static,adaptive,strong keeps the paper's rows."""
    from auxsurgery.evaluation.checkpoint_eval import evaluate_checkpoint

    assert inspect.signature(evaluate_checkpoint).parameters["suite"].default == "strong"
    result = invoke(checkpoint, write_data(tmp_path / "test.pt"), "--points", "4", "--json")
    assert result.exit_code == 0, result.output
    assert {a["suite"] for a in json.loads(result.stdout)["attacks"]} == {"strong", "sanity"}  # sanity: the checks' probe attacks


@pytest.mark.parametrize("args, message", [
    (["--steps", "3"], "steps and step_size must be unset with the strong suite alone"),
    (["--suite", "static,bogus"], "unknown suite 'bogus'. Valid suites: static, adaptive, strong, sweep, curve, heads"),
    (["--rules", "majority"], "unknown prediction rule 'majority'"),
    (["--threat-preset", "mnsit"], "unknown preset 'mnsit'; valid presets: mnist, cifar10, mini-imagenet"),
])
def test_bad_arguments_fail_clearly(checkpoint, tmp_path, args, message):
    result = invoke(checkpoint, write_data(tmp_path / "test.pt"), *args)
    assert result.exit_code != 0 and isinstance(result.exception, ValueError)
    assert re.search(message, str(result.exception))


@pytest.mark.parametrize("data_kwargs, message", [
    (dict(x=torch.full((4, 1, 28, 28), 1.5)), r"pixels in \[0, 1\]"),
    (dict(classes=["a", "b", "c", "d", "e"]), "the checkpoint has 10 classes but .* has 5"),
    (dict(x=torch.rand(4, 3, 32, 32)), "inputs of size 1x28x28 but .* size 3x32x32"),
    (dict(y=torch.full((12,), 11)), "labels span 11..11 but the model has 10 classes"),
])
def test_data_that_does_not_fit_fails_clearly(checkpoint, tmp_path, data_kwargs, message):
    result = invoke(checkpoint, write_data(tmp_path / "bad.pt", **data_kwargs))
    assert result.exit_code != 0 and isinstance(result.exception, ValueError)
    assert re.search(message, str(result.exception))


def test_named_dataset_with_other_classes_is_refused(checkpoint, monkeypatch):
    images = torch.zeros((3, 1, 28, 28), dtype=torch.uint8)
    hundred = ImageTensorDataset(images, torch.zeros(3), [f"c{i}" for i in range(100)])
    monkeypatch.setattr(inputs, "load_dataset", lambda name, root=None, train=True: hundred)
    result = invoke(checkpoint, "cifar100")
    assert isinstance(result.exception, ValueError)
    assert "the checkpoint has 10 classes but cifar100 has 100 (c0, c1, c2, c3, c4, ...)" in str(result.exception)


@pytest.fixture(scope="module")
def plain_weights(tmp_path_factory):
    """A small_cnn's state dict, as torch.save writes a plain model's weights."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("plain") / "small_cnn.pth"
    torch.save(build_backbone("small_cnn", num_classes=10).net.state_dict(), path)
    return path


def test_a_plain_model_is_attacked_with_weights_and_reports_each_stage(plain_weights, tmp_path):
    """`auxsurgery attack MODEL --weights FILE --num-classes 10 --data synthetic --suite strong`: the per-stage
    accuracy of each cascade (AutoAttack's log) on screen and in report.md; --save-adversarial writes the
    examples that broke each point and the per-point outcomes."""
    out = tmp_path / "report"
    result = runner.invoke(app, ["small_cnn", "--weights", str(plain_weights), "--num-classes", "10", "--data",
                                 "synthetic", "--suite", "strong", "--quick", "--points", "24", "--rules", "public",
                                 "--save-adversarial", "--out", str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "results.json").read_text())
    assert doc["model"]["head_names"] == ["public"]
    assert doc["model"]["backbone"]["weights"]["path"] == str(plain_weights)
    stages = [row for row in doc["attacks"] if row["cascade"]]
    line = next(line for line in result.stdout.splitlines() if line.startswith(stages[0]["cascade"]["name"]))
    expected = " -> ".join([f"clean {100 * doc['clean']['rules']['public']:.1f}%",
                            *(f"{row['cascade']['stage']} {100 * row['rules']['public']:.1f}%" for row in stages)])
    assert line == "Cascade, accuracy: " + expected  # one head, one decision: no rule names
    assert "## Cascade: accuracy by stage" in (out / "report.md").read_text()
    saved = load_file(out / "adversarial.safetensors")
    robust, broken_by = saved["robust/public"], saved["broken_by/public"]
    assert robust.tolist() == doc["per_sample"]["robust"]["public"]
    assert saved["label"].tolist() == doc["per_sample"]["label"]
    broken = (broken_by >= 0).nonzero().flatten()
    assert sorted(saved["indices/public"].tolist()) == broken.tolist()
    examples, eps = saved["examples/public"], doc["worst_case"]["threat"]["eps"]
    assert examples.shape == (len(broken), 3, 32, 32) and examples.min() >= 0 and examples.max() <= 1
    x = torch.stack([load_dataset("synthetic", train=False)[i][0] for i in saved["indices/public"].tolist()])
    assert (examples - x).abs().max() <= eps + 1e-6
    model = build_backbone("small_cnn", num_classes=10, weights=str(plain_weights)).eval()
    with torch.no_grad():  # each saved example fools the model
        labels = saved["label"][saved["indices/public"]]
        assert (model(examples).argmax(1) != labels).all()


def test_a_one_head_model_is_one_decision_named_without_rules(plain_weights):
    """vote, score and public are one decision on a plain model: its lines name no rule, and each finding, judged
    once, prints once (it printed once per rule, tagged by a rule the model does not have apart)."""
    result = runner.invoke(app, ["small_cnn", "--weights", str(plain_weights), "--num-classes", "10", "--data",
                                 "synthetic", "--suite", "strong", "--quick", "--points", "8"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert any(line.startswith("Cascade, accuracy: clean ") for line in lines)
    findings = [line for line in lines if line.startswith(("warning (", "note ("))]
    assert any(line.startswith("warning (large-eps): accuracy stays at") for line in findings), result.stdout
    assert len(findings) == len(set(findings)) and not any(re.search(r"\[(vote|score|public)", f) for f in findings)


def test_save_adversarial_keeps_the_points_only_a_sanity_probe_broke(checkpoint, tmp_path):
    """The strong suite attacks one rule; its probes also judge the others, and may break a point there that
    no attack did: broken_by then names the probe (the metadata lists the attacks, then the probes)."""
    out = tmp_path / "report"
    result = invoke(checkpoint, write_data(tmp_path / "test.pt"), "--suite", "strong", "--rules", "vote",
                    "--save-adversarial", "--out", str(out))
    assert result.exit_code == 0, result.output
    with safe_open(out / "adversarial.safetensors", "pt") as saved:
        breakers = json.loads(saved.metadata()["attacks"])
        broken_by = saved.get_tensor("broken_by/private")
        indices, examples = saved.get_tensor("indices/private"), saved.get_tensor("examples/private")
    assert any(breakers[k].endswith("(probe)") for k in broken_by[broken_by >= 0].tolist())
    assert sorted(indices.tolist()) == (broken_by >= 0).nonzero().flatten().tolist()
    assert examples.shape == (len(indices), 1, 28, 28)


def test_a_state_dict_given_as_a_checkpoint_gets_a_one_line_hint(plain_weights):
    result = runner.invoke(app, [str(plain_weights), "--data", "synthetic"])
    assert isinstance(result.exception, ValueError)
    assert str(result.exception).startswith(f"{plain_weights} holds plain weights, not an auxsurgery checkpoint")
    assert f"auxsurgery attack MODEL --weights {plain_weights}" in str(result.exception)


def test_a_text_file_given_as_a_checkpoint_gets_one_line(tmp_path):
    path = tmp_path / "notackpt.pth"
    path.write_text("these are my notes, not a model\n")
    result = runner.invoke(app, [str(path), "--data", "synthetic"])
    assert isinstance(result.exception, ValueError) and result.exception.__cause__ is None
    assert str(result.exception).startswith(f"{path} is not a readable auxsurgery checkpoint")
    assert "nor a torch.save file" in str(result.exception)


def test_a_network_name_without_weights_says_how_to_give_them():
    result = runner.invoke(app, ["resnet18", "--data", "synthetic"])
    assert isinstance(result.exception, ValueError)
    assert "checkpoint not found: resnet18" in str(result.exception) and "--weights FILE" in str(result.exception)
