"""AuxModel: a backbone plus Aux Block heads (their decision rules: :mod:`auxsurgery.rules`).

One call of the trunk yields the backbone's own logits and the feature maps at
every attach point; each head turns its feature map into logits. ``forward``
stacks them as ``[H, B, C]`` with head 0 the backbone's own ("public") head.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .graph.layouts import first_tensor
from .graph.tracing import OUTPUT, match_graph_to_mode
from .rules import check_rule, get_rule, rule_predict, rule_scores

PUBLIC_HEAD = "public"


def as_stacked(logits: torch.Tensor) -> torch.Tensor:
    """``[H, B, C]`` logits; a plain classifier's ``[B, C]`` becomes a single head ``[1, B, C]``."""
    if logits.dim() == 2:
        return logits.unsqueeze(0)
    if logits.dim() != 3:
        raise ValueError(f"expected logits [B, C] or [H, B, C], got shape {tuple(logits.shape)}")
    return logits


def check_pixels(x: torch.Tensor, what: str = "input", size: Sequence[int] | None = None) -> None:
    """Raise a ValueError unless ``x`` is a float batch ``[B, *size]`` of finite pixels in [0, 1]."""
    if not torch.is_tensor(x) or not x.is_floating_point() or x.dim() < 2:
        got = f"{x.dtype} {list(x.shape)}" if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"{what} must be a float tensor [B, C, H, W] of pixels in [0, 1], got {got}")
    if size is not None and list(x.shape[1:]) != list(size):
        raise ValueError(f"{what} has images of size {'x'.join(map(str, x.shape[1:]))} but the model takes "
                         f"{'x'.join(map(str, size))} (channels x height x width); resize the data or rebuild "
                         "the model with that input_size")
    if x.numel():
        low, high = x.min().item(), x.max().item()
        if not 0 <= low <= high <= 1:  # also refuses NaN (comparisons with NaN are False) and inf
            raise ValueError(f"{what} must be finite pixels in [0, 1], got values in [{low:.3g}, {high:.3g}]: "
                             "normalisation belongs inside the model")


def check_labels(y: torch.Tensor, n: int, num_classes: int | None, what: str = "labels") -> None:
    """Raise a ValueError unless ``y`` holds ``n`` integer labels in ``[0, num_classes)`` (``num_classes``
    None: not known yet, so only ``>= 0`` is checked)."""
    if not torch.is_tensor(y) or y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8) \
            or y.shape != (n,):
        got = f"{y.dtype} {list(y.shape)}" if torch.is_tensor(y) else type(y).__name__
        raise ValueError(f"{what} must be an integer tensor of shape ({n},), got {got}")
    if not n:
        return
    low, high = y.min().item(), y.max().item()
    if num_classes is not None and (low < 0 or high >= num_classes):
        raise ValueError(f"{what} span {low}..{high} but the model has {num_classes} classes "
                         f"(valid labels 0..{num_classes - 1})")
    if low < 0:
        raise ValueError(f"{what} span {low}..{high}, but a label is a class index, 0 or more")


