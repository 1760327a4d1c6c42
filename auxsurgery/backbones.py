"""Backbones by name from torchvision, timm and the paper, with input normalisation folded in.

Every backbone built here takes pixels in [0, 1]: the dataset's or the pretrained
weights' mean/std live inside the model (``NormalizedBackbone``), so attacks perturb
pixels and their eps is in pixel units.

Weights come from the libraries' hubs (``pretrained=True``, a torchvision weights name, a
timm ``hf-hub:`` name) or from a local file (``weights=PATH``: a state dict saved with
``torch.save``, a safetensors file, or a timm training checkpoint), read without ever
unpickling code. A network can also come from the user's own code through an explicit
``factory:package.module:function`` name (:func:`backbone_from_factory`).
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.util
import inspect
import json
import os
import pickle
import re
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Mapping, Sequence

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
        """Logits ``[B, C]`` of ``[B, C, H, W]`` pixels in [0, 1]."""
        return self.net(self.normalize(x))


# ---------------------------------------------------------------------------------------------
# Built-in backbones: the paper's LeNet-5 and VGG16, a small CNN for demos, a narrow ResNet-9 for CPU studies
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


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class _Residual(nn.Module):
    """``x + f(x)`` with ``f`` two conv-BN-ReLU blocks of the same width."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = _conv_bn_relu(channels, channels)
        self.conv2 = _conv_bn_relu(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.conv1(x))


class ResNet9Cifar(nn.Module):
    """A narrow ResNet-9 for 32x32 inputs, the layout of Page's DAWNBench CIFAR-10 network
    (widths ``w, 2w, 4w, 8w``); not from the paper.

    At the default ``width=16`` it costs about 24 MMACs per image, which is what lets the
    CPU CIFAR-10 study train three models to convergence in about an hour on 2 cores.
    Stages: ``prep`` (32x32), ``layer1`` (16x16), ``layer2`` (8x8), ``layer3`` (4x4).
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 3, width: int = 16):
        super().__init__()
        self.prep = _conv_bn_relu(in_chans, width)
        self.layer1 = nn.Sequential(_conv_bn_relu(width, 2 * width), nn.MaxPool2d(2), _Residual(2 * width))
        self.layer2 = nn.Sequential(_conv_bn_relu(2 * width, 4 * width), nn.MaxPool2d(2))
        self.layer3 = nn.Sequential(_conv_bn_relu(4 * width, 8 * width), nn.MaxPool2d(2), _Residual(8 * width))
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(8 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.prep(x))))
        return self.fc(self.flatten(self.pool(x)))


class _PreActBlock(nn.Module):
    """He et al. 2016's pre-activation basic block: BN-ReLU-conv twice, the shortcut taken after the first
    BN-ReLU when it must change the shape."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.relu = nn.ReLU()
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        return self.conv2(self.relu(self.bn2(self.conv1(out)))) + shortcut


