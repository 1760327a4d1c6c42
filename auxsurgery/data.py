"""Datasets by name, ImageFolder directories, the embedded synthetic set, and loaders.

Every dataset here yields ``(image, label)``: a float tensor in [0, 1] (no Normalize:
models normalise their own input) and an int. Data is read from a data root (the
``root`` argument, else ``$AUXSURGERY_DATA``, else ``./data``) in torchvision's layout;
nothing is downloaded unless asked with ``download=True``.
"""
from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torchvision
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler, Subset
from torchvision import transforms as T

from . import synthetic
from ._utils import derive_seed

DATA_ENV = "AUXSURGERY_DATA"


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are not where they were looked for."""


class ImageTensorDataset(Dataset):
    """Images held in memory as uint8 ``[N, C, H, W]`` with their labels.

    ``transform`` (e.g. a random crop) gets the ``[C, H, W]`` float image in [0, 1].
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: list[str], transform: Callable | None = None):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {images.dtype} {list(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, labels.long()
        self.classes = list(classes)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index].float().div_(255)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])

    def read_batch(self, indices: list[int], draws: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The samples at ``indices`` as one float batch and their labels, augmented at once.

        Needs ``transform`` to be None or a :class:`PadCropFlip`; ``draws`` (uint64, one per
        index) choose each sample's crop and flip.
        """
        images = self.images[torch.as_tensor(indices, dtype=torch.long)]
        if self.transform is not None:
            images = self.transform.apply(images, draws)
        return images.float().div_(255), self.labels[indices]


class PadCropFlip:
    """Training augmentation: a random crop of the image zero-padded by ``padding`` pixels on
    every side, back to its own size, then (with ``flip``) a horizontal flip half of the time.

    The law of torchvision's ``RandomCrop(size, padding=padding)`` then ``RandomHorizontalFlip()``
    (zero fill; top and left offsets uniform in ``[0, 2 * padding]``; flip with probability 1/2),
    applied to a whole ``[N, C, H, W]`` batch at once (uint8 or float). Each sample's choice is a
    function of one 64-bit draw (:meth:`choices`): taken from torch's global generator when the
    transform is called on one image, derived from ``(seed, epoch, index)`` when
    :class:`SeededAugmentation` reads a batch.
    """

    def __init__(self, padding: int, flip: bool = True):
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        self.padding, self.flip = padding, flip

    def __repr__(self) -> str:
        return f"{type(self).__name__}(padding={self.padding}, flip={self.flip})"

    def choices(self, draws: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each draw's crop offsets (top, left) in the padded image and its flip flag."""
        # splitmix64's finaliser spreads every bit of the draw (derived seeds of neighbouring
        # indices differ in few bits) before the offsets are read from it.
        z = np.asarray(draws, dtype=np.uint64)
        with np.errstate(over="ignore"):
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            z = z ^ (z >> np.uint64(31))
        span = np.uint64(2 * self.padding + 1)
        top, left = z % span, (z // span) % span
        flip = (z >> np.uint64(63)).astype(bool) if self.flip else np.zeros(len(z), dtype=bool)
        return (torch.from_numpy(top.astype(np.int64)), torch.from_numpy(left.astype(np.int64)),
                torch.from_numpy(flip))

    def apply(self, images: torch.Tensor, draws: np.ndarray) -> torch.Tensor:
        """``images`` ``[N, C, H, W]`` cropped and flipped as ``draws`` (one per image) choose."""
        n, c, h, w = images.shape
        if len(draws) != n:
            raise ValueError(f"{len(draws)} draws for {n} images")
        top, left, flip = self.choices(draws)
        p = self.padding
        padded = torch.nn.functional.pad(images, (p, p, p, p))  # zeros, as RandomCrop's default fill
        # Each output pixel's position in its padded image: one gather for the whole batch.
        rows = top[:, None] + torch.arange(h)
        columns = left[:, None] + torch.where(flip[:, None], torch.arange(w - 1, -1, -1), torch.arange(w))
        where = (rows[:, :, None] * (w + 2 * p) + columns[:, None, :]).view(n, 1, h * w).expand(n, c, h * w)
        return padded.reshape(n, c, -1).gather(2, where).view(n, c, h, w)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """One ``[C, H, W]`` image, its choice drawn from torch's global generator."""
        draw = np.array([torch.randint(0, 2**63 - 1, ()).item()], dtype=np.uint64)
        return self.apply(image.unsqueeze(0), draw)[0]


class SeededAugmentation(Dataset):
    """A view of ``dataset`` whose random transforms depend only on ``(seed, epoch, index)``.

    Augmentation therefore does not depend on the batch size, the number of loader workers
    or processes, or where a resumed run restarted. In-memory images augmented by a
    :class:`PadCropFlip` (the named datasets), or not at all, are read a batch at a time with
    each sample's crop and flip derived from that triple; any other dataset's transform runs
    per sample with torch's global generator seeded from the triple (and restored afterwards).
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose augmentations the following reads draw."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list:
        # DataLoader fetches a batch through this method.
        seeds = [derive_seed(self.seed, self.epoch, index) for index in indices]
        reader = _batch_reader(self.dataset)
        if reader is not None:
            base, subsets = reader
            for chosen in subsets:
                indices = [int(chosen[index]) for index in indices]
            images, labels = base.read_batch(indices, np.array(seeds, dtype=np.uint64))
            return list(zip(images.unbind(0), labels.tolist()))
        generator = torch.default_generator
        with torch.random.fork_rng(devices=[]):  # one fork of the RNG per batch
            samples = []
            for index, seed in zip(indices, seeds):
                generator.manual_seed(seed)
                samples.append(self.dataset[index])
        return samples


def _batch_reader(dataset: Dataset) -> tuple[ImageTensorDataset, list] | None:
    """The in-memory dataset under ``dataset``'s Subsets and their index lists (outermost first),
    when its samples can be read a batch at a time; else None."""
    subsets = []
    while isinstance(dataset, Subset):
        subsets.append(dataset.indices)
        dataset = dataset.dataset
    if isinstance(dataset, ImageTensorDataset) and (dataset.transform is None or isinstance(dataset.transform, PadCropFlip)):
        return dataset, subsets
    return None


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data root: ``root`` if given, else ``$AUXSURGERY_DATA``, else ``./data``."""
    return Path(root if root is not None else os.environ.get(DATA_ENV, "data")).expanduser()


def augmentation(size: int, flip: bool) -> PadCropFlip:
    """Common-practice training augmentation of ``size``-pixel tensor images: random crop with
    size/8 zero padding, optional h-flip."""
    return PadCropFlip(padding=size // 8, flip=flip)


# --- Named datasets: where their files are, how to read and fetch them, how to augment ---------

Arrays = tuple[torch.Tensor, torch.Tensor, list[str]]  # uint8 images [N, C, H, W], labels [N], class names


@dataclass(frozen=True)
class _TorchvisionSource:
    """A dataset torchvision knows, stored under ``root/folder`` in torchvision's layout."""

    folder: str
    tv_class: type
    augment: bool  # augment the training split by default
    flip: bool  # horizontal flips keep the class (not so for digits)

    def files(self, root: Path, train: bool) -> list[Path]:
        return [root / self.folder]

    def download(self, root: Path, train: bool) -> None:
        self.tv_class(root, train=train, download=True)

    def read(self, root: Path, train: bool) -> Arrays:
        ds = self.tv_class(root, train=train, download=False)
        return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets), ds.classes


class _MnistFormat(_TorchvisionSource):
    """MNIST-format idx files, read directly (also gzipped: torchvision only reads them unpacked)."""

    def files(self, root: Path, train: bool) -> list[Path]:
        prefix = "train" if train else "t10k"
        raw = root / self.folder / "raw"
        return [raw / f"{prefix}-images-idx3-ubyte", raw / f"{prefix}-labels-idx1-ubyte"]

    def read(self, root: Path, train: bool) -> Arrays:
        images, labels = (_read_idx(path) for path in self.files(root, train))
        return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)), self.tv_class.classes


