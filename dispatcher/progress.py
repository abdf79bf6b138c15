"""Progress of a long operator command: a bar on a terminal, JSON lines otherwise.

    progress = Progress("dlq_retry", total=120_000, unit="deliveries")
    for batch in batches:
        ...                       # commit the batch first
        progress.add(len(batch))  # then count it
    progress.finish()

On a TTY (stderr): one line redrawn at most ten times a second,
``dlq retry  [########------------]  48,000/120,000  40%  9,210/s  ETA 0:07``.
Callers show progress only for work of more than one batch. Otherwise one JSON
object per line, at the start, at most every ``every`` seconds, and at the end:
``{"event": "progress", "operation", "unit", "done", "total", "percent", "rate",
"eta_seconds", "elapsed_seconds", "state", "timestamp"}`` with state running, finished,
interrupted (Ctrl-C) or failed. The counts are of work committed: after Ctrl-C, the same
command continues with what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TextIO

import orjson

BAR = 24
REDRAW = 0.1  # seconds between two redraws of the bar


class Progress:
    def __init__(
        self,
        operation: str,
        total: int | None,
        *,
        unit: str = "rows",
        stream: TextIO | None = None,
        tty: bool | None = None,
        every: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.operation = operation
        self.total = total
        self.unit = unit
        self.done = 0
        self._stream = stream or sys.stderr
        self._tty = self._stream.isatty() if tty is None else tty
        self._every = REDRAW if self._tty else every
        self._clock = clock
        self._started = clock()
        self._shown = -1.0e9
        self._finished = False
        self._emit("running", force=True)

    # -- figures ---------------------------------------------------------------------
    @property
    def elapsed(self) -> float:
        return max(self._clock() - self._started, 0.0)

    @property
    def rate(self) -> float | None:
        """Units per second so far, None before a measurable time has passed."""
        elapsed = self.elapsed
        return self.done / elapsed if elapsed > 0.05 else None

    @property
    def eta(self) -> float | None:
        """Seconds left at the rate so far; None when the total or the rate is unknown."""
        rate = self.rate
        if self.total is None or not rate:
            return None
        return max(self.total - self.done, 0) / rate

    # -- updates ---------------------------------------------------------------------
    def add(self, n: int) -> None:
        self.done += n
        self._emit("running")

    def finish(self, state: str = "finished") -> None:
        """``state``: finished, interrupted (Ctrl-C) or failed (an error)."""
        if self._finished:
            return
        self._finished = True
        self._emit(state, force=True)
        if self._tty:
            self._stream.write("\n")
            self._stream.flush()

    # -- output ----------------------------------------------------------------------
    def _emit(self, state: str, *, force: bool = False) -> None:
        now = self._clock()
        if not force and now - self._shown < self._every:
            return
        self._shown = now
        if self._tty:
            self._stream.write("\r" + self.bar(state) + "\x1b[K")
        else:
            self._stream.write(self.line(state) + "\n")
        self._stream.flush()

    def line(self, state: str) -> str:
        rate, eta = self.rate, self.eta
        record = {
            "event": "progress",
            "operation": self.operation,
            "unit": self.unit,
            "done": self.done,
            "total": self.total,
            "percent": self._percent(),
            "rate": None if rate is None else round(rate, 1),
            "eta_seconds": None if eta is None else round(eta, 1),
            "elapsed_seconds": round(self.elapsed, 3),
            "state": state,
            "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"),
        }
        return orjson.dumps(record).decode()

    def bar(self, state: str) -> str:
        label = self.operation.replace("_", " ")
        percent = self._percent()
        if self.total:
            filled = round(BAR * min(self.done / self.total, 1.0))
            parts = [f"[{'#' * filled}{'-' * (BAR - filled)}]", f"{self.done:,}/{self.total:,}"]
            parts.append(f"{percent:.0f}%")
        else:
            parts = [f"{self.done:,} {self.unit}"]
        rate = self.rate
        parts.append(f"{rate:,.0f}/s" if rate is not None else "-/s")
        if state == "running":
            eta = self.eta
            parts.append(f"ETA {_clock_text(eta)}" if eta is not None else "ETA -")
        else:
            parts.append(f"{state} in {_clock_text(self.elapsed)}")
        return f"{label}  " + "  ".join(parts)

    def _percent(self) -> float | None:
        if not self.total:
            return None
        return round(100.0 * min(self.done / self.total, 1.0), 1)


@contextlib.contextmanager
def finishing(meter: Progress | None) -> Iterator[None]:
    """Finish ``meter`` when the block ends: finished, interrupted (Ctrl-C, cancelled) or
    failed (any other exception, which goes on)."""
    try:
        yield
    except (KeyboardInterrupt, asyncio.CancelledError):
        if meter is not None:
            meter.finish("interrupted")
        raise
    except BaseException:
        if meter is not None:
            meter.finish("failed")
        raise
    if meter is not None:
        meter.finish()


def _clock_text(seconds: float) -> str:
    s = round(seconds)
    hours, rest = divmod(s, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
