"""Export: torch.export (.pt2) and ONNX artifacts with the decision rule inside, their parity with PyTorch at
other batch sizes, the hook-fallback refusal, the lazy extra, the black-box attacks on the ONNX model, the CLI."""
import ast
import json
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import typer
from torch import nn
from typer.testing import CliRunner

import auxsurgery.cli.export
import auxsurgery.export
from auxsurgery import attach_aux_blocks, build_backbone, load_dataset, save
from auxsurgery.attacks import PGD, Boundary, Square, is_adversarial
from auxsurgery.export import (
    ExportError,
    MissingExportExtra,
    OnnxClassifier,
    check_parity,
    export_model,
    load_exported,
    output_names,
)

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def trained():
    """small_cnn with three Aux Blocks, every head trained for 20 steps on the synthetic shapes."""
    torch.manual_seed(0)
    aux = attach_aux_blocks(build_backbone("small_cnn", num_classes=10), at="auto:3", input_size=(3, 32, 32))
    data = load_dataset("synthetic", train=True, subset=640)
    x_all = torch.stack([data[i][0] for i in range(len(data))])
    y_all = torch.tensor([data[i][1] for i in range(len(data))])
    optimizer = torch.optim.AdamW(aux.parameters(), lr=6e-3)
    aux.train()
    for step in range(20):
        idx = torch.randint(0, len(x_all), (48,), generator=torch.Generator().manual_seed(step))
        logits = aux(x_all[idx])
        loss = sum(F.cross_entropy(head, y_all[idx]) for head in logits)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    aux.eval()
    test = load_dataset("synthetic", train=False, subset=40)
    x = torch.stack([test[i][0] for i in range(len(test))])
    y = torch.tensor([test[i][1] for i in range(len(test))])
    return aux, x, y


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    """The trained model exported once, both formats, with every output (vote, score, logits); traced at batch 2."""
    aux, _, _ = trained
    return export_model(aux, tmp_path_factory.mktemp("export") / "model", format="both", rule="all", batch_size=2)


@pytest.mark.parametrize("fmt", ["pt2", "onnx"])
def test_exported_model_agrees_with_pytorch_at_other_batch_sizes(trained, exported, fmt):
    aux, x, _ = trained
    assert exported[fmt].suffix == f".{fmt}"
    report = check_parity(aux, exported[fmt], x, batch_size=5)  # exported at batch 2, run at 5
    assert report.batch_sizes == [5] * 8
    assert report.label_agreement == {"vote": 1.0, "score": 1.0}
    assert report.max_diff <= 1e-4 and report.max_logit_diff <= 1e-4 and report.ok()
    model = load_exported(exported[fmt])
    assert model.outputs == output_names("all") and model.meta["rule"] == "all"
    assert model.meta["input_size"] == [3, 32, 32] and model.meta["spec"]["alpha"] == [1.0] * 4
    for batch in (1, 7):
        out = model(x[:batch])
        assert out["label_vote"].shape == (batch,) and out["label_vote"].dtype == torch.int64
        assert out["scores_score"].shape == (batch, 10) and out["logits"].shape == (4, batch, 10)
        assert torch.equal(out["label_vote"], aux.predict(x[:batch], "vote"))
        assert torch.equal(out["label_score"], aux.predict(x[:batch], "score"))
    # A trained model (well above chance), not a random one whose scores are all near-ties.
    assert (aux.predict(x, "vote") == trained[2]).float().mean() >= 0.2


@pytest.mark.parametrize("fmt", ["pt2", "onnx"])
def test_exported_model_flags_the_pixels_the_pytorch_model_refuses(trained, exported, fmt):
    aux, x, _ = trained
    bad = x[:4].clone()
    bad[0, 0, 0, 0], bad[1, 1, 2, 3], bad[2, 2, 5, 5] = float("nan"), 1.5, -0.1
    with pytest.raises(ValueError, match="finite pixels in"):
        aux.predict(bad)
    model = load_exported(exported[fmt])
    out = model(bad)
    invalid = model.meta["invalid_label"]
    assert invalid == -1
    assert out["label_vote"].tolist()[:3] == [invalid] * 3 and out["label_score"].tolist()[:3] == [invalid] * 3
    assert out["label_vote"][3] == aux.predict(bad[3:], "vote")[0]


