"""The output convention, end to end through ``python -m auxsurgery``: with ``--json`` stdout holds
exactly one JSON document; progress, logs and messages go to stderr."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path


def auxsurgery(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "auxsurgery", *args], capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_train_json_is_the_only_stdout_and_progress_goes_to_stderr(tmp_path):
    done = auxsurgery("train", "small_cnn", "--data", "synthetic", "--train-subset", "64", "--val-subset", "32",
                      "--epochs", "1", "--batch-size", "32", "--amp", "off", "--device", "cpu", "--out", str(tmp_path),
                      "--json")
    summary = json.loads(done.stdout)
    assert summary["best_epoch"] == 1 and summary["epochs_run"] == 1
    assert summary["final"]["epoch"] == 1 and summary["best_accuracy"] == summary["final"]["val/rule/vote"]
    assert str(tmp_path / "last.safetensors") in summary["files"]
    assert all(Path(path).is_file() for path in summary["files"])
    assert "epoch 1: loss" in done.stderr  # the progress display's epoch line
    assert "wrote " + str(tmp_path / "metrics.jsonl") in done.stderr


def test_attach_json_is_the_only_stdout_and_the_saved_message_goes_to_stderr(tmp_path):
    out = tmp_path / "m.safetensors"
    done = auxsurgery("attach", "lenet5", "--at", "pool1,pool2", "--head", "paper-mnist", "--out", str(out), "--json")
    document = json.loads(done.stdout)
    assert [c["name"] for c in document["costs"]] == ["public", "pool1", "pool2"] and document["saved"] == str(out)
    assert done.stderr.strip() == f"saved to {out}"


def test_attack_output_in_a_log_file_keeps_every_number_and_marks_the_budget(tmp_path):
    """`auxsurgery attack CK --data synthetic --suite strong --quick > log`: the table arrives as Markdown (no
    80-column squeeze), the worst case included; report.md names the quick budget; a rerun says it resumed."""
    import torch

    from auxsurgery import attach_aux_blocks, build_backbone, save

    torch.manual_seed(0)
    checkpoint = tmp_path / "ck.safetensors"
    save(attach_aux_blocks(build_backbone("small_cnn", num_classes=10), at="auto:2", input_size=(3, 32, 32)),
         checkpoint)
    command = ("attack", str(checkpoint), "--data", "synthetic", "--suite", "strong", "--quick", "--points", "32",
               "--out", str(tmp_path / "report"))
    done = auxsurgery(*command)
    worst = next(line for line in done.stdout.splitlines() if "worst case" in line)
    cells = [cell.strip() for cell in worst.strip("|").split("|")]
    assert cells[:2] == ["all", "worst case"] and all(float(cell) >= 0 for cell in cells[4:6])  # vote, score
    assert "budget quick (--quick" in done.stdout
    assert "Cascade [vote] 1: APGD" in done.stderr and " done" in done.stderr  # a finished attack's progress line
    # Each stage counts done-of-n (the points earlier stages decided are done), not the points still standing.
    stages = [line for line in done.stderr.splitlines() if line.startswith("Cascade [")]
    assert stages and all(re.search(r" \d+/32 ", line) for line in stages), stages
    report = (tmp_path / "report" / "report.md").read_text()
    assert "- budget: quick (--quick: a smoke test that proves nothing)" in report
    (tmp_path / "report" / "results.json").unlink()
    again = auxsurgery(*command)
    assert "resuming from " + str(tmp_path / "report" / "state") in again.stderr
    assert " attacks recorded " in again.stderr


def test_progress_in_a_log_file_prints_periodic_lines_during_a_long_phase():
    import io
    import time

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    from auxsurgery._output import TimeLeft, progress_display

    stream = io.StringIO()
    console = Console(file=stream, force_terminal=False, soft_wrap=True)
    os.environ["AUXSURGERY_PROGRESS_SECONDS"] = "0.05"
    try:
        bars = progress_display(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), TimeLeft(), console=console)
    finally:
        del os.environ["AUXSURGERY_PROGRESS_SECONDS"]
    with bars:
        task = bars.add_task("Square", total=4)
        bars.advance(task, 1)
        time.sleep(0.3)  # one long batch: nothing advances, the lines keep coming
        bars.advance(task, 3)
    lines = stream.getvalue().splitlines()
    assert len([line for line in lines if line.startswith("Square 1/4 elapsed")]) >= 2
    # An ETA from the first update on, at the pace since the start (rich's own needs two updates 30 s apart at most)
    assert all(re.search(r" left \d:\d\d:\d\d$", line) for line in lines if line.startswith("Square 1/4"))
    assert lines[-1].startswith("Square 4/4 elapsed") and lines[-1].endswith("done")
    assert all("━" not in line for line in lines)  # no bars in a log file


def test_a_table_keeps_every_cell_on_a_narrow_terminal_and_is_markdown_in_a_log():
    import io

    from rich.table import Table

    from auxsurgery._output import OutputConsole

    table = Table(title="accuracy (%)")
    for column in ("attack", "threat", "vote", "score"):
        table.add_column(column)
    table.add_row("Cascade 3: APGD-T over the top-9 classes of the ensemble", "Linf 8/255", "12.5", "45.3")
    cells = ("Cascade 3: APGD-T over the top-9 classes of the ensemble", "Linf 8/255", "12.5", "45.3")
    terminal = io.StringIO()
    OutputConsole(file=terminal, force_terminal=True, width=40, color_system=None).print(table)
    assert all(cell in terminal.getvalue() for cell in cells)  # no cell wrapped, squeezed or cut
    log = io.StringIO()
    OutputConsole(file=log, force_terminal=False, width=40).print(table)
    assert log.getvalue().splitlines() == ["accuracy (%)", "", "| attack | threat | vote | score |",
                                           "|---|---|---|---|", "| " + " | ".join(cells) + " |"]


def test_every_task_has_an_eta_however_far_apart_its_updates():
    """A Boundary attack's batches are minutes apart: rich's own estimate (from the updates of the last 30 s)
    had none, nor had any task before its second update."""
    import io

    from rich.console import Console

    from auxsurgery._output import COUNTED_AT_START, TimeLeft, progress_display

    now = [0.0]
    bars = progress_display(TimeLeft(), console=Console(file=io.StringIO(), force_terminal=True))
    bars.get_time = lambda: now[0]

    def left(task) -> str:
        return TimeLeft().render(next(t for t in bars.tasks if t.id == task)).plain

    task = bars.add_task("Boundary", total=10)
    assert left(task) == "-:--:--"
    now[0] = 100.0
    bars.advance(task, 1)
    assert left(task) == "0:15:00"  # 9 points left at 100 s each
    now[0] = 300.0
    bars.advance(task, 2)
    assert left(task) == "0:11:40"  # 7 left at 3 per 300 s
    # A stage whose first 6 points an earlier one decided: its pace counts only what it did.
    stage = bars.add_task("stage 2", total=10, **{COUNTED_AT_START: 6})
    bars.update(stage, completed=6)
    now[0] = 340.0
    bars.advance(stage, 2)
    assert left(stage) == "0:00:40"  # 2 left at 2 per 40 s
