"""Output written for a terminal and for a log file alike: nothing the user needs depends on the terminal.

- :class:`OutputConsole` prints a table at its full width on a terminal (never squeezed into empty
  columns) and as plain Markdown elsewhere (``| tee log``, ``> log``, ``nohup``, CI); lines never wrap.
- :func:`progress_display` shows rich progress bars on a terminal; elsewhere it prints one plain line
  per unfinished task every :func:`log_interval` seconds (a long attack phase included, even when no
  batch has finished since the last line) and one line when a task finishes. Its :class:`TimeLeft`
  column gives every task an ETA, however far apart its updates.
"""
from __future__ import annotations

import math
import os
import threading

from rich.console import Console
from rich.measure import Measurement
from rich.progress import BarColumn, Progress, ProgressColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from ._utils import markdown_table

__all__ = ["COUNTED_AT_START", "OutputConsole", "TimeLeft", "log_interval", "progress_display", "table_markdown"]

INTERVAL_VARIABLE = "AUXSURGERY_PROGRESS_SECONDS"
DEFAULT_INTERVAL = 30.0
# A task field: how much of ``completed`` was done before the task started (points an earlier stage decided, the
# steps of a resumed epoch), which says nothing about its pace.
COUNTED_AT_START = "counted_at_start"


def _plain(cell) -> str:
    """The text of a table cell or column renderable: markup strings rendered, styles dropped."""
    if isinstance(cell, Text):
        return cell.plain
    return Text.from_markup(cell).plain if isinstance(cell, str) else str(cell)


def table_markdown(table: Table) -> list[str]:
    """A rich table as Markdown lines: its title, the table, its caption."""
    header = [_plain(column.header) for column in table.columns]
    rows = zip(*([_plain(cell) for cell in column.cells] for column in table.columns))
    lines = markdown_table(header, rows)
    if table.title:
        lines = [_plain(table.title), "", *lines]
    return lines + (["", _plain(table.caption)] if table.caption else [])


class OutputConsole(Console):
    """A rich Console whose tables keep every number: full width on a terminal, Markdown in a log file.

    Long lines are never wrapped (``soft_wrap``): a path or a one-line message stays greppable.
    """

    def __init__(self, stderr: bool = False, **kwargs):
        super().__init__(stderr=stderr, soft_wrap=True, **kwargs)

    def print(self, *objects, **kwargs) -> None:
        tables = [obj for obj in objects if isinstance(obj, Table)]
        if tables and not self.is_terminal:
            objects = tuple(Text("\n".join(table_markdown(obj))) if isinstance(obj, Table) else obj
                            for obj in objects)
        elif tables:
            unbounded = self.options.update(max_width=1_000_000)
            needed = max(Measurement.get(self, unbounded, table).maximum for table in tables)
            if needed > self.width:
                # Rendered at its natural width (print(width=) is capped at the console's): the terminal wraps
                # the long lines, but no cell is squeezed or cut.
                terminal_width = self._width
                self.width = needed
                try:
                    super().print(*objects, **{**kwargs, "crop": False})
                finally:
                    self._width = terminal_width
                return
        super().print(*objects, **kwargs)


def log_interval() -> float:
    """Seconds between a log file's progress lines: $AUXSURGERY_PROGRESS_SECONDS, else 30."""
    text = os.environ.get(INTERVAL_VARIABLE)
    try:
        seconds = float(text) if text else DEFAULT_INTERVAL
    except ValueError:
        raise ValueError(f"${INTERVAL_VARIABLE} must be a number of seconds, got {text!r}") from None
    if not seconds > 0:
        raise ValueError(f"${INTERVAL_VARIABLE} must be > 0, got {text!r}")
    return seconds


class TimeLeft(ProgressColumn):
    """The time a task has left: at the pace of its updates of the last 30 s (rich's estimate), or where it has
    fewer than two there, at its pace from its start to its last update. Rich's own column showed none for a
    phase whose updates are minutes apart (a Boundary attack's batches, an epoch), nor before a second update."""

    def render(self, task) -> Text:
        if task.total is None:
            return Text("")
        seconds = task.time_remaining
        if seconds is None:
            seconds = _time_left_from_start(task)
        if seconds is None:
            return Text("-:--:--", style="progress.remaining")
        minutes, seconds = divmod(math.ceil(seconds), 60)
        return Text(f"{minutes // 60:d}:{minutes % 60:02d}:{seconds:02d}", style="progress.remaining")


def _time_left_from_start(task) -> float | None:
    done = task.completed - task.fields.get(COUNTED_AT_START, 0)
    updates = task._progress  # rich's (timestamp, amount) of each update that advanced the task
    if not updates or done <= 0 or task.start_time is None:
        return None
    span = updates[-1].timestamp - task.start_time
    return (task.total - task.completed) * span / done if span > 0 else None


class _LineProgress(Progress):
    """Rich's task bookkeeping without its live display: plain progress lines for a log file."""

    def __init__(self, *columns: ProgressColumn, console: Console, interval: float):
        super().__init__(*columns, console=console, disable=True)
        self.interval = interval
        self._stopping = threading.Event()
        self._ticker: threading.Thread | None = None
        self._reported: set = set()  # finished tasks whose last line is printed

    def start(self) -> None:
        self._stopping.clear()
        self._ticker = threading.Thread(target=self._tick, name="auxsurgery-progress", daemon=True)
        self._ticker.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._ticker is not None:
            self._ticker.join()
            self._ticker = None

    def _tick(self) -> None:
        while not self._stopping.wait(self.interval):
            with self._lock:
                running = [task for task in self.tasks if task.started and not task.finished and task.total != 0]
            for task in running:
                self.console.print(self.line(task), markup=False, highlight=False)

    def update(self, task_id, **kwargs) -> None:
        super().update(task_id, **kwargs)
        self._report_finished(task_id)

    def advance(self, task_id, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._report_finished(task_id)

    def reset(self, task_id, **kwargs) -> None:
        super().reset(task_id, **kwargs)
        self._reported.discard(task_id)
        self._report_finished(task_id)

    def _report_finished(self, task_id) -> None:
        task = self._tasks[task_id]
        if task.finished and task.total != 0 and task_id not in self._reported:
            self._reported.add(task_id)
            self.console.print(self.line(task), markup=False, highlight=False)

    def line(self, task) -> str:
        """``APGD-CE [vote] 384/1000 12.3 img/s elapsed 0:01:02 left 0:02:00``: the columns, bars left out."""
        parts = []
        for column in self.columns:
            if isinstance(column, BarColumn):
                continue
            text = _plain(column.render(task)).strip()
            if isinstance(column, TimeElapsedColumn):
                text = f"elapsed {text}"
            elif isinstance(column, TimeLeft):
                text = "done" if task.finished else f"left {text}"
            if text:
                parts.append(text)
        return " ".join(parts)


def progress_display(*columns: ProgressColumn, enabled: bool = True, console: Console | None = None) -> Progress:
    """Rich progress bars on stderr when it is a terminal; periodic plain lines when it is not."""
    console = console or Console(stderr=True, soft_wrap=True)
    if enabled and not console.is_terminal:
        return _LineProgress(*columns, console=console, interval=log_interval())
    return Progress(*columns, console=console, disable=not enabled)
