"""What a run shows while it trains, on stderr: progress bars with the recent loss and
throughput, and one summary line per epoch."""
from __future__ import annotations

import time

import torch
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

from .._output import COUNTED_AT_START, TimeLeft, progress_display


class ProgressBars:
    """Rich progress bars (epochs and steps) and a summary line per epoch, when enabled.

    The step bar shows the mean loss and the images/s since its previous update; the loop
    updates it only where it waits for the device anyway, so reading the loss costs nothing.
    """

    def __init__(self, enabled: bool, epochs: int, steps_per_epoch: int, batch_size: int):
        self.enabled, self.batch_size = enabled, batch_size
        self.bars = progress_display(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), TimeLeft(), enabled=enabled,
        )
        self.epochs = self.bars.add_task("epoch", total=epochs, info="")
        self.steps = self.bars.add_task("step", total=steps_per_epoch, info="")
        self._first_epoch: int | None = None  # where this run started (a resumed run's epochs before say nothing)

    def __enter__(self) -> "ProgressBars":
        self.bars.start()
        return self

    def __exit__(self, *exc) -> None:
        self.bars.stop()

    def start_epoch(self, epoch: int, done_steps: int, loss_sum: torch.Tensor) -> None:
        """``loss_sum``: the epoch's joint loss summed so far (nonzero in a resumed epoch)."""
        self._first_epoch = epoch if self._first_epoch is None else self._first_epoch
        self.bars.update(self.epochs, completed=epoch, **{COUNTED_AT_START: self._first_epoch})
        self.bars.reset(self.steps, completed=done_steps)  # (fields given to reset would replace the others)
        self.bars.update(self.steps, **{COUNTED_AT_START: done_steps})
        self._previous = done_steps, time.perf_counter(), loss_sum

    def step(self, done_steps: int, loss_sum: torch.Tensor) -> None:
        previous_steps, previous_time, previous_loss = self._previous
        now, steps = time.perf_counter(), done_steps - previous_steps
        loss, images_per_s = float(loss_sum - previous_loss) / steps, steps * self.batch_size / (now - previous_time)
        self.bars.update(self.steps, completed=done_steps, info=f"loss {loss:.4f}  {images_per_s:,.0f} img/s")
        self._previous = done_steps, now, loss_sum

    def end_epoch(self, epoch: int, record: dict, best_key: str | None) -> None:
        self.bars.update(self.epochs, completed=epoch + 1)
        if self.enabled:
            self.bars.console.print(f"epoch {epoch + 1}: {_epoch_summary(record, best_key)}", soft_wrap=True)


def _epoch_summary(record: dict, best_key: str | None) -> str:
    """One line per epoch: joint loss, the main validation accuracies, throughput."""
    keys = dict.fromkeys(k for k in ("val/head/public", "val/rule/vote", "val/rule/score", best_key) if k in record)
    parts = [f"loss {record['train/loss']:.4f}", *(f"{k.removeprefix('val/')} {record[k]:.4f}" for k in keys)]
    speed = record["images_per_s"]
    return "  ".join([*parts, f"{speed:,.0f} img/s" if speed is not None else "no new images"])