def test_onnx_file_has_opset_18_and_a_symbolic_batch(exported):
    import onnx

    model = onnx.load(str(exported["onnx"]))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 18
    (pixels,) = model.graph.input
    assert pixels.name == "pixels" and pixels.type.tensor_type.shape.dim[0].dim_param
    assert [o.name for o in model.graph.output] == output_names("all")
    assert json.loads({p.key: p.value for p in model.metadata_props}["auxsurgery_export"])["rule"] == "all"


def test_single_rule_export(trained, tmp_path):
    aux, x, _ = trained
    rule = "score"
    paths = export_model(aux, tmp_path / "m.onnx", format="pt2", rule=rule)  # the suffix is the format's
    assert list(paths) == ["pt2"] and paths["pt2"].name == "m.pt2"
    report = check_parity(aux, paths["pt2"], x, batch_size=16)
    assert report.label_agreement == {rule: 1.0} and report.max_diff <= 1e-4
    assert load_exported(paths["pt2"]).outputs == ["label", "scores"]
    with pytest.raises(ValueError, match=f"exported with rule '{rule}'"):
        check_parity(aux, paths["pt2"], x, rule="all")


@pytest.mark.parametrize("rule", ["crossmax", "crossmax:k=2", "mean-logits"])
def test_registered_rules_export_with_the_rule_inside(trained, tmp_path, rule):
    """Any registered rule goes inside the program: both formats agree with predict at another batch size."""
    aux, x, _ = trained
    paths = export_model(aux, tmp_path / "m", format="both", rule=rule, batch_size=2)
    for fmt, path in paths.items():
        report = check_parity(aux, path, x, batch_size=5)
        assert report.label_agreement == {rule: 1.0} and report.max_diff <= 1e-4, fmt
        model = load_exported(path)
        assert model.meta["rule"] == rule
        assert torch.equal(model(x[:7])["label"], aux.predict(x[:7], rule)), fmt


def test_export_refuses_bad_arguments(trained, tmp_path):
    aux, _, _ = trained
    with pytest.raises(ValueError, match="unknown prediction rule 'majority'.*also takes 'all'"):
        export_model(aux, tmp_path / "m", rule="majority")
    with pytest.raises(ValueError, match="unknown export format 'tflite'"):
        export_model(aux, tmp_path / "m", format="tflite")
    with pytest.raises(TypeError, match="takes an AuxModel"):
        export_model(aux.public_model(), tmp_path / "m")


class Branchy(nn.Module):
    """A network with data-dependent control flow: neither torch.fx nor torch.export can trace it."""

    def __init__(self):
        super().__init__()
        self.stage1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.stage2 = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.stage1(x)
        if x.mean() > 0.5:
            x = x * 2
        return self.fc(self.stage2(x).mean((2, 3)))


def test_hook_fallback_exports_when_torch_export_can_and_is_refused_otherwise(tmp_path, capfd):
    hooked = attach_aux_blocks(build_backbone("small_cnn", num_classes=10), at="stage1,stage2",
                               input_size=(3, 32, 32), method="hooks").eval()
    assert hooked.spec["method"] == "hooks"
    path = export_model(hooked, tmp_path / "hooked", format="pt2", rule="score")["pt2"]
    assert check_parity(hooked, path, torch.rand(3, 3, 32, 32)).ok()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fx fallback's warning
        branchy = attach_aux_blocks(Branchy(), at="stage1,stage2", input_size=(3, 16, 16))
    assert branchy.spec["method"] == "hooks"
    capfd.readouterr()
    with pytest.raises(ExportError, match=r"attaches only through the forward-hook fallback \(torch.fx cannot trace "
                                          r"it\), and torch.export cannot export it either: .*data-dependent"):
        export_model(branchy, tmp_path / "branchy", format="pt2")
    assert not list(tmp_path.glob("branchy*"))
    assert "def forward" not in capfd.readouterr().err  # torch.export's partial-graph dump is kept quiet