class AuxModel(nn.Module):
    """A classifier with Aux Block heads.

    Args:
        trunk: module mapping normalised input to ``{"output": logits, name: feature, ...}``
            in one pass (an fx-rewritten backbone, or a forward-hook wrapper).
        heads: one module per attach point, each mapping its adapted feature map to logits.
        attach_points: attach-point names, in the order of ``heads``.
        backbone: the untouched backbone taking [0, 1] pixels (shares weights with the trunk).
        normalize: input normalisation applied before the trunk (identity if None).
        adapters: per attach point, a module turning the raw feature into an NCHW map.
        alpha: per-head weights, backbone first (default: all ones).
        spec: the JSON-able surgery spec used to rebuild the model from a checkpoint.
    """

    def __init__(
        self,
        trunk: nn.Module,
        heads: Sequence[nn.Module],
        attach_points: Sequence[str],
        backbone: nn.Module,
        normalize: nn.Module | None = None,
        adapters: Sequence[nn.Module] | None = None,
        alpha: Sequence[float] | None = None,
        spec: dict | None = None,
    ):
        super().__init__()
        if len(heads) != len(attach_points):
            raise ValueError(f"{len(heads)} heads for {len(attach_points)} attach points")
        self.trunk = trunk
        self.normalize = normalize if normalize is not None else nn.Identity()
        self.adapters = nn.ModuleList(adapters if adapters is not None else [nn.Identity() for _ in heads])
        self.heads = nn.ModuleList(heads)
        self.attach_points = list(attach_points)
        # Kept out of the module tree: its weights are the trunk's, and registering it would
        # duplicate every key of the state dict.
        self.__dict__["_backbone"] = backbone
        num_heads = len(heads) + 1
        alpha = [1.0] * num_heads if alpha is None else list(alpha)
        if len(alpha) != num_heads:
            raise ValueError(f"alpha has {len(alpha)} weights for {num_heads} heads (backbone first)")
        if any(a < 0 for a in alpha):
            raise ValueError(f"alpha weights must be >= 0, got {alpha}")
        self.register_buffer("alpha", torch.tensor(alpha, dtype=torch.float32))
        self.spec = dict(spec or {})

    def train(self, mode: bool = True) -> "AuxModel":
        """Set train/eval mode here and on the public backbone, whose root is outside this module tree."""
        super().train(mode)
        self._backbone.train(mode)
        return self

    @property
    def head_names(self) -> list[str]:
        """``["public", <attach point>, ...]``: the name of each row of ``forward``'s output."""
        return [PUBLIC_HEAD, *self.attach_points]

    @property
    def num_heads(self) -> int:
        """Number of heads, the backbone's own included."""
        return len(self.heads) + 1

    @property
    def input_size(self) -> tuple[int, int, int] | None:
        """The ``(C, H, W)`` the heads were built for (None for a plain classifier seen as one head)."""
        size = self.spec.get("input_size")
        return tuple(size) if size else None

    def check_input(self, x: torch.Tensor, what: str = "input") -> None:
        """Raise a ValueError naming expected and got unless ``x`` is a batch of this model's images.

        The heads are sized for one input size (their layers and token grids depend on it), so a
        network that would run on another size still gives meaningless answers: the contract is the
        spec's ``input_size`` exactly, and pixels are finite values in [0, 1]. Called at the
        boundaries (predict, attacks, training and evaluation data), not inside ``forward``.
        """
        check_pixels(x, what, self.input_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of every head, stacked ``[H, B, num_classes]``; head 0 is the backbone's."""
        match_graph_to_mode(self.trunk)
        features = self.trunk(self.normalize(x))
        # GoogLeNet and Inception return (logits, aux logits) in train mode.
        logits = [first_tensor(features[OUTPUT])]
        for name, adapter, head in zip(self.attach_points, self.adapters, self.heads):
            logits.append(head(adapter(features[name])))
        return torch.stack([z.to(logits[0].dtype) for z in logits])

    def scores(self, x: torch.Tensor, rule: str = "vote") -> torch.Tensor:
        """Per-class scores ``[B, C]`` of ``rule`` (see :func:`rule_scores`)."""
        return rule_scores(self(x), rule, self.alpha)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, rule: str = "vote") -> torch.Tensor:
        """Predicted labels ``[B]`` under ``rule``, any registered decision rule (:mod:`auxsurgery.rules`): vote
        (Algorithm 1), score (Algorithm 2), public, private, crossmax, mean-logits, or your own."""
        self.check_input(x)
        return rule_predict(self(x), rule, self.alpha)

    def public_model(self) -> nn.Module:
        """The untouched backbone (takes [0, 1] pixels, shares weights): the static attacker's view."""
        return self._backbone

    def as_classifier(self, rule: str = "score") -> "RuleClassifier":
        """A plain ``[B, C]`` classifier for third-party attack libraries (see :class:`RuleClassifier`)."""
        return RuleClassifier(self, rule)


class RuleClassifier(nn.Module):
    """An AuxModel seen through one decision rule, as a ``[B, C]`` classifier.

    Its output is the rule's scores as log-probabilities (:meth:`auxsurgery.rules.Rule.log_probs`: the log of
    normalised class weights, or the log-softmax of logit-like scores), so libraries that apply
    softmax or cross-entropy to "logits" get the rule's own probabilities back and
    ``argmax`` is the rule's decision. For ``vote`` the scores are vote counts plus a
    sub-vote tie-break: piecewise constant in the input, so gradient attacks on it get
    (honestly) almost no signal; use it for decision-based or score-based attacks.
    """

    def __init__(self, aux_model: AuxModel, rule: str = "score"):
        super().__init__()
        self.aux_model = aux_model
        self.rule = check_rule(rule)
        # A fresh module defaults to train mode; libraries that restore "the model's mode"
        # afterwards would then leave the AuxModel training.
        self.training = aux_model.training

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return get_rule(self.rule).log_probs(self.aux_model(x), self.aux_model.alpha)



class _Outputs(nn.Module):
    """A plain classifier as an AuxModel trunk: its logits under the key AuxModel reads."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {OUTPUT: self.model(x)}


def as_aux_model(model: nn.Module) -> AuxModel:
    """``model`` itself if it is an AuxModel, else a head-less AuxModel around it (output ``[1, B, C]``).

    The one way a plain ``[B, C]`` classifier (the undefended baseline) is seen as a one-head model,
    by training and evaluation alike.
    """
    if isinstance(model, AuxModel):
        return model
    aux = AuxModel(_Outputs(model), heads=[], attach_points=[], backbone=model)
    param = next(model.parameters(), None)
    return aux.to(param.device) if param is not None else aux
