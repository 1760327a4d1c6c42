"""Small helpers every layer shares, each defined once: atomic writes, close-match suggestions,
seed derivation, device resolution, and the one context manager that restores a model's state.

This module imports nothing from the package (it sits at the bottom of the layer order).
"""
from __future__ import annotations

import difflib
import json
import os
import socket
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

__all__ = [
    "RunFolderBusy", "run_folder_lock", "atomic_write", "close_matches", "derive_seed", "did_you_mean", "markdown_table", "preserved_state", "resolve_device",
]


TEMP_SUFFIX = ".tmp"  # atomic_write's temporary files are ".<name>.<random>.tmp" beside their target
LOCK_FILE = ".auxsurgery.lock"


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """Call ``write(tmp_path)`` then move the finished file onto ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        # mkstemp creates the file 0600 (and some writers recreate it): the finished file gets the mode
        # any new file would, the umask's.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def close_matches(name: str, choices: Iterable[str], n: int = 5, cutoff: float = 0.6,
                  fallback: bool = False) -> list[str]:
    """The ``n`` choices closest to ``name``; with ``fallback``, the first ``n`` choices when none is close."""
    choices = list(choices)
    close = difflib.get_close_matches(name, choices, n=n, cutoff=cutoff)
    return close or (choices[:n] if fallback else [])


def did_you_mean(name: str, choices: Iterable[str], n: int = 3) -> str:
    """`` Did you mean 'a', 'b'?`` for the closest choices, or an empty string: the tail of an error message."""
    close = close_matches(name, choices, n=n)
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def derive_seed(*parts: int, bits: int = 64) -> int:
    """A seed that is a pure function of ``parts`` (e.g. seed, epoch, index), independent of the process.

    Python's hash of a tuple of ints is not salted, so runs, resumes and ranks agree.
    """
    return hash(parts) & ((1 << bits) - 1)


def resolve_device(device: str | torch.device, local_rank: int = 0) -> torch.device:
    """``auto``: this process's GPU when CUDA is available, else the CPU; otherwise as given."""
    if str(device) != "auto":
        return torch.device(device)
    return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")


@contextmanager
def preserved_state(model: nn.Module, *, training: bool = True, requires_grad: bool = False,
                    buffers: bool = False) -> Iterator[nn.Module]:
    """Restore the chosen parts of ``model``'s state on exit, even if the body raises.

    ``training``: every submodule's own ``training`` flag (torchvision's tracing helpers leave a
    model in train mode when tracing fails); ``requires_grad``: every parameter's flag (attacks and
    frozen-backbone training switch them off); ``buffers``: every buffer's values (a probe forward
    in train mode would silently update BatchNorm running statistics).
    """
    modes = [(m, m.training) for m in model.modules()] if training else []
    grads = [(p, p.requires_grad) for p in model.parameters()] if requires_grad else []
    saved = {name: b.detach().clone() for name, b in model.named_buffers()} if buffers else {}
    try:
        yield model
    finally:
        for module, mode in modes:
            module.training = mode
        for param, flag in grads:
            param.requires_grad_(flag)
        if saved:
            with torch.no_grad():
                for name, b in model.named_buffers():
                    if name in saved and b.shape == saved[name].shape:
                        b.copy_(saved[name])


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """The lines of a Markdown table: a header row, the separator, one line per row of cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


class RunFolderBusy(ValueError):
    """Another live process holds the run folder."""


def _owner(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 4096).decode(errors="replace").strip()
    try:
        return json.loads(text) if text else {}
    except json.JSONDecodeError:
        return {"unreadable": text[:80]}


def _describe(owner: dict) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner["started"])) if "started" in owner else "?"
    return f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')} ({owner.get('command', '?')}, since {started})"


@contextmanager
def run_folder_lock(folder: str | os.PathLike, command: str = "auxsurgery") -> Iterator[Path]:
    """Hold ``folder`` for this process: a second run on the same folder stops with who holds it.

    An advisory ``flock`` on ``folder/.auxsurgery.lock``, which records the owner's pid, host and
    command. The kernel drops the lock when its process dies, so a lock left by a killed run is taken
    over (with a warning naming the dead owner), and the temporary files of its interrupted atomic
    writes are removed: no other process can be writing them. flock does not reach across machines
    on every network file system; give each machine its own folder there.
    """
    import fcntl  # POSIX only; imported here so that the rest of this module works everywhere

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunFolderBusy(f"{folder} is in use by {_describe(_owner(fd))}; wait for that run to end or "
                                "choose another output folder") from None
        previous = _owner(fd)
        if previous:
            warnings.warn(f"{folder}: taking over the lock left by {_describe(previous)}, which is no longer "
                          "running", stacklevel=3)
        for stale in folder.rglob(f".*{TEMP_SUFFIX}"):
            stale.unlink(missing_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "command": command, "started": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        try:
            yield folder
        finally:
            # Emptied, not deleted: deleting would let a waiting process lock an orphaned inode.
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # also releases the flock
