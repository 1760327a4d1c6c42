"""Fault injection: two processes on one run folder, a killed owner, interrupted writes, file modes."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

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


@pytest.mark.parametrize("make", [
    lambda m: __import__("auxsurgery.attacks", fromlist=["CW"]).CW(m, eps=0.5, steps=20, rule="public"),
    lambda m: __import__("auxsurgery.attacks", fromlist=["Boundary"]).Boundary(m, eps=1.0, steps=40, seed=0,
                                                                                rule="public"),
    lambda m: __import__("auxsurgery.attacks", fromlist=["PGD"]).PGD(m, norm="l2", eps=0.5, steps=10,
                                                                      rule="public"),
], ids=["CW", "Boundary", "PGD-L2"])
def test_the_l2_ball_holds_exactly_in_float32_and_float64(make):
    from attack_helpers import dataset, trained_plain_model

    model = trained_plain_model()
    x, y = dataset(64, seed=5, noise=0.3)
    attack = make(model)
    delta = (attack(x, y) - x).flatten(1)
    assert delta.norm(dim=1).max().item() <= attack.eps
    assert delta.double().norm(dim=1).max().item() <= attack.eps


def test_labels_outside_the_classes_are_refused_by_attacks_and_judging():
    from attack_helpers import CLASSES, aux_model, dataset, plain_model

    from auxsurgery.attacks import PGD, is_adversarial

    x, y = dataset(4)
    wrong = torch.full_like(y, CLASSES)
    for model in (aux_model(), plain_model()):
        with pytest.raises(ValueError, match=rf"labels span {CLASSES}..{CLASSES} but the model has {CLASSES} classes"):
            PGD(model, steps=2)(x, wrong)
        with pytest.raises(ValueError, match="labels span"):
            is_adversarial(model, x, wrong)
    with pytest.raises(ValueError, match="finite pixels"):
        is_adversarial(aux_model(), torch.full_like(x, float("nan")), y)


TRAIN = """
import sys
from auxsurgery import attach_aux_blocks
from auxsurgery.data import load_dataset
from auxsurgery.train import TrainConfig, finetune
aux = attach_aux_blocks("small_cnn", at="stage1", num_classes=10, input_size=(3, 32, 32))
finetune(aux, load_dataset("synthetic", subset=2000), None,
         TrainConfig.quick(epochs=50, batch_size=32, out_dir=sys.argv[1], progress=False, seed=int(sys.argv[2])))
