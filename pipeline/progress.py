"""Progress of the long steps on a terminal: one self-updating line with rows (or items) done and the rate.

Shown only when standard error is a terminal and ``CI`` is not set: logs, DVC's captured output and CI stay
clean. Nothing here changes what a step computes.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, TextIO, TypeVar

T = TypeVar("T")

MIN_INTERVAL_S = 0.5


def enabled(stream: TextIO | None = None) -> bool:
    """True when progress lines would reach a person: a terminal, outside CI."""
    out = stream if stream is not None else sys.stderr
    ci = os.environ.get("CI", "").strip().lower() not in ("", "0", "false")
    return not ci and hasattr(out, "isatty") and out.isatty()


class Progress:
    """``with Progress("features", total=n, unit="rows") as p: ... p.advance(k)``.

    Redraws ``label: done / total unit (pct), rate unit/s, ETA`` at most every half second, and a final line with
    the total time when the block ends. ``total`` may be None when it is not known in advance.
    """

    def __init__(
        self,
        label: str,
        *,
        total: int | None = None,
        unit: str = "rows",
        stream: TextIO | None = None,
        show: bool | None = None,
    ) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.show = enabled(self.stream) if show is None else show
        self.done = 0
        self._start = time.perf_counter()
        self._drawn = 0.0

    def __enter__(self) -> Progress:
        self._start = time.perf_counter()
        return self

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if self.show and now - self._drawn >= MIN_INTERVAL_S:
            self._drawn = now
            self._draw(now, end="")

    def each(self, items: Iterable[T], size: Callable[[T], int] | None = None) -> Iterator[T]:
        """Yield ``items``, advancing by ``size(item)`` (default 1) after each."""
        for item in items:
            yield item
            self.advance(size(item) if size is not None else 1)

    def batches(self, batches: Iterable[Any]) -> Iterator[Any]:
        """Yield Arrow record batches (or tables), advancing by their rows."""
        return self.each(batches, lambda b: int(b.num_rows))

    def line(self, now: float, *, final: bool = False) -> str:
        elapsed = max(now - self._start, 1e-9)
        rate = self.done / elapsed
        text = f"{self.label}: {self.done:,}"
        if self.total:
            text += f" / {self.total:,} {self.unit} ({100 * self.done / self.total:.0f}%)"
        else:
            text += f" {self.unit}"
        text += f", {rate:,.0f} {self.unit}/s"
        if self.total and rate > 0 and self.done < self.total and not final:
            text += f", {(self.total - self.done) / rate:.0f} s left"
        return text

    def _draw(self, now: float, end: str) -> None:
        self.stream.write("\r\x1b[2K" + self.line(now) + end)
        self.stream.flush()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.show and self.done and kind is None:
            now = time.perf_counter()
            self.stream.write("\r\x1b[2K" + self.line(now, final=True) + f" in {now - self._start:.1f} s\n")
            self.stream.flush()
