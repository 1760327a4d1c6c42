"""Datasets: named torchvision sets from the shared data root, ImageFolder, the synthetic set, subsets."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from auxsurgery import synthetic
from auxsurgery.data import (
    DatasetNotFoundError,
    SeededAugmentation,
    dataset_classes,
    held_out_split,
    load_dataset,
    make_loader,
    take_subset,
)


# ---- the synthetic set ---------------------------------------------------------------------


def test_synthetic_is_deterministic_balanced_and_prefix_consistent():
    images, labels = synthetic.make_synthetic(1200, seed=3)
    again, again_labels = synthetic.make_synthetic(1200, seed=3)
    assert images.dtype == np.uint8 and images.shape == (1200, 3, 32, 32)
    assert np.array_equal(images, again) and np.array_equal(labels, again_labels)
    # Chunks of 500 hold 50 images of every class.
    assert np.bincount(labels[:1000], minlength=10).tolist() == [100] * 10
    prefix, prefix_labels = synthetic.make_synthetic(700, seed=3)
    assert np.array_equal(prefix, images[:700]) and np.array_equal(prefix_labels, labels[:700])
    other, _ = synthetic.make_synthetic(1200, seed=4)
    test, _ = synthetic.make_synthetic(1200, seed=3, split="test")
    assert not np.array_equal(other, images) and not np.array_equal(test, images)


def test_synthetic_images_use_the_pixel_range_and_vary():
    images, _ = synthetic.make_synthetic(500, seed=0)
    assert images.min() == 0 and images.max() == 255
    # Per-image contrast: no blank images.
    assert (images.reshape(500, -1).std(1) > 10).all()


def test_load_dataset_synthetic_default_sizes_and_tensors():
    train = load_dataset("synthetic", subset=256)
    test = load_dataset("embedded", train=False)
    assert len(train) == 256 and len(test) == synthetic.SPLIT_SIZES["test"]
    image, label = test[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert 0.0 <= image.min() and image.max() <= 1.0 and isinstance(label, int)
    assert dataset_classes(train) == list(synthetic.CLASSES)
    # The first 256 are drawn directly, and equal the first 256 of the full split.
    full = load_dataset("synthetic")
    assert torch.equal(train[255][0], full[255][0])


# ---- named datasets from the shared data root ----------------------------------------------------


def test_mnist_reads_the_gzipped_idx_files(data_root):
    test = load_dataset("mnist", root=data_root, train=False)
    assert len(test) == 10_000
    image, _ = test[0]
    assert image.shape == (1, 28, 28) and 0.0 <= image.min() and image.max() <= 1.0
    counts = torch.bincount(test.labels, minlength=10).tolist()
    assert counts == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]  # data/SOURCES.md
    assert test.transform is None  # no augmentation for digits


def test_cifar10_test_split_and_train_augmentation(data_root):
    test = load_dataset("cifar10", root=data_root, train=False)
    assert len(test) == 10_000 and test[0][0].shape == (3, 32, 32)
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    train = load_dataset("cifar10", root=data_root, subset=100)
    torch.manual_seed(0)
    views = [train[7][0] for _ in range(8)]
    assert any(not torch.equal(views[0], v) for v in views[1:])  # random crop/flip
    assert all(0.0 <= v.min() and v.max() <= 1.0 for v in views)


def test_data_root_comes_from_the_environment(data_root, monkeypatch):
    monkeypatch.setenv("AUXSURGERY_DATA", str(data_root))
    assert len(load_dataset("mnist", train=False, subset=10)) == 10


@pytest.mark.parametrize("name, looked_at", [("cifar10", "cifar-10-batches-py"),
                                             ("mnist", "MNIST/raw/train-images-idx3-ubyte")])
def test_missing_dataset_names_the_path_and_the_data_root(tmp_path, name, looked_at):
    """How to download is named only by a caller that can (fetch_hint): most commands cannot."""
    with pytest.raises(DatasetNotFoundError) as error:
        load_dataset(name, root=tmp_path)
    message = str(error.value)
    assert str(tmp_path / looked_at) in message
    assert "--data-root or AUXSURGERY_DATA" in message and "download" not in message
    with pytest.raises(DatasetNotFoundError, match="folder that holds it, or pass --download to fetch it$"):
        load_dataset(name, root=tmp_path, fetch_hint="pass --download")


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="cifar10.*synthetic"):
        load_dataset("imagenet-22k")


# ---- ImageFolder ----------------------------------------------------------------------------------


def _write_images(folder, classes, per_class=3, size=12):
    rng = np.random.default_rng(0)
    for name in classes:
        (folder / name).mkdir(parents=True)
        for k in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / name / f"{k}.png")


def test_image_folder_with_train_and_val_splits(tmp_path):
    _write_images(tmp_path / "train", ["cat", "dog"], per_class=3)
    _write_images(tmp_path / "val", ["cat", "dog"], per_class=2)
    train = load_dataset(tmp_path, image_size=8)
    val = load_dataset(tmp_path, train=False, image_size=8)
    assert (len(train), len(val)) == (6, 4)
    assert dataset_classes(val) == ["cat", "dog"]
    image, label = val[3]
    assert image.shape == (3, 8, 8) and label == 1 and 0.0 <= image.min() and image.max() <= 1.0


def test_empty_image_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="is empty: expected one sub-folder per class"):
        load_dataset(tmp_path)
    (tmp_path / "cat").mkdir()
    with pytest.raises(ValueError, match="holds no usable images"):
        load_dataset(tmp_path)


# ---- subsets, seeded augmentation, loaders -----------------------------------------------------------


def test_subset_first_n_or_seeded_random_n():
    data = load_dataset("synthetic", train=False)
    first = take_subset(data, 10)
    assert [first[k][1] for k in range(10)] == data.labels[:10].tolist()
    drawn, same, other = (take_subset(data, 10, seed=s).indices for s in (1, 1, 2))
    assert drawn == same and drawn != other and len(set(drawn)) == 10
    with pytest.raises(ValueError, match="subset of 2000"):
        take_subset(data, 2000)


def test_held_out_split_is_seeded_disjoint_and_validates_on_the_unaugmented_copy():
    train, plain = load_dataset("synthetic", subset=50), load_dataset("synthetic", subset=50, augment=False)
    part, val = held_out_split(train, plain, 10, seed=3)
    assert part.dataset is train and val.dataset is plain and (len(part), len(val)) == (40, 10)
    assert not set(part.indices) & set(val.indices) and sorted(part.indices + val.indices) == list(range(50))
    assert held_out_split(train, plain, 10, seed=3)[1].indices == val.indices
    assert held_out_split(train, plain, 10, seed=4)[1].indices != val.indices
    for size in (0, 50):
        with pytest.raises(ValueError, match=f"cannot hold out {size} of 50 training images"):
            held_out_split(train, plain, size, seed=3)


def test_seeded_augmentation_depends_only_on_seed_epoch_and_index(data_root):
    train = load_dataset("cifar10", root=data_root, subset=50)
    view = SeededAugmentation(train, seed=5)
    rng_before = torch.get_rng_state()
    first = view.__getitems__([3, 4])
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's stream is untouched
    # The same sample alone, in another batch, or through another view with the same seed: same pixels.
    assert torch.equal(view[4][0], first[1][0])
    assert torch.equal(SeededAugmentation(train, seed=5)[3][0], first[0][0])
    view.set_epoch(1)
    epoch_views = [view[k][0] for k in range(10)]
    view.set_epoch(0)
    assert any(not torch.equal(view[k][0], epoch_views[k]) for k in range(10))


def test_loader_batches_images_and_labels():
    loader = make_loader(load_dataset("synthetic", subset=40), batch_size=16, shuffle=True, seed=1)
    x, y = next(iter(loader))
    assert x.shape == (16, 3, 32, 32) and y.dtype == torch.int64
    again, _ = next(iter(make_loader(load_dataset("synthetic", subset=40), batch_size=16, shuffle=True, seed=1)))
    assert torch.equal(x, again)
