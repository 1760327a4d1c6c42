"""Your weights in: state dicts, safetensors and timm checkpoints by path, the hubs' pretrained names (a local
file standing in for the download), model factories, and files that are refused."""
import argparse
import builtins
import hashlib
import json
import shutil

import pytest
import torch
import torch.hub
import torchvision
from safetensors.torch import save_file
from train_helpers import briefly_trained

import auxsurgery
from auxsurgery import attach_aux_blocks, build_backbone, load, save
from auxsurgery.backbones import WeightsError, backbone_from_factory, backbone_from_spec, read_state_dict

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A torchvision resnet18 (10 classes) after a few SGD steps on random data, saved as a plain state dict."""
    backbone = briefly_trained("resnet18", batch=8, lr=0.01)
    backbone.eval()
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(backbone.net.state_dict(), path)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = backbone(x)
    return backbone, path, x, logits


def _logits(backbone, x):
    with torch.no_grad():
        return backbone.eval()(x)


def test_state_dict_reloads_bit_identical_and_is_recorded(trained):
    backbone, path, x, logits = trained
    rebuilt = build_backbone("resnet18", num_classes=10, weights=path)
    assert torch.equal(_logits(rebuilt, x), logits)
    recorded = rebuilt.spec["weights"]
    assert recorded["path"] == str(path.resolve())
    assert recorded["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert recorded["format"] == "torch" and recorded["key"] is None and recorded["prefix"] is None


def test_wrapper_prefixes_and_timm_checkpoints_load(trained, tmp_path):
    backbone, _, x, logits = trained
    state = backbone.net.state_dict()
    ddp = tmp_path / "ddp.pth"
    torch.save({f"module.{k}": v for k, v in state.items()}, ddp)
    rebuilt = build_backbone("resnet18", num_classes=10, weights=ddp)
    assert torch.equal(_logits(rebuilt, x), logits) and rebuilt.spec["weights"]["prefix"] == "module."

    # timm's train.py: EMA weights next to the raw ones, an argparse.Namespace of the run's arguments,
    # Lightning-style "model." keys inside; the EMA weights win, as in timm.
    raw = {f"model.{k}": torch.zeros_like(v) for k, v in state.items()}
    checkpoint = {"epoch": 3, "arch": "resnet18", "args": argparse.Namespace(lr=0.1, model="resnet18"),
                  "state_dict": raw, "state_dict_ema": {f"model.{k}": v for k, v in state.items()}}
    timm_file = tmp_path / "checkpoint-3.pth.tar"
    torch.save(checkpoint, timm_file)
    rebuilt = build_backbone("resnet18", num_classes=10, weights=timm_file)
    assert torch.equal(_logits(rebuilt, x), logits)
    assert rebuilt.spec["weights"]["key"] == "state_dict_ema" and rebuilt.spec["weights"]["prefix"] == "model."

    # safetensors, including the state dict of a NormalizedBackbone (normalize.* plus net.*)
    safe = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in backbone.state_dict().items()}, str(safe))
    rebuilt = build_backbone("resnet18", num_classes=10, weights=str(safe))
    assert torch.equal(_logits(rebuilt, x), logits) and rebuilt.spec["weights"]["format"] == "safetensors"


def test_mismatch_lists_missing_unexpected_and_shape_conflicts(trained, tmp_path):
    _, path, _, _ = trained
    with pytest.raises(WeightsError) as err:
        build_backbone("resnet34", num_classes=10, weights=path)
    message = str(err.value)
    assert "missing key" in message and "layer1.2.conv1.weight" in message  # resnet34 has 3 blocks in layer1
    assert message.count(", ...") >= 1  # lists the first few, with the count
    with pytest.raises(WeightsError) as err:
        build_backbone("squeezenet1_1", num_classes=10, weights=path)
    message = str(err.value)
    assert "missing keys" in message and "unexpected keys" in message and "another architecture" in message
    # Only the classifier differs: a shape conflict, and the hint names the file's class count.
    with pytest.raises(WeightsError, match=r"2 shape conflicts \(fc.weight: file \[10, 512\] vs model \[7, 512\]"
                                           r".*the file has 10 classes"):
        build_backbone("resnet18", num_classes=7, weights=path)


def test_pickle_with_code_is_refused_and_not_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return builtins.exec, (f"open({str(marker)!r}, 'w').write('ran')",)

    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": build_backbone("small_cnn", num_classes=10).net.state_dict(), "x": Payload()}, evil)
    with pytest.raises(WeightsError, match=r"Python objects besides tensors \(a reference to exec\).*weights_only"):
        build_backbone("small_cnn", num_classes=10, weights=evil)
    assert not marker.exists()
    # A whole pickled model (not its state dict) is refused the same way.
    whole = tmp_path / "model.pth"
    torch.save(build_backbone("small_cnn", num_classes=10).net, whole)
    with pytest.raises(WeightsError, match="SmallCNN.*state_dict"):
        build_backbone("small_cnn", num_classes=10, weights=whole)


def test_unreadable_and_missing_files(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all" * 4)
    with pytest.raises(WeightsError, match="not a readable"):
        read_state_dict(junk)
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        build_backbone("small_cnn", num_classes=10, weights=tmp_path / "nope.pth")
    no_state = tmp_path / "meta.pth"
    torch.save({"epoch": 3, "metric": 0.5}, no_state)
    with pytest.raises(WeightsError, match="holds no state dict.*state_dict_ema"):
        read_state_dict(no_state)
    with pytest.raises(ValueError, match="pick one"):
        build_backbone("small_cnn", num_classes=10, weights=junk, pretrained=True)


def test_checkpoint_keeps_its_own_weights_and_records_the_source(trained, tmp_path):
    _, path, x, _ = trained
    copy = tmp_path / "mine.pth"
    shutil.copy(path, copy)
    aux = attach_aux_blocks(build_backbone("resnet18", num_classes=10, weights=copy), at="layer1,layer2",
                            input_size=(3, 32, 32)).eval()
    with torch.no_grad():
        next(aux.heads.parameters()).add_(1.0)
        aux.public_model().net.fc.bias.add_(1.0)  # the checkpoint's weights differ from the file's
        expected = aux(x)
    save(aux, tmp_path / "aux.safetensors")
    with pytest.raises(WeightsError, match="is an auxsurgery checkpoint"):
        build_backbone("resnet18", num_classes=10, weights=tmp_path / "aux.safetensors")
    copy.unlink()  # loading must not need (or read) the weights file
    loaded = load(tmp_path / "aux.safetensors")
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)
    assert loaded.spec["backbone"]["weights"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def torch_hub(tmp_path, monkeypatch):
    """torch.hub with a local file standing in for every download (its hash check is the download's)."""
    served = {}

    def download(url, dst, hash_prefix=None, progress=True):
        served.setdefault("urls", []).append(url)
        shutil.copy(served["file"], dst)

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    return served


def test_torchvision_pretrained_names_through_torch_hub(torch_hub, tmp_path):
    net = torchvision.models.resnet18(weights=None)
    torch_hub["file"] = tmp_path / "resnet18-imagenet.pth"
    torch.save(net.state_dict(), torch_hub["file"])
    for kwargs in ({"pretrained": True}, {"weights": "DEFAULT"}, {"weights": "IMAGENET1K_V1"},
                   {"weights": "ResNet18_Weights.IMAGENET1K_V1"}):
        backbone = build_backbone("resnet18", num_classes=1000, **kwargs)
        assert torch.equal(backbone.net.conv1.weight, net.conv1.weight)
        assert torch.equal(backbone.net.fc.weight, net.fc.weight)
        assert backbone.spec["pretrained"] == "ResNet18_Weights.IMAGENET1K_V1"
    assert torch_hub["urls"] == ["https://download.pytorch.org/models/resnet18-f37072fd.pth"]  # then cached
    with pytest.raises(ValueError, match="no weights 'IMAGENET9K'.*IMAGENET1K_V1"):
        build_backbone("resnet18", weights="IMAGENET9K")


@pytest.mark.filterwarnings("ignore:The default weight initialization of GoogleNet:FutureWarning")
def test_torchvision_weights_that_change_the_network_rebuild_from_the_spec(torch_hub, tmp_path):
    # GoogLeNet's weights switch on its input transform and drop its aux classifiers after loading.
    torch_hub["file"] = tmp_path / "googlenet.pth"
    torch.save(torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=False).state_dict(),
               torch_hub["file"])
    backbone = build_backbone("googlenet", weights="DEFAULT", num_classes=10)
    assert backbone.spec["kwargs"] == {"transform_input": True, "aux_logits": False}
    rebuilt = backbone_from_spec(backbone.spec)
    assert rebuilt.net.transform_input and rebuilt.net.aux1 is None
    assert rebuilt.net.state_dict().keys() == backbone.net.state_dict().keys()


