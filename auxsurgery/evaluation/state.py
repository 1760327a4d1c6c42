"""An evaluation's progress on disk, so that a killed run continues where it stopped.

The state folder holds ``manifest.json`` (what is being evaluated: a fingerprint of the model's
weights, the data, the planned attacks, the budget and the seed) and one file per finished batch of
each attack: the per-point judgement of its examples (which rules and heads still get each point
right, the heads' losses, the perturbation sizes and pixel range). Rows are rebuilt from these
records, so a resumed run ends with the same results as an uninterrupted one. Every file is written
atomically; a folder made for another model, data set, suite or budget is refused, naming what
changed, and a corrupt file stops the run instead of mixing results.

Each record also says what it belongs to: the evaluation (a digest of the manifest), the plan's key,
the batch, the attack (row name, class, rule) and its points. A record read from another place (a
batch file copied between attacks' folders, or from another evaluation's folder) is refused as a
foreign folder is. Links are never followed: a state folder, plan folder or file that is a link is
refused.
"""
from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import torch
from torch import nn

from .._utils import atomic_write, refuse_link, subfolder, tensor_digest
from ..version import __version__

__all__ = ["STATE_FOLDER", "EvaluationState", "StateError", "fingerprint_data", "fingerprint_model"]

SCHEMA_NAME = "auxsurgery.eval-state"
SCHEMA = f"{SCHEMA_NAME}/2"  # 2: every record carries what it belongs to (OWNER)
STATE_FOLDER = "state"  # where an evaluation with an output folder keeps its state: <out>/state
MANIFEST = "manifest.json"
RECORD_KEYS = ("indices", "rules", "heads", "losses", "linf", "l2", "pixel_min", "pixel_max", "seconds", "forward",
               "backward")
OWNER = "belongs_to"  # the stored record's key for what it belongs to (see the module docstring)


class StateError(ValueError):
    """A state folder that belongs to another evaluation, or a corrupt state file."""


def fingerprint_model(model: nn.Module) -> str:
    """sha256 of every parameter and buffer (names, dtypes, shapes and values)."""
    state = model.state_dict()
    h = hashlib.sha256(json.dumps(sorted(state)).encode())
    h.update(tensor_digest(state[k] for k in sorted(state)).encode())
    return h.hexdigest()


def fingerprint_data(x: torch.Tensor, y: torch.Tensor) -> str:
    """sha256 of the evaluated inputs and labels."""
    return tensor_digest([x, y])


class EvaluationState:
    """The state folder of one evaluation (see the module docstring).

    Args:
        folder: where the state lives (created if missing).
        fingerprint: JSON-able description of what is evaluated; an existing folder must match it.

    In a sharded run every process opens the same folder (the same manifest: the result does not
    depend on the number of processes) and writes the batches it computed.
    """

    def __init__(self, folder: str | Path, fingerprint: dict):
        self.folder = refuse_link(folder, "the state folder")
        # Through JSON and back: tuples become lists, as in the stored manifest they are compared with.
        self.fingerprint = json.loads(json.dumps({"schema": SCHEMA, "auxsurgery_version": __version__, **fingerprint}))
        self.evaluation = hashlib.sha256(json.dumps(self.fingerprint, sort_keys=True).encode()).hexdigest()
        manifest = refuse_link(self.folder / MANIFEST, "the state manifest")
        self.resumed = manifest.exists()  # True: an earlier run of this evaluation left its records here
        if self.resumed:
            try:
                stored = json.loads(manifest.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise StateError(f"{manifest} is corrupt ({err}); delete {self.folder} to start the evaluation "
                                 "again") from None
            schema = stored.get("schema") if isinstance(stored, dict) else None
            if isinstance(schema, str) and schema.startswith(SCHEMA_NAME + "/") and schema != SCHEMA:
                raise StateError(f"{self.folder} holds evaluation state in an older format ({schema}); delete it "
                                 "to start the evaluation over")
            if schema != SCHEMA:
                raise StateError(f"{self.folder} is not an auxsurgery evaluation state folder (no {SCHEMA} "
                                 "manifest); choose another output folder")
            changed = [key for key in sorted(set(stored) | set(self.fingerprint))
                       if stored.get(key) != self.fingerprint.get(key)]
            stored_norm, norm = ((fp.get("preset") or {}).get("norm", "linf") for fp in (stored, self.fingerprint))
            if stored_norm != norm:
                raise StateError(f"{self.folder} holds an evaluation under the {stored_norm} threat model, not "
                                 f"{norm}: rerun with --norm {stored_norm}, or choose another folder to evaluate "
                                 f"under {norm}")
            if changed:
                raise StateError(f"{self.folder} holds an evaluation of another setting ({', '.join(changed)} "
                                 "changed); rerun with what it was made for, or delete the folder (or choose "
                                 "another) to start over")
        else:
            atomic_write(manifest, lambda tmp: Path(tmp).write_text(json.dumps(self.fingerprint, indent=1)))

    def resume_summary(self, attacks: int) -> str:
        """``resuming from OUT/state: 4 of 11 attacks recorded (37 batches)``: what an earlier run left."""
        batches = {folder.name: len(list(folder.glob("batch-*.pt"))) for folder in self.folder.iterdir()
                   if folder.is_dir()}
        recorded = sum(1 for count in batches.values() if count)
        return (f"resuming from {self.folder}: {recorded} of {attacks} attacks recorded "
                f"({sum(batches.values())} batches kept)")

    def _path(self, plan: str, batch: int) -> Path:
        return self.folder / plan / f"batch-{batch:05d}.pt"

    def _owner(self, plan: str, batch: int, attack: dict) -> dict:
        return {"evaluation": self.evaluation, "plan": plan, "batch": batch, **attack}

    def get(self, plan: str, batch: int, attack: dict, indices: torch.Tensor) -> dict | None:
        """The record of ``batch`` of ``plan`` if it was finished, else None.

        ``attack`` (JSON-able: the attack's row name, class and rule) and ``indices`` (the points of the
        batch) say what the record must belong to; a record of anything else is refused.
        """
        path = refuse_link(self._path(plan, batch), "the state file")
        if not path.exists():
            return None
        try:
            record = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:
            raise StateError(f"{path} is corrupt ({str(err).splitlines()[0]}); delete it to recompute that "
                             "batch") from None
        if not isinstance(record, dict) or not {*RECORD_KEYS, OWNER} <= set(record) <= {*RECORD_KEYS, OWNER, "x_adv"}:
            raise StateError(f"{path} is not a batch record of this version; delete {self.folder} to start the "
                             "evaluation over")
        expected, owner = self._owner(plan, batch, attack), record.pop(OWNER)
        if owner != expected or not torch.equal(record["indices"], indices):
            differ = [key for key in expected if not isinstance(owner, dict) or owner.get(key) != expected[key]]
            what = ", ".join(differ) if differ else "points"
            raise StateError(f"{path} belongs to another place ({what} differ): it was moved or copied here from "
                             f"another attack or evaluation; delete it (or {self.folder}) to recompute")
        return record

    def put(self, plan: str, batch: int, attack: dict, record: dict) -> None:
        """Keep the record of ``batch`` of ``plan`` (atomically), marked as ``attack``'s (see :meth:`get`)."""
        subfolder(self.folder, plan)
        owned = {**record, OWNER: self._owner(plan, batch, attack)}
        atomic_write(self._path(plan, batch), lambda tmp: torch.save(owned, tmp))
