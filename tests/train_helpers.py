"""Tiny hand-built AuxModels and datasets for the training tests, and briefly trained backbones for the
weights tests (fast on 2 CPU cores)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from auxsurgery.backbones import build_backbone
from auxsurgery.data import ImageTensorDataset
from auxsurgery.model import AuxModel


class TinyTrunk(nn.Module):
    """Two conv stages and a linear classifier; returns the logits and both feature maps."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 8, batchnorm: bool = True, dropout: float = 0.0):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width) if batchnorm else nn.Identity()
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1, stride=2)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f1 = F.relu(self.bn1(self.conv1(x)))
        f2 = F.relu(self.conv2(f1))
        return {"output": self.fc(self.drop(f2.mean((2, 3)))), "f1": f1, "f2": f2}


class PublicView(nn.Module):
    """The trunk seen as the plain backbone (logits only); shares its weights."""

    def __init__(self, trunk: TinyTrunk):
        super().__init__()
        self.trunk = trunk

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)["output"]


def tiny_head(channels: int, num_classes: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))


def tiny_aux_model(in_channels: int = 3, num_classes: int = 10, width: int = 8, batchnorm: bool = True,
                   dropout: float = 0.0, alpha=None, seed: int = 0) -> AuxModel:
    """An AuxModel with heads on ``f1`` and ``f2``; the same ``seed`` gives the same weights."""
    torch.manual_seed(seed)
    trunk = TinyTrunk(in_channels, num_classes, width, batchnorm, dropout)
    heads = [tiny_head(width, num_classes), tiny_head(2 * width, num_classes)]
    if not batchnorm:
        heads = [nn.Sequential(*(m for m in head if not isinstance(m, nn.BatchNorm2d))) for head in heads]
    return AuxModel(trunk, heads, ["f1", "f2"], backbone=PublicView(trunk), alpha=alpha)


def random_images(n: int = 64, num_classes: int = 10, size: int = 8, channels: int = 3, seed: int = 0) -> ImageTensorDataset:
    """Random uint8 images with random labels: for the mechanics of training, not for learning."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, num_classes, (n,), generator=generator)
    return ImageTensorDataset(images, labels, [f"class{k}" for k in range(num_classes)])


# ---- the DDP test's worker: ``torchrun --nproc_per_node 2 tests/train_helpers.py OUT_DIR`` ----------

DDP_CONFIG = dict(epochs=2, batch_size=16, lr=0.05, amp="off", progress=False, log_every=2)


def ddp_run(out_dir: str) -> AuxModel:
    """The run the DDP test makes with 1 and with 2 processes: BatchNorm-free, so they must agree."""
    from auxsurgery.train import TrainConfig, finetune

    aux = tiny_aux_model(batchnorm=False)
    # 30 validation samples: the processes' shards differ in size (15 + 15, and the reduction must count each once).
    finetune(aux, random_images(64), random_images(30, seed=1), TrainConfig(**DDP_CONFIG, out_dir=out_dir))
    return aux


if __name__ == "__main__":
    import os
    import sys

    torch.set_num_threads(1)
    model = ddp_run(sys.argv[1])
    if int(os.environ["RANK"]) == 0:
        torch.save(model.state_dict(), os.path.join(sys.argv[1], "final_weights.pt"))


def briefly_trained(name: str, batch: int, lr: float) -> nn.Module:
    """Backbone ``name`` (10 classes) after three SGD steps on random 32x32 data: weights and BatchNorm statistics
    moved, so a reload that silently kept the initial values would show. Returned in train mode."""
    torch.manual_seed(0)
    backbone = build_backbone(name, num_classes=10)
    optimizer = torch.optim.SGD(backbone.parameters(), lr=lr, momentum=0.9)
    backbone.train()
    for _ in range(3):
        x, y = torch.rand(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
        optimizer.zero_grad()
        F.cross_entropy(backbone(x), y).backward()
        optimizer.step()
    return backbone
