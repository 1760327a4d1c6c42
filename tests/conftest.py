"""Shared fixtures: seeded RNG and the real-data root (../shared/data or $AUXSURGERY_DATA)."""
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def data_root() -> Path:
    """Root holding MNIST/raw/*.gz and cifar-10-batches-py (read-only); skips when absent."""
    root = Path(os.environ.get("AUXSURGERY_DATA", REPO.parent / "shared" / "data"))
    if not root.is_dir():
        pytest.skip(f"real data not found at {root} (set AUXSURGERY_DATA)")
    return root


@pytest.fixture(scope="module")
def single_thread():
    """One torch thread for a module of tiny-model tests: more threads gain nothing there and lose
    a lot to contention on a shared 2-core machine. Restores the thread count afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
