"""Head presets, the default sizing rule, custom factories and the FLOP overhead.

The preset forward test takes the ``device`` and ``dtype`` fixtures (``--device``, ``--dtype``).
"""
import pytest
import torch
from torch import nn

from auxsurgery import attach_aux_blocks, list_heads, register_head
from auxsurgery.cost import head_costs
from auxsurgery.heads import build_head, default_head, get_head_factory

PRESET_SHAPES = {
    "paper-block1": (64, 32, 32),
    "paper-block2": (256, 8, 8),
    "paper-block3": (512, 2, 2),
    "paper-mnist": (6, 12, 12),
    "paper-cifar10": (64, 32, 32),
    "paper-miniimagenet": (64, 84, 84),
    "default": (64, 56, 56),
}


@pytest.mark.parametrize("preset", sorted(PRESET_SHAPES))
def test_presets_map_their_feature_to_logits(preset, device, dtype):
    shape = PRESET_SHAPES[preset]
    head = build_head(get_head_factory(preset), shape, 10, "p").to(device, dtype)
    logits = head(torch.rand(3, *shape).to(device, dtype))
    assert logits.shape == (3, 10) and logits.dtype == dtype and torch.isfinite(logits).all()


def test_paper_tables_layer_by_layer():
    convs = [m for m in get_head_factory("paper-block1")((64, 32, 32), 10).modules() if isinstance(m, nn.Conv2d)]
    assert [(c.kernel_size[0], c.out_channels, c.stride[0]) for c in convs] == [(7, 96, 2), (3, 192, 1), (3, 384, 1), (3, 512, 1)]
    linears = [m for m in get_head_factory("paper-cifar10")((64, 32, 32), 10).modules() if isinstance(m, nn.Linear)]
    assert [lin.out_features for lin in linears] == [200, 10]
    mnist = [m for m in get_head_factory("paper-mnist")((16, 4, 4), 10).modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in mnist] == [(256, 200), (200, 10)]
    block3 = get_head_factory("paper-block3")((512, 2, 2), 10)
    assert not any(isinstance(m, nn.Conv2d) for m in block3.modules())


@pytest.mark.parametrize("side,stages", [(2, 0), (4, 1), (8, 2), (16, 3), (56, 3)])
def test_default_rule_uses_fewer_stages_on_smaller_maps(side, stages):
    head = default_head((64, side, side), 10)
    assert sum(isinstance(m, nn.Conv2d) for m in head.modules()) == stages


def test_default_width_knob_scales_channels():
    narrow = get_head_factory("default:0.5")((64, 8, 8), 10)
    wide = get_head_factory("default:2")((64, 8, 8), 10)
    first = lambda h: next(m for m in h.modules() if isinstance(m, nn.Conv2d)).out_channels  # noqa: E731
    assert (first(narrow), first(wide)) == (32, 128)


def test_unknown_preset_and_bad_width():
    with pytest.raises(ValueError, match="valid presets: default"):
        get_head_factory("paper-block9")
    with pytest.raises(ValueError, match="width"):
        get_head_factory("default:0")


def test_registered_custom_head_is_usable_by_name():
    @register_head("test-linear")
    def linear_head(shape, num_classes):
        return nn.Sequential(nn.Flatten(), nn.Linear(shape[0] * shape[1] * shape[2], num_classes))

    assert "test-linear" in list_heads()
    aux = attach_aux_blocks("resnet18", at="layer3", num_classes=10, input_size=(3, 32, 32), head="test-linear")
    assert isinstance(aux.heads[0][1], nn.Linear)


def test_three_default_heads_on_resnet18_cost_under_a_quarter_of_the_backbone():
    aux = attach_aux_blocks("resnet18", at="auto:3", num_classes=10, input_size=(3, 32, 32))
    costs = head_costs(aux)
    assert costs[0].name == "public" and costs[0].flops > 0
    overhead = sum(c.flops for c in costs[1:]) / costs[0].flops
    assert len(costs) == 4 and 0 < overhead < 0.25
