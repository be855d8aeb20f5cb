"""One live progress line per run: step/total, reward, last validation score, ETA.

A rich progress bar in a terminal; in logs and CI (not a terminal, or quiet) a plain line
every ~5% of the run so the output stays short and greppable.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.text import Text
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class RunProgress:
    def __init__(self, total: int, start: int, console: Console, quiet: bool = False, label: str = "train"):
        self.total, self.console, self.label = total, console, label
        self.live = console.is_terminal and not quiet
        self.quiet = quiet
        self.every = max(1, total // 20)
        self.t0, self.start = time.monotonic(), start
        if self.live:
            self.bar = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console, transient=False,
            )
            self.task = self.bar.add_task(label, total=total, completed=start, info="")
            self.bar.start()

    def update(self, step: int, info: str) -> None:
        if self.live:
            self.bar.update(self.task, completed=step, info=info)
        elif step % self.every == 0 or step == self.total:  # logs, CI and --quiet: ~20 lines per run
            done = step - self.start
            eta = (time.monotonic() - self.t0) / max(done, 1) * (self.total - step)
            self.console.print(f"{self.label} step {step}/{self.total} {info} eta {eta:.0f}s", highlight=False)

    def warn(self, text: str) -> None:
        """Printed above the live bar (never swallowed by quiet mode: warnings are the point of logs)."""
        self.console.print(Text(text, style="bold yellow"))

    def close(self) -> None:
        if self.live:
            self.bar.stop()
