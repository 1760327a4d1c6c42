"""The files of a run in its ``out_dir``, written by the main process only, each atomically.

``metrics.jsonl`` (one record per epoch), ``best``/``last`` model checkpoints, and
``train_state.pt`` (everything a resumed run needs; plain tensors and dicts, loaded
with ``weights_only=True``).
"""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import torch
from safetensors.torch import save_model
from torch import nn

from auxsurgery._utils import atomic_write, refuse_link
from auxsurgery.checkpoint import save
from auxsurgery.model import AuxModel
from auxsurgery.train.adversarial import crafting_settings
from auxsurgery.train.config import AdversarialConfig, TrainConfig

METRICS_FILE = "metrics.jsonl"
STATE_FILE = "train_state.pt"
BEST_FILE = "best.safetensors"
LAST_FILE = "last.safetensors"
# Settings a resumed run may change: they do not alter what is computed.
RESUME_FREE_FIELDS = {"resume", "out_dir", "progress", "log_every", "save_every", "num_workers", "device"}


def written_files(out_dir: str | Path) -> list[Path]:
    """The run files present in ``out_dir``: metrics, best, last, resume state."""
    paths = (Path(out_dir) / name for name in (METRICS_FILE, BEST_FILE, LAST_FILE, STATE_FILE))
    return [path for path in paths if path.exists()]


class RunFiles:
    """The files of one run; with ``write`` False (a process other than the main one) nothing is written."""

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
            # O_NOFOLLOW: a link planted in place of the metrics file is refused, not appended through.
            fd = os.open(refuse_link(self.dir / METRICS_FILE), os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)
            with open(fd, "a") as f:
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

    def load_state(self, device: torch.device, config: TrainConfig, data: dict) -> dict:
        """The saved resume state, once checked to compute the same run as ``config`` on the same ``data`` (the
        record of the training data that the run saves with its state)."""
        try:
            state = torch.load(refuse_link(self.state_path, "the resume state"), map_location=device,
                               weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
            raise ValueError(f"{self.state_path} cannot be resumed: it is corrupt or holds objects other than tensors "
                             f"(never unpickled: {str(err).splitlines()[0]}); delete it to start the run over") from None
        current = config.to_dict()
        changed = sorted(k for k, v in state["config"].items()
                         if k not in RESUME_FREE_FIELDS and _comparable(k, v) != _comparable(k, current.get(k)))
        if changed:
            raise ValueError(f"cannot resume {self.dir} with different settings: {', '.join(changed)}")
        saved = state.get("data")  # absent from states saved by 0.2.0, which cannot be checked
        if saved is not None and saved != data:
            what = (f"it trained on {saved['images']} images, this run has {data['images']}"
                    if saved["images"] != data["images"] else f"other images than the {data['images']} it trained on")
            raise ValueError(f"cannot resume {self.dir} with other training data ({what}): resume with the data and "
                             "--train-subset the run started with, or choose another --out")
        return state


def _comparable(key: str, value):
    """A setting as a resumed run compares it: adversarial training by what it crafts (a state saved before the
    methods' own step defaults, with fgsm's meaningless ``steps = 10``, resumes under today's config)."""
    if key == "adversarial" and isinstance(value, dict):
        return crafting_settings(AdversarialConfig(**value))
    return value
