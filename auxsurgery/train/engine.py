"""The fine-tuning loop: joint objective, AMP, schedules, checkpoints, exact resume, DDP.

:func:`finetune` builds a :class:`_Run` and runs its loop. The run's pieces live beside
it: :mod:`.setup` (optimiser, schedule, AMP, modes, checks), :mod:`.replay` (why a
resumed run replays the interrupted one exactly), :mod:`.meter` (training metrics, NaN
watch), :mod:`.validation`, :mod:`.run_files` (metrics, checkpoints, resume state),
:mod:`.signals` (clean stop) and :mod:`.progress` (what it shows on stderr).
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.utils.data import Dataset

from auxsurgery._utils import run_folder_lock, tensor_digest
from auxsurgery.data import SeededAugmentation, make_loader
from auxsurgery.model import as_aux_model
from auxsurgery.train.config import TrainConfig
from auxsurgery.train.distributed import DistContext, distributed_context
from auxsurgery.train.meter import TrainMeter
from auxsurgery.train.objective import head_losses
from auxsurgery.train.progress import ProgressBars
from auxsurgery.train.replay import SkipFirst, seed_step
from auxsurgery.train.run_files import BEST_FILE, LAST_FILE, RunFiles
from auxsurgery.train.setup import (
    amp_dtype,
    best_key,
    check_model_fits_data,
    frozen_backbone,
    make_optimizer,
    make_scheduler,
    param_groups,
    set_train_mode,
)
from auxsurgery.train.signals import StopSignals, TrainingInterrupted
from auxsurgery.train.validation import evaluate


@dataclass
class StepInfo:
    """What an ``on_step`` callback learns after each optimiser step."""

    epoch: int  # 0-based
    step: int  # steps done in this epoch
    global_step: int  # steps done in the run
    loss: torch.Tensor  # this step's joint loss (on the device: reading it waits for the step)


@dataclass
class FinetuneResult:
    """The outcome of :func:`finetune`."""

    history: list[dict] = field(default_factory=list)  # one metrics record per epoch run by this call
    best_epoch: int | None = None  # 1-based
    best_accuracy: float | None = None
    out_dir: Path | None = None


def finetune(
    model: nn.Module,
    train_data: Dataset,
    val_data: Dataset | None = None,
    config: TrainConfig | None = None,
    on_step: Callable[[StepInfo], None] | None = None,
) -> FinetuneResult:
    """Train ``model`` (an AuxModel, or a plain classifier) on the joint objective.

    Every head trains on ``sum_h alpha_h * CE(logits_h, y)``; each epoch validates every
    head and the vote/score rules on ``val_data``. With ``config.out_dir`` the run writes
    ``metrics.jsonl``, ``best.safetensors``/``last.safetensors`` and its resume state
    (:class:`TrainConfig` documents every option). Under ``torchrun`` each process trains
    on its shard of every batch (DDP); rank 0 writes the files.

    ``on_step`` is called after every optimiser step. A first SIGINT/SIGTERM makes the
    run save its state at the next check point and raise :class:`TrainingInterrupted`;
    ``resume=True`` then continues it exactly. The model is left in eval mode.
    """
    config = config or TrainConfig()
    with distributed_context(config.device) as ctx, StopSignals() as stop:
        # The main process holds the run folder: a second run on it stops at once, naming this one.
        owns_folder = config.out_dir is not None and ctx.is_main
        with run_folder_lock(config.out_dir, "auxsurgery train") if owns_folder else nullcontext():
            return _Run(model, train_data, val_data, config, ctx).fit(on_step, stop)


def _data_record(data: SeededAugmentation, batch_size: int) -> dict:
    """What a run trains on, as its resume state records it: the number of images, and a digest of the first
    batch (in dataset order, with the augmentation of ``data``'s epoch: the first, as the run is built) and of the
    last image."""
    samples = data.__getitems__([*range(min(batch_size, len(data))), len(data) - 1])
    images = [torch.as_tensor(image) for image, _ in samples]
    labels = torch.as_tensor([int(label) for _, label in samples])
    return {"images": len(data), "digest": tensor_digest([*images, labels])}


class _Run:
    """One training run: the objects :func:`finetune` builds, and the loop over them."""

    def __init__(self, model: nn.Module, train_data: Dataset, val_data: Dataset | None, config: TrainConfig, ctx: DistContext):
        self.model, self.config, self.ctx = model, config, ctx
        self.aux = as_aux_model(model).to(ctx.device)
        if config.channels_last:
            self.aux.to(memory_format=torch.channels_last)
        check_model_fits_data(self.aux, [d for d in (train_data, val_data) if d is not None], ctx.device)
        if config.batch_size % ctx.world_size:
            raise ValueError(f"batch_size {config.batch_size} does not split over {ctx.world_size} processes")
        self.local_batch = config.batch_size // ctx.world_size
        self.train_data = SeededAugmentation(train_data, config.seed)
        self.val_data = val_data
        self.sampler = ctx.train_sampler(self.train_data, config.seed)
        self.steps_per_epoch = len(self.sampler) // self.local_batch
        if self.steps_per_epoch == 0:
            raise ValueError(f"{len(train_data)} training samples do not fill one batch of {config.batch_size}")
        self.best_key = best_key(self.aux.head_names, config.select_best) if val_data is not None else None
        self.dtype = amp_dtype(config.amp, ctx.device)
        self.files = RunFiles(config.out_dir, write=ctx.is_main) if config.out_dir else None
        self.data_record = _data_record(self.train_data, config.batch_size) if self.files else None
        self.method = self._method()  # before any work: an unknown method is a one-line error

    def _method(self):
        """The adversarial-training method (None: clean training)."""
        if self.config.adversarial is None:
            return None
        from auxsurgery.train.adversarial import get_training_method

        return get_training_method(self.config.adversarial.method)(self.aux, self.config.adversarial,
                                                                   self.config.seed, self.dtype)

    @property
    def passes_per_image(self) -> int:
        """Forward plus backward image-passes one training image costs (clean training: one of each)."""
        return 2 if self.method is None else self.method.passes_per_image

    def fit(self, on_step, stop: StopSignals) -> FinetuneResult:
        config, aux = self.config, self.aux
        with frozen_backbone(aux, config.mode == "heads"):
            self.net = self.ctx.wrap(aux)
            self.optimizer = make_optimizer(param_groups(aux, config), config)
            self.scheduler = make_scheduler(self.optimizer, config, self.steps_per_epoch)
            self.scaler = torch.amp.GradScaler(self.ctx.device.type, enabled=self.dtype is torch.float16)
            self.result = FinetuneResult(out_dir=self.files.dir if self.files else None)
            epoch, step = self._restore()
            show = config.progress and self.ctx.is_main
            with ProgressBars(show, config.epochs, self.steps_per_epoch, config.batch_size) as bars:
                for epoch in range(epoch, config.epochs):
                    self._train_epoch(epoch, step, on_step, stop, bars)
                    self._end_epoch(epoch, bars)
                    step = 0
        aux.eval()
        return self.result

    # ---- state ----

    def _restore(self) -> tuple[int, int]:
        """Load the resume state if asked; return where to start (epoch, step within it)."""
        self.meter = TrainMeter(self.aux.head_names, self.ctx.device)
        if self.files is None:
            if self.config.resume:
                raise ValueError("resume=True needs the out_dir of the run to continue")
            return 0, 0
        exists = self.files.state_path.exists()
        if exists and not self.config.resume:
            raise FileExistsError(f"{self.files.dir} already holds a run ({self.files.state_path.name}); "
                                  "pass resume=True (--resume) to continue it, or choose another out_dir")
        if not exists:
            self.files.start(resume_epoch=None)
            return 0, 0
        state = self.files.load_state(self.ctx.device, self.config, self.data_record)
        self._check_same_model(state["model"])
        self.aux.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        # The saved sums are already totals over processes: one process takes them.
        self.meter.load_state(state["meter"], sums=self.ctx.is_main)
        self.result.best_epoch, self.result.best_accuracy = state["best_epoch"], state["best_accuracy"]
        self.files.start(resume_epoch=state["epoch"])
        return state["epoch"], state["step"]

    def _check_same_model(self, saved: dict) -> None:
        """A resume state of another architecture (other attach points or heads) is refused with one line."""
        current = self.aux.state_dict()
        missing, unexpected = sorted(current.keys() - saved.keys()), sorted(saved.keys() - current.keys())
        resized = [f"{k} {list(saved[k].shape)} saved, {list(current[k].shape)} now" for k in sorted(current)
                   if k in saved and torch.is_tensor(saved[k]) and saved[k].shape != current[k].shape]
        if missing or unexpected or resized:
            first = (resized or [f"{k} not saved" for k in missing] or [f"{k} not in this model" for k in unexpected])[0]
            raise ValueError(f"cannot resume {self.files.dir}: its state belongs to another model ({first}; "
                             f"{len(missing) + len(unexpected) + len(resized)} tensors differ); resume with the model, "
                             "--at and --head the run started with, or choose another --out")

    def _save_state(self, epoch: int, step: int) -> None:
        """Save everything needed to continue from (epoch, step); checks the loss first."""
        self.meter.raise_if_nonfinite(self.ctx, self.steps_per_epoch)
        if self.files is None:
            return
        meter = self.meter.state(self.ctx)
        self.files.save_state({
            "epoch": epoch,
            "step": step,
            "config": self.config.to_dict(),
            "data": self.data_record,
            "model": self.aux.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "meter": meter,
            "best_epoch": self.result.best_epoch,
            "best_accuracy": self.result.best_accuracy,
        })

    # ---- training ----

    def _train_epoch(self, epoch: int, start_step: int, on_step, stop: StopSignals, bars: ProgressBars) -> None:
        config, ctx, aux = self.config, self.ctx, self.aux
        self.sampler.set_epoch(epoch)
        self.train_data.set_epoch(epoch)
        loader = make_loader(self.train_data, self.local_batch, num_workers=config.num_workers, drop_last=True,
                             sampler=SkipFirst(self.sampler, start_step * self.local_batch))
        set_train_mode(aux, config)
        self.epoch_start, self.images = time.perf_counter(), 0
        bars.start_epoch(epoch, start_step, self.meter.joint_loss_sum(aux.alpha))
        for step, (x, y) in enumerate(loader, start=start_step + 1):
            global_step = epoch * self.steps_per_epoch + step - 1
            loss = self._step(x, y, global_step)
            self.images += len(y) * ctx.world_size
            # One process reads its own flag at every step (free); processes agree on stopping only at
            # the log points, where they synchronise anyway.
            stop_now = stop.requested and ctx.world_size == 1
            if step % config.log_every == 0 or step == self.steps_per_epoch or stop_now:
                # The only point where the loop waits for the device: progress, NaN and stop checks.
                self.meter.raise_if_nonfinite(ctx, self.steps_per_epoch)
                bars.step(step, self.meter.joint_loss_sum(aux.alpha))
                if stop_now or ctx.any(stop.requested):
                    self._save_state(epoch, step)
                    raise TrainingInterrupted(f"stopped at epoch {epoch + 1}, step {step}", config.out_dir)
            if config.save_every and (global_step + 1) % config.save_every == 0 and step < self.steps_per_epoch:
                self._save_state(epoch, step)
            if on_step is not None:
                on_step(StepInfo(epoch, step, global_step + 1, loss))

    def _step(self, x: torch.Tensor, y: torch.Tensor, global_step: int) -> torch.Tensor:
        """One optimiser step on a batch; returns the joint loss (not synced)."""
        config, ctx, aux = self.config, self.ctx, self.aux
        seed_step(config.seed, ctx.rank, global_step, ctx.device)
        x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
        if config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(ctx.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            if self.method is None:
                logits = self.net(x)
                losses = head_losses(logits, y, config.label_smoothing)
            else:
                losses, logits = self.method.losses(self.net, x, y, global_step, config.label_smoothing)
        loss = losses @ aux.alpha
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if config.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.meter.update(losses.detach(), logits.detach(), y, aux.alpha, global_step)
        return loss.detach()

    def _end_epoch(self, epoch: int, bars: ProgressBars) -> None:
        """Validate, log, and write the epoch's checkpoints and resume state."""
        self.meter.raise_if_nonfinite(self.ctx, self.steps_per_epoch)
        elapsed = time.perf_counter() - self.epoch_start
        steps_done = (epoch + 1) * self.steps_per_epoch
        # The training budget in passes (crafting included), so that studies can compare methods at equal compute.
        record = {"epoch": epoch + 1, "step": steps_done, "lr": self.scheduler.get_last_lr()[-1],
                  "passes_per_image": self.passes_per_image,
                  "train_passes": steps_done * self.config.batch_size * self.passes_per_image}
        record.update(self.meter.compute(self.ctx, self.aux.alpha))
        # A run resumed at the end of an epoch trained no image in it: no throughput to report.
        record["images_per_s"] = self.images / elapsed if self.images and elapsed > 0 else None
        if self.val_data is not None:
            val = evaluate(self.aux, self.val_data, amp=self.config.amp, ctx=self.ctx, num_workers=self.config.num_workers)
            record.update({f"val/{key}": value for key, value in val.items()})
            if self.result.best_accuracy is None or record[self.best_key] > self.result.best_accuracy:
                self.result.best_epoch, self.result.best_accuracy = epoch + 1, record[self.best_key]
                if self.files:
                    self.files.save_model(self.model, BEST_FILE)
        # Wall time this invocation spent on the epoch, validation included (a resumed epoch counts its rest only).
        record["seconds"] = time.perf_counter() - self.epoch_start
        self.result.history.append(record)
        bars.end_epoch(epoch, record, self.best_key)
        self.meter = TrainMeter(self.aux.head_names, self.ctx.device)
        if self.files:
            self.files.append_metrics(record)
            self.files.save_model(self.model, LAST_FILE)
            self._save_state(epoch + 1, 0)
