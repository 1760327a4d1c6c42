"""The fine-tuning loop: joint objective, AMP, schedules, checkpoints, exact resume, DDP.

Reproducibility without saving generator states: every random draw of a run is a
function of the seed and of where the run is, so resuming only needs the epoch and
the step within it.

- data order: a permutation seeded by (seed, epoch) (:class:`DistributedSampler`);
- augmentation: each sample's transform is seeded by (seed, epoch, index)
  (:class:`auxsurgery.data.SeededAugmentation`);
- model randomness (dropout, PGD random starts): the global generator is reseeded
  from (seed, rank, step) before every step.

A resumed run therefore replays the interrupted one bit for bit (same device, same
thread count), whatever the number of loader workers.
"""
from __future__ import annotations

import json
import math
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Callable, Iterator

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from safetensors.torch import save_model
from torch import nn
from torch.utils.data import Dataset, Sampler

from auxsurgery._utils import atomic_write, derive_seed, preserved_state
from auxsurgery.checkpoint import save
from auxsurgery.data import SeededAugmentation, dataset_classes, make_loader
from auxsurgery.model import AuxModel, as_aux_model
from auxsurgery.train.config import TrainConfig
from auxsurgery.train.distributed import DistContext, distributed_context
from auxsurgery.train.objective import RULES_REPORTED, HeadAccuracy, head_losses

METRICS_FILE = "metrics.jsonl"
STATE_FILE = "train_state.pt"
BEST_FILE = "best.safetensors"
LAST_FILE = "last.safetensors"
# Settings a resumed run may change: they do not alter what is computed.
RESUME_FREE_FIELDS = {"resume", "out_dir", "progress", "log_every", "save_every", "num_workers", "device"}


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss."""


class TrainingInterrupted(KeyboardInterrupt):
    """A stop signal (SIGINT, SIGTERM) ended the run after its state was saved."""


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


# ---- setup ------------------------------------------------------------------------------------


def _amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device`` (None: full precision)."""
    if amp == "off":
        return None
    if amp != "auto":
        return {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    # Emulated bf16 is slower than fp32: use it only where oneDNN has native bf16 kernels.
    if device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return torch.bfloat16
    return None


def _set_train_mode(aux: AuxModel, config: TrainConfig) -> None:
    aux.train()
    if config.mode == "heads":
        # A frozen backbone must not drift either: eval mode keeps its BatchNorm statistics.
        aux.trunk.eval()


@contextmanager
def _frozen_backbone(aux: AuxModel, frozen: bool) -> Iterator[None]:
    """Backbone parameters without gradients inside (if ``frozen``), as they were afterwards."""
    if not frozen:
        yield
        return
    with preserved_state(aux.trunk, training=False, requires_grad=True):
        aux.trunk.requires_grad_(False)
        yield


def _param_groups(aux: AuxModel, config: TrainConfig) -> list[dict]:
    backbone = list(aux.trunk.parameters())
    backbone_ids = {id(p) for p in backbone}
    heads = [p for p in aux.parameters() if id(p) not in backbone_ids]
    if config.mode == "heads":
        if not heads:
            raise ValueError("mode 'heads' trains only the aux heads, and this model has none")
        return [{"params": heads}]
    scale = config.backbone_lr_scale if config.mode == "backbone-lr-scale" else 1.0
    groups = [{"params": backbone, "lr": config.lr * scale}, {"params": heads, "lr": config.lr}]
    return [group for group in groups if group["params"]]


def _optimizer(groups: list[dict], config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)


def _scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int):
    """The lr schedule, stepped once per batch."""
    total = config.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler
    if config.schedule == "multistep":
        return sched.MultiStepLR(optimizer, [m * steps_per_epoch for m in config.milestones], config.gamma)
    if config.schedule == "cosine":
        return sched.CosineAnnealingLR(optimizer, T_max=total)
    if config.schedule == "onecycle":
        max_lr = [group["lr"] for group in optimizer.param_groups]
        cycle_momentum = config.optimizer == "adamw" or config.momentum > 0
        return sched.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total, cycle_momentum=cycle_momentum)
    return sched.LambdaLR(optimizer, lambda step: 1.0)


def _check_model_fits_data(aux: AuxModel, datasets: list[Dataset], device: torch.device) -> None:
    """Fail before training when the model cannot take the images or predicts another class count."""
    image, _ = datasets[0][0]
    aux.eval()
    try:
        with torch.no_grad():
            num_classes = aux(image.unsqueeze(0).to(device)).shape[-1]
    except RuntimeError as error:
        raise ValueError(f"the model does not accept the dataset's images (shape {list(image.shape)}): {error}") from None
    for dataset in datasets:
        classes = dataset_classes(dataset)
        if classes is not None and len(classes) != num_classes:
            raise ValueError(
                f"label count mismatch: the data has {len(classes)} classes but the model predicts "
                f"{num_classes}; build the model with num_classes={len(classes)}"
            )