def test_missing_extra_is_one_line_and_the_core_imports_without_it(trained, tmp_path, monkeypatch):
    aux, _, _ = trained
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("onnx") else real(name, *a))
    with pytest.raises(MissingExportExtra, match=r"^ONNX support needs the export extra \(onnx, onnxscript missing\): "
                                                 r"pip install 'auxsurgery\[export\]'$"):
        export_model(aux, tmp_path / "m", format="both")
    assert not list(tmp_path.iterdir())  # refused before anything was written
    with pytest.raises(ValueError):  # what the command line turns into one `error:` line
        OnnxClassifier(tmp_path / "m.onnx")
    # The core never imports the extra at module level: only inside the functions that need it.
    for module in (auxsurgery.export, auxsurgery.cli.export):
        tree = ast.parse(Path(module.__file__).read_text())
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        names = [a.name for n in top for a in n.names] + [n.module or "" for n in top if isinstance(n, ast.ImportFrom)]
        assert not [n for n in names if n.startswith("onnx")], module.__name__


def test_black_box_attacks_run_on_the_onnx_model(trained, exported):
    aux, x, y = trained
    model = OnnxClassifier(exported["onnx"])  # the vote's scores
    assert model.output == "scores_vote" and model.meta["rule"] == "all"
    x, y = x[:8], y[:8]
    with torch.no_grad():
        assert torch.equal(model(x).argmax(-1), aux.predict(x, "vote"))
    x_adv = Square(model, objective="margin-public", eps=8 / 255, queries=30, rule="public", seed=0)(x, y)
    assert (x_adv - x).abs().max() <= 8 / 255
    # Judged on the ONNX model by rule public: exactly the PyTorch model's vote.
    assert torch.equal(is_adversarial(model, x_adv, y, rule="public"), aux.predict(x_adv, "vote") != y)
    x_b = Boundary(model, steps=5, init_trials=10, rule="public", seed=0)(x, y)
    assert x_b.shape == x.shape and torch.isfinite(x_b).all()
    assert OnnxClassifier(exported["onnx"], log_probs=True)(x).exp().sum(-1).allclose(torch.ones(8), atol=1e-5)
    with pytest.raises(TypeError, match="no gradients.*Square, Boundary"):
        PGD(model, eps=8 / 255, steps=1)(x, y)


def _cli():
    from auxsurgery.cli.export import export

    app = typer.Typer()
    app.command()(export)
    return app


