"""Small helpers every layer shares, each defined once: atomic writes, the run-folder lock, names and
folders that stay inside the folder the user named, close-match suggestions, seed derivation, tensor
digests, the memory available (and a size checked against it), device resolution, the one context manager
that restores a model's state, and the one way a renamed keyword argument stays accepted for a release.

This module imports nothing from the package (it sits at the bottom of the layer order), and torch only
where a helper needs it: the CLI's ``--help`` and ``--version`` import this module and answer without torch.
"""
from __future__ import annotations

import difflib
import errno
import functools
import hashlib
import json
import os
import socket
import stat
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "RunFolderBusy", "UnsafePath", "atomic_write", "available_memory", "check_memory", "check_name",
    "check_output_folder", "close_matches", "derive_seed", "did_you_mean", "markdown_table", "preserved_state",
    "refuse_link", "renamed_kwargs", "resolve_device", "run_folder_lock", "subfolder", "tensor_digest",
]


# atomic_write's temporary files, ".auxsurgery-<pid>-<random>.tmp" beside their target: a name no other
# program uses, so that a stale-lock takeover deletes only what an interrupted auxsurgery run left.
TEMP_PREFIX = ".auxsurgery-"
TEMP_SUFFIX = ".tmp"
LOCK_FILE = ".auxsurgery.lock"


class UnsafePath(ValueError):
    """A path auxsurgery will not use: a symbolic link where it keeps its own files, or a name that is a path."""


def check_name(name: str, what: str) -> str:
    """``name`` if it can be one file or folder name inside a run folder, else an :class:`UnsafePath`.

    Names from recipes, state files and checkpoints become path components: a separator, ``..`` or an
    absolute path would place files outside the folder the user named. Names starting with a dot are
    refused too: they are auxsurgery's own (its lock and temporary files).
    """
    if not isinstance(name, str) or not name:
        problem = "is empty"
    elif "/" in name or "\\" in name:
        problem = "contains a path separator"
    elif name.startswith("."):
        problem = "starts with a dot (., .. and hidden names are auxsurgery's own)"
    elif any(ord(c) < 32 or ord(c) == 127 for c in name):
        problem = "contains a control character"
    else:
        return name
    raise UnsafePath(f"{what} {name!r} {problem}; it becomes a file or folder name inside the run folder: "
                     "use a plain name such as 'cifar10-resnet9'")


def refuse_link(path: str | os.PathLike, what: str = "") -> Path:
    """``path`` unless it is a symbolic link (auxsurgery never reads or writes its own files through one)."""
    path = Path(path)
    if path.is_symlink():
        raise UnsafePath(f"{what + ' ' if what else ''}{path} is a symbolic link; auxsurgery does not follow links "
                         "inside its folders (anyone who can write there could point one at your files): remove it")
    return path


def subfolder(root: str | os.PathLike, *names: str) -> Path:
    """``root/names...``, created, with no component below ``root`` a symbolic link or a file.

    ``root`` is the folder the user named (which may itself be a link they made); the folders below it
    are auxsurgery's, so a link planted there cannot send its files elsewhere.
    """
    folder = Path(root)
    for name in names:
        folder = refuse_link(folder / check_name(name, "folder name"))
        if folder.exists() and not folder.is_dir():
            raise UnsafePath(f"{folder} is a file where auxsurgery keeps a folder; move it away")
        folder.mkdir(exist_ok=True)
    return folder


def check_output_folder(folder: str | os.PathLike, option: str = "the output folder") -> Path:
    """``folder`` unless it exists as something other than a folder (a clear error instead of "File exists")."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{option} {folder} is a file; choose a folder")
    return folder


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """Call ``write(tmp_path)`` then move the finished file onto ``path`` atomically.

    The temporary file is created exclusively (never through an existing name or link) and the rename
    replaces ``path`` itself, so a link planted at ``path`` is replaced, not followed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-", suffix=TEMP_SUFFIX, dir=path.parent)
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


# The release that stops accepting the keyword arguments renamed in 0.2.0.
RENAMED_UNTIL = "0.3.0"


