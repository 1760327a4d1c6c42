"""The embedded default dataset: ten procedurally drawn shape classes, no download.

Each image is a 32x32 RGB picture of one shape (the class) at a random position,
size, rotation, colour and stroke width, over a random colour gradient, with
Gaussian noise and thin distractor strokes. A three-layer CNN learns it to over 90%
test accuracy in 8 epochs, well under a minute on two CPU cores, yet nothing but the
shape's geometry tells the classes apart, and the undefended model falls to PGD at
eps 8/255 as models of natural images do (both checked in tests/test_train.py).

Everything is drawn with numpy from one seed: a (seed, split) pair always gives the
same images.
"""
from __future__ import annotations

import numpy as np

from ._utils import check_memory

IMAGE_SIZE = 32
SPLIT_SIZES = {"train": 5000, "test": 1000}
_SPLIT_STREAM = {"train": 0, "test": 1}
# Images are drawn in chunks of this size (a multiple of the class count: balanced chunks).
_CHUNK = 500

# Every shape is a signed distance (negative inside) in shape coordinates: ``u, v`` are
# pixel offsets from the shape's centre, rotated and divided by its radius, so the shape
# spans about [-1, 1]; ``t`` is the stroke half-width in the same units.


def _box(u, v, half=0.85):
    """A filled axis-aligned square."""
    return np.maximum(np.abs(u), np.abs(v)) - half


def _triangle(u, v):
    """An upward triangle with corners (0, -1) and (+-0.95, 0.7): the max over its edges' half-planes."""
    norm = np.hypot(1.7, 0.95)  # the side edges' normals are (+-1.7, -0.95) / norm
    bottom = v - 0.7
    left = (-1.7 * u - 0.95 * v - 0.95) / norm
    right = (1.7 * u - 0.95 * v - 0.95) / norm
    return np.maximum(bottom, np.maximum(left, right))


def _plus(u, v, t):
    """Two bars of half-width ``t`` crossing at the centre."""
    return np.minimum(np.maximum(np.abs(u) - t, np.abs(v) - 1), np.maximum(np.abs(v) - t, np.abs(u) - 1))


def _stripes(w, count=3.0):
    """Alternating bands across coordinate ``w``."""
    return -np.sin(np.pi * count * w) / (np.pi * count)


_SHAPES = {
    "disk": lambda u, v, t: np.hypot(u, v) - 1,
    "square": lambda u, v, t: _box(u, v),
    "triangle": lambda u, v, t: _triangle(u, v),
    "plus": _plus,
    "cross": lambda u, v, t: _plus((u + v) / np.sqrt(2), (u - v) / np.sqrt(2), t),
    "ring": lambda u, v, t: np.abs(np.hypot(u, v) - 0.75) - t,
    "frame": lambda u, v, t: np.abs(np.maximum(np.abs(u), np.abs(v)) - 0.75) - t,
    "h-stripes": lambda u, v, t: np.maximum(_box(u, v), _stripes(v)),
    "v-stripes": lambda u, v, t: np.maximum(_box(u, v), _stripes(u)),
    # The product of two band patterns, scaled back to about one unit per unit of distance.
    "checker": lambda u, v, t: np.maximum(_box(u, v), 8 * _stripes(u) * _stripes(v)),
}
CLASSES = tuple(_SHAPES)


def _uniform(rng, low, high, size):
    """Uniform draws as float32: the whole generator works in float32 for speed."""
    return rng.uniform(low, high, size=size).astype(np.float32)


def _pixel_grid():
    """Pixel-centre coordinates ``(ys, xs)``, each ``[S, S]``."""
    return np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32) + 0.5


def _draw_shapes(rng, labels):
    """Per image, a soft mask ``[N, 1, S, S]`` of its class's shape (anti-aliased edges)."""
    n = len(labels)
    r = _uniform(rng, 6, 12, (n, 1, 1))
    cx, cy = _uniform(rng, r, IMAGE_SIZE - r, (n, 1, 1)), _uniform(rng, r, IMAGE_SIZE - r, (n, 1, 1))
    angle = _uniform(rng, -np.pi / 12, np.pi / 12, (n, 1, 1))
    stroke = _uniform(rng, 1.0, 2.0, (n, 1, 1)) / r
    ys, xs = _pixel_grid()
    dx, dy = xs - cx, ys - cy
    cos, sin = np.cos(angle), np.sin(angle)
    u, v = (cos * dx + sin * dy) / r, (cos * dy - sin * dx) / r
    distance = np.empty_like(u)
    for label, shape in enumerate(_SHAPES.values()):
        rows = labels == label
        distance[rows] = shape(u[rows], v[rows], stroke[rows])
    # Distance in pixels through a one-pixel ramp: anti-aliased edges.
    return np.clip(0.5 - distance * r, 0, 1)[:, None]


