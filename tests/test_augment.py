"""The training augmentation (padded random crop + flip): torchvision's law, applied a batch at a
time, and a function of (seed, epoch, index) only."""
from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from torch.utils.data import DistributedSampler, Subset
from torchvision import transforms as T
from train_helpers import tiny_aux_model

from auxsurgery._utils import derive_seed
from auxsurgery.data import (
    ImageTensorDataset,
    PadCropFlip,
    SeededAugmentation,
    load_dataset,
    make_loader,
    take_subset,
)
from auxsurgery.train import TrainConfig, finetune
from auxsurgery.train.replay import SkipFirst


def images_dataset(n=40, size=12, seed=0, flip=True, fill=None):
    generator = torch.Generator().manual_seed(seed)
    if fill is None:
        images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=generator)
    else:
        images = torch.full((n, 3, size, size), fill, dtype=torch.uint8)
    labels = torch.arange(n) % 10
    return ImageTensorDataset(images, labels, [str(k) for k in range(10)], PadCropFlip(size // 4, flip=flip))


def reference(image: torch.Tensor, padding: int, top: int, left: int, flip: bool) -> torch.Tensor:
    """torchvision's own RandomCrop(size, padding=padding) made to draw (top, left), then the flip."""
    size = tuple(image.shape[-2:])
    with mock.patch.object(T.RandomCrop, "get_params", return_value=(top, left, *size)):
        out = T.RandomCrop(size, padding=padding)(image)
    return TF.hflip(out) if flip else out


def test_batched_crop_and_flip_match_a_per_sample_reference():
    data = images_dataset(n=6, size=12)
    aug = data.transform
    # Draws that choose each (top, left, flip), found by search: choices() is the one law.
    draws = np.arange(20_000, dtype=np.uint64)
    t, l, f = aug.choices(draws)
    for top in range(2 * aug.padding + 1):
        for left in range(2 * aug.padding + 1):
            for flip in (False, True):
                hit = ((t == top) & (l == left) & (f == flip)).nonzero()
                assert len(hit), (top, left, flip)
                draw = draws[int(hit[0])]
                out = aug.apply(data.images, np.full(len(data.images), draw, dtype=np.uint64))
                for k, image in enumerate(data.images):
                    assert torch.equal(out[k], reference(image, aug.padding, top, left, flip))


def test_each_sample_of_a_batch_gets_its_own_choice():
    data = images_dataset(n=32, size=12)
    aug = data.transform
    draws = np.array([derive_seed(3, 1, k) for k in range(32)], dtype=np.uint64)
    out = aug.apply(data.images, draws)
    top, left, flip = aug.choices(draws)
    assert len(set(zip(top.tolist(), left.tolist(), flip.tolist()))) > 16
    for k in range(32):
        expected = reference(data.images[k], aug.padding, int(top[k]), int(left[k]), bool(flip[k]))
        assert torch.equal(out[k], expected)
        # One image alone, with the same draw: the same pixels.
        assert torch.equal(aug.apply(data.images[k:k + 1], draws[k:k + 1])[0], expected)


def test_padding_is_zeros_as_torchvisions_random_crop():
    data = images_dataset(n=64, size=16, fill=255)
    view = SeededAugmentation(data, seed=0)
    images = torch.stack([image for image, _ in view.__getitems__(list(range(64)))])
    assert set(images.unique().tolist()) <= {0.0, 1.0}
    top, left, _ = data.transform.choices(np.array([derive_seed(0, 0, k) for k in range(64)], dtype=np.uint64))
    p = data.transform.padding
    for k in range(64):
        # The zero band: p - top rows above, top - p rows below, likewise columns (mirrored if flipped).
        rows = (images[k, 0] == 0).all(dim=1)
        assert int(rows.sum()) == abs(int(top[k]) - p)
        columns = (images[k, 0] == 0).all(dim=0)
        assert int(columns.sum()) == abs(int(left[k]) - p)
    # Uncropped corner-to-corner shifts happen: some image is fully padded on one side by p rows.
    assert ((top == 0) | (top == 2 * p)).any()


def test_choices_cover_every_offset_and_flip_evenly():
    aug = PadCropFlip(padding=4)
    draws = np.array([derive_seed(0, epoch, k) for epoch in range(3) for k in range(6000)], dtype=np.uint64)
    top, left, flip = aug.choices(draws)
    n = len(draws)
    for values in (top, left):
        counts = torch.bincount(values, minlength=9)
        assert len(counts) == 9 and (abs(counts - n / 9) < 0.1 * n / 9).all(), counts
    assert abs(flip.float().mean() - 0.5) < 0.02
    # Neighbouring indices are not correlated: consecutive offsets agree about 1/9 of the time.
    assert abs((top[1:] == top[:-1]).float().mean() - 1 / 9) < 0.02
    assert not PadCropFlip(padding=4, flip=False).choices(draws)[2].any()


def test_augmentation_does_not_depend_on_batch_size_subsets_or_workers():
    data = images_dataset(n=48)
    view = SeededAugmentation(take_subset(data, 40, seed=2), seed=7)
    view.set_epoch(3)
    alone = [view[k] for k in range(40)]

    def loaded(batch_size, num_workers=0):
        loader = make_loader(view, batch_size=batch_size, num_workers=num_workers)
        batches = list(loader)
        return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])

    for batch_size, workers in [(1, 0), (8, 0), (40, 0), (5, 1)]:
        images, labels = loaded(batch_size, workers)
        assert torch.equal(images, torch.stack([image for image, _ in alone])), (batch_size, workers)
        assert labels.tolist() == [label for _, label in alone]
    # Through the Subset: the same pixels as the samples it picks, augmented as the view numbers them.
    chosen = view.dataset.indices
    top, left, flip = data.transform.choices(np.array([derive_seed(7, 3, k) for k in range(40)], dtype=np.uint64))
    for k in (0, 17, 39):
        expected = reference(data.images[chosen[k]], data.transform.padding, int(top[k]), int(left[k]), bool(flip[k]))
        assert torch.equal(alone[k][0], expected.float() / 255)
    # Another epoch, other crops.
    view.set_epoch(4)
    assert any(not torch.equal(view[k][0], alone[k][0]) for k in range(40))