@pytest.fixture
def hf_hub(tmp_path, monkeypatch):
    """timm's Hugging Face Hub download with local files standing in (config.json, model.safetensors)."""
    import timm
    import timm.models._hub as timm_hub

    net = timm.create_model("resnet18", num_classes=1000)
    save_file(net.state_dict(), str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({
        "architecture": "resnet18", "num_classes": 1000, "num_features": 512,
        "pretrained_cfg": {"tag": "a1_in1k", "input_size": [3, 160, 160], "mean": [0.4, 0.4, 0.4],
                           "std": [0.2, 0.2, 0.2], "num_classes": 1000, "classifier": "fc"}}))
    calls = []

    def download(repo_id, filename, revision=None, cache_dir=None, **kwargs):
        calls.append((repo_id, filename))
        return str(tmp_path / filename)

    monkeypatch.setattr(timm_hub, "hf_hub_download", download)
    return net, calls


def test_timm_pretrained_and_hf_hub_names_through_timms_loader(hf_hub):
    net, calls = hf_hub
    backbone = build_backbone("hf-hub:timm/resnet18.a1_in1k", pretrained=True, num_classes=10)
    assert calls == [("timm/resnet18.a1_in1k", "config.json"), ("timm/resnet18.a1_in1k", "model.safetensors")]
    assert torch.equal(backbone.net.conv1.weight, net.conv1.weight)
    assert backbone.spec["mean"] == [0.4] * 3 and backbone.default_input_size == (3, 160, 160)
    assert backbone.spec["name"] == "resnet18" and backbone.spec["pretrained"] == "hf-hub:timm/resnet18.a1_in1k"
    calls.clear()
    assert backbone_from_spec(backbone.spec).spec["name"] == "resnet18" and calls == []  # no hub on reload

    default = build_backbone("timm:resnet18", pretrained=True)  # timm's default tag lives on the hub too
    assert torch.equal(default.net.fc.weight, net.fc.weight) and calls[-1][1] == "model.safetensors"
    tagged = build_backbone("timm:resnet18.a1_in1k", pretrained=True, num_classes=10)
    assert torch.equal(tagged.net.conv1.weight, net.conv1.weight)
    with pytest.raises(ValueError, match="named weights are torchvision's"):
        build_backbone("timm:resnet18", weights="DEFAULT")


