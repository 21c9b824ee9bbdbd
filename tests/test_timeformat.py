"""The strptime directives ingest accepts are exactly those DuckDB's strptime reads."""

from __future__ import annotations

import string

import duckdb
import pytest

from features import timeformat as tf

ACCEPTED = sorted(tf.DATE_DIRECTIVES | tf.TIME_OF_DAY_DIRECTIVES | tf.ZONE_DIRECTIVES)


def duckdb_reads(directive: str) -> bool:
    try:
        duckdb.sql(f"SELECT TRY_STRPTIME('x', '%{directive}')").fetchall()
    except duckdb.InvalidInputException:
        return False
    return True


def test_duckdb_reads_every_accepted_directive() -> None:
    assert [d for d in ACCEPTED if not duckdb_reads(d)] == []


def test_every_directive_duckdb_reads_is_accepted() -> None:
    candidates = [flag + letter for letter in string.ascii_letters for flag in ("", "-")]
    assert [d for d in candidates if duckdb_reads(d) and d not in ACCEPTED] == []


@pytest.mark.parametrize(
    ("fmt", "time_of_day"),
    [
        ("%Y-%m-%d", False),
        ("%Y%m%d", False),
        ("%d/%m/%Y", False),
        ("%x", False),
        ("%Y-%m-%d %H:%M:%S", True),
        ("%d.%m.%Y %-I %p", True),
        ("%Y-%m-%dT%T", True),
        ("%c", True),
        ("100%% %Y", False),
    ],
)
def test_time_of_day(fmt: str, time_of_day: bool) -> None:
    assert tf.has_time_of_day(fmt) is time_of_day
    assert tf.format_problem(fmt) is None


def test_directives_are_split_with_their_flag() -> None:
    assert tf.directives("%Y-%-m-%d %% %") == ["Y", "-m", "d", "%", ""]