def _best_key(head_names: list[str], select_best: str) -> str:
    """The validation metric that picks the best epoch."""
    if len(head_names) == 1:
        return f"val/head/{head_names[0]}"
    if select_best in RULES_REPORTED:
        return f"val/rule/{select_best}"
    if select_best in head_names:
        return f"val/head/{select_best}"
    raise ValueError(f"select_best {select_best!r} is neither a rule ({', '.join(RULES_REPORTED)}) nor a head ({', '.join(head_names)})")


def _seed_step(seed: int, rank: int, step: int, device: torch.device) -> None:
    """Reseed the global generators from (seed, rank, step): a pure function of the run's position."""
    step_seed = derive_seed(seed, rank, step)
    torch.default_generator.manual_seed(step_seed)
    if device.type == "cuda":
        torch.cuda.manual_seed(step_seed)


class _SkipFirst(Sampler):
    """``sampler`` without its first ``skip`` indices: where a resumed epoch picks up."""

    def __init__(self, sampler: Sampler, skip: int):
        self.sampler, self.skip = sampler, skip

    def __iter__(self):
        return islice(iter(self.sampler), self.skip, None)

    def __len__(self) -> int:
        return len(self.sampler) - self.skip


# ---- bookkeeping ------------------------------------------------------------------------------


class _TrainMeter:
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


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Dataset,
    batch_size: int = 256,
    amp: str = "off",
    ctx: DistContext | None = None,
    num_workers: int = 0,
) -> dict[str, float]:
    """Accuracy of every head and of the vote/score/private rules on ``data`` (leaves ``model`` in eval mode).

    Returns ``{"head/<name>": acc, ..., "rule/<rule>": acc}``; a plain classifier reports
    ``head/public``. With ``ctx`` each process evaluates its shard and the counts are summed.
    """
    aux = as_aux_model(model)
    if ctx is None:
        ctx = DistContext(0, 1, next(aux.parameters()).device)
    aux.eval()
    indices = ctx.shard(len(data))
    loader = make_loader(torch.utils.data.Subset(data, indices), batch_size=batch_size, num_workers=num_workers)
    accuracy = HeadAccuracy(aux.head_names, ctx.device)
    dtype = _amp_dtype(amp, ctx.device)
    for x, y in loader:
        x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
        with torch.autocast(ctx.device.type, dtype=dtype, enabled=dtype is not None):
            accuracy.update(aux(x), y, aux.alpha)
    ctx.sum(accuracy.counts)
    return accuracy.compute()


class _RunFiles:
    """The files of a run in ``out_dir``, written by the main process only, each atomically.

    ``metrics.jsonl`` (one record per epoch), ``best``/``last`` model checkpoints, and
    ``train_state.pt`` (everything a resumed run needs; plain tensors and dicts, loaded
    with ``weights_only=True``).
    """

    def __init__(self, out_dir: str | Path, write: bool):
        self.dir, self.write = Path(out_dir), write
        self.state_path = self.dir / STATE_FILE

    def start(self, resume_epoch: int | None) -> None:
        """Create the folder; on resume drop metrics of epochs the resumed run will redo."""
        if not self.write:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        metrics = self.dir / METRICS_FILE
        kept = []
        if resume_epoch is not None and metrics.exists():
            kept = [line for line in metrics.read_text().splitlines() if json.loads(line)["epoch"] <= resume_epoch]
        atomic_write(metrics, lambda tmp: Path(tmp).write_text("".join(line + "\n" for line in kept)))

    def append_metrics(self, record: dict) -> None:
        if self.write:
            with open(self.dir / METRICS_FILE, "a") as f:
                f.write(json.dumps(record) + "\n")

    def save_model(self, model: nn.Module, name: str) -> None:
        if not self.write:
            return
        if isinstance(model, AuxModel):
            save(model, self.dir / name)
        else:
            atomic_write(self.dir / name, lambda tmp: save_model(model, tmp))

    def save_state(self, state: dict) -> None:
        if self.write:
            atomic_write(self.state_path, lambda tmp: torch.save(state, tmp))

    def load_state(self, device: torch.device) -> dict:
        return torch.load(self.state_path, map_location=device, weights_only=True)


