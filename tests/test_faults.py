"""Fault injection: two processes on one run folder, a killed owner, interrupted writes, file modes."""
import copy
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from auxsurgery._utils import (
    LOCK_FILE,
    TEMP_PREFIX,
    TEMP_SUFFIX,
    RunFolderBusy,
    UnsafePath,
    atomic_write,
    run_folder_lock,
    subfolder,
)

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


def test_a_lock_left_by_a_killed_process_is_taken_over_with_one_warning_line(tmp_path, capfd):
    child = _hold(tmp_path)
    (tmp_path / "sub").mkdir()
    leftover = tmp_path / "sub" / f"{TEMP_PREFIX}{child.pid}-abc123{TEMP_SUFFIX}"  # an atomic write the kill interrupted
    leftover.write_bytes(b"half")
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    capfd.readouterr()
    with run_folder_lock(tmp_path, "second") as folder:
        assert json.loads((folder / LOCK_FILE).read_text())["pid"] == os.getpid()
    # One plain line on stderr: not warnings.warn's format, which adds the calling source line.
    (line,) = capfd.readouterr().err.splitlines()
    assert line.startswith(f"warning: {tmp_path}: taking over the lock left by pid {child.pid} on host ")
    assert line.endswith("which is no longer running")
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
    with pytest.raises(ValueError, match=r"images of different sizes: .* is 12x10 but .* is 8x8; resize them") as err:
        [dataset[i] for i in range(len(dataset))]
    # --image-size is named for the commands that have it only: attack and export --check do not.
    assert "train and defend: --image-size" in str(err.value)
    assert "attack and export --check read images as they are" in str(err.value)
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


# ---- folders that cannot be turned against the user (issue 23) ----------------------------------


def _checkpoint(tmp_path):
    from auxsurgery import attach_aux_blocks, save

    return save(attach_aux_blocks("small_cnn", at="stage1", num_classes=10, input_size=(3, 32, 32)),
                tmp_path / "model.safetensors")