def _draw_stroke(rng, n):
    """A thin random line segment per image, as a soft mask ``[N, 1, S, S]`` unrelated to the class."""
    x0, y0 = _uniform(rng, 0, IMAGE_SIZE, (2, n, 1, 1))
    angle = _uniform(rng, 0, np.pi, (n, 1, 1))
    length = _uniform(rng, 3, 9, (n, 1, 1))
    cos, sin = np.cos(angle), np.sin(angle)
    ys, xs = _pixel_grid()
    px, py = xs - x0, ys - y0
    along = np.clip(px * cos + py * sin, 0, length)
    gap = np.hypot(px - along * cos, py - along * sin)
    return np.clip(1.0 - gap, 0, 1)[:, None]


def _draw_chunk(rng, n):
    """Draw ``n`` images (float32 ``[n, 3, S, S]`` in about [0, 1]) and their labels."""
    labels = rng.permutation(np.arange(n) % len(CLASSES))
    # Background: a random colour plus a linear gradient in a random direction.
    background = _uniform(rng, 0, 1, (n, 3, 1, 1))
    ys, xs = _pixel_grid() / IMAGE_SIZE - 0.5
    images = background + _uniform(rng, -0.5, 0.5, (n, 3, 1, 1)) * xs + _uniform(rng, -0.5, 0.5, (n, 3, 1, 1)) * ys
    # A foreground colour too close to the background is pushed away from it, so every
    # shape stays visible.
    foreground = _uniform(rng, 0, 1, (n, 3, 1, 1))
    close = np.linalg.norm((foreground - background)[:, :, 0, 0], axis=1) < 0.35
    foreground[close] = np.where(background[close] > 0.5, background[close] - 0.45, background[close] + 0.45)
    # Paint (blend towards a colour through a soft mask) the shape, then three distractors.
    images += (foreground - images) * _draw_shapes(rng, labels)
    for _ in range(3):
        images += (_uniform(rng, 0, 1, (n, 3, 1, 1)) - images) * _draw_stroke(rng, n)
    noise_level = _uniform(rng, 0.02, 0.08, (n, 1, 1, 1))
    images += rng.standard_normal(size=images.shape, dtype=np.float32) * noise_level
    return images, labels


def make_synthetic(n: int, seed: int = 0, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Draw ``n`` images: ``(uint8 [n, 3, 32, 32], int64 labels [n])``, 50 of each class per 500.

    Deterministic: the same ``(seed, split)`` always gives the same images, and a smaller
    ``n`` gives a prefix of a larger one (images are drawn in chunks, each from its own
    seed stream). ``train`` and ``test`` draw from independent streams of the same seed.
    """
    if split not in _SPLIT_STREAM:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(_SPLIT_STREAM)}")
    check_size(n)
    images, labels = np.empty((n, 3, IMAGE_SIZE, IMAGE_SIZE), np.uint8), np.empty(n, np.int64)
    for chunk in range(-(-n // _CHUNK)):
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, _SPLIT_STREAM[split], chunk])))
        chunk_images, chunk_labels = _draw_chunk(rng, _CHUNK)
        rows = slice(chunk * _CHUNK, min(n, (chunk + 1) * _CHUNK))
        images[rows] = np.round(np.clip(chunk_images[:rows.stop - rows.start], 0, 1) * 255)
        labels[rows] = chunk_labels[:rows.stop - rows.start]
    return images, labels


def memory_needed(n: int) -> int:
    """Bytes that drawing ``n`` images takes: the images and labels, and one chunk's float32 working arrays (at
    most a dozen image-sized arrays, by tracemalloc's peak)."""
    return n * (3 * IMAGE_SIZE * IMAGE_SIZE + 8) + 12 * _CHUNK * 3 * IMAGE_SIZE * IMAGE_SIZE * 4


def check_size(n: int) -> None:
    """A ValueError, before anything is drawn, unless ``n`` images can be: 1 or more, and no more than the memory
    available holds (:func:`memory_needed`)."""
    if n < 1:
        raise ValueError(f"the synthetic set draws 1 or more images, not {n}")
    check_memory(memory_needed(n), f"the synthetic set of {n:,} images", "ask for fewer images")
