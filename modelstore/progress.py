"""Progress for long copies and hashes: a bar on a terminal, plain lines otherwise.

Why both: an operator at a terminal wants a live bar; a Job's log wants a
few greppable lines (every 10%), not thousands of carriage returns.
"""

from __future__ import annotations

import sys
import threading
import time


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} TB"


class ProgressPrinter:
    """Callable ``(phase, done, total)`` that renders to ``stream``."""

    def __init__(self, stream=None, tty: bool | None = None, width: int = 30):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.width = width
        self._lock = threading.Lock()
        self._last_step: dict[str, int] = {}
        self._last_draw = 0.0
        self._start: dict[str, float] = {}

    def __call__(self, phase: str, done: int, total: int) -> None:
        with self._lock:
            start = self._start.setdefault(phase, time.monotonic())
            frac = done / total if total else 1.0
            rate = done / max(time.monotonic() - start, 1e-9)
            if self.tty:
                now = time.monotonic()
                if done < total and now - self._last_draw < 0.1:
                    return
                self._last_draw = now
                fill = int(frac * self.width)
                bar = "#" * fill + "." * (self.width - fill)
                end = "\n" if done >= total else ""
                self.stream.write(f"\r{phase:5s} [{bar}] {frac:6.1%} {_human(done)}/{_human(total)} {_human(rate)}/s{end}")
                self.stream.flush()
            else:
                step = int(frac * 10)
                if step > self._last_step.get(phase, -1):
                    self._last_step[phase] = step
                    self.stream.write(f"{phase}: {step * 10}% ({_human(done)} of {_human(total)}, {_human(rate)}/s)\n")
                    self.stream.flush()
