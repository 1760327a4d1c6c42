"""The joint training objective and per-head accuracy bookkeeping.

The paper trains every head at once on ``sum_h alpha_h * CE(logits_h, y)`` (Section
III-A); its decision rules (vote, score) then combine the heads at test time.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from auxsurgery.rules import rule_predict

RULES_REPORTED = ("vote", "score", "private")


def head_losses(logits: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy of each head ``[H]`` for stacked logits ``[H, B, C]`` and labels ``[B]``."""
    num_heads, batch, num_classes = logits.shape
    per_sample = F.cross_entropy(
        logits.reshape(num_heads * batch, num_classes), y.repeat(num_heads),
        reduction="none", label_smoothing=label_smoothing,
    )
    return per_sample.view(num_heads, batch).mean(1)


def joint_loss(logits: torch.Tensor, y: torch.Tensor, alpha: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """The paper's objective ``sum_h alpha_h * CE(logits_h, y)`` (a scalar)."""
    losses = head_losses(logits, y, label_smoothing)
    return losses @ alpha.to(losses.dtype)


class HeadAccuracy:
    """Running accuracy of every head and of the decision rules, kept on the device.

    ``update`` launches a few small kernels and never syncs; ``counts`` is one tensor
    (correct per head, correct per rule, total) so processes can sum it in one
    all-reduce before ``compute``.
    """

    def __init__(self, head_names: list[str], device: torch.device):
        self.head_names = list(head_names)
        # With one head every rule is that head's decision: reporting them would only repeat it.
        self.rules = RULES_REPORTED if len(head_names) > 1 else ()
        self.counts = torch.zeros(len(self.head_names) + len(self.rules) + 1, device=device)

    @torch.no_grad()
    def update(self, logits: torch.Tensor, y: torch.Tensor, alpha: torch.Tensor) -> None:
        """Count the correct predictions of a batch's stacked logits ``[H, B, C]``."""
        logits = logits.float()
        correct = [(logits.argmax(-1) == y).sum(1)]
        correct += [(rule_predict(logits, rule, alpha) == y).sum().view(1) for rule in self.rules]
        self.counts[:-1] += torch.cat(correct)
        self.counts[-1] += y.numel()

    def compute(self) -> dict[str, float]:
        """``{"head/<name>": acc, ..., "rule/<rule>": acc, ...}`` in [0, 1] (syncs once)."""
        counts = self.counts.tolist()
        total = max(counts[-1], 1.0)
        keys = [f"head/{name}" for name in self.head_names] + [f"rule/{rule}" for rule in self.rules]
        return {key: correct / total for key, correct in zip(keys, counts)}
