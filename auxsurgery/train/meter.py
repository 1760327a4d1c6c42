"""Training loss and accuracy per head over an epoch, and the watch for a NaN/inf loss."""
from __future__ import annotations

import torch

from auxsurgery.train.distributed import DistContext
from auxsurgery.train.objective import HeadAccuracy


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss."""


class TrainMeter:
    """Training loss and accuracy per head, and the first non-finite loss, all kept on the device."""

    def __init__(self, head_names: list[str], device: torch.device):
        self.head_names = head_names
        self.loss_sum = torch.zeros(len(head_names), device=device)
        self.steps = 0
        self.accuracy = HeadAccuracy(head_names, device)
        self.bad_step = torch.full((), -1, dtype=torch.long, device=device)
        self.bad_heads = torch.zeros(len(head_names), dtype=torch.bool, device=device)

    def update(self, losses: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, alpha: torch.Tensor, step: int) -> None:
        bad = ~torch.isfinite(losses)
        first = bad.any() & (self.bad_step < 0)
        self.bad_step = torch.where(first, step, self.bad_step)
        self.bad_heads |= bad & first
        self.loss_sum += losses
        self.steps += 1
        self.accuracy.update(logits, y, alpha)

    def raise_if_nonfinite(self, ctx: DistContext, steps_per_epoch: int) -> None:
        """Raise :class:`NonFiniteLossError` on every process if any saw a NaN/inf loss (syncs)."""
        local_step = int(self.bad_step)
        if not ctx.any(local_step >= 0):
            return
        if local_step < 0:
            raise NonFiniteLossError("the loss became NaN/inf in another process; training stopped")
        heads = [name for name, bad in zip(self.head_names, self.bad_heads.tolist()) if bad]
        epoch, step = divmod(local_step, steps_per_epoch)
        raise NonFiniteLossError(
            f"the loss became NaN/inf at epoch {epoch + 1}, step {step + 1} (global step {local_step + 1}) "
            f"in head(s) {', '.join(heads)}; training stopped and the checkpoints on disk are from before it. "
            "Try a lower lr, grad_clip, or amp='off'."
        )

    def state(self, ctx: DistContext) -> dict:
        """The partial-epoch sums of all processes (for a resumed run to report whole epochs)."""
        return {
            "loss_sum": ctx.sum(self.loss_sum.clone()).cpu(),
            "counts": ctx.sum(self.accuracy.counts.clone()).cpu(),
            "steps": self.steps,
        }

    def load_state(self, state: dict, sums: bool) -> None:
        """Continue from a saved state; ``sums``: take its totals (one process only, or they count twice)."""
        self.steps = state["steps"]
        if sums:
            self.loss_sum.copy_(state["loss_sum"])
            self.accuracy.counts.copy_(state["counts"])

    def joint_loss_sum(self, alpha: torch.Tensor) -> torch.Tensor:
        return self.loss_sum @ alpha

    def compute(self, ctx: DistContext, alpha: torch.Tensor) -> dict[str, float]:
        """Epoch metrics averaged over all processes: ``train/loss`` (joint), per head loss and accuracy."""
        losses = ctx.sum(self.loss_sum.clone()) / (max(self.steps, 1) * ctx.world_size)
        ctx.sum(self.accuracy.counts)
        record = {"train/loss": float(losses @ alpha)}
        record.update({f"train/loss/{name}": loss for name, loss in zip(self.head_names, losses.tolist())})
        record.update({f"train/{key}": value for key, value in self.accuracy.compute().items()})
        return record
