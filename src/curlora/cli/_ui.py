"""What every command shares: the console, option parsing helpers, progress reporters and library quieting.

Decided once per process: in a terminal, live rich progress bars; otherwise (CI logs, nohup, pipes) one plain line
per finished stage and tables at their full width instead of folded to 80 columns.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from curlora.errors import CurloraError

INTERACTIVE = Console().is_terminal
# not a terminal: never fold a table or a line (a log is read later, at any width)
console = Console() if INTERACTIVE else Console(width=10_000, soft_wrap=True)


def print_error(err: CurloraError) -> None:
    # soft_wrap: one line however long (no wrapping at the terminal width); escape: messages may hold [brackets]
    Console(stderr=True).print(f"[bold red]error:[/] {escape(str(err))}", soft_wrap=True, highlight=False)


def csv(value: str | None) -> list[str]:
    """Comma-separated values, stripped, empty items dropped."""
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


def ints(value: str | None, what: str) -> list[int] | None:
    try:
        return [int(v) for v in csv(value)] if value else None
    except ValueError:
        raise CurloraError(f"{what} must be comma-separated integers, got {value!r}") from None


def quiet_libraries() -> None:
    """Our own progress says what runs; transformers' loading bars and deprecation notices add only noise."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)


def stage_line(s: dict) -> str:
    accs = "  ".join(f"{t}={a:.3f}" for t, a in zip(s["tasks"], s["acc"], strict=True))
    return (
        f"{s['label']} seed {s['seed']} after {s['task']}: {accs}  "
        f"(loss {s['train_loss']:.3f}, {s['steps']} steps, peak lr {s['peak_lr']:.2e}, "
        f"train {s['train_s']:.0f}s, eval {s['eval_s']:.0f}s)"
    )


class RichReporter:
    """A recipe Reporter (curlora.recipes.common.Reporter): progress bars with ETA in a terminal; elsewhere one
    plain line per finished loop and per finished stage."""

    def __init__(self, *, stop_between_bars: bool = False) -> None:
        self.progress = Progress(
            TextColumn("[bold blue]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
            disable=not INTERACTIVE,
        )
        self.task_id = None
        self.stop_between_bars = stop_between_bars  # lets a library's own bars (the Trainer's) print cleanly
        self._started: tuple[str, float] | None = None

    def bar(self, description: str, total: int) -> None:
        self.progress.start()
        self.task_id = self.progress.add_task(description, total=total)
        self._started = (description, time.perf_counter())

    def advance(self, n: int = 1) -> None:
        if self.task_id is not None:
            self.progress.advance(self.task_id, n)

    def end_bar(self) -> None:
        if self.task_id is not None:
            self.progress.remove_task(self.task_id)
            self.task_id = None
        if not INTERACTIVE and self._started is not None:
            what, t0 = self._started
            console.print(f"done: {what} ({time.perf_counter() - t0:.0f}s)", highlight=False)
        self._started = None
        if self.stop_between_bars:
            self.progress.stop()

    def stage(self, s: dict) -> None:
        console.print("[green]✓[/] " + escape(stage_line(s)), highlight=False)

    def note(self, message: str) -> None:
        console.print(f"[dim]{escape(message)}[/]")

    def close(self) -> None:
        self.progress.stop()
