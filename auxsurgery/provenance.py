"""Where a number came from: the machine, the library versions and the command, for reports."""
from __future__ import annotations

import os
import platform
import shlex
import sys

import timm
import torch
import torchvision

from .version import __version__

__all__ = ["command_line", "machine", "versions"]


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
    return {"auxsurgery": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "timm": timm.__version__}


def command_line() -> str:
    """The command that is running, as it could be typed again."""
    program = os.path.basename(sys.argv[0]) if sys.argv else "python"
    if program in ("__main__.py", "-c"):
        program = "python -m auxsurgery"
    return " ".join([program, shlex.join(sys.argv[1:])])