class PreActResNet18Cifar(nn.Module):
    """PreAct ResNet-18 for 32x32 inputs (He et al. 2016), the architecture of RobustBench's ResNet-18
    CIFAR-10 entries (Wong et al. 2020, Rice et al. 2020): about 0.56 GMACs per image, a GPU model.
    Stages: ``layer1`` (32x32), ``layer2`` (16x16), ``layer3`` (8x8), ``layer4`` (4x4).
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 3, width: int = 64):
        super().__init__()
        widths = [width, 2 * width, 4 * width, 8 * width]
        self.conv1 = nn.Conv2d(in_chans, width, 3, padding=1, bias=False)
        blocks, cin = [], width
        for k, cout in enumerate(widths):
            blocks.append(nn.Sequential(_PreActBlock(cin, cout, 1 if k == 0 else 2), _PreActBlock(cout, cout, 1)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = blocks
        self.bn, self.relu = nn.BatchNorm2d(cin), nn.ReLU()
        self.pool, self.flatten = nn.AdaptiveAvgPool2d(1), nn.Flatten()
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
        return self.fc(self.flatten(self.pool(self.relu(self.bn(x)))))


# name -> (constructor, mean, std, default input size)
BUILTIN_MODELS: dict[str, tuple[Callable[..., nn.Module], tuple, tuple, tuple]] = {
    "lenet5": (LeNet5, (0.1307,), (0.3081,), (1, 28, 28)),
    "vgg16_cifar": (VGG16Cifar, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), (3, 32, 32)),
    "small_cnn": (SmallCNN, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), (3, 32, 32)),
    "resnet9_cifar": (ResNet9Cifar, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), (3, 32, 32)),
    "preact_resnet18_cifar": (PreActResNet18Cifar, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), (3, 32, 32)),
}


# ---------------------------------------------------------------------------------------------
# Weights files: state dicts, safetensors, timm training checkpoints (never unpickling code)
# ---------------------------------------------------------------------------------------------

WEIGHTS_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar", ".safetensors", ".pkl")
# Checkpoint keys holding the state dict, in timm's order of preference (EMA weights first).
CHECKPOINT_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")
# Wrapper prefixes: DistributedDataParallel, Lightning-style wrappers, torch.compile, NormalizedBackbone.
STRIP_PREFIXES = ("module.", "model.", "_orig_mod.", "net.")
SHOWN_KEYS = 5  # keys listed per kind of mismatch


class WeightsError(ValueError):
    """A weights file that cannot be read safely or does not fit the network."""


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file, hex, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _has_safetensors_header(path: Path, head: bytes) -> bool:
    """Whether ``head`` (a file's first 9 bytes) opens a safetensors file: an 8-byte little-endian length, then JSON."""
    return len(head) == 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") <= path.stat().st_size


def _first_bytes(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(9)


def _is_safetensors(path: Path) -> bool:
    """A safetensors file: by suffix, or by its header."""
    return path.suffix == ".safetensors" or _has_safetensors_header(path, _first_bytes(path))


def is_weights_file(path: str | os.PathLike) -> bool:
    """Whether ``path``'s first bytes are those of a weights file: safetensors, or ``torch.save``'s zip
    archive or legacy pickle (a cheap check, before anything is loaded)."""
    path = Path(path)
    head = _first_bytes(path)
    return _has_safetensors_header(path, head) or head.startswith((b"PK\x03\x04", b"\x80"))


def _torch_load(path: Path):
    """``torch.load(weights_only=True)``; a file that would run code is refused with one clear error.

    ``argparse.Namespace`` (the ``args`` of timm's training checkpoints) is the one class allowed
    beyond tensors and containers: unpickling it only sets attributes.
    """
    safe = getattr(torch.serialization, "safe_globals", None)
    try:
        with safe([argparse.Namespace]) if safe else nullcontext():
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", text)
        detail = detail.group(1).strip() if detail else text.strip().splitlines()[-1]
        if not found and ("Unsupported operand" in detail or "load key" in text):
            raise WeightsError(f"{path} is not a readable torch or safetensors weights file (corrupt, truncated, or "
                               f"another format?): {detail}") from None
        what = f"a reference to {found.group(1)}" if found else detail
        raise WeightsError(
            f"{path} holds Python objects besides tensors ({what}); it was not loaded, since unpickling it "
            "could run code (auxsurgery reads weights with torch.load(weights_only=True) only). Save the "
            "weights alone: torch.save(model.state_dict(), PATH), or as safetensors") from None
    except (RuntimeError, EOFError, KeyError, ValueError, OSError) as err:
        raise WeightsError(f"{path} is not a readable torch or safetensors weights file (corrupt or "
                           f"truncated?): {type(err).__name__}: {err}") from None


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors of a weights file and where they came from: ``(state_dict, info)``.

    Reads a state dict saved with ``torch.save`` (always ``weights_only=True``), a safetensors
    file, or a training checkpoint holding one under ``state_dict_ema``, ``model_ema``,
    ``state_dict`` or ``model`` (timm's order: EMA weights first). ``info`` has the absolute
    path, the file's sha256, its format and the checkpoint key used.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        where = "" if path.is_absolute() else f" (a relative path is read from the current folder, {Path.cwd()})"
        raise FileNotFoundError(f"weights file not found: {path}{where}")
    if _is_safetensors(path):
        from safetensors import SafetensorError, safe_open
        from safetensors.torch import load_file

        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
            obj, fmt = load_file(str(path), device="cpu"), "safetensors"
        except (SafetensorError, OSError, ValueError) as err:
            raise WeightsError(f"{path} is not a readable safetensors file (corrupt or truncated?): {err}") from None
        if "auxsurgery_spec" in metadata:  # checkpoint.SPEC_KEY (that module sits above this one)
            raise WeightsError(f"{path} is an auxsurgery checkpoint (backbone and heads), not a backbone's weights: "
                               "load it with auxsurgery.load, or pass it where a checkpoint is expected")
    else:
        obj, fmt = _torch_load(path), "torch"
    key = None
    if isinstance(obj, Mapping) and not all(torch.is_tensor(v) for v in obj.values()):
        key = next((k for k in CHECKPOINT_KEYS if isinstance(obj.get(k), Mapping) and obj[k]), None)
        if key is None:
            raise WeightsError(f"{path} holds no state dict: its top-level keys are {sorted(map(str, obj))[:10]}; "
                               f"expected tensors by name, or a checkpoint with one of {', '.join(CHECKPOINT_KEYS)}")
        obj = obj[key]
    if not isinstance(obj, Mapping) or not obj:
        raise WeightsError(f"{path} holds {type(obj).__name__}{' (empty)' if not obj else ''}, not a state dict "
                           "(tensors by name)")
    tensors = {str(k): v for k, v in obj.items() if torch.is_tensor(v)}
    others = sorted(str(k) for k, v in obj.items() if not torch.is_tensor(v))
    if others:
        raise WeightsError(f"{path}: the state dict{f' under {key!r}' if key else ''} holds {len(others)} "
                           f"non-tensor value(s) ({', '.join(others[:SHOWN_KEYS])})")
    return tensors, {"path": str(path.resolve()), "sha256": file_sha256(path), "format": fmt, "key": key}


def _align_keys(state: dict[str, torch.Tensor], expected: set[str]) -> tuple[dict[str, torch.Tensor], str]:
    """Strip wrapper prefixes (``module.``, ``model.``, ...) shared by every key while that matches more
    of ``expected``; a NormalizedBackbone's own ``normalize.*`` buffers are dropped. Returns the
    aligned dict and the prefix removed (``""`` if none)."""
    if {"normalize.mean", "normalize.std"} <= state.keys() and not {"normalize.mean", "normalize.std"} & expected:
        state = {k: v for k, v in state.items() if not k.startswith("normalize.")}
    best, best_prefix = state, ""
    current, removed = state, ""
    while current:
        prefix = next((p for p in STRIP_PREFIXES if all(k.startswith(p) for k in current)), None)
        if prefix is None:
            break
        current = {k[len(prefix):]: v for k, v in current.items()}
        removed += prefix
        if len(current.keys() & expected) > len(best.keys() & expected):
            best, best_prefix = current, removed
    return best, best_prefix


def _listing(what: str, items: list[str]) -> str:
    shown = ", ".join(items[:SHOWN_KEYS]) + (", ..." if len(items) > SHOWN_KEYS else "")
    return f"{len(items)} {what}{'s' if len(items) != 1 else ''} ({shown})"


def load_weights(net: nn.Module, path: str | os.PathLike, what: str | None = None) -> dict:
    """Load a weights file into ``net`` exactly, or raise a :class:`WeightsError` saying why not.

    Every parameter and buffer must be in the file with the network's shape, and the file must hold
    nothing else (after stripping wrapper prefixes): the error lists the first missing keys,
    unexpected keys and shape conflicts, with their counts. Returns :func:`read_state_dict`'s
    info plus the stripped prefix, for the backbone's spec.
    """
    state, info = read_state_dict(path)
    expected = net.state_dict()
    stored = _stored_normalization(state, set(expected))
    state, prefix = _align_keys(state, set(expected))
    # Checkpoints from before BatchNorm counted its batches lack the counter; it is not a weight.
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    conflicts = [k for k in state if k in expected and state[k].shape != expected[k].shape]
    if missing or unexpected or conflicts:
        problems = []
        if missing:
            problems.append(_listing("missing key", missing))
        if unexpected:
            problems.append(_listing("unexpected key", unexpected))
        if conflicts:
            shapes = [f"{k}: file {list(state[k].shape)} vs model {list(expected[k].shape)}" for k in conflicts]
            problems.append(_listing("shape conflict", shapes))
        hint = ""
        classifier = [n for n, m in net.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1:]
        if conflicts and not missing and not unexpected and classifier \
                and all(k.startswith(classifier[0] + ".") for k in conflicts):
            hint = (f" Only the classifier ({classifier[0]}) differs: the file has "
                    f"{state[classifier[0] + '.weight'].shape[0]} classes; pass that num_classes.")
        elif missing and unexpected and not (set(missing) & set(unexpected)):
            hint = " Is the file from another architecture?"
        name = what or type(net).__name__
        raise WeightsError(f"weights file {info['path']} does not fit {name}: {'; '.join(problems)}.{hint}")
    net.load_state_dict(state, strict=False)
    return {**info, "prefix": prefix or None, **({NORMALIZATION_INFO: stored} if stored else {})}


NORMALIZATION_INFO = "normalization"  # load_weights' info: the normalisation a NormalizedBackbone's file carries


def _stored_normalization(state: Mapping[str, torch.Tensor], expected: set[str]) -> dict | None:
    """The ``normalize.mean``/``normalize.std`` a NormalizedBackbone's state dict carries (the training
    engine saves plain backbones whole), as lists; None when absent or when ``net`` itself holds them."""
    keys = ("normalize.mean", "normalize.std")
    if not set(keys) <= state.keys() or set(keys) & expected:
        return None
    mean, std = (state[k].detach().float().flatten() for k in keys)
    return {"mean": mean.tolist(), "std": std.tolist()} if mean.numel() == std.numel() else None


def _with_stored_normalization(info: dict, mean: Sequence[float], std: Sequence[float],
                               chosen: bool) -> tuple[Sequence[float], Sequence[float]]:
    """The normalisation to build with once a weights file is loaded: a file saved from a NormalizedBackbone
    carries the normalisation its network was trained behind, which wins over the model's default; one the
    caller chose (``chosen``) must agree with it. Takes the file's record out of ``info`` (the spec's)."""
    stored = info.pop(NORMALIZATION_INFO, None)
    if stored is None:
        return mean, std

    def same(a, b) -> bool:
        return len(a) == len(b) and torch.allclose(torch.tensor(list(a), dtype=torch.float32),
                                                   torch.tensor(list(b), dtype=torch.float32), rtol=1e-6, atol=1e-7)

    if same(stored["mean"], mean) and same(stored["std"], std):
        return mean, std
    if chosen:
        def shown(values) -> str:
            return ",".join(f"{v:.6g}" for v in values)

        raise WeightsError(f"weights file {info['path']} was saved behind the input normalisation mean "
                           f"{shown(stored['mean'])} std {shown(stored['std'])}, but mean {shown(mean)} std "
                           f"{shown(std)} was asked for: drop --mean/--std (mean=/std=) to use the file's, or pass "
                           "the file's values")
    return [round(v, 7) for v in stored["mean"]], [round(v, 7) for v in stored["std"]]


def weights_file(weights) -> Path | None:
    """``weights`` as a file path, or None when it names hub weights (``DEFAULT``, ``IMAGENET1K_V2``, ...)."""
    if weights is None:
        return None
    if isinstance(weights, os.PathLike):
        return Path(weights)
    text = str(weights)
    looks_like_file = os.sep in text or "/" in text or text.lower().endswith(WEIGHTS_SUFFIXES)
    return Path(text) if looks_like_file or Path(text).expanduser().is_file() else None


# ---------------------------------------------------------------------------------------------
# Model factories: the user's own network, by import path (an explicit opt-in to running their code)
# ---------------------------------------------------------------------------------------------

FACTORY_PREFIX = "factory:"


def import_factory(factory: str) -> Callable[..., nn.Module]:
    """The callable named ``package.module:function`` (or ``path/to/file.py:function``).

    This imports and so runs the named module: only for code the user chose. The current
    directory is searched too, as ``python -m`` would.
    """
    module_name, sep, attr = factory.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"a model factory is given as package.module:function, got {factory!r}")
    if module_name.endswith(".py"):
        file = Path(module_name).expanduser()
        if not file.is_file():
            raise FileNotFoundError(f"model factory file not found: {file}")
        spec = importlib.util.spec_from_file_location(f"_auxsurgery_factory_{file.stem}", file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        added = os.getcwd() not in sys.path
        if added:
            sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name and module_name.startswith(err.name):
                raise ValueError(f"cannot import {module_name!r} for the model factory {factory!r} ({err}); run from "
                                 "the folder that holds it, or add that folder to PYTHONPATH") from None
            raise
        finally:
            if added and os.getcwd() in sys.path:
                sys.path.remove(os.getcwd())
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            close = close_matches(part, names, n=3)
            raise ValueError(f"{module_name} has no {attr!r} for the model factory"
                             + (f"; close matches: {', '.join(close)}" if close else ""))
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"the model factory {factory!r} is a {type(obj).__name__}, not a callable")
    return obj


def _accepts(function: Callable, name: str) -> bool:
    try:
        params = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def backbone_from_factory(
    factory: str | Callable[..., nn.Module],
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    num_classes: int | None = None,
    in_chans: int | None = None,
    input_size: Sequence[int] | None = None,
    weights: str | os.PathLike | None = None,
) -> NormalizedBackbone:
    """Your own network, built by ``factory`` (``package.module:function`` or a callable), behind its
    normalisation.

    Naming a factory imports and runs your code: it is never done implicitly (a checkpoint made from
    a factory is rebuilt only by calling this again). The factory is called with ``num_classes=``
    when given and accepted, else with no arguments.

    Args:
        mean, std: the normalisation the network expects (``mean=[0], std=[1]`` for a network that
            takes [0, 1] pixels); one value per channel, or one for all ``in_chans``.
        num_classes: passed on to the factory (default: its own; read from the last Linear layer).
        in_chans: input channels (default: ``len(mean)``, or ``input_size[0]``).
        input_size: ``(C, H, W)`` the network is designed for (else attach needs ``input_size``).
        weights: a weights file to load (see :func:`load_weights`).
    """
    name = factory if isinstance(factory, str) else f"{factory.__module__}:{factory.__qualname__}"
    if mean is None or std is None:
        raise ValueError(f"the model factory {name!r} needs its input normalisation: pass mean and std (one value per "
                         "channel; mean 0 and std 1 for a network that takes [0, 1] pixels)")
    mean, std = [float(m) for m in mean], [float(s) for s in std]
    function = import_factory(factory) if isinstance(factory, str) else factory
    kwargs = {"num_classes": num_classes} if num_classes is not None and _accepts(function, "num_classes") else {}
    net = function(**kwargs)
    if not isinstance(net, nn.Module):
        raise TypeError(f"the model factory {name!r} returned {type(net).__name__}, not a torch nn.Module")
    # Channels: as given, else one per mean/std value, else the first convolution's inputs.
    first_conv = next((m for m in net.modules() if isinstance(m, nn.Conv2d)), None)
    per_channel = max(len(mean), len(std))
    chans = (in_chans or (input_size[0] if input_size else None) or (per_channel if per_channel > 1 else None)
             or (first_conv.in_channels if first_conv is not None else 1))
    mean, std = (mean * chans if len(mean) == 1 else mean), (std * chans if len(std) == 1 else std)
    if len(mean) != chans or len(std) != chans:
        raise ValueError(f"mean {mean} and std {std} must have one value per input channel ({chans}) or one in all")
    if num_classes is None or not kwargs:
        linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
        num_classes = linears[-1].out_features if linears else num_classes
    spec = {"name": name, "source": "factory", "num_classes": num_classes, "in_chans": chans, "mean": mean, "std": std}
    size = tuple(int(s) for s in input_size) if input_size else None
    if size:
        spec["input_size"] = list(size)
    path = weights_file(weights)
    if weights is not None and path is None:
        raise ValueError(f"weights={weights!r}: a factory's weights come from a file (path to a state dict)")
    if path is not None:
        spec["weights"] = load_weights(net, path, what=name)
        _with_stored_normalization(spec["weights"], mean, std, chosen=True)  # a factory's mean/std are always chosen
    return NormalizedBackbone(net, mean, std, spec=spec, default_input_size=size)


# ---------------------------------------------------------------------------------------------
# Resolution by name
# ---------------------------------------------------------------------------------------------

TIMM_HUB_PREFIXES = ("hf-hub:", "hf_hub:", "local-dir:")


def torchvision_names() -> list[str]:
    """torchvision's classification model names."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def available_backbones() -> dict[str, list[str]]:
    """All buildable names, per source."""
    return {"auxsurgery": sorted(BUILTIN_MODELS), "torchvision": torchvision_names(), "timm": timm.list_models()}


def resolve_name(name: str) -> tuple[str, str]:
    """``(source, model_name)`` for a name; ``torchvision:``/``timm:``/``auxsurgery:`` prefixes win.

    Without a prefix the paper's models come first, then torchvision, then timm. timm's
    ``hf-hub:``/``local-dir:`` names and pretrained tags (``resnet18.a1_in1k``) are timm's;
    ``factory:package.module:function`` is the user's own network (not imported here).
    """
    if name.startswith(FACTORY_PREFIX):
        return "factory", name[len(FACTORY_PREFIX):]
    if name.startswith(TIMM_HUB_PREFIXES):
        return "timm", name
    source, sep, bare = name.partition(":")
    if sep and source == "timm" and bare.startswith(TIMM_HUB_PREFIXES):
        return "timm", bare
    names = available_backbones()
    if sep:
        if source not in SOURCES:
            raise ValueError(f"unknown model source {source!r}; valid prefixes: "
                             f"{', '.join(s + ':' for s in (*SOURCES, 'factory'))}")
        candidates = {source: names[source]}
    else:
        bare = name
        candidates = names
    for src, known in candidates.items():
        if bare in known:
            return src, bare
    base, dot, tag = bare.partition(".")  # a timm pretrained tag
    if dot and tag and "timm" in candidates and base in candidates["timm"]:
        return "timm", bare
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


def _json_safe(value: dict) -> dict:
    """The JSON-able items of a dict (a spec is stored as JSON)."""
    out = {}
    for key, item in value.items():
        try:
            json.dumps(item)
        except (TypeError, ValueError):
            continue
        out[str(key)] = item
    return out


def torchvision_weights(name: str, weights: str):
    """torchvision's weights enum member for ``DEFAULT``, ``IMAGENET1K_V2`` or ``ResNet50_Weights.IMAGENET1K_V2``."""
    if "." in weights:
        return torchvision.models.get_weight(weights)
    enum = torchvision.models.get_model_weights(name)
    try:
        return enum[weights]
    except KeyError:
        raise ValueError(f"{name} has no weights {weights!r}; valid: DEFAULT, "
                         f"{', '.join(w.name for w in enum)} (or a path to a weights file)") from None


def _build_torchvision(name: str, num_classes: int, pretrained: bool | str, in_chans: int, kwargs: dict):
    """``(net, mean, std, size, extra spec)``; ``pretrained`` is True or a weights name."""
    if in_chans != 3:
        raise ValueError(f"torchvision models take 3 input channels; for in_chans={in_chans} use a timm model "
                         f"(timm:{name}) or the paper's lenet5")
    extra = {}
    if pretrained:
        weights = torchvision_weights(name, "DEFAULT" if pretrained is True else pretrained)
        net = torchvision.models.get_model(name, weights=weights, **kwargs)
        if num_classes != len(weights.meta["categories"]):
            replace_classifier(net, num_classes)
        transforms = weights.transforms()
        mean, std = tuple(transforms.mean), tuple(transforms.std)
        # Weights can change how the network is built (GoogLeNet, Inception: input transform, aux
        # classifiers); the spec keeps those settings so the network rebuilds without a download.
        built = {k: getattr(net, k) for k in ("transform_input", "aux_logits")
                 if isinstance(getattr(net, k, None), bool)}
        extra = {"pretrained": str(weights), **({"kwargs": {**kwargs, **built}} if built or kwargs else {})}
    else:
        net = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
        mean, std = IMAGENET_MEAN, IMAGENET_STD
        extra = {"kwargs": dict(kwargs)} if kwargs else {}
    size = 299 if name.startswith("inception") else 224
    return net, mean, std, (3, size, size), extra


def _build_timm(name: str, num_classes: int, pretrained: bool, in_chans: int, kwargs: dict):
    """``(net, mean, std, size, extra spec)``."""
    net = timm.create_model(name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans, **kwargs)
    cfg = net.pretrained_cfg
    mean, std = tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))
    if len(mean) != in_chans:  # timm adapts the stem to in_chans but not the stats
        mean, std = (sum(mean) / len(mean),) * in_chans, (sum(std) / len(std),) * in_chans
    size = tuple(cfg.get("input_size", (3, 224, 224)))
    extra: dict = {"kwargs": dict(kwargs)} if kwargs else {}
    if pretrained:
        extra["pretrained"] = name
    if name.startswith(TIMM_HUB_PREFIXES):
        # Rebuilt from the architecture and its arguments: a checkpoint must not need the hub again.
        model_args = _json_safe(getattr(net, "pretrained_model_args", None) or {})
        model_args = {k: v for k, v in model_args.items() if k not in ("num_classes", "in_chans")}
        extra["name"] = cfg.get("architecture") or name
        if model_args or kwargs:
            extra["kwargs"] = {**model_args, **kwargs}
    return net, mean, std, (in_chans, size[1], size[2]), extra


