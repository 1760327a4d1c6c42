"""The ``auto:k`` placement rule: which ``k`` attach points to pick when the user names none."""
from __future__ import annotations

import math

from .discovery import AttachPoint

__all__ = ["STEM_NAMES", "auto_points"]


def _stage_outputs(points: list[AttachPoint]) -> dict[int, AttachPoint]:
    """The last point at each stride, strides rounded to powers of two (299 px inputs give
    149- and 147-pixel maps in one stage); points that raise the resolution again are skipped."""
    stages: dict[int, AttachPoint] = {}
    for p in points:
        level = round(math.log2(p.stride))
        if stages and level < max(stages):
            continue
        stages[level] = p
    return stages


# Module names timm and torchvision give the input stem (a few strided convs before the first
# stage, or a ViT's patch embedding).
STEM_NAMES = frozenset({"stem", "conv_stem", "patch_embed"})


def _collapse_stems(points: list[AttachPoint]) -> list[AttachPoint]:
    """Keep one point per stem module: its own output when it is a candidate, else its last point.

    The layers inside a stem each halve the resolution, so without this a stem of three
    strided convs (LeViT, EfficientViT, XCiT) looks like three stages and takes every head.
    """
    def stem_of(name: str) -> str | None:
        parts = name.split(".")
        for i, part in enumerate(parts):
            if part in STEM_NAMES:
                return ".".join(parts[: i + 1])
        return None

    last_in_stem: dict[str, AttachPoint] = {}
    for p in points:
        stem = stem_of(p.name)
        if stem is not None and (stem not in last_in_stem or last_in_stem[stem].name != stem):
            last_in_stem[stem] = p
    kept = set(map(id, last_in_stem.values()))
    return [p for p in points if stem_of(p.name) is None or id(p) in kept]


def auto_points(points: list[AttachPoint], k: int) -> list[str]:
    """Pick ``k`` attach points in the early and middle network.

    Candidates are spatial module outputs outside the classifier, with each input stem
    (``stem``, ``conv_stem``, ``patch_embed``) standing as one point, preferring blocks
    (modules with children: ``layer1``, ``stages.0``, ``blocks.3``) over single layers
    when blocks give enough choices. Hierarchical networks (ResNet, VGG, ConvNeXt, Swin,
    EfficientNet): use the module depth whose names cover the most resolutions, take the
    last point at each stride (a stage output) and return the first ``k`` stages.
    Isotropic networks (ViT, MLP-Mixer: one resolution throughout): spread ``k`` points
    evenly over the first two thirds of the longest run of sibling blocks. The paper put
    its heads early (Section IV-B) and found early placements the most robust (Table VI).
    """
    if k < 1:
        raise ValueError(f"auto placement needs k >= 1, got {k}")
    spatial = _collapse_stems([p for p in points if p.kind != "op" and not p.in_classifier
                               and p.layout is not None and p.layout.kind != "flat" and p.layout.height > 1])
    if not spatial:
        raise ValueError("no spatial attach point found; pass attach points explicitly")
    blocks = [p for p in spatial if p.kind == "block"]
    picks: list[str] = []
    for pool in (blocks, spatial):
        picks = _stage_picks(pool, k) or _isotropic_picks(pool, k)
        if len(picks) >= k:
            break
    return picks


def _stage_picks(points: list[AttachPoint], k: int) -> list[str]:
    """The first ``k`` stage outputs, or [] when the points span fewer than two strides."""
    by_depth: dict[int, list[AttachPoint]] = {}
    for p in points:
        by_depth.setdefault(p.name.count("."), []).append(p)
    stages = max((_stage_outputs(group) for _, group in sorted(by_depth.items())), key=len, default={})
    if len(stages) < 2:
        return []
    return [stages[s].name for s in sorted(stages)][:k]


def _isotropic_picks(points: list[AttachPoint], k: int) -> list[str]:
    """``k`` points spread over the first two thirds of the longest run of sibling modules."""
    siblings: dict[str, list[AttachPoint]] = {}
    for p in points:
        siblings.setdefault(p.name.rpartition(".")[0], []).append(p)
    run = max(siblings.values(), key=len, default=[])
    window = run[: max(k, math.ceil(len(run) * 2 / 3))]
    if k >= len(window):
        return [p.name for p in window]
    step = (len(window) - 1) / max(k - 1, 1)
    return [window[round(i * step)].name for i in range(k)]