class _Svhn(_TorchvisionSource):
    """SVHN's ``.mat`` files, directly under the root; its splits are named, not flagged."""

    def files(self, root: Path, train: bool) -> list[Path]:
        return [root / f"{_split(train)}_32x32.mat"]

    def download(self, root: Path, train: bool) -> None:
        self.tv_class(root, split=_split(train), download=True)

    def read(self, root: Path, train: bool) -> Arrays:
        ds = self.tv_class(root, split=_split(train), download=False)
        return torch.from_numpy(ds.data), torch.from_numpy(ds.labels.astype(np.int64)), [str(d) for d in range(10)]


def _split(train: bool) -> str:
    return "train" if train else "test"


def _read_idx(path: Path) -> np.ndarray:
    """An IDX array (MNIST's format) from ``path``, or from its ``.gz`` sibling."""
    raw = path.read_bytes() if path.exists() else gzip.decompress(path.with_name(path.name + ".gz").read_bytes())
    ndim = raw[3]
    shape = np.frombuffer(raw, ">i4", count=ndim, offset=4)
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


SOURCES = {
    "mnist": _MnistFormat("MNIST", torchvision.datasets.MNIST, augment=False, flip=False),
    "fashion-mnist": _MnistFormat("FashionMNIST", torchvision.datasets.FashionMNIST, augment=False, flip=True),
    "cifar10": _TorchvisionSource("cifar-10-batches-py", torchvision.datasets.CIFAR10, augment=True, flip=True),
    "cifar100": _TorchvisionSource("cifar-100-python", torchvision.datasets.CIFAR100, augment=True, flip=True),
    "svhn": _Svhn("", torchvision.datasets.SVHN, augment=True, flip=False),
}
SYNTHETIC_NAMES = ("synthetic", "embedded")
_ALIASES = {"fashionmnist": "fashion-mnist", "fashion_mnist": "fashion-mnist", "cifar-10": "cifar10", "cifar-100": "cifar100"}