def test_a_restarted_epoch_reads_the_same_batches():
    data = images_dataset(n=64)
    view = SeededAugmentation(data, seed=1)
    view.set_epoch(2)
    sampler = DistributedSampler(view, num_replicas=1, rank=0, shuffle=True, seed=1)
    sampler.set_epoch(2)
    full = [x for x, _ in make_loader(view, batch_size=16, sampler=sampler, drop_last=True)]
    resumed = [x for x, _ in make_loader(view, batch_size=16, sampler=SkipFirst(sampler, 32), drop_last=True)]
    assert len(resumed) == 2 and all(torch.equal(a, b) for a, b in zip(full[2:], resumed))


class Interrupt(Exception):
    pass


def test_an_engine_run_killed_mid_epoch_resumes_with_the_same_augmentation(tmp_path):
    def run(out_dir, kill_at=None, **overrides):
        aux = tiny_aux_model()
        settings = {"epochs": 2, "batch_size": 16, "lr": 0.05, "amp": "off", "progress": False, "log_every": 1,
                    "save_every": 3, "out_dir": str(out_dir)}

        def on_step(info):
            if info.global_step == kill_at:
                raise Interrupt

        finetune(aux, images_dataset(n=64, size=8), config=TrainConfig(**{**settings, **overrides}), on_step=on_step)
        return aux.state_dict()

    reference = run(tmp_path / "ref")
    with pytest.raises(Interrupt):
        run(tmp_path / "cut", kill_at=6)
    # Resumed at epoch 2, step 2 (the state saved after step 6), reading through a loader worker.
    resumed = run(tmp_path / "cut", resume=True, num_workers=1)
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)


def test_unaugmented_in_memory_data_reads_the_same_pixels_batched():
    data = images_dataset(n=20)
    data.transform = None
    view = SeededAugmentation(Subset(data, list(range(5, 20))), seed=0)
    for k, (image, label) in enumerate(view.__getitems__(list(range(15)))):
        assert torch.equal(image, data[k + 5][0]) and label == data[k + 5][1]


def test_one_image_draws_from_torchs_generator():
    data = images_dataset(n=4)
    torch.manual_seed(0)
    first = [data[1][0] for _ in range(10)]
    torch.manual_seed(0)
    again = [data[1][0] for _ in range(10)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert any(not torch.equal(first[0], v) for v in first[1:])


def test_other_transforms_still_run_per_sample_under_the_seeded_generator():
    data = images_dataset(n=8)
    data.transform = lambda image: image + torch.rand(())  # not a PadCropFlip: per-sample path
    view = SeededAugmentation(data, seed=4)
    rng_before = torch.get_rng_state()
    batch = view.__getitems__([2, 3])
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert torch.equal(view[3][0], batch[1][0])


def test_named_datasets_and_image_folders_use_the_one_augmentation(data_root, tmp_path):
    from PIL import Image

    train = load_dataset("cifar10", root=data_root, subset=10)
    assert isinstance(train.dataset.transform, PadCropFlip) and train.dataset.transform.padding == 4
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(tmp_path / name / "0.png")
    folder = load_dataset(tmp_path, image_size=8, augment=True)
    assert isinstance(folder.transform.transforms[-1], PadCropFlip)
    image, _ = SeededAugmentation(folder, seed=0)[0]
    assert image.shape == (3, 8, 8)
    assert set(image.unique().tolist()) <= {0.0, torch.tensor(200 / 255).item()}


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_apply_keeps_the_dtype(dtype):
    images = torch.ones(3, 1, 8, 8, dtype=dtype)
    out = PadCropFlip(2).apply(images, np.arange(3, dtype=np.uint64))
    assert out.dtype == dtype and out.shape == images.shape
