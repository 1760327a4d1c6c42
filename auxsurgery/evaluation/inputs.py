"""The samples an evaluation attacks: tensors, a Dataset or a DataLoader, a dataset name, an
ImageFolder or a ``.pt`` file, checked once (pixels in [0, 1], integer labels) and checked against
the checkpoint that will be attacked (classes, input size)."""
from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from ..data import dataset_classes, load_dataset, take_subset
from ..model import check_labels, check_pixels

__all__ = ["check_compatible", "collect", "load_eval_data", "load_tensors"]


def collect(data, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The first ``n`` samples of ``data`` as checked tensors ``(x, y, description)``.

    ``data`` is a pair of tensors, a Dataset of ``(image, label)`` or a DataLoader (any
    iterable of batches). Pixels must lie in [0, 1] and labels be integers.
    """
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(torch.is_tensor(t) for t in data):
        (x, y), source = data, "tensors"
    else:
        batches = DataLoader(data, batch_size=256) if isinstance(data, Dataset) else data
        source = type(data).__name__
        xs, ys = [], []
        for xb, yb in batches:
            xs.append(xb)
            ys.append(torch.as_tensor(yb))
            if n is not None and sum(map(len, xs)) >= n:
                break
        if not xs:
            raise ValueError(f"the data ({source}) is empty")
        x, y = torch.cat(xs), torch.cat(ys)
    x, y = x[:n], y[:n]
    check_pixels(x, "inputs")
    if len(x) == 0:
        raise ValueError(f"the data ({source}) is empty")
    check_labels(y, len(x), num_classes=None)  # the class count is checked by the caller
    return x, y.long(), source


def load_tensors(path: Path) -> tuple[torch.Tensor, torch.Tensor, list[str] | None]:
    """``(x, y, classes)`` from a ``.pt`` file holding ``{"x", "y"[, "classes"]}`` or ``(x, y)``.

    Read with ``weights_only=True``: plain tensors and containers only, never pickled code.
    """
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(f"{path} holds objects other than tensors and plain containers; it is not loaded, "
                         "since unpickling could run code (torch.load weights_only=True): "
                         f"{str(err).splitlines()[0]}") from None
    except (RuntimeError, EOFError) as err:
        raise ValueError(f"{path} is not a readable torch file (corrupt or truncated?): {err}") from None
    if isinstance(obj, dict) and {"x", "y"} <= obj.keys():
        return obj["x"], obj["y"], obj.get("classes")
    if isinstance(obj, (tuple, list)) and len(obj) == 2:
        return obj[0], obj[1], None
    raise ValueError(f"{path} must hold {{'x': images, 'y': labels[, 'classes': names]}} or an (x, y) pair")


def load_eval_data(data: str, root: Path | None, n: int):
    """``(samples, class names, image shape)``: the first ``n`` test samples of a dataset name,
    ImageFolder path or ``.pt`` file."""
    if data.endswith(".pt"):
        x, y, classes = load_tensors(Path(data))
        return (x[:n], y[:n]), classes, tuple(x.shape[1:])
    dataset = load_dataset(data, root=root, train=False)
    dataset = take_subset(dataset, min(n, len(dataset)))
    return dataset, dataset_classes(dataset), tuple(dataset[0][0].shape)


def check_compatible(spec: dict, classes: list[str] | None, shape: tuple, data: str) -> None:
    """Raise a clear ValueError when the checkpoint's classes or input size do not fit the data."""
    if classes is not None and len(classes) != spec["num_classes"]:
        raise ValueError(f"the checkpoint has {spec['num_classes']} classes but {data} has {len(classes)} "
                         f"({', '.join(map(str, classes[:5]))}{', ...' if len(classes) > 5 else ''})")
    if list(shape) != list(spec["input_size"]):
        raise ValueError(f"the checkpoint takes inputs of size {'x'.join(map(str, spec['input_size']))} but {data} "
                         f"has images of size {'x'.join(map(str, shape))}")