def _exists(path: Path) -> bool:
    # MNIST's idx files count as present in their gzipped form too.
    return path.exists() or path.with_name(path.name + ".gz").exists()


def _load_named(name: str, root: Path, train: bool, download: bool, augment: bool | None,
                fetch_hint: str | None) -> ImageTensorDataset:
    source = SOURCES[name]
    missing = [path for path in source.files(root, train) if not _exists(path)]
    if missing and download:
        source.download(root, train)
    elif missing:
        fetch = f", or {fetch_hint} to fetch it" if fetch_hint else ""
        raise DatasetNotFoundError(f"{name}: no data at {missing[0]} (data root {root}); point --data-root or "
                                   f"{DATA_ENV} at a folder that holds it{fetch}")
    images, labels, classes = source.read(root, train)
    use_augment = train and (source.augment if augment is None else augment)
    transform = augmentation(images.shape[-1], source.flip) if use_augment else None
    return ImageTensorDataset(images, labels, classes, transform)


def _load_synthetic(train: bool, size: int | None, seed: int) -> ImageTensorDataset:
    split = _split(train)
    images, labels = synthetic.make_synthetic(size or synthetic.SPLIT_SIZES[split], seed=seed, split=split)
    return ImageTensorDataset(torch.from_numpy(images), torch.from_numpy(labels), list(synthetic.CLASSES))


class _ImageLoader:
    """Opens an ImageFolder's images with one clear error per bad file.

    Without an ``image_size`` every image must have the first one's size (a batch stacks them):
    the error names both files instead of the collate's "stack expects each tensor to be equal size".
    """

    def __init__(self, resized: bool):
        self.resized, self.first = resized, None

    def __call__(self, path: str) -> Image.Image:
        try:
            with Image.open(path) as image:
                image = image.convert("RGB")
        except (OSError, ValueError) as err:  # PIL's UnidentifiedImageError is an OSError
            raise ValueError(f"cannot read image {path}: {err}; remove or replace the file") from None
        if not self.resized:
            if self.first is None:
                self.first = (path, image.size)
            elif image.size != self.first[1]:
                (first, (w, h)), (w2, h2) = self.first, image.size
                raise ValueError(f"images of different sizes: {path} is {w2}x{h2} but {first} is {w}x{h}; resize "
                                 "them to one size (train and defend: --image-size; a recipe: [data] image_size; "
                                 "Python: image_size=...; attack and export --check read images as they are: "
                                 "resize the files to the model's input size)")
        return image


def _image_folder(path: Path, train: bool, augment: bool | None, image_size: int | None) -> Dataset:
    """An ImageFolder at ``path``: its ``train/`` or ``val/``/``test/`` sub-folder when it has them."""
    if not path.is_dir():
        raise DatasetNotFoundError(f"no ImageFolder directory at {path}")
    if (path / "train").is_dir():
        splits = ["train"] if train else ["val", "test"]
        found = [path / s for s in splits if (path / s).is_dir()]
        if not found:
            raise DatasetNotFoundError(f"{path} has a train/ folder but no {' or '.join(s + '/' for s in splits)} folder")
        path = found[0]
    if not any(entry.is_dir() for entry in path.iterdir()):
        raise ValueError(f"ImageFolder {path} is empty: expected one sub-folder per class holding its images (e.g. {path}/cat/0001.png)")
    if augment and not image_size:
        raise ValueError("ImageFolder augmentation needs image_size (the crop size)")
    steps = [T.Resize(image_size), T.CenterCrop(image_size)] if image_size else []
    steps.append(T.ToTensor())
    if train and augment is not False and image_size:
        steps.append(augmentation(image_size, flip=True))
    try:
        return torchvision.datasets.ImageFolder(str(path), transform=T.Compose(steps),
                                                loader=_ImageLoader(resized=bool(image_size)))
    except FileNotFoundError as error:
        raise ValueError(f"ImageFolder {path} holds no usable images: {error}") from None