FACTORY = '''
import torch
from torch import nn

def make(num_classes=10):
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, num_classes))

def no_args():
    return make(5)

def not_a_module():
    return 42
'''


@pytest.fixture
def factory_module(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path / "my_models.py"


def test_model_factory_builds_your_network(factory_module, tmp_path):
    backbone = build_backbone("factory:my_models:make", num_classes=7, mean=[0.5] * 3, std=[0.25] * 3)
    assert backbone.spec == {"name": "my_models:make", "source": "factory", "num_classes": 7, "in_chans": 3,
                             "mean": [0.5] * 3, "std": [0.25] * 3}
    assert backbone(torch.rand(2, 3, 16, 16)).shape == (2, 7)
    assert backbone_from_factory("my_models:no_args", mean=[0], std=[1]).spec["num_classes"] == 5
    assert backbone_from_factory(f"{factory_module}:make", mean=[0], std=[1], num_classes=3).spec["in_chans"] == 3
    with pytest.raises(ValueError, match="needs its input normalisation: pass mean and std"):
        build_backbone("factory:my_models:make")
    with pytest.raises(ValueError, match="returned int, not a torch nn.Module: name a function that builds"):
        backbone_from_factory("my_models:not_a_module", mean=[0], std=[1])
    with pytest.raises(ValueError, match="has no 'mak'.*close matches: make"):
        backbone_from_factory("my_models:mak", mean=[0], std=[1])
    with pytest.raises(ValueError, match="cannot import 'nowhere_to_be_found'"):
        backbone_from_factory("nowhere_to_be_found:make", mean=[0], std=[1])

    # weights=PATH loads into the factory's network; a checkpoint rebuilds it only when asked to.
    torch.save(backbone.net.state_dict(), tmp_path / "mine.pth")
    reloaded = build_backbone("factory:my_models:make", num_classes=7, mean=[0.5] * 3, std=[0.25] * 3,
                              weights=tmp_path / "mine.pth")
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(_logits(reloaded, x), _logits(backbone, x))
    aux = attach_aux_blocks(reloaded, at="1", input_size=(3, 16, 16))
    save(aux, tmp_path / "aux.safetensors")
    with pytest.raises(ValueError, match="model factory 'my_models:make', which runs your code"):
        load(tmp_path / "aux.safetensors")
    rebuilt = load(tmp_path / "aux.safetensors", backbone=backbone_from_spec(aux.spec["backbone"], allow_factory=True))
    with torch.no_grad():
        assert torch.equal(rebuilt(x), aux.eval()(x))


def test_lazy_api_still_resolves():
    assert auxsurgery.build_backbone is build_backbone