def renamed_kwargs(**renames: str) -> Callable[[Callable], Callable]:
    """Decorator: ``@renamed_kwargs(old="new")`` still accepts ``old=`` (until :data:`RENAMED_UNTIL`), warns
    with a :class:`DeprecationWarning` naming ``new`` and passes the value on as ``new=``.

    Passing both names is a :class:`TypeError`, as any keyword given twice. The signature that
    :func:`inspect.signature` reports stays the function's own (``functools.wraps``).
    """
    def decorate(func: Callable) -> Callable:
        called = func.__qualname__.removesuffix(".__init__")  # a class is called by its own name

        @functools.wraps(func)
        def forward(*args, **kwargs):
            for old, new in renames.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(f"{called}() got both {old}= and its new name {new}=: pass {new}= only")
                    warnings.warn(f"{called}(): {old}= is deprecated and will be removed in {RENAMED_UNTIL}; use "
                                  f"{new}=", DeprecationWarning, stacklevel=2)
                    kwargs[new] = kwargs.pop(old)
            return func(*args, **kwargs)
        return forward
    return decorate


def derive_seed(*parts: int, bits: int = 64) -> int:
    """A seed that is a pure function of ``parts`` (e.g. seed, epoch, index), independent of the process.

    Python's hash of a tuple of ints is not salted, so runs, resumes and ranks agree.
    """
    return hash(parts) & ((1 << bits) - 1)


def tensor_digest(tensors: Iterable[torch.Tensor]) -> str:
    """sha256 of ``tensors``: each one's dtype, shape and values, in order."""
    import torch

    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{list(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def available_memory() -> int | None:
    """Bytes of memory this process can still take: the system's available memory (``MemAvailable`` of
    /proc/meminfo, else the free pages sysconf reports), within its cgroup's limit; None where none of these
    can be read."""
    try:
        meminfo = Path("/proc/meminfo").read_text()
        available = next(int(line.split()[1]) * 1024 for line in meminfo.splitlines()
                         if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError, IndexError):
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, OSError, ValueError):
            available = None
    try:
        limit, used = (Path("/sys/fs/cgroup", name).read_text().strip() for name in ("memory.max", "memory.current"))
        if limit != "max":
            left = max(0, int(limit) - int(used))
            available = left if available is None else min(available, left)
    except (OSError, ValueError):
        pass
    return available


def check_memory(needed: int, what: str, fix: str) -> None:
    """A ValueError, before anything is allocated, when ``needed`` bytes for ``what`` exceed the memory
    available (:func:`available_memory`); ``fix`` says what to do instead."""
    available = available_memory()
    if available is not None and needed > available:
        raise ValueError(f"{what} needs {needed / 1e9:,.1f} GB of memory, more than the {available / 1e9:,.1f} GB "
                         f"this machine has available: {fix}")


def resolve_device(device: str | torch.device, local_rank: int = 0) -> torch.device:
    """``auto``: this process's GPU when CUDA is available, else the CPU; otherwise as given."""
    import torch

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
    import torch

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


def _remove_stale_temp_files(folder: Path) -> None:
    """Delete the temporary files interrupted auxsurgery writes left under ``folder``: regular files with
    auxsurgery's temporary name only, never following a link out of the folder."""
    for root, _, files in os.walk(folder):  # os.walk does not descend into linked folders
        for name in files:
            path = Path(root) / name
            if name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX) and stat.S_ISREG(path.lstat().st_mode):
                path.unlink(missing_ok=True)


def _open_lock(lock: Path) -> int:
    """The lock file's descriptor, opened without following a link; a link or a non-file is refused."""
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666)
    except OSError as err:
        if err.errno == errno.ELOOP:
            refuse_link(lock, "the lock file")
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafePath(f"the lock file {lock} is not a regular file; remove it")
    return fd


@contextmanager
def run_folder_lock(folder: str | os.PathLike, command: str = "auxsurgery") -> Iterator[Path]:
    """Hold ``folder`` for this process: a second run on the same folder stops with who holds it.

    An advisory ``flock`` on ``folder/.auxsurgery.lock`` (opened with ``O_NOFOLLOW``: a link there is
    refused), which records the owner's pid, host and command. The kernel drops the lock when its
    process dies, so a lock left by a killed run is taken over (with a warning on stderr naming the
    dead owner), and the temporary files of its interrupted atomic writes (auxsurgery's own
    ``.auxsurgery-*.tmp`` names, nothing else) are removed: no other process can be writing them.
    flock does not reach across machines on every network file system; give each machine its own
    folder there.
    """
    import fcntl  # POSIX only; imported here so that the rest of this module works everywhere

    folder = check_output_folder(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = _open_lock(folder / LOCK_FILE)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunFolderBusy(f"{folder} is in use by {_describe(_owner(fd))}; wait for that run to end or "
                                "choose another output folder") from None
        previous = _owner(fd)
        if previous:
            # A plain line (not warnings.warn, whose default format adds this source line).
            print(f"warning: {folder}: taking over the lock left by {_describe(previous)}, which is no longer "
                  "running", file=sys.stderr, flush=True)
            _remove_stale_temp_files(folder)
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