def test_export_command_with_parity_check(trained, tmp_path):
    aux, _, _ = trained
    checkpoint = save(aux, tmp_path / "model.safetensors")
    result = CliRunner().invoke(_cli(), [str(checkpoint), "--format", "pt2", "--rule", "score", "--out",
                                         str(tmp_path / "deploy"), "--check", "synthetic", "--points", "24", "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["files"] == {"pt2": str(tmp_path / "deploy" / "model.pt2")} and document["ok"] is True
    (parity,) = document["parity"]
    assert parity["n"] == 24 and parity["label_agreement"] == {"score": 1.0} and parity["max_diff"] <= 1e-4
    bad = CliRunner().invoke(_cli(), [str(checkpoint), "--rule", "crosmax"])
    assert bad.exit_code != 0 and "Did you mean 'crossmax'?" in str(bad.exception)


def test_export_out_names_the_file_with_one_format_and_never_makes_a_folder_of_it(trained, tmp_path):
    aux, _, _ = trained
    checkpoint = save(aux, tmp_path / "model.safetensors")
    result = CliRunner().invoke(_cli(), [str(checkpoint), "--format", "pt2", "--out", str(tmp_path / "deploy" /
                                                                                         "m.pt2"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["files"] == {"pt2": str(tmp_path / "deploy" / "m.pt2")}
    assert (tmp_path / "deploy" / "m.pt2").is_file()
    mismatch = CliRunner().invoke(_cli(), [str(checkpoint), "--format", "both", "--out", str(tmp_path / "m.onnx")])
    assert "--out " + str(tmp_path / "m.onnx") + " names a .onnx file but --format is both" in str(mismatch.exception)
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("saved, message", [
    (lambda net: net.state_dict(), "holds plain weights, not an auxsurgery checkpoint"),
    (lambda net: net, "holds Python objects besides tensors (a reference to auxsurgery.backbones.SmallCNN)"),
])
def test_export_of_a_torch_save_file_names_what_it_holds(tmp_path, saved, message):
    """A plain state dict, or a whole model pickled with torch.save, is named as such, not as a corrupt file."""
    path = tmp_path / "my_resnet.pth"
    torch.save(saved(build_backbone("small_cnn", num_classes=10).net), path)
    result = CliRunner().invoke(_cli(), [str(path)])
    assert isinstance(result.exception, ValueError) and "corrupt" not in str(result.exception)
    assert str(result.exception).startswith(f"{path} {message}")
    assert list(tmp_path.iterdir()) == [path]


@pytest.mark.parametrize("meta, message", [
    ('{"rule": "all", "outputs": ["scores_vote", "label_vote", "label_score", "scores_score", "logits"]}',
     "names the outputs \\['scores_vote', 'label_vote'"),  # swapped: m(x)["label_vote"] would be the scores
    ('{"rule": "all", "outputs": ["label", "scores"]}', "names 2 outputs, the program returns 5"),
    ("{not json", "is not valid JSON"),
    ('["label", "scores"]', "is not a JSON object"),
])
def test_exported_metadata_is_checked_against_the_program(exported, tmp_path, meta, message):
    import onnx

    changed = tmp_path / "changed.pt2"
    torch.export.save(torch.export.load(str(exported["pt2"])), str(changed), extra_files={"auxsurgery_export.json": meta})
    with pytest.raises(ValueError, match=f"changed.pt2: its auxsurgery metadata .*{message}.*export the model again"):
        load_exported(changed)
    if "JSON" in message:  # ONNX takes its output names from its graph, and its metadata from the same reader
        model = onnx.load(str(exported["onnx"]))
        next(p for p in model.metadata_props if p.key == "auxsurgery_export").value = meta
        onnx.save(model, str(tmp_path / "changed.onnx"))
        with pytest.raises(ValueError, match=f"changed.onnx: its auxsurgery metadata .*{message}"):
            load_exported(tmp_path / "changed.onnx")
        with pytest.raises(ValueError, match=f"changed.onnx: its auxsurgery metadata .*{message}"):
            OnnxClassifier(tmp_path / "changed.onnx")


def test_a_program_whose_outputs_do_not_fit_its_metadata_names_is_refused(tmp_path):
    class ScoresFirst(nn.Module):  # returns (scores, label): the reverse of what the metadata names
        def forward(self, x):
            scores = x.flatten(1)[:, :3]
            return scores, scores.argmax(-1)

    path = tmp_path / "swapped.pt2"
    torch.export.save(torch.export.export(ScoresFirst(), (torch.rand(2, 3, 2, 2),)), str(path),
                      extra_files={"auxsurgery_export.json": '{"rule": "vote", "outputs": ["label", "scores"]}'})
    with pytest.raises(ValueError, match="does not fit the program's outputs \\('label' is a torch.float32 tensor of 2 "
                                         "dimension\\(s\\); 'scores' is a torch.int64 tensor of 1 dimension"):
        load_exported(path)
