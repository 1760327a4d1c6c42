"""The paper's published numbers (Tables II and VII), to print beside a recipe's own.

Accuracies in %, as printed in the paper. ``None`` marks a cell the paper left empty
(it ran no Boundary attack on Mini-ImageNet). Table VII has one "Aux Block" row; it is
compared with our ``vote`` rule, the system's decision (Algorithm 1).
"""
from __future__ import annotations

__all__ = ["TABLE_II", "TABLE_VII", "paper_value"]

# Table II columns, then Table VII's Adp-PGD.
COLUMNS = ("clean", "PGD", "CW", "Boundary", "Adp-PGD")

TABLE_II = {
    "mnist": {
        "NA": (98.88, 21.26, 0.0, 0.2),
        "Adversarial Training": (98.76, 89.63, 58.2, 97.9),
        "Aux Block (all)": (98.49, 88.2, 68.4, 96.6),
        "Aux Block (private)": (98.21, 89.59, 76.8, 97.7),
    },
    "cifar10": {
        "NA": (92.53, 12.30, 0.0, 5.4),
        "Adversarial Training": (83.89, 78.82, 76.7, 83.5),
        "Aux Block (all)": (91.72, 74.44, 77.1, 87.1),
        "Aux Block (private)": (89.74, 77.72, 77.5, 90.0),
    },
    "mini-imagenet": {
        "NA": (87.8, 4.6, 0.0, None),
        "Adversarial Training": (72.9, 68.5, 75.2, None),
        "Aux Block (all)": (86.7, 67.9, 84.9, None),
        "Aux Block (private)": (85.2, 71.6, 86.0, None),
    },
}
TABLE_VII = {
    "mnist": {"NA": 21.30, "Adversarial Training": 22.10, "Aux Block (all)": 56.55},
    "cifar10": {"NA": 6.95, "Adversarial Training": 22.05, "Aux Block (all)": 54.6},
    "mini-imagenet": {"NA": 6.24, "Adversarial Training": 25.5, "Aux Block (all)": 38.7},
}


def paper_value(setting: str, method: str, column: str) -> float | None:
    """The paper's accuracy (%) for ``method`` under ``column`` on ``setting``; None where it has none."""
    if column == "Adp-PGD":
        return TABLE_VII.get(setting, {}).get(method)
    if column not in COLUMNS[:4] or setting not in TABLE_II:
        return None
    return TABLE_II[setting][method][COLUMNS.index(column)]
