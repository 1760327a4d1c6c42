"""Shared fixtures: seeded RNG, the real-data root (../shared/data or $AUXSURGERY_DATA), and the
``device`` / ``dtype`` of numerics tests.

``--device`` and ``--dtype`` work as in kornia's test suite: a test that takes the ``device`` or
``dtype`` fixture runs once per value asked for, so ``pytest --dtype float64`` reruns the numerics
tests in double precision and ``--device cuda`` on a GPU (skipped cleanly where CUDA is missing)::

    pytest tests/test_model.py --dtype bfloat16
    pytest tests/test_objectives.py --device cpu,cuda --dtype all

Compare with ``torch.testing.assert_close(actual, expected, **tolerance)``: ``tolerance`` widens
with the precision of ``dtype``. Tests that are inherently float32 on the CPU (structure, costs,
training, checkpoints) do not take these fixtures and run once, as before.
"""
import itertools
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
# rtol/atol for comparing a computation with its formula in that dtype. float32 and float64 are
# torch.testing's defaults (the suite's bar so far); the half types leave room for the handful of
# roundings in a softmax/log-sum chain, each worth 2**-11 (float16) or 2**-8 (bfloat16).
TOLERANCES = {
    torch.float64: {"rtol": 1e-7, "atol": 1e-7},
    torch.float32: {"rtol": 1.3e-6, "atol": 1e-5},
    torch.float16: {"rtol": 1e-2, "atol": 1e-2},
    torch.bfloat16: {"rtol": 5e-2, "atol": 5e-2},
}


def pytest_addoption(parser):
    group = parser.getgroup("auxsurgery", "auxsurgery numerics tests")
    group.addoption("--device", default="cpu",
                    help="device(s) of numerics tests: cpu, cuda, cuda:N, comma-separated, or all "
                         "(cpu and, where available, cuda). Default: cpu")
    group.addoption("--dtype", default="float32",
                    help=f"dtype(s) of numerics tests: {', '.join(DTYPES)}, comma-separated, or all. Default: float32")


def _option_values(config, name: str) -> list[str]:
    raw = config.getoption(name)
    if raw == "all":
        if name == "--dtype":
            return list(DTYPES)
        return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    values = [value.strip() for value in raw.split(",") if value.strip()]
    for value in values:
        valid = value in DTYPES if name == "--dtype" else (value == "cpu" or value.partition(":")[0] == "cuda")
        if not valid:
            choices = ", ".join(DTYPES) if name == "--dtype" else "cpu, cuda, cuda:N"
            raise pytest.UsageError(f"{name} {value!r} is not one of: {choices}, all")
    return values


def pytest_configure(config):
    # Reject a misspelt --device/--dtype once, up front, rather than in every test.
    _option_values(config, "--device")
    _option_values(config, "--dtype")


def pytest_generate_tests(metafunc):
    # Session-scoped parameters, so that module- and session-scoped fixtures may take device/dtype.
    names = [name for name in ("device_name", "dtype_name") if name in metafunc.fixturenames]
    if not names:
        return
    option = {"device_name": "--device", "dtype_name": "--dtype"}
    values = list(itertools.product(*(_option_values(metafunc.config, option[name]) for name in names)))
    metafunc.parametrize(",".join(names), values if len(names) > 1 else [v[0] for v in values],
                         ids=["-".join(v) for v in values], scope="session")


@pytest.fixture(scope="session")
def device(device_name) -> torch.device:
    """The ``--device`` of this run of the test; skips when it asks for CUDA and there is none."""
    if device_name.startswith("cuda"):
        if not torch.cuda.is_available():
            pytest.skip(f"--device {device_name}: CUDA is not available on this machine")
        index = torch.device(device_name).index or 0
        if index >= torch.cuda.device_count():
            pytest.skip(f"--device {device_name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return torch.device(device_name)


@pytest.fixture(scope="session")
def dtype(dtype_name) -> torch.dtype:
    """The ``--dtype`` of this run of the test (floating point)."""
    return DTYPES[dtype_name]


@pytest.fixture(scope="session")
def tolerance(dtype) -> dict:
    """``rtol``/``atol`` keyword arguments for ``torch.testing.assert_close`` in ``dtype``."""
    return TOLERANCES[dtype]


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
