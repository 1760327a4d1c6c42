"""Where a number came from: the release and commit, the machine, the library versions and the command, for reports."""
from __future__ import annotations

import functools
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

import torch

from .version import __version__

__all__ = ["command_line", "machine", "release", "source_commit", "versions"]

# The checkout this package was imported from, if it is one: <root>/auxsurgery/provenance.py.
_SOURCE_ROOT = Path(__file__).resolve().parents[1]


@functools.lru_cache(maxsize=1)
def source_commit() -> str | None:
    """The git commit of the checkout the package is imported from (short hash, ``+dirty`` when
    ``auxsurgery/`` has uncommitted changes), or None: an installed wheel, no git, no repository.

    Other people may edit a checkout while a long run goes on, so results say which code made them.
    """
    try:
        def git(*args: str) -> str:
            done = subprocess.run(["git", "-C", str(_SOURCE_ROOT), *args], capture_output=True, text=True,
                                  timeout=10)
            return done.stdout.strip() if done.returncode == 0 else ""

        # Only the package's own repository counts (not, say, a repository that holds a virtual environment).
        top = git("rev-parse", "--show-toplevel")
        if not top or Path(top).resolve() != _SOURCE_ROOT:
            return None
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--", "auxsurgery")
    except (OSError, subprocess.SubprocessError):
        return None
    return (head + ("+dirty" if dirty else "")) or None


def release() -> dict[str, str]:
    """``{"auxsurgery_version": ..., "auxsurgery_commit": ...}`` for every result file (commit "unknown"
    outside a git checkout)."""
    return {"auxsurgery_version": __version__, "auxsurgery_commit": source_commit() or "unknown"}


def machine() -> str:
    """``CPU model, N CPUs, RAM, OS, Python`` (plus the GPU when CUDA is available)."""
    cpu = platform.processor() or platform.machine()
    memory = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
        with open("/proc/meminfo") as f:
            memory = f"{int(f.readline().split()[1]) / 2**20:.0f} GiB RAM, "
    except OSError:  # not Linux
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (f"{cpu}, {os.cpu_count()} CPUs, {memory}{platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}{gpu}")


def versions() -> dict[str, str]:
    """Versions of auxsurgery and the libraries its numbers depend on."""
    import timm  # here, not at the top: release() is used by modules that must not need timm
    import torchvision

    return {"auxsurgery": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "timm": timm.__version__}


def command_line() -> str:
    """The command that is running, as it could be typed again."""
    program = os.path.basename(sys.argv[0]) if sys.argv else "python"
    if program in ("__main__.py", "-c"):
        program = "python -m auxsurgery"
    return " ".join([program, shlex.join(sys.argv[1:])])
