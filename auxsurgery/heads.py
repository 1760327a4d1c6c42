"""Aux Block heads: the default resolution-sized rule, the paper's presets, custom factories.

A head factory is any callable ``(shape, num_classes) -> nn.Module`` where ``shape`` is
the NCHW feature map's ``(C, H, W)``; the module maps ``[B, C, H, W]`` to ``[B, num_classes]``.
Presets are registered by name (timm-style) so a checkpoint can rebuild them.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from ._utils import preserved_state

HeadFactory = Callable[[tuple, int], nn.Module]
_PRESETS: dict[str, HeadFactory] = {}


def register_head(name: str):
    """Decorator that registers a head factory under ``name``."""

    def register(factory: HeadFactory) -> HeadFactory:
        _PRESETS[name] = factory
        return factory

    return register


def list_heads() -> list[str]:
    """Names of the registered head presets."""
    return sorted(_PRESETS)


def get_head_factory(head: str | HeadFactory) -> HeadFactory:
    """Resolve a preset name (or ``default:<width>``) or pass a callable through."""
    if callable(head):
        return head
    name, _, arg = head.partition(":")
    if name not in _PRESETS:
        raise ValueError(f"unknown head preset {head!r}; valid presets: {', '.join(list_heads())}")
    if arg:
        if name != "default":
            raise ValueError(f"only the 'default' preset takes a width (default:<width>), got {head!r}")
        width = float(arg)
        if not 0 < width <= 8:
            raise ValueError(f"head width must be in (0, 8], got {width}")
        return lambda shape, num_classes: default_head(shape, num_classes, width=width)
    return _PRESETS[name]


def conv_bn_relu(in_ch: int, out_ch: int, kernel: int, stride: int = 1) -> nn.Sequential:
    """Convolution + BatchNorm + ReLU with 'same'-style padding."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


def pool() -> nn.MaxPool2d:
    """2x2 max-pool that keeps a 1x1 map at 1x1 instead of failing."""
    return nn.MaxPool2d(2, ceil_mode=True)


def classifier_on(features: nn.Module, shape: tuple, hidden: list[int], num_classes: int) -> nn.Sequential:
    """``features`` then flatten and fully connected layers sized by probing ``features``."""
    with torch.no_grad():
        features.eval()
        flat = features(torch.zeros(1, *shape)).numel()
        features.train()
    layers: list[nn.Module] = [features, nn.Flatten()]
    for width in hidden:
        layers += [nn.Linear(flat, width), nn.ReLU(inplace=True)]
        flat = width
    layers.append(nn.Linear(flat, num_classes))
    return nn.Sequential(*layers)


@register_head("default")
def default_head(shape: tuple, num_classes: int, width: float = 1.0) -> nn.Module:
    """The resolution-sized rule (after the paper's Section IV-B).

    Each stage is conv3x3-BN-ReLU + 2x2 max-pool; a map of side ``s`` gets
    ``clamp(floor(log2 s) - 1, 0, 3)`` stages, so 2x2 maps get only pooling + FC (the
    paper's Block3), 8x8 maps two stages, >= 16x16 three. Maps of side >= 32 start with
    a stride-2 convolution (as Table IV's 7x7/2) to keep the cost small. Channels start
    at ``width * max(C, 32)`` and double per stage (capped at 512), which keeps each
    stage's FLOPs roughly constant as the map shrinks. A global average pool and one
    linear layer finish the head.
    """
    channels, height, width_px = shape
    side = min(height, width_px)
    stages = max(0, min(3, int(math.floor(math.log2(max(side, 1)))) - 1))
    layers: list[nn.Module] = []
    in_ch = channels
    out_ch = max(8, round(width * max(channels, 32)))
    for i in range(stages):
        stride = 2 if i == 0 and side >= 16 else 1
        layers += [conv_bn_relu(in_ch, out_ch, 3, stride), pool()]
        in_ch, out_ch = out_ch, min(512, out_ch * 2)
    if not layers:
        layers.append(pool())
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_ch, num_classes)]
    return nn.Sequential(*layers)


@register_head("paper-block1")
def paper_block1(shape: tuple, num_classes: int) -> nn.Module:
    """Table IV: the paper's Aux Block for early VGG16 layers (Block1)."""
    c = shape[0]
    features = nn.Sequential(
        conv_bn_relu(c, 96, 7, stride=2), pool(),
        conv_bn_relu(96, 192, 3), pool(),
        conv_bn_relu(192, 384, 3), pool(),
        conv_bn_relu(384, 512, 3), pool(),
    )
    return classifier_on(features, shape, [], num_classes)


@register_head("paper-block2")
def paper_block2(shape: tuple, num_classes: int) -> nn.Module:
    """Table V, first column: Block2 for middle VGG16 layers."""
    c = shape[0]
    features = nn.Sequential(pool(), conv_bn_relu(c, 384, 3), pool(), conv_bn_relu(384, 512, 3), pool())
    return classifier_on(features, shape, [], num_classes)


@register_head("paper-block3")
def paper_block3(shape: tuple, num_classes: int) -> nn.Module:
    """Table V, second column: Block3 for a 2x2 map, only a max-pool and a linear layer."""
    return classifier_on(nn.Sequential(pool()), shape, [], num_classes)


@register_head("paper-mnist")
def paper_mnist(shape: tuple, num_classes: int) -> nn.Module:
    """Table IX: the MNIST Aux Block, FC 200 + FC 10 on the flattened feature."""
    return classifier_on(nn.Identity(), shape, [200], num_classes)


@register_head("paper-cifar10")
def paper_cifar10(shape: tuple, num_classes: int) -> nn.Module:
    """Table X: the CIFAR-10 Aux Block."""
    c = shape[0]
    features = nn.Sequential(
        conv_bn_relu(c, 64, 9, stride=4),
        conv_bn_relu(64, 256, 3), pool(),
        conv_bn_relu(256, 256, 3), pool(),
    )
    return classifier_on(features, shape, [200], num_classes)


@register_head("paper-miniimagenet")
def paper_miniimagenet(shape: tuple, num_classes: int) -> nn.Module:
    """Table XI: the Mini-ImageNet Aux Block."""
    c = shape[0]
    features = nn.Sequential(
        conv_bn_relu(c, 64, 9, stride=4),
        conv_bn_relu(64, 256, 3, stride=2), pool(),
        conv_bn_relu(256, 256, 3), pool(),
        conv_bn_relu(256, 512, 3), pool(),
    )
    return classifier_on(features, shape, [512], num_classes)


def build_head(factory: HeadFactory, shape: tuple, num_classes: int, point: str) -> nn.Module:
    """Build a head and check that it maps ``[B, *shape]`` to ``[B, num_classes]``."""
    try:
        head = factory(tuple(shape), num_classes)
    except Exception as err:
        raise ValueError(f"head factory failed at attach point {point!r} (feature {tuple(shape)}): {err}") from err
    if not isinstance(head, nn.Module):
        raise TypeError(f"head factory for {point!r} returned {type(head).__name__}, expected an nn.Module")
    try:
        with preserved_state(head, buffers=True), torch.no_grad():
            out = head.eval()(torch.zeros(2, *shape))
    except Exception as err:
        raise ValueError(f"head at {point!r} fails on its feature map {tuple(shape)}: {err}") from err
    if tuple(out.shape) != (2, num_classes):
        raise ValueError(
            f"head at {point!r} returns shape {list(out.shape[1:])} per sample for feature {tuple(shape)}; "
            f"expected [{num_classes}] (num_classes)"
        )
    return head
