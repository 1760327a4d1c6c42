"""Fault injection: two processes on one run folder, a killed owner, interrupted writes, file modes."""
import json
import os
import signal
import subprocess
import sys

import pytest

from auxsurgery._utils import LOCK_FILE, RunFolderBusy, atomic_write, run_folder_lock

HOLD = """
import sys, time
from auxsurgery._utils import run_folder_lock
with run_folder_lock(sys.argv[1], "holder"):
    print("locked", flush=True)
    time.sleep(60)
"""


def _hold(folder):
    """A child process that holds ``folder`` until killed."""
    child = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "locked"
    return child


def test_a_second_process_on_the_same_folder_is_refused_with_the_owner(tmp_path):
    child = _hold(tmp_path)
    try:
        with pytest.raises(RunFolderBusy, match=rf"in use by pid {child.pid} on host .* \(holder, since"):
            with run_folder_lock(tmp_path):
                pass
    finally:
        child.kill()
        child.wait()


def test_a_lock_left_by_a_killed_process_is_taken_over_with_a_warning(tmp_path):
    child = _hold(tmp_path)
    (tmp_path / "sub").mkdir()
    leftover = tmp_path / "sub" / ".model.safetensors.abc123.tmp"  # an atomic write the kill interrupted
    leftover.write_bytes(b"half")
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    with pytest.warns(UserWarning, match=f"taking over the lock left by pid {child.pid}"):
        with run_folder_lock(tmp_path, "second") as folder:
            assert json.loads((folder / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert not leftover.exists()
    assert (tmp_path / LOCK_FILE).read_text() == ""  # released: the next run takes it without a warning


def test_the_same_process_cannot_take_a_folder_twice(tmp_path):
    with run_folder_lock(tmp_path):
        with pytest.raises(RunFolderBusy):
            with run_folder_lock(tmp_path):
                pass


def test_atomic_writes_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write(tmp_path / "a.txt", lambda tmp: open(tmp, "w").write("x"))
        assert oct(path.stat().st_mode & 0o777) == oct(0o644)
        os.umask(0o077)
        path = atomic_write(tmp_path / "b.txt", lambda tmp: open(tmp, "w").write("x"))
        assert oct(path.stat().st_mode & 0o777) == oct(0o600)
    finally:
        os.umask(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]


def test_a_killed_atomic_write_never_replaces_the_old_file(tmp_path):
    target = tmp_path / "model.bin"
    target.write_bytes(b"good")
    script = ("import sys, time\nfrom auxsurgery._utils import atomic_write\n"
              "def slow(tmp):\n    open(tmp, 'wb').write(b'partial'); print('writing', flush=True); time.sleep(60)\n"
              f"atomic_write({str(target)!r}, slow)\n")
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "writing"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert target.read_bytes() == b"good"


def test_checkpoints_follow_the_umask(tmp_path):
    """safetensors recreates the file it writes: the mode must be set on the finished file."""
    from attack_helpers import aux_model
    from safetensors.torch import save_model

    old = os.umask(0o022)
    try:
        path = atomic_write(tmp_path / "m.safetensors", lambda tmp: save_model(aux_model(), tmp))
    finally:
        os.umask(old)
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)
