"""Progress lines: on a terminal only, never in CI or in captured output, and with the rate they claim."""

from __future__ import annotations

import io

import pytest

from pipeline import progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_shown_on_a_terminal_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    assert progress.enabled(Terminal())
    assert not progress.enabled(io.StringIO())  # a pipe or a file: DVC's log, a CI job
    monkeypatch.setenv("CI", "true")
    assert not progress.enabled(Terminal())


def test_nothing_is_written_when_not_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    out = io.StringIO()
    with progress.Progress("features", total=10, stream=out) as shown:
        assert list(shown.each(range(10))) == list(range(10))
    assert shown.done == 10 and out.getvalue() == ""


def test_lines_count_rows_and_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([100.0, 100.0, 102.0, 104.0, 104.0])
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    out = Terminal()
    with progress.Progress("churn: scored", total=400, unit="rows", stream=out, show=True) as shown:
        shown.advance(100)  # t = 102: 100 rows in 2 s
        shown.advance(100)  # t = 104: drawn again (0.5 s passed), 200 rows in 4 s
    text = out.getvalue()
    assert "churn: scored: 100 / 400 rows (25%), 50 rows/s, 6 s left" in text
    assert "churn: scored: 200 / 400 rows (50%), 50 rows/s, 4 s left" in text
    assert text.endswith(" in 4.0 s\n")


def test_a_failing_step_leaves_no_closing_line(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([0.0, 0.0, 1.0])
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    out = Terminal()
    with pytest.raises(RuntimeError), progress.Progress("clv: refits", stream=out, show=True) as shown:
        shown.advance(3)
        raise RuntimeError("fit failed")
    assert " in " not in out.getvalue() and "clv: refits: 3 rows" in out.getvalue()
