"""save/load: round trip without the user's script, atomic writes, no unpickling, clear errors."""
import pytest
import torch
from torch import nn

from auxsurgery import CheckpointError, attach_aux_blocks, load, save
from auxsurgery.checkpoint import read_spec


@pytest.fixture()
def aux():
    model = attach_aux_blocks("resnet18", at="layer1,layer2", num_classes=10, input_size=(3, 32, 32),
                              head=["default", "paper-block3"], alpha=[1.0, 2.0, 0.5])
    model.train()
    model(torch.rand(4, 3, 32, 32))  # move BN statistics away from their initial values
    return model.eval()


def test_round_trip_rebuilds_from_the_spec_alone(aux, tmp_path):
    path = save(aux, tmp_path / "model.safetensors")
    loaded = load(path)
    x = torch.rand(3, 3, 32, 32)
    assert torch.equal(loaded(x), aux(x))
    assert loaded.alpha.tolist() == [1.0, 2.0, 0.5]
    spec = read_spec(path)
    assert spec["attach_points"] == ["layer1", "layer2"] and spec["backbone"]["name"] == "resnet18"
    assert spec["version"] and spec["input_size"] == [3, 32, 32]


def test_save_is_atomic_and_leaves_no_temp_files(aux, tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"previous good checkpoint")
    with pytest.raises(RuntimeError):
        import auxsurgery.checkpoint as ck
        original = ck.save_model
        ck.save_model = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("disk full"))
        try:
            save(aux, path)
        finally:
            ck.save_model = original
    assert path.read_bytes() == b"previous good checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_corrupt_and_missing_files_get_clear_errors(aux, tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load(tmp_path / "nope.safetensors")
    path = save(aux, tmp_path / "model.safetensors")
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load(path)


def test_pickle_files_are_refused_not_executed(tmp_path):
    marker = tmp_path / "executed"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pt"
    torch.save({"x": Exploit()}, path)
    with pytest.raises(CheckpointError):
        load(path)
    assert not marker.exists()


def test_mismatched_weights_are_reported(aux, tmp_path):
    from safetensors.torch import save_file

    path = save(aux, tmp_path / "model.safetensors")
    spec_json = __import__("json").dumps(read_spec(path))
    save_file({"heads.0.weight": torch.zeros(1)}, str(path), metadata={"auxsurgery_spec": spec_json})
    with pytest.raises(CheckpointError, match="do not match"):
        load(path)


def test_custom_backbone_and_custom_heads_need_to_be_passed_back(tmp_path):
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    head = lambda shape, n: nn.Sequential(nn.Flatten(), nn.Linear(shape[0] * shape[1] * shape[2], n))  # noqa: E731
    aux = attach_aux_blocks(net, at="1", input_size=(3, 8, 8), head=head, mean=[0.5] * 3, std=[0.2] * 3).eval()
    path = save(aux, tmp_path / "custom.safetensors")
    with pytest.raises(CheckpointError, match="backbone="):
        load(path)
    fresh = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    with pytest.raises(CheckpointError, match="head="):
        load(path, backbone=fresh)
    loaded = load(path, backbone=fresh, head=head)
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(loaded(x), aux(x))


def _rewrite(path, spec=None, tensors=None):
    """Re-save a checkpoint with an altered spec and/or tensors (what a hostile or careless edit does)."""
    import json

    from safetensors.torch import load_file, save_file

    data = load_file(str(path))
    data.update(tensors or {})
    save_file(data, str(path), metadata={"auxsurgery_spec": json.dumps(spec if spec is not None else read_spec(path))})


@pytest.mark.parametrize("alpha", [float("nan"), -1.0])
def test_alpha_tensor_that_disagrees_with_the_spec_is_refused(aux, tmp_path, alpha):
    path = save(aux, tmp_path / "model.safetensors")
    _rewrite(path, tensors={"alpha": torch.tensor([alpha, 2.0, 0.5])})
    with pytest.raises(CheckpointError, match="alpha weights stored with the tensors"):
        load(path)


@pytest.mark.parametrize("tensors, message", [
    ({"normalize.mean": torch.zeros(1, 3, 1, 1)}, "input normalisation stored with the tensors .* disagrees with the spec"),
    ({"normalize.std": torch.zeros(1, 3, 1, 1)}, "stored input normalisation is invalid .*std must be > 0"),
    ({"normalize.std": torch.full((1, 3, 1, 1), float("nan"))}, "stored input normalisation is invalid"),
])
def test_normalisation_tensors_that_disagree_with_the_spec_are_refused(aux, tmp_path, tensors, message):
    path = save(aux, tmp_path / "model.safetensors")
    _rewrite(path, tensors=tensors)
    with pytest.raises(CheckpointError, match=message):
        load(path)


@pytest.mark.parametrize("change, message", [
    (lambda s: "a string", "expected a JSON object, got str"),
    (lambda s: dict(s, format=999), "format 999 is not one this version reads"),
    (lambda s: dict(s, num_classes="10"), "num_classes must be an integer"),
    (lambda s: dict(s, num_classes=10**9), "num_classes must be an integer in 1..100000"),
    (lambda s: dict(s, input_size=[3, 100000, 100000]), "input_size must be"),
    (lambda s: dict(s, alpha=[1.0, float("nan"), 0.5]), "alpha must be 3 finite weights"),
    (lambda s: dict(s, alpha=[1.0, -2.0, 0.5]), "alpha must be 3 finite weights"),
    (lambda s: {k: v for k, v in s.items() if k != "heads"}, "missing heads"),
])
def test_invalid_specs_are_refused_before_anything_is_built(aux, tmp_path, change, message):
    path = save(aux, tmp_path / "model.safetensors")
    _rewrite(path, spec=change(read_spec(path)))
    with pytest.raises(CheckpointError, match=message):
        load(path)


def test_predict_checks_the_input_contract(aux):
    with pytest.raises(ValueError, match="images of size 1x32x32 but the model takes 3x32x32"):
        aux.predict(torch.rand(2, 1, 32, 32))
    with pytest.raises(ValueError, match="images of size 3x28x28"):
        aux.predict(torch.rand(2, 3, 28, 28))
    with pytest.raises(ValueError, match=r"finite pixels in \[0, 1\]"):
        aux.predict(torch.full((2, 3, 32, 32), float("nan")))
    with pytest.raises(ValueError, match=r"finite pixels in \[0, 1\]"):
        aux.predict(torch.rand(2, 3, 32, 32) * 255)
    assert aux.predict(torch.rand(2, 3, 32, 32)).shape == (2,)


def test_a_built_in_backbone_keeps_its_constructor_arguments(tmp_path):
    # A small_cnn of width 8 once came back at the default width 32 and failed to load its own weights.
    from auxsurgery import build_backbone

    backbone = build_backbone("small_cnn", num_classes=10, model_kwargs={"width": 8})
    aux = attach_aux_blocks(backbone, at="stage1", input_size=(3, 32, 32)).eval()
    save(aux, tmp_path / "narrow.safetensors")
    back = load(tmp_path / "narrow.safetensors").eval()
    x = torch.rand(2, 3, 32, 32)
    assert back.spec["backbone"]["kwargs"] == {"width": 8}
    assert torch.equal(back(x), aux(x))