"""


def test_two_training_runs_on_one_folder_the_second_stops_naming_the_first(tmp_path):
    first = subprocess.Popen([sys.executable, "-c", TRAIN, str(tmp_path), "0"], env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 60
        while not (tmp_path / LOCK_FILE).exists() or not (tmp_path / LOCK_FILE).read_text():
            assert time.time() < deadline and first.poll() is None
            time.sleep(0.05)
        second = subprocess.run([sys.executable, "-m", "auxsurgery", "train", "small_cnn", "--data", "synthetic",
                                 "--epochs", "1", "--seed", "1", "--out", str(tmp_path)],
                                capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    finally:
        first.kill()
        first.wait()
    assert second.returncode == 2
    assert f"is in use by pid {first.pid}" in second.stderr and "Traceback" not in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1


def test_training_data_of_another_input_size_is_refused(tmp_path):
    from auxsurgery import attach_aux_blocks
    from auxsurgery.data import ImageTensorDataset
    from auxsurgery.train import TrainConfig, finetune

    aux = attach_aux_blocks("small_cnn", at="stage1", num_classes=10, input_size=(3, 32, 32))
    mnist_like = ImageTensorDataset(torch.zeros(64, 1, 28, 28, dtype=torch.uint8), torch.zeros(64, dtype=torch.long),
                                    [str(i) for i in range(10)])
    with pytest.raises(ValueError, match="the training data has images of size 1x28x28 but the model takes 3x32x32"):
        finetune(aux, mnist_like, None, TrainConfig.quick(epochs=1, progress=False))


def test_a_resume_state_with_pickled_code_is_refused_not_run(tmp_path):
    from auxsurgery import attach_aux_blocks
    from auxsurgery.data import load_dataset
    from auxsurgery.train import TrainConfig, finetune
    from auxsurgery.train.run_files import STATE_FILE

    marker = tmp_path / "executed"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"epoch": Exploit()}, tmp_path / STATE_FILE)
    aux = attach_aux_blocks("small_cnn", at="stage1", num_classes=10, input_size=(3, 32, 32))
    with pytest.raises(ValueError, match="cannot be resumed: it is corrupt or holds objects other than tensors"):
        finetune(aux, load_dataset("synthetic", subset=256), None,
                 TrainConfig.quick(epochs=1, batch_size=64, out_dir=tmp_path, resume=True, progress=False))
    assert not marker.exists()


def _image_folder(root, sizes):
    from PIL import Image

    for i, size in enumerate(sizes):
        folder = root / f"class{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, color=(i * 20, 0, 0)).save(folder / f"{i}.png")
    return root


def test_a_corrupt_image_in_an_image_folder_is_named(tmp_path):
    from auxsurgery.data import load_dataset

    root = _image_folder(tmp_path / "images", [(8, 8)] * 4)
    (root / "class0" / "broken.png").write_bytes(b"not a png")
    dataset = load_dataset(str(root))
    with pytest.raises(ValueError, match=r"cannot read image .*broken.png.*remove or replace the file"):
        [dataset[i] for i in range(len(dataset))]


def test_mixed_image_sizes_without_image_size_name_the_files(tmp_path):
    from auxsurgery.data import load_dataset

    root = _image_folder(tmp_path / "images", [(8, 8), (8, 8), (12, 10)])
    dataset = load_dataset(str(root))
    with pytest.raises(ValueError, match=r"images of different sizes: .* is 12x10 but .* is 8x8; pass --image-size"):
        [dataset[i] for i in range(len(dataset))]
    resized = load_dataset(str(root), image_size=8)
    assert {tuple(resized[i][0].shape) for i in range(len(resized))} == {(3, 8, 8)}


def test_a_full_disk_during_a_checkpoint_write_is_an_environment_error(tmp_path, monkeypatch):
    import auxsurgery.checkpoint as checkpoint
    from attack_helpers import aux_model
    from safetensors import SafetensorError

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")

    monkeypatch.setattr(checkpoint, "save_model", full)
    with pytest.raises(OSError, match="could not write the checkpoint .*StorageFull"):
        checkpoint.save(aux_model(), tmp_path / "m.safetensors")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture()
def small_mount(tmp_path):
    """A mount point factory: a tmpfs of the given options (root and mount permission needed, else skip)."""
    mounted = []

    def make(options: str):
        point = tmp_path / f"mount{len(mounted)}"
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounted.append(point)
        return point

    yield make
    for point in mounted:
        subprocess.run(["umount", str(point)], check=False)


def test_a_full_disk_ends_the_command_with_one_line_and_no_leftover(small_mount):
    full = small_mount("size=64k")
    done = subprocess.run([sys.executable, "-m", "auxsurgery", "attach", "small_cnn", "--at", "stage1",
                           "--out", str(full / "model.safetensors")], capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and "No space left on device" in done.stderr
    assert list(full.iterdir()) == []


def test_a_read_only_output_folder_fails_before_any_attack(small_mount, tmp_path):
    from auxsurgery import attach_aux_blocks, save

    read_only = small_mount("ro,size=64k")
    checkpoint = save(attach_aux_blocks("small_cnn", at="stage1", num_classes=10, input_size=(3, 32, 32)),
                      tmp_path / "model.safetensors")
    data = tmp_path / "data.pt"
    torch.save({"x": torch.rand(4, 3, 32, 32), "y": torch.zeros(4, dtype=torch.long)}, data)
    done = subprocess.run([sys.executable, "-m", "auxsurgery", "attack", str(checkpoint), "--data", str(data),
                           "--suite", "static", "--out", str(read_only / "report")], capture_output=True, text=True)
    assert done.returncode == 1 and "Read-only file system" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_an_output_path_that_is_a_file_is_refused_before_any_attack(tmp_path):
    from auxsurgery import attach_aux_blocks, save

    checkpoint = save(attach_aux_blocks("small_cnn", at="stage1", num_classes=10, input_size=(3, 32, 32)),
                      tmp_path / "model.safetensors")
    data = tmp_path / "data.pt"
    torch.save({"x": torch.rand(4, 3, 32, 32), "y": torch.zeros(4, dtype=torch.long)}, data)
    a_file = tmp_path / "report"
    a_file.write_text("")
    done = subprocess.run([sys.executable, "-m", "auxsurgery", "attack", str(checkpoint), "--data", str(data),
                           "--suite", "static", "--out", str(a_file)], capture_output=True, text=True)
    assert done.returncode == 2 and "is a file; choose a folder" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
