"""What a long command is doing, on stderr.

    log = Progress(quiet=args.quiet)
    log("capture")              # a stage begins (and the previous one ends)
    log.line("step 10/200 ...") # a line that stays (a result along the way)
    log.close()                 # the last stage ends

On a terminal, the running stage shows as a live line (rich: spinner, stage, elapsed
time) and every finished stage leaves one line with its duration: `  capture  1.23 s`.
When stderr is not a terminal (a pipe, a log file, CI), stages print nothing and
`line()` still prints, so a log keeps the results and none of the animation. `quiet`
silences both. Every Progress a command opens is closed by the CLI when the command
ends (`close_all`), error or not.
"""
from __future__ import annotations

import sys
import time

_OPEN: list["Progress"] = []


class Progress:
    def __init__(self, quiet: bool = False, stream=None):
        self.quiet = quiet
        self.stream = stream if stream is not None else sys.stderr
        self.live = not quiet and _is_terminal(self.stream)
        self.stage: str | None = None
        self.t_stage = time.perf_counter()
        self._bar = None
        _OPEN.append(self)

    def __call__(self, stage: str) -> None:
        """Stage `stage` begins; the one before it (if any) ends."""
        self._end_stage()
        self.stage, self.t_stage = stage, time.perf_counter()
        if self.live:
            self._display().update(self._task, description=stage)

    def line(self, text: str) -> None:
        """A line that stays: printed above the live line on a terminal, plainly otherwise."""
        if self.quiet:
            return
        if self._bar is not None:
            self._bar.console.print(f"  {text}", highlight=False, markup=False)
        else:
            print(f"  {text}", file=self.stream)

    def close(self) -> None:
        self._end_stage()
        self.stage = None
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        if self in _OPEN:
            _OPEN.remove(self)

    def _end_stage(self) -> None:
        if self.stage is not None and self.live:
            self.line(f"{self.stage:<52} {time.perf_counter() - self.t_stage:7.2f} s")

    def _display(self):
        if self._bar is None:
            from rich.console import Console
            from rich.progress import Progress as Bar
            from rich.progress import SpinnerColumn, TextColumn, TimeElapsedColumn
            self._bar = Bar(SpinnerColumn(), TextColumn("{task.description}"),
                            TimeElapsedColumn(), transient=True,
                            console=Console(file=self.stream, force_terminal=True))
            self._bar.start()
            self._task = self._bar.add_task("", total=None)
        else:
            self._bar.reset(self._task)
        return self._bar


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def close_all() -> None:
    """End every open Progress (the CLI calls this when a command returns or fails)."""
    for p in list(_OPEN):
        p.close()