def test_a_lock_file_planted_as_a_link_is_refused_and_its_target_untouched(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "L"
    out.mkdir()
    (out / LOCK_FILE).symlink_to("../victim.txt")
    with pytest.raises(UnsafePath, match=r"\.auxsurgery\.lock is a symbolic link; .*remove it"):
        with run_folder_lock(out):
            pass
    assert victim.read_text() == "precious"
    # The command of the report: one line, exit 2, the file outside --out untouched.
    data = tmp_path / "data.pt"
    torch.save({"x": torch.rand(4, 3, 32, 32), "y": torch.zeros(4, dtype=torch.long)}, data)
    done = subprocess.run([sys.executable, "-m", "auxsurgery", "attack", str(_checkpoint(tmp_path)), "--data",
                           str(data), "--suite", "adaptive", "--quick", "--points", "4", "--out", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "is a symbolic link" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert victim.read_text() == "precious"


def test_taking_a_lock_deletes_only_auxsurgerys_own_temporary_files(tmp_path):
    users = [tmp_path / ".notes.tmp", tmp_path / "sub" / ".cache.tmp", tmp_path / "sub" / ".model.safetensors.x.tmp"]
    for path in users:
        path.parent.mkdir(exist_ok=True)
        path.write_text("the user's")
    with run_folder_lock(tmp_path):  # a fresh lock: nothing is deleted at all
        pass
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    theirs = outside / f"{TEMP_PREFIX}1-abc{TEMP_SUFFIX}"  # auxsurgery's name, but behind a link out of the folder
    theirs.write_text("elsewhere")
    (tmp_path / "link").symlink_to(outside)
    child = _hold(tmp_path)
    ours = tmp_path / "sub" / f"{TEMP_PREFIX}{child.pid}-abc{TEMP_SUFFIX}"
    ours.write_text("half")
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    with run_folder_lock(tmp_path):  # a stale-lock takeover: the dead run's temporary files go
        pass
    assert not ours.exists()
    assert all(path.read_text() == "the user's" for path in users) and theirs.exists()


def test_atomic_writes_use_auxsurgerys_temporary_name(tmp_path):
    seen = []
    atomic_write(tmp_path / "a.json", lambda tmp: seen.append(os.path.basename(tmp)) or open(tmp, "w").write("{}"))
    assert seen[0].startswith(f"{TEMP_PREFIX}{os.getpid()}-") and seen[0].endswith(TEMP_SUFFIX)


@pytest.mark.parametrize("name, problem", [
    ("../../../escaped_reading", "path separator"), ("/tmp/abs", "path separator"), ("..", "starts with a dot"),
    ("", "is empty"), ("a\x1bb", "control character"), ("a\\b", "path separator"),
])
def test_recipe_names_that_are_paths_are_refused_at_check(name, problem):
    from auxsurgery.studies.recipe import RecipeError, parse_recipe

    base = '[recipe]\nname = "tiny"\n[data]\nname = "synthetic"\n[backbone]\nname = "small_cnn"\n'
    reading = f'[[attack.readings]]\nname = {json.dumps(name)}\neps = 0.1\n'
    with pytest.raises(RecipeError, match=rf"x.toml: \[attack.readings\[0\]\] name: .*{problem}"):
        parse_recipe(base + reading, "x.toml")
    with pytest.raises(RecipeError, match=rf"x.toml: \[recipe\] name: .*{problem}"):
        parse_recipe(base.replace('"tiny"', json.dumps(name)), "x.toml")


def test_a_folder_planted_as_a_link_inside_a_run_folder_is_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = tmp_path / "run"
    run.mkdir()
    (run / "aux").symlink_to(elsewhere)
    with pytest.raises(UnsafePath, match="aux is a symbolic link"):
        subfolder(run, "aux", "train")
    assert list(elsewhere.iterdir()) == []
    assert subfolder(run, "undefended", "eval", "wide") == run / "undefended" / "eval" / "wide"


def _evaluate(state_dir, **kwargs):
    from attack_helpers import dataset, trained_aux_model

    from auxsurgery.evaluation import Budget, run_suite

    x, y = dataset(16, seed=3)
    return run_suite(trained_aux_model(), (x, y), suite="adaptive", eps=0.1, budget=Budget.quick(), batch_size=8,
                     progress=False, state_dir=state_dir, **kwargs)


def test_a_state_record_moved_to_another_attack_is_refused(tmp_path):
    from auxsurgery.evaluation.state import StateError

    _evaluate(tmp_path)
    # Adp-FGSM's first batch copied over Adp-PGD's: the same points, another attack.
    (tmp_path / "001" / "batch-00000.pt").write_bytes((tmp_path / "000" / "batch-00000.pt").read_bytes())
    with pytest.raises(StateError, match=r"001/batch-00000.pt belongs to another place \(plan, attack, class"):
        _evaluate(tmp_path)


def test_a_state_record_from_another_evaluation_is_refused(tmp_path):
    from auxsurgery.evaluation.state import StateError

    _evaluate(tmp_path / "a")
    _evaluate(tmp_path / "b", seed=1)
    batch = "000/batch-00000.pt"
    (tmp_path / "b" / batch).write_bytes((tmp_path / "a" / batch).read_bytes())
    with pytest.raises(StateError, match=r"belongs to another place \(evaluation differ"):
        _evaluate(tmp_path / "b", seed=1)


def test_old_or_linked_state_is_refused_with_what_to_delete(tmp_path):
    from auxsurgery.evaluation.state import StateError

    _evaluate(tmp_path)
    batch = tmp_path / "000" / "batch-00000.pt"
    record = torch.load(batch, weights_only=True)
    record.pop("belongs_to")
    torch.save(record, batch)  # a record as 0.2's first state format wrote it
    with pytest.raises(StateError, match=f"not a batch record of this version; delete {tmp_path} to start"):
        _evaluate(tmp_path)
    batch.unlink()
    batch.symlink_to(tmp_path / "000" / "batch-00001.pt")
    with pytest.raises(UnsafePath, match="batch-00000.pt is a symbolic link"):
        _evaluate(tmp_path)
    manifest = tmp_path / "manifest.json"
    manifest.write_text(manifest.read_text().replace("eval-state/2", "eval-state/1"))
    with pytest.raises(StateError, match="older format .*delete it to start the evaluation over"):
        _evaluate(tmp_path)


def test_training_metrics_are_never_appended_through_a_link(tmp_path):
    from auxsurgery.train.run_files import METRICS_FILE, RunFiles

    files = RunFiles(tmp_path, write=True)
    files.start(resume_epoch=None)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / METRICS_FILE).unlink()
    (tmp_path / METRICS_FILE).symlink_to(victim)
    with pytest.raises(UnsafePath, match="metrics.jsonl is a symbolic link"):
        files.append_metrics({"epoch": 1})
    assert victim.read_text() == "precious"


# ---- every other case of the probe ends in one line ----------------------------------------------


def test_resuming_with_another_model_is_one_line(tmp_path):
    from auxsurgery import attach_aux_blocks
    from auxsurgery.data import load_dataset
    from auxsurgery.train import TrainConfig, finetune

    data = load_dataset("synthetic", subset=64)
    config = TrainConfig.quick(epochs=1, batch_size=32, out_dir=tmp_path, progress=False)
    finetune(attach_aux_blocks("small_cnn", at="stage1", num_classes=10, input_size=(3, 32, 32)), data, None, config)
    other = attach_aux_blocks("small_cnn", at="stage2", num_classes=10, input_size=(3, 32, 32))
    with pytest.raises(ValueError, match=r"cannot resume .*: its state belongs to another model \(heads\.0.* saved, "
                                         r".* now; \d+ tensors differ\); resume with the model, --at and --head"):
        finetune(other, data, None, TrainConfig.quick(epochs=1, batch_size=32, out_dir=tmp_path, progress=False,
                                                      resume=True))


@pytest.mark.parametrize("lr", [float("nan"), float("inf"), 1e30, 0.0, -1.0])
def test_a_learning_rate_that_cannot_train_is_refused_up_front(lr):
    from auxsurgery.train import TrainConfig

    with pytest.raises(ValueError, match=r"lr must be a number in \(0, 10\]"):
        TrainConfig(lr=lr)
    with pytest.raises(ValueError, match="must be finite numbers, got momentum nan"):
        TrainConfig(momentum=float("nan"))


def test_a_negative_label_is_reported_as_one(tmp_path):
    from auxsurgery.evaluation import collect

    x, y = torch.rand(4, 3, 8, 8), torch.tensor([0, -1, 2, 1])
    with pytest.raises(ValueError, match=r"^labels span -1..2, but a label is a class index, 0 or more$"):
        collect((x, y))


def test_an_output_path_that_is_a_file_is_named_for_train_and_export(tmp_path):
    from auxsurgery import attach_aux_blocks
    from auxsurgery.export import export_model

    a_file = tmp_path / "out"
    a_file.write_text("")
    with pytest.raises(ValueError, match=f"the output folder {a_file} is a file; choose a folder"):
        with run_folder_lock(a_file):
            pass
    aux = attach_aux_blocks("small_cnn", at="stage1", num_classes=10, input_size=(3, 32, 32))
    with pytest.raises(ValueError, match=f"the output folder {a_file} is a file; choose a folder"):
        export_model(aux, a_file / "model")


def test_standalone_without_the_strong_suite_is_refused(tmp_path):
    from auxsurgery.evaluation.checkpoint_eval import evaluate_checkpoint

    with pytest.raises(ValueError, match="--standalone runs the strong suite's attacks .* add strong to --suite"):
        evaluate_checkpoint(tmp_path / "never-read.safetensors", "synthetic", "static,adaptive", standalone=True)


def test_a_rule_typo_gets_a_suggestion():
    from auxsurgery.model import check_rule

    with pytest.raises(ValueError, match=r"unknown prediction rule 'scor'; valid rules: .*\. Did you mean 'score'\?"):
        check_rule("scor")


def test_nan_weights_are_reported_as_such_not_as_randomness():
    from attack_helpers import dataset, trained_aux_model

    from auxsurgery.evaluation.sanity import model_checks

    model = copy.deepcopy(trained_aux_model())
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    x, y = dataset(8, seed=3)
    kinds = [finding.check for finding in model_checks(model, x, y, ["vote"], {"vote": "vote-margin"})]
    assert "non-finite" in kinds and "randomness" not in kinds