def load_dataset(
    name: str | os.PathLike,
    root: str | os.PathLike | None = None,
    train: bool = True,
    download: bool = False,
    augment: bool | None = None,
    subset: int | None = None,
    subset_seed: int | None = None,
    image_size: int | None = None,
    seed: int = 0,
    fetch_hint: str | None = None,
) -> Dataset:
    """A dataset of ``([C, H, W] float image in [0, 1], int label)`` pairs.

    Args:
        name: ``mnist``, ``fashion-mnist``, ``cifar10``, ``cifar100``, ``svhn``,
            ``synthetic`` (alias ``embedded``: the built-in shapes task, no files), or
            the path of an ImageFolder directory (class sub-folders, or ``train/`` and
            ``val/``/``test/`` folders holding them).
        root: the data root (default ``$AUXSURGERY_DATA``, else ``./data``).
        train: the training split (else the test split).
        download: fetch missing files with torchvision (never done unless asked).
        augment: training-split augmentation; None picks the dataset's default (padded
            random crop plus flip for CIFAR and for ImageFolder given ``image_size``, crop
            only for SVHN, none for MNIST and the synthetic set). Test splits never are.
        subset: keep only this many samples: the first ones, or a random draw when
            ``subset_seed`` is given. The synthetic set draws exactly this many (any number).
        image_size: ImageFolder only: resize and centre-crop images to this size (needed
            to batch images of different sizes; augmentation needs it too).
        seed: the synthetic set's seed.
        fetch_hint: how the caller's user asks for ``download`` (``"pass --download"``), for the message of a
            named dataset's missing files; without it, the message names only the data root.
    """
    key = str(name).lower()
    key = _ALIASES.get(key, key)
    if key in SYNTHETIC_NAMES:
        # The synthetic set is prefix-consistent, so "the first N" is drawn directly.
        dataset = _load_synthetic(train, subset if subset_seed is None else None, seed)
    elif key in SOURCES:
        dataset = _load_named(key, data_root(root), train, download, augment, fetch_hint)
    elif Path(name).is_dir() or os.sep in str(name):
        dataset = _image_folder(Path(name).expanduser(), train, augment, image_size)
    else:
        known = ", ".join([*SOURCES, *SYNTHETIC_NAMES])
        raise ValueError(f"unknown dataset {str(name)!r}; known names: {known}, or an ImageFolder directory path")
    return take_subset(dataset, subset, subset_seed) if subset is not None else dataset


def dataset_names() -> list[str]:
    """The dataset names :func:`load_dataset` knows (besides ImageFolder paths)."""
    return [*SOURCES, SYNTHETIC_NAMES[0]]


def take_subset(dataset: Dataset, n: int, seed: int | None = None) -> Dataset:
    """The first ``n`` samples of ``dataset``, or ``n`` drawn at random with ``seed``."""
    if not 0 < n <= len(dataset):
        raise ValueError(f"subset of {n} samples asked from a dataset of {len(dataset)}")
    if n == len(dataset):
        return dataset
    if seed is None:
        return Subset(dataset, range(n))
    chosen = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n]
    return Subset(dataset, chosen.sort().values.tolist())


def held_out_split(train: Dataset, plain: Dataset, held_out: int, seed: int) -> tuple[Subset, Subset]:
    """Training images split into (train, validation): ``held_out`` of them drawn at random from ``seed`` to
    validate on, the rest to train on, each part in the original order. The validation part comes from ``plain``,
    the same images without augmentation, so the test split stays untouched until evaluation."""
    if len(plain) != len(train):
        raise ValueError(f"the un-augmented copy holds {len(plain)} images, the training set {len(train)}")
    if not 0 < held_out < len(train):
        raise ValueError(f"cannot hold out {held_out} of {len(train)} training images for validation: hold out at "
                         f"least 1 and leave some to train on")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed)).tolist()
    return Subset(train, sorted(order[held_out:])), Subset(plain, sorted(order[:held_out]))


def dataset_classes(dataset: Dataset) -> list[str] | None:
    """The class names of ``dataset`` (looking through Subset and other views), or None."""
    while not hasattr(dataset, "classes") and hasattr(dataset, "dataset"):
        dataset = dataset.dataset
    return getattr(dataset, "classes", None)


def make_loader(
    dataset: Dataset,
    batch_size: int = 128,
    shuffle: bool = False,
    sampler: Sampler | None = None,
    num_workers: int = 0,
    drop_last: bool = False,
    seed: int = 0,
) -> DataLoader:
    """A DataLoader with this project's defaults: pinned memory on CUDA, seeded shuffling."""
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        generator=generator,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,
    )
