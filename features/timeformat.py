"""What an ``ingest.timestamp_format`` says: its strptime directives, and whether it has a time of day.

The format is handed to DuckDB's ``strptime``, whose directives are listed at
https://duckdb.org/docs/sql/functions/dateformat (checked against DuckDB 1.5). It knows fewer than C's or
Python's, and one it does not know fails the whole validation query, so the format is checked when params.yaml
is loaded and the error names the directive. One more is read here: ``%s`` as the whole format, seconds since
1970-01-01 UTC (e.g. ``1578182400`` or ``1578182400.25``).
"""

from __future__ import annotations

# Directives without the leading %; a "-" asks for a number without padding ("%-d" reads "5" and "05").
DATE_DIRECTIVES = frozenset(
    {"a", "A", "b", "B", "h", "d", "-d", "j", "-j", "m", "-m", "u", "U", "V", "w", "W", "x", "y", "-y", "Y", "G"}
)
TIME_OF_DAY_DIRECTIVES = frozenset({"c", "f", "g", "H", "-H", "I", "-I", "M", "-M", "n", "p", "S", "-S", "T", "X"})
ZONE_DIRECTIVES = frozenset({"z", "Z"})
EPOCH_SECONDS = "%s"
DOCS = "https://duckdb.org/docs/sql/functions/dateformat"

# Directives of C's or Python's strptime that DuckDB's lacks, and how to write them for DuckDB.
SPELLED_OUT = {
    "F": "%Y-%m-%d",
    "D": "%m/%d/%y",
    "R": "%H:%M",
    "r": "%I:%M:%S %p",
    "e": "%-d",
    "k": "%-H",
    "l": "%-I",
}


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


def format_problem(fmt: str) -> str | None:
    """What keeps DuckDB's strptime (or ingest) from reading ``fmt``, in words; None if nothing does."""
    if fmt == EPOCH_SECONDS:
        return None
    found = directives(fmt)
    if not found:
        return "has no % directive (strptime writes a year as %Y, a day as %d): e.g. '%Y-%m-%d %H:%M:%S'"
    for d in found:
        if d in ("", "-"):
            return "ends with a lone %; write %% for a percent sign"
        if d == "s":
            return "%s (seconds since 1970-01-01 UTC) is read only as the whole format: set it to '%s'"
        if d == "Q":
            return (
                "%Q (milliseconds since 1970) is not read; store the column as a Parquet timestamp, or as seconds "
                "with timestamp_format '%s'"
            )
        if d not in DATE_DIRECTIVES | TIME_OF_DAY_DIRECTIVES | ZONE_DIRECTIVES | {"%"}:
            instead = f" (write {SPELLED_OUT[d.lstrip('-')]})" if d.lstrip("-") in SPELLED_OUT else ""
            return f"%{d} is not a directive DuckDB's strptime reads{instead}; see {DOCS}"
    if has_zone(fmt) and not has_time_of_day(fmt):
        return (
            "has a zone (%z or %Z) but no time of day; a date is kept as that day whatever the zone, so remove "
            "the zone, or add the time"
        )
    return None
