"""Feature layouts: what a backbone outputs at a layer, and how a head sees it as an NCHW map."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

__all__ = ["FeatureAdapter", "Layout", "first_tensor", "infer_layout"]


def first_tensor(value):
    """The tensor a head should see: the value itself, or the first tensor inside a tuple/list/dict."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        for item in value:
            found = first_tensor(item)
            if found is not None:
                return found
    return None



@dataclass(frozen=True)
class Layout:
    """How a raw feature maps to an NCHW map: ``kind`` is nchw, nhwc, tokens or flat."""

    kind: str
    channels: int
    height: int
    width: int
    prefix_tokens: int = 0

    @property
    def shape(self) -> tuple[int, int, int]:
        """The adapted feature map's ``(C, H, W)``."""
        return (self.channels, self.height, self.width)

    def to_dict(self) -> dict:
        return asdict(self)


def _grid_matches(h: int, w: int, in_h: int, in_w: int) -> bool:
    """Whether an ``h x w`` grid is a downsampling of an ``in_h x in_w`` input by one stride.

    The two strides may differ only by rounding (a 299-pixel side gives 149 or 150 cells).
    """
    if h <= 0 or w <= 0 or h > in_h or w > in_w:
        return False
    rh, rw = in_h / h, in_w / w
    return max(rh, rw) / min(rh, rw) < 1.2


def infer_layout(shape: tuple[int, ...], input_hw: tuple[int, int]) -> Layout:
    """Guess a feature's layout from its shape ``[B, ...]`` and the input's spatial size.

    NCHW wins ties (a ``C == H == W`` map); a 4-d tensor whose last or middle two sides
    are not one downsampling of the input is refused (attention windows); a 3-d ``[B, N, C]`` tensor is a token
    sequence whose first ``k`` tokens (class/register tokens) are dropped so that the
    rest form a grid with the input's aspect ratio.
    """
    in_h, in_w = input_hw
    dims = tuple(shape[1:])
    if len(dims) == 3:
        a, b, c = dims
        if _grid_matches(b, c, in_h, in_w):
            return Layout("nchw", a, b, c)
        if _grid_matches(a, b, in_h, in_w):
            return Layout("nhwc", c, a, b)
        # e.g. attention windows [B*windows, tokens, C]: no spatial map a head could read
        raise ValueError(f"feature {list(shape)} is neither an NCHW nor an NHWC map of a {in_h}x{in_w} input")
    if len(dims) == 2:
        n, c = dims
        for prefix in range(0, min(n, 17)):
            cells = n - prefix
            gh = round(math.sqrt(cells * in_h / in_w))
            # Token grids come from patching, so their aspect ratio equals the input's exactly.
            if gh > 0 and cells % gh == 0 and gh * in_w == (cells // gh) * in_h:
                return Layout("tokens", c, gh, cells // gh, prefix)
        raise ValueError(f"cannot read a [B, N, C] feature {list(shape)} as a token grid for input {in_h}x{in_w}")
    if len(dims) == 1:
        return Layout("flat", dims[0], 1, 1)
    raise ValueError(f"unsupported feature shape {list(shape)}: expected NCHW, NHWC, tokens [B,N,C] or flat [B,F]")


class FeatureAdapter(nn.Module):
    """Turns one raw feature (tensor or tuple) into the NCHW map its head expects."""

    def __init__(self, layout: Layout):
        super().__init__()
        self.layout = layout

    def forward(self, value):
        x = first_tensor(value)
        kind = self.layout.kind
        if kind == "nhwc":
            return x.permute(0, 3, 1, 2)
        if kind == "tokens":
            tokens = x[:, self.layout.prefix_tokens:]
            return tokens.transpose(1, 2).reshape(x.shape[0], self.layout.channels, self.layout.height, self.layout.width)
        if kind == "flat":
            return x.reshape(x.shape[0], -1, 1, 1)
        return x

