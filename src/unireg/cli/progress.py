"""Per-stage progress of one registration on stdout (warnings and errors go to stderr).

On a terminal: a rich display, one line per stage (spinner while it runs, its time once done).
Otherwise (a pipe, a log file, a batch scheduler): one parseable logfmt line per stage start,
``stage=affine t=1.23`` (``t``: seconds since the command started; names with spaces are quoted,
``stage="refine 4 mm" t=9.80``), and ``stage=done t=...`` at the end.

The pipeline calls the object with the name of each stage as it STARTS
(``register_images(..., progress=...)``); the CLI adds its own stages (``write``).
"""

from __future__ import annotations

import sys
import time

__all__ = ["StageProgress", "STAGE_LABELS"]

STAGE_LABELS = {
    "preprocess": "preprocessing (working grid)",
    "affine": "affine pre-alignment",
    "features": "feature extraction",
    "network": "network",
    "refine": "instance optimisation",
    "integrate": "integrating the velocity field",
    "qc": "failure score",
    "resample": "resampling onto the fixed grid",
    "write": "writing outputs",
}


def _logfmt(v: str) -> str:
    return f'"{v}"' if any(c in v for c in ' ="') else v


class StageProgress:
    """Callable ``progress(stage)``; use as a context manager around the run.

    ``warning``: a line printed on stderr once the first stage after ``preprocess`` starts (i.e.
    once the inputs passed every check, so that a bad input still gives exactly one line).
    """

    def __init__(self, stream=None, rich: bool | None = None, enabled: bool = True):
        self.stream = stream if stream is not None else sys.stdout
        self.rich = (hasattr(self.stream, "isatty") and self.stream.isatty()) if rich is None else rich
        self.enabled = enabled
        self.t0 = time.perf_counter()
        self.current: str | None = None
        self.done: list[str] = []
        self._bar = None
        self._task = None
        self._task_t0 = 0.0
        self.warning: str | None = None  # printed once, when the first stage starts

    def __enter__(self):
        self.t0 = time.perf_counter()
        if self.enabled and self.rich:
            from rich.console import Console
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self._bar = Progress(SpinnerColumn(finished_text="[green]✓"), TextColumn("{task.description}"),
                                 TimeElapsedColumn(), console=Console(file=self.stream), transient=False)
            self._bar.start()
        return self

    def _finish_current(self) -> None:
        if self.current is None:
            return
        self.done.append(self.current)
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, total=1, completed=1)
            self._bar.stop_task(self._task)

    def __call__(self, stage: str) -> None:
        if self.warning and stage != "preprocess":  # after the inputs passed every check
            sys.stderr.write(self.warning + "\n")
            sys.stderr.flush()
            self.warning = None
        self._finish_current()
        self.current = stage
        if not self.enabled:
            return
        if self._bar is not None:
            base = stage.split(" ")[0]
            label = STAGE_LABELS.get(stage) or (f"{STAGE_LABELS[base]} ({stage[len(base) + 1:]})"
                                                  if base in STAGE_LABELS and stage != base else stage)
            self._task = self._bar.add_task(label, total=None)
        else:
            self.stream.write(f"stage={_logfmt(stage)} t={time.perf_counter() - self.t0:.2f}\n")
            self.stream.flush()

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self._finish_current()
            self.current = None
        if self._bar is not None:
            self._bar.stop()
        elif self.enabled and exc_type is None:
            self.stream.write(f"stage=done t={time.perf_counter() - self.t0:.2f}\n")
            self.stream.flush()
        return False
