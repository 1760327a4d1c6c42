"""Backbones by name from torchvision, timm and the paper, with input normalisation folded in.

Every backbone built here takes pixels in [0, 1]: the dataset's or the pretrained
weights' mean/std live inside the model (``NormalizedBackbone``), so attacks perturb
pixels and their eps is in pixel units.
"""
from __future__ import annotations

from typing import Callable, Sequence

import timm
import torch
import torchvision
from torch import nn

from ._utils import close_matches

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SOURCES = ("auxsurgery", "torchvision", "timm")


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, with mean and std as buffers."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ValueError(f"mean {list(mean)} and std {list(std)} must have equal length and std > 0")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class NormalizedBackbone(nn.Module):
    """A classifier ``net`` behind its input normalisation: takes [0, 1] pixels.

    ``spec`` records how to rebuild it (name, source, num_classes, in_chans, mean, std);
    ``default_input_size`` is the ``(C, H, W)`` the model was designed for.
    """

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float],
                 spec: dict | None = None, default_input_size: tuple[int, int, int] | None = None):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.net = net
        self.spec = dict(spec or {})
        self.default_input_size = default_input_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))


# ---------------------------------------------------------------------------------------------
# Built-in backbones: the paper's LeNet-5 and VGG16, and a small CNN for demos
# ---------------------------------------------------------------------------------------------

class LeNet5(nn.Module):
    """The paper's MNIST model (Table VIII): two conv+ReLU+pool stages, FC 120, FC 10."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, 6, 5)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(16 * 4 * 4, 120)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(120, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        return self.fc2(self.relu3(self.fc1(self.flatten(x))))


VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG16Cifar(nn.Module):
    """The paper's CIFAR-style VGG16 (Section IV-B) for 32x32 inputs.

    ``features.i`` is one conv-BN-ReLU block or a max-pool; the paper's Block1, Block2
    and Block3 positions are ``features.1``, ``features.6`` and ``features.14``.
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_chans
        for item in VGG16_CFG:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers.append(nn.Sequential(
                    nn.Conv2d(channels, item, 3, padding=1, bias=False), nn.BatchNorm2d(item), nn.ReLU(inplace=True)
                ))
                channels = item
        self.features = nn.Sequential(*layers)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.features(x)))


class SmallCNN(nn.Module):
    """A three-stage conv-BN-ReLU-pool CNN for quick 32x32 experiments (not from the paper).

    About 21 MFLOPs per image: small enough that the CPU demo trains and runs the strong
    attack suite in minutes. Stages are ``stage1`` (16x16), ``stage2`` (8x8), ``stage3`` (4x4).
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 3, width: int = 32):
        super().__init__()

        def stage(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                                 nn.ReLU(inplace=True), nn.MaxPool2d(2))

        self.stage1 = stage(in_chans, width)
        self.stage2 = stage(width, 2 * width)
        self.stage3 = stage(2 * width, 4 * width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage3(self.stage2(self.stage1(x)))
        return self.fc(self.flatten(self.pool(x)))


# name -> (constructor, mean, std, default input size)
BUILTIN_MODELS: dict[str, tuple[Callable[..., nn.Module], tuple, tuple, tuple]] = {
    "lenet5": (LeNet5, (0.1307,), (0.3081,), (1, 28, 28)),
    "vgg16_cifar": (VGG16Cifar, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), (3, 32, 32)),
    "small_cnn": (SmallCNN, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), (3, 32, 32)),
}


# ---------------------------------------------------------------------------------------------
# Resolution by name
# ---------------------------------------------------------------------------------------------

def torchvision_names() -> list[str]:
    """torchvision's classification model names."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def available_backbones() -> dict[str, list[str]]:
    """All buildable names, per source."""
    return {"auxsurgery": sorted(BUILTIN_MODELS), "torchvision": torchvision_names(), "timm": timm.list_models()}


def resolve_name(name: str) -> tuple[str, str]:
    """``(source, model_name)`` for a name; ``torchvision:``/``timm:``/``auxsurgery:`` prefixes win.

    Without a prefix the paper's models come first, then torchvision, then timm.
    """
    source, sep, bare = name.partition(":")
    names = available_backbones()
    if sep:
        if source not in SOURCES:
            raise ValueError(f"unknown model source {source!r}; valid prefixes: {', '.join(s + ':' for s in SOURCES)}")
        candidates = {source: names[source]}
    else:
        bare = name
        candidates = names
    for src, known in candidates.items():
        if bare in known:
            return src, bare
    everything = list(dict.fromkeys(n for known in candidates.values() for n in known))
    close = close_matches(bare, everything, n=6)
    hint = f" Close matches: {', '.join(close)}." if close else ""
    raise ValueError(f"unknown model {name!r}.{hint} See `auxsurgery models` or timm.list_models().")