def build_backbone(
    name: str,
    num_classes: int | None = None,
    pretrained: bool = False,
    in_chans: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    weights: str | os.PathLike | None = None,
    model_kwargs: dict | None = None,
) -> NormalizedBackbone:
    """Build a classifier by name, taking [0, 1] pixels.

    Args:
        name: a torchvision or timm model name, or ``lenet5`` / ``vgg16_cifar`` (the
            paper's); a ``torchvision:``, ``timm:`` or ``auxsurgery:`` prefix picks the source.
            timm also takes ``hf-hub:`` / ``local-dir:`` names and pretrained tags
            (``timm:resnet18.a1_in1k``); ``factory:package.module:function`` builds your own
            network (imports your code; see :func:`backbone_from_factory`, which needs mean/std).
        num_classes: output classes (default 1000; pretrained heads are replaced when this differs).
        pretrained: load the library's default pretrained weights (downloads on first use).
        in_chans: input channels (default: 1 for lenet5, else 3).
        mean, std: override the folded-in normalisation.
        weights: a weights file (a ``torch.save``'d state dict, loaded with ``weights_only=True``; a
            safetensors file; a timm checkpoint with ``state_dict``/``state_dict_ema``), loaded
            exactly into the network (mismatches raise a :class:`WeightsError` listing them); its
            path and sha256 go into the spec. A file saved from a NormalizedBackbone (the training
            engine's ``last.safetensors`` of a plain backbone) also carries its input normalisation,
            which replaces the model's default (``mean``/``std``, when given, must agree with it).
            For torchvision, a weights name (``DEFAULT``,
            ``IMAGENET1K_V2``, ``ResNet50_Weights.IMAGENET1K_V2``) loads those hub weights instead.
        model_kwargs: extra arguments of the model's constructor (kept in the spec).
    """
    if num_classes is not None and num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    source, bare = resolve_name(name)
    if source == "factory":
        if pretrained:
            raise ValueError("a model factory builds its own network; load your weights with weights=PATH")
        return backbone_from_factory(bare, mean=mean, std=std, num_classes=num_classes, in_chans=in_chans,
                                     weights=weights)
    num_classes = 1000 if num_classes is None else num_classes
    path = weights_file(weights)
    hub_weights = str(weights) if weights is not None and path is None else None
    if path is not None and pretrained:
        raise ValueError("pretrained=True loads the library's weights and weights=PATH your own; pick one")
    if hub_weights is not None:
        if source != "torchvision":
            raise ValueError(f"weights={hub_weights!r} is not a file; named weights are torchvision's. timm picks "
                             "pretrained weights by tag (timm:resnet18.a1_in1k with pretrained=True)")
        pretrained = hub_weights
    kwargs = dict(model_kwargs or {})
    extra: dict = {}
    if source == "auxsurgery":
        constructor, norm_mean, norm_std, size = BUILTIN_MODELS[bare]
        if pretrained:
            raise ValueError(f"{bare} has no pretrained weights; train it with `auxsurgery train`")
        chans = in_chans or size[0]
        net = constructor(num_classes=num_classes, in_chans=chans, **kwargs)
        if chans != size[0]:
            norm_mean, norm_std = (0.5,) * chans, (0.5,) * chans
        size = (chans, *size[1:])
        # Kept in the spec as for timm and torchvision: a checkpoint of small_cnn width=8 rebuilds at width 8.
        extra = {"kwargs": dict(kwargs)} if kwargs else {}
    elif source == "torchvision":
        net, norm_mean, norm_std, size, extra = _build_torchvision(bare, num_classes, pretrained, in_chans or 3, kwargs)
    else:
        net, norm_mean, norm_std, size, extra = _build_timm(bare, num_classes, bool(pretrained), in_chans or 3, kwargs)
    chosen = mean is not None or std is not None
    mean = tuple(mean) if mean is not None else norm_mean
    std = tuple(std) if std is not None else norm_std
    loaded = load_weights(net, path, what=f"{bare} ({source})") if path is not None else None
    if loaded is not None:
        mean, std = _with_stored_normalization(loaded, mean, std, chosen)
    spec = {"name": extra.pop("name", bare), "source": source, "num_classes": num_classes, "in_chans": size[0],
            "mean": list(mean), "std": list(std), **extra}
    if loaded is not None:
        spec["weights"] = loaded
    return NormalizedBackbone(net, mean, std, spec=spec, default_input_size=size)


