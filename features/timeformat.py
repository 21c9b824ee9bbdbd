"""What an ``ingest.timestamp_format`` says: its strptime directives, and whether it has a time of day.

The format is handed to DuckDB's ``strptime``, whose directives are listed at
https://duckdb.org/docs/sql/functions/dateformat (checked against DuckDB 1.5).
"""

from __future__ import annotations

# Directives without the leading %; a "-" asks for a number without padding ("%-d" reads "5" and "05").
DATE_DIRECTIVES = frozenset(
    {"a", "A", "b", "B", "h", "d", "-d", "j", "-j", "m", "-m", "u", "U", "V", "w", "W", "x", "y", "-y", "Y", "G"}
)
TIME_OF_DAY_DIRECTIVES = frozenset({"c", "f", "g", "H", "-H", "I", "-I", "M", "-M", "n", "p", "S", "-S", "T", "X"})
ZONE_DIRECTIVES = frozenset({"z", "Z"})


def directives(fmt: str) -> list[str]:
    """The directives of ``fmt`` in order, without the %: ``['Y', 'm', '-d']``; ``%%`` (a literal %) is ``'%'``."""
    found = []
    i = fmt.find("%")
    while i != -1:
        end = i + 2 if fmt[i + 1 : i + 2] != "-" else i + 3
        found.append(fmt[i + 1 : end])
        i = fmt.find("%", end)
    return found


def has_time_of_day(fmt: str) -> bool:
    """Whether values in ``fmt`` carry a time of day; without one a value is a calendar date."""
    return any(d in TIME_OF_DAY_DIRECTIVES for d in directives(fmt))


def has_zone(fmt: str) -> bool:
    """Whether values in ``fmt`` carry their own UTC offset (%z) or zone name (%Z)."""
    return any(d in ZONE_DIRECTIVES for d in directives(fmt))