def replace_classifier(net: nn.Module, num_classes: int) -> None:
    """Swap the last Linear (or 1x1 Conv) layer for a fresh one with ``num_classes`` outputs."""
    last_name, last = None, None
    for module_name, module in net.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            last_name, last = module_name, module
    if last is None:
        raise ValueError("cannot find a classifier layer to resize")
    if isinstance(last, nn.Linear):
        new = nn.Linear(last.in_features, num_classes, bias=last.bias is not None)
    else:
        new = nn.Conv2d(last.in_channels, num_classes, last.kernel_size, last.stride, last.padding)
    parent_name, _, child = last_name.rpartition(".")
    setattr(net.get_submodule(parent_name) if parent_name else net, child, new)


def _build_torchvision(name: str, num_classes: int, pretrained: bool, in_chans: int):
    if in_chans != 3:
        raise ValueError(f"torchvision models take 3 input channels; for in_chans={in_chans} use a timm model "
                         f"(timm:{name}) or the paper's lenet5")
    if pretrained:
        weights = torchvision.models.get_model_weights(name).DEFAULT
        net = torchvision.models.get_model(name, weights=weights)
        if num_classes != len(weights.meta["categories"]):
            replace_classifier(net, num_classes)
        transforms = weights.transforms()
        mean, std = tuple(transforms.mean), tuple(transforms.std)
    else:
        net = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    size = 299 if name.startswith("inception") else 224
    return net, mean, std, (3, size, size)


def _build_timm(name: str, num_classes: int, pretrained: bool, in_chans: int):
    net = timm.create_model(name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans)
    cfg = net.pretrained_cfg
    mean, std = tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))
    if len(mean) != in_chans:  # timm adapts the stem to in_chans but not the stats
        mean, std = (sum(mean) / len(mean),) * in_chans, (sum(std) / len(std),) * in_chans
    size = tuple(cfg.get("input_size", (3, 224, 224)))
    return net, mean, std, (in_chans, size[1], size[2])


def build_backbone(
    name: str,
    num_classes: int = 1000,
    pretrained: bool = False,
    in_chans: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> NormalizedBackbone:
    """Build a classifier by name, taking [0, 1] pixels.

    Args:
        name: a torchvision or timm model name, or ``lenet5`` / ``vgg16_cifar`` (the
            paper's); a ``torchvision:``, ``timm:`` or ``auxsurgery:`` prefix picks the source.
        num_classes: output classes (pretrained heads are replaced when this differs).
        pretrained: load the library's default pretrained weights (downloads on first use).
        in_chans: input channels (default: 1 for lenet5, else 3).
        mean, std: override the folded-in normalisation.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    source, bare = resolve_name(name)
    if source == "auxsurgery":
        constructor, norm_mean, norm_std, size = BUILTIN_MODELS[bare]
        if pretrained:
            raise ValueError(f"{bare} has no pretrained weights; train it with `auxsurgery train`")
        chans = in_chans or size[0]
        net = constructor(num_classes=num_classes, in_chans=chans)
        if chans != size[0]:
            norm_mean, norm_std = (0.5,) * chans, (0.5,) * chans
        size = (chans, *size[1:])
    elif source == "torchvision":
        net, norm_mean, norm_std, size = _build_torchvision(bare, num_classes, pretrained, in_chans or 3)
    else:
        net, norm_mean, norm_std, size = _build_timm(bare, num_classes, pretrained, in_chans or 3)
    mean = tuple(mean) if mean is not None else norm_mean
    std = tuple(std) if std is not None else norm_std
    spec = {"name": bare, "source": source, "num_classes": num_classes, "in_chans": size[0],
            "mean": list(mean), "std": list(std)}
    return NormalizedBackbone(net, mean, std, spec=spec, default_input_size=size)


def backbone_from_spec(spec: dict) -> NormalizedBackbone:
    """Rebuild a backbone (random weights) from its ``spec``."""
    return build_backbone(f"{spec['source']}:{spec['name']}", num_classes=spec["num_classes"],
                          in_chans=spec["in_chans"], mean=spec["mean"], std=spec["std"])