PROVENANCE_KEYS = ("weights", "pretrained")  # where a backbone's weights first came from


def backbone_from_spec(spec: dict, allow_factory: bool = False) -> NormalizedBackbone:
    """Rebuild a backbone (random weights) from its ``spec``.

    Never downloads and never reads the weights file the spec names (a checkpoint's weights come
    from the checkpoint). A network from a model factory is rebuilt only with ``allow_factory``,
    since that imports and runs the code the spec names.
    """
    backbone = _rebuild(spec, allow_factory)
    # Provenance only (where the weights first came from): carried over, never loaded.
    backbone.spec.update({k: spec[k] for k in PROVENANCE_KEYS if k in spec})
    return backbone


def _rebuild(spec: dict, allow_factory: bool) -> NormalizedBackbone:
    if spec.get("source") == "factory":
        if not allow_factory:
            raise ValueError(
                f"this backbone comes from the model factory {spec['name']!r}, which runs your code: rebuild it "
                f"explicitly, e.g. load(path, backbone=backbone_from_factory({spec['name']!r}, mean=..., std=...)), "
                f"or pass --model-factory {spec['name']} on the command line")
        return backbone_from_factory(spec["name"], mean=spec["mean"], std=spec["std"],
                                     num_classes=spec["num_classes"], in_chans=spec["in_chans"],
                                     input_size=spec.get("input_size"))
    return build_backbone(f"{spec['source']}:{spec['name']}", num_classes=spec["num_classes"],
                          in_chans=spec["in_chans"], mean=spec["mean"], std=spec["std"],
                          model_kwargs=spec.get("kwargs"))
