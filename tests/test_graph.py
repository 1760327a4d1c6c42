"""Attach-point discovery, layout inference, automatic placement and state preservation."""
import pytest
import torch
import torchvision
from torch import nn

from auxsurgery import attach_aux_blocks, build_backbone, list_attach_points
from auxsurgery._utils import preserved_state
from auxsurgery.graph import AttachPoint, Layout, auto_points, infer_layout


def test_resnet18_points_have_shapes_strides_and_classifier_flag():
    points = {p.name: p for p in list_attach_points(torchvision.models.resnet18(num_classes=10), (3, 32, 32), depth=1)}
    assert points["layer1"].shape == (64, 8, 8) and points["layer1"].stride == 4
    assert points["layer3"].shape == (256, 2, 2) and points["layer3"].stride == 16
    assert points["layer1"].kind == "block" and points["relu"].kind == "layer" and points["flatten"].kind == "op"
    assert points["fc"].in_classifier and not points["layer4"].in_classifier
    names = list(points)
    assert names.index("layer1") < names.index("layer2") < names.index("fc")


def test_depth_limits_names_and_none_lists_leaf_ops():
    net = torchvision.models.resnet18(num_classes=10)
    shallow = {p.name for p in list_attach_points(net, (3, 32, 32), depth=1)}
    everything = {p.name for p in list_attach_points(net, (3, 32, 32), depth=None)}
    assert "layer1.0" not in shallow and "layer1.0" in everything
    assert "layer1.0.add" in everything and shallow < everything


@pytest.mark.parametrize("shape,expected", [
    ((2, 64, 8, 8), Layout("nchw", 64, 8, 8)),
    ((2, 8, 8, 96), Layout("nhwc", 96, 8, 8)),
    ((2, 8, 8, 8), Layout("nchw", 8, 8, 8)),            # ambiguous: NCHW wins
    ((2, 197, 192), Layout("tokens", 192, 14, 14, 1)),  # ViT with a class token
    ((2, 196, 768), Layout("tokens", 768, 14, 14, 0)),  # Mixer
    ((2, 201, 64), Layout("tokens", 64, 14, 14, 5)),    # class + 4 register tokens
    ((2, 512), Layout("flat", 512, 1, 1)),
])
def test_infer_layout(shape, expected):
    assert infer_layout(shape, (224, 224) if len(shape) == 3 else (32, 32)) == expected


def test_infer_layout_rejects_what_is_not_a_grid():
    with pytest.raises(ValueError, match="token grid"):
        infer_layout((2, 768, 196), (224, 224))  # Mixer's transposed token-mixing branch
    with pytest.raises(ValueError, match="neither an NCHW nor an NHWC map"):
        infer_layout((2, 64, 49, 64), (224, 224))  # MaxViT attention windows
    with pytest.raises(ValueError, match="unsupported feature shape"):
        infer_layout((2,), (32, 32))


@pytest.mark.parametrize("name,size,expected", [
    ("torchvision:resnet18", (3, 32, 32), ["layer1", "layer2", "layer3"]),
    ("torchvision:convnext_tiny", (3, 64, 64), ["features.1", "features.3", "features.5"]),
    ("timm:vit_tiny_patch16_224", (3, 224, 224), ["blocks.0", "blocks.4", "blocks.7"]),
    ("vgg16_cifar", (3, 32, 32), ["features.1", "features.4", "features.8"]),
    # A stem of four strided convs is one point, not four stages.
    ("timm:levit_128s", (3, 224, 224), ["stages.0", "stages.1", "stages.2"]),
])
def test_auto_points_pick_early_stage_outputs(name, size, expected):
    net = build_backbone(name, num_classes=10).net
    assert auto_points(list_attach_points(net, size, depth=3, ops=False), 3) == expected  # as attach does


def _map_point(name, side, channels=8, kind="block"):
    return AttachPoint(name, kind, (channels, side, side), Layout("nchw", channels, side, side), 64 / side, False)


def test_auto_points_count_a_stem_once():
    points = [_map_point("stem.conv1", 32), _map_point("stem.conv2", 16), _map_point("stem", 16),
              _map_point("stages.0", 16), _map_point("stages.1", 8), _map_point("stages.2", 4)]
    assert auto_points(points, 3) == ["stages.0", "stages.1", "stages.2"]
    # A stem that is not a candidate itself stands as its last inner point.
    inner_only = [_map_point("stem.conv1", 32), _map_point("stem.conv2", 16),
                  _map_point("stages.0", 8), _map_point("stages.1", 4), _map_point("stages.2", 2)]
    assert auto_points(inner_only, 3) == ["stem.conv2", "stages.0", "stages.1"]


def test_auto_with_fewer_stages_than_asked_warns_and_attaches_what_it_found():
    net = nn.Sequential(nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU()),
                        nn.Sequential(nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.ReLU()),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    with pytest.warns(UserWarning, match="auto:3 found only 2 stage outputs"):
        aux = attach_aux_blocks(net, at="auto:3", input_size=(3, 8, 8))
    assert aux.attach_points == ["0", "1"]


class TokenLabellingNet(nn.Module):
    """Like VOLO: an auxiliary per-position classifier merged into the output."""

    pretrained_cfg = {"classifier": ("head", "aux_head")}

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU())
        self.aux_head = nn.Conv2d(8, 4, 1)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = self.body(x)
        return self.head(x.mean((2, 3))) + self.aux_head(x).amax((2, 3))


def test_classifier_modules_timm_declares_are_no_attach_points():
    points = {p.name: p for p in list_attach_points(TokenLabellingNet(), (3, 16, 16))}
    assert points["aux_head"].in_classifier and points["head"].in_classifier
    assert not points["body"].in_classifier
    assert "aux_head" not in auto_points(list(points.values()), 3)
    with pytest.raises(ValueError, match="'aux_head' is in the classifier"):
        attach_aux_blocks(TokenLabellingNet(), at="aux_head", input_size=(3, 16, 16))


def test_preserved_state_restores_modes_and_batchnorm_statistics():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    net[0].eval()
    before = net[1].running_mean.clone()
    with pytest.raises(RuntimeError):
        with preserved_state(net, buffers=True):
            net.train()
            net(torch.rand(4, 3, 8, 8) * 10)
            raise RuntimeError("tracing failed")
    assert torch.equal(net[1].running_mean, before)
    assert net.training and not net[0].training and net[1].training


def test_preserved_state_restores_requires_grad_only_when_asked():
    net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    net[1].requires_grad_(False)
    with preserved_state(net, requires_grad=True):
        net.requires_grad_(False)
        net.eval()
    assert [p.requires_grad for p in net.parameters()] == [True, True, False, False]
    assert net.training  # the training flags too (the default)
    with preserved_state(net, training=False):
        net.eval()
    assert not net.training