class _StopSignals:
    """Turns the first SIGINT/SIGTERM into a flag the loop checks; a second one interrupts at once."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self) -> "_StopSignals":
        # Handlers can only be installed from the main thread; elsewhere signals keep their defaults.
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class _ProgressBars:
    """Rich progress bars (epochs and steps) and a summary line per epoch, when enabled."""

    def __init__(self, enabled: bool, epochs: int, steps_per_epoch: int):
        self.enabled = enabled
        self.bars = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), disable=not enabled,
        )
        self.epochs = self.bars.add_task("epoch", total=epochs, info="")
        self.steps = self.bars.add_task("step", total=steps_per_epoch, info="")

    def __enter__(self) -> "_ProgressBars":
        self.bars.start()
        return self

    def __exit__(self, *exc) -> None:
        self.bars.stop()

    def start_epoch(self, epoch: int, done_steps: int) -> None:
        self.bars.update(self.epochs, completed=epoch)
        self.bars.reset(self.steps, completed=done_steps)

    def step(self, done_steps: int, loss: float, images_per_s: float) -> None:
        self.bars.update(self.steps, completed=done_steps, info=f"loss {loss:.4f}  {images_per_s:,.0f} img/s")

    def end_epoch(self, epoch: int, summary: str) -> None:
        self.bars.update(self.epochs, completed=epoch + 1)
        if self.enabled:
            self.bars.console.print(f"epoch {epoch + 1}: {summary}")


def _summary(record: dict, best_key: str | None) -> str:
    """One line per epoch: joint loss, the main validation accuracies, throughput."""
    keys = dict.fromkeys(k for k in ("val/head/public", "val/rule/vote", "val/rule/score", best_key) if k in record)
    parts = [f"loss {record['train/loss']:.4f}", *(f"{k.removeprefix('val/')} {record[k]:.4f}" for k in keys)]
    return "  ".join([*parts, f"{record['images_per_s']:,.0f} img/s"])


# ---- the loop ---------------------------------------------------------------------------------


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
    with distributed_context(config.device) as ctx, _StopSignals() as stop:
        return _Run(model, train_data, val_data, config, ctx).fit(on_step, stop)


class _Run:
    """One training run: the objects :func:`finetune` builds, and the loop over them."""

    def __init__(self, model: nn.Module, train_data: Dataset, val_data: Dataset | None, config: TrainConfig, ctx: DistContext):
        self.model, self.config, self.ctx = model, config, ctx
        self.aux = as_aux_model(model).to(ctx.device)
        if config.channels_last:
            self.aux.to(memory_format=torch.channels_last)
        _check_model_fits_data(self.aux, [d for d in (train_data, val_data) if d is not None], ctx.device)
        if config.batch_size % ctx.world_size:
            raise ValueError(f"batch_size {config.batch_size} does not split over {ctx.world_size} processes")
        self.local_batch = config.batch_size // ctx.world_size
        self.train_data = SeededAugmentation(train_data, config.seed)
        self.val_data = val_data
        self.sampler = ctx.train_sampler(self.train_data, config.seed)
        self.steps_per_epoch = len(self.sampler) // self.local_batch
        if self.steps_per_epoch == 0:
            raise ValueError(f"{len(train_data)} training samples do not fill one batch of {config.batch_size}")
        self.best_key = _best_key(self.aux.head_names, config.select_best) if val_data is not None else None
        self.dtype = _amp_dtype(config.amp, ctx.device)
        self.files = _RunFiles(config.out_dir, write=ctx.is_main) if config.out_dir else None

    def _adversary(self):
        if self.config.adversarial is None:
            return None
        from auxsurgery.train.adversarial import Adversary

        return Adversary(self.aux, self.config.adversarial, self.config.seed)

    def fit(self, on_step, stop: _StopSignals) -> FinetuneResult:
        config, aux = self.config, self.aux
        with _frozen_backbone(aux, config.mode == "heads"):
            self.net = self.ctx.wrap(aux)
            self.optimizer = _optimizer(_param_groups(aux, config), config)
            self.scheduler = _scheduler(self.optimizer, config, self.steps_per_epoch)
            self.scaler = torch.amp.GradScaler(self.ctx.device.type, enabled=self.dtype is torch.float16)
            self.adversary = self._adversary()
            self.result = FinetuneResult(out_dir=self.files.dir if self.files else None)
            epoch, step = self._restore()
            with _ProgressBars(config.progress and self.ctx.is_main, config.epochs, self.steps_per_epoch) as bars:
                for epoch in range(epoch, config.epochs):
                    self._train_epoch(epoch, step, on_step, stop, bars)
                    self._end_epoch(epoch, bars)
                    step = 0
        aux.eval()
        return self.result

    # ---- state ----

    def _restore(self) -> tuple[int, int]:
        """Load the resume state if asked; return where to start (epoch, step within it)."""
        self.meter = _TrainMeter(self.aux.head_names, self.ctx.device)
        if self.files is None:
            if self.config.resume:
                raise ValueError("resume=True needs the out_dir of the run to continue")
            return 0, 0
        exists = self.files.state_path.exists()
        if exists and not self.config.resume:
            raise FileExistsError(f"{self.files.dir} already holds a run ({STATE_FILE}); "
                                  "pass resume=True (--resume) to continue it, or choose another out_dir")
        if not exists:
            self.files.start(resume_epoch=None)
            return 0, 0
        state = self.files.load_state(self.ctx.device)
        changed = sorted(k for k, v in state["config"].items() if k not in RESUME_FREE_FIELDS and v != self.config.to_dict()[k])
        if changed:
            raise ValueError(f"cannot resume {self.files.dir} with different settings: {', '.join(changed)}")
        self.aux.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        # The saved sums are already totals over processes: one process takes them.
        self.meter.load_state(state["meter"], sums=self.ctx.is_main)
        self.result.best_epoch, self.result.best_accuracy = state["best_epoch"], state["best_accuracy"]
        self.files.start(resume_epoch=state["epoch"])
        return state["epoch"], state["step"]

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
            "model": self.aux.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "meter": meter,
            "best_epoch": self.result.best_epoch,
            "best_accuracy": self.result.best_accuracy,
        })

    # ---- training ----

    def _train_epoch(self, epoch: int, start_step: int, on_step, stop: _StopSignals, bars: _ProgressBars) -> None:
        config, ctx, aux = self.config, self.ctx, self.aux
        self.sampler.set_epoch(epoch)
        self.train_data.set_epoch(epoch)
        loader = make_loader(self.train_data, self.local_batch, num_workers=config.num_workers, drop_last=True,
                             sampler=_SkipFirst(self.sampler, start_step * self.local_batch))
        _set_train_mode(aux, config)
        bars.start_epoch(epoch, start_step)
        self.epoch_start, self.images = time.perf_counter(), 0
        logged_step, logged_time, logged_loss = start_step, self.epoch_start, self.meter.joint_loss_sum(aux.alpha)
        for step, (x, y) in enumerate(loader, start=start_step + 1):
            global_step = epoch * self.steps_per_epoch + step - 1
            loss = self._step(x, y, global_step)
            self.images += len(y) * ctx.world_size
            if step % config.log_every == 0 or step == self.steps_per_epoch:
                # The only point where the loop waits for the device: progress, NaN and stop checks.
                self.meter.raise_if_nonfinite(ctx, self.steps_per_epoch)
                now, loss_sum = time.perf_counter(), self.meter.joint_loss_sum(aux.alpha)
                images = (step - logged_step) * config.batch_size
                bars.step(step, float(loss_sum - logged_loss) / (step - logged_step), images / (now - logged_time))
                logged_step, logged_time, logged_loss = step, now, loss_sum
                if ctx.any(stop.requested):
                    self._save_state(epoch, step)
                    raise TrainingInterrupted(f"stopped at epoch {epoch + 1}, step {step}; "
                                              f"continue with resume=True (--resume) in {config.out_dir}")
            if config.save_every and (global_step + 1) % config.save_every == 0 and step < self.steps_per_epoch:
                self._save_state(epoch, step)
            if on_step is not None:
                on_step(StepInfo(epoch, step, global_step + 1, loss))

    def _step(self, x: torch.Tensor, y: torch.Tensor, global_step: int) -> torch.Tensor:
        """One optimiser step on a batch; returns the joint loss (not synced)."""
        config, ctx, aux = self.config, self.ctx, self.aux
        _seed_step(config.seed, ctx.rank, global_step, ctx.device)
        x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
        if config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.adversary is not None:
            x = self.adversary(x, y, global_step)
        with torch.autocast(ctx.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            logits = self.net(x)
            losses = head_losses(logits, y, config.label_smoothing)
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

    def _end_epoch(self, epoch: int, bars: _ProgressBars) -> None:
        """Validate, log, and write the epoch's checkpoints and resume state."""
        self.meter.raise_if_nonfinite(self.ctx, self.steps_per_epoch)
        elapsed = time.perf_counter() - self.epoch_start
        record = {"epoch": epoch + 1, "step": (epoch + 1) * self.steps_per_epoch,
                  "lr": self.scheduler.get_last_lr()[-1]}
        record.update(self.meter.compute(self.ctx, self.aux.alpha))
        record["images_per_s"] = self.images / elapsed if elapsed > 0 else math.nan
        if self.val_data is not None:
            val = evaluate(self.aux, self.val_data, amp=self.config.amp, ctx=self.ctx, num_workers=self.config.num_workers)
            record.update({f"val/{key}": value for key, value in val.items()})
            if self.result.best_accuracy is None or record[self.best_key] > self.result.best_accuracy:
                self.result.best_epoch, self.result.best_accuracy = epoch + 1, record[self.best_key]
                if self.files:
                    self.files.save_model(self.model, BEST_FILE)
        self.result.history.append(record)
        bars.end_epoch(epoch, _summary(record, self.best_key))
        self.meter = _TrainMeter(self.aux.head_names, self.ctx.device)
        if self.files:
            self.files.append_metrics(record)
            self.files.save_model(self.model, LAST_FILE)
            self._save_state(epoch + 1, 0)
