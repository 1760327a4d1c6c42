"""The per-head study: Table VI, the head-to-head transfer matrix and Fig. 5's loss ratio.

The ``heads`` suite crafts PGD on each head ``k`` alone (objective ``head:k``) and judges
every head on the result. Row ``k`` of the transfer matrix is then each head's accuracy
on inputs crafted against head ``k``; the row crafted on the public head is the paper's
Table VI. Fig. 5's ratio ``l_avg / l_k`` compares the mean cross-entropy of the other
heads with that of the attacked head: below 1, an attack on one head barely hurts the rest.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

__all__ = ["HeadsStudy", "heads_study", "loss_ratio"]


def loss_ratio(head_loss: torch.Tensor, k: int) -> float:
    """``l_avg / l_k``: mean loss of the heads other than ``k`` over the loss of head ``k`` (``[H]`` losses)."""
    others = torch.cat([head_loss[:k], head_loss[k + 1:]])
    return (others.mean() / head_loss[k].clamp_min(1e-12)).item()


@dataclass
class HeadsStudy:
    """Each head's accuracy under PGD crafted on each head.

    Attributes:
        head_names: head names, the backbone's (``public``) first.
        clean: each head's clean accuracy.
        matrix: ``matrix[k][j]``: accuracy of head ``j`` on inputs crafted against head ``k``.
        loss_ratio: ``l_avg / l_k`` on the inputs crafted against head ``k`` (Fig. 5).
        table_vi_rules: each decision rule's accuracy on Table VI's inputs (crafted on the public head).

    Accuracies count a sample right only if it was right on the clean input too. The placement
    study (:mod:`auxsurgery.studies.placement`) reads each placement's Table VI from here.
    """

    head_names: list[str]
    clean: list[float]
    matrix: list[list[float]]
    loss_ratio: list[float]
    table_vi_rules: dict[str, float]

    def table_vi(self) -> dict[str, float]:
        """Each head's accuracy under PGD crafted on the public head (the paper's Table VI)."""
        return dict(zip(self.head_names, self.matrix[0]))

    def to_dict(self) -> dict:
        """The study as JSON-able values."""
        return {"head_names": self.head_names, "clean": self.clean, "transfer_matrix": self.matrix,
                "table_vi": self.table_vi(), "table_vi_rules": self.table_vi_rules,
                "loss_ratio": dict(zip(self.head_names, self.loss_ratio))}


def heads_study(rows: Sequence, clean_heads: Sequence[float], head_names: Sequence[str]) -> HeadsStudy:
    """Assemble the study from the rows crafted on ``head:0`` .. ``head:H-1``, in head order."""
    by_head = {row.config["objective"]: row for row in rows}
    ordered = [by_head[f"head:{k}"] for k in range(len(head_names))]
    return HeadsStudy(
        head_names=list(head_names),
        clean=list(clean_heads),
        matrix=[row.outcome.head_accuracy() for row in ordered],
        loss_ratio=[loss_ratio(row.head_loss, k) for k, row in enumerate(ordered)],
        table_vi_rules={rule: ordered[0].outcome.accuracy(rule) for rule in ordered[0].outcome.rules},
    )
