"""Validation of a raw transaction log: each input row is either kept, cleaned, or quarantined with a reason.

The rules run as one DuckDB query over the raw rows, already loaded into a DuckDB table (``RAW``) by the ingest stage,
so a log of tens of millions of lines is checked without a Python loop, and with the connection's memory limit
DuckDB spills to disk instead of holding the log in memory (duplicate detection included). The query is in two
parts so that an engine which splits the log can run it: the checks a row gets on its own (``row_checks``,
``per_row_sql``), run on any slice, and the duplicate ranking and final reason over the whole (``reason_sql``,
plain SQL that Spark reads too). Rows are never lost:
rows in = rows kept + rows quarantined, and every quarantined row keeps its original values as text and its
position in the source.

Reasons are checked in the order of ``schemas.QUARANTINE_REASONS``; a row gets the first one that applies:

1. ``missing_customer_id`` — empty, whitespace (any Unicode whitespace, or invisible characters such as a
   zero-width space or a byte order mark) or a null marker such as ``NaN``;
2. ``invalid_customer_id`` — has a control character (NUL, tab, escape, DEL, ...) in it, after trimming;
3. ``unparseable_timestamp`` — does not match the configured format;
4. ``timestamp_out_of_range`` — before 1970-01-01 or more than a day after the moment of ingest (a clock error);
5. ``non_numeric_amount`` — amount (or quantity / unit price) missing, not a number, or infinite;
6. ``amount_out_of_range`` — spend beyond +/- ``max_abs_amount`` (a typo, a test order, or an overflow of
   quantity x unit price);
7. ``duplicate`` — a repeat of an earlier line on every ``duplicate_key`` column (only when a key is set: without
   an order or line id, two identical lines may be two real purchases). Values are compared as the pipeline reads
   them: text trimmed, the customer id cleaned, the timestamp parsed, so "100.0" and "100 " repeat "100";
8. ``cancellation`` — a return (order id with the cancellation prefix, or a negative amount) when
   ``returns == "drop"``;
9. ``zero_amount`` — a zero spend when ``zero_amount == "quarantine"``.

Text values are trimmed of whitespace and invisible characters at both ends and put in Unicode's composed form
(NFC), so "José" typed with a composed é and with e + a combining accent is one customer; invisible characters
inside a value are kept (a zero-width joiner is part of some scripts' spelling).

Timestamps: with ``%z`` (or a zone name, ``%Z``) in the format, a value with a UTC offset is converted from it and
a value without one is read in ``timezone``, so a log mixing zones lands on one UTC clock. ``%s`` as the whole
format reads seconds since 1970-01-01 UTC, an instant in no zone. A date without a time of day (a format with no
time directive such as ``%Y-%m-%d``, or a Parquet ``date`` column) is not a moment in any zone either: it is stored
as midnight UTC of that date, whatever ``timezone``, so a purchase on 2020-01-05 counts on the 5th.

Where clocks change, a wall time read in ``timezone`` may happen twice (clocks go back) or never (they go
forward). DuckDB's rule (ICU's) reads the first as the later of its two moments, and the second with the UTC
offset from before the change (02:30 at a 02:00->03:00 change is 03:30 on the new clock). The rows are kept, and
counted in ``local_times_ambiguous`` and ``local_times_nonexistent``.

Amounts written with a thousands separator ("1,234.50") are read when ``thousands_separator`` names it, and
quarantined as non-numeric otherwise.

Kept returns (``returns == "net"``) carry a negative amount: in the cleaned table a negative amount *is* a return.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import re
from collections.abc import Sequence
from typing import Literal

import duckdb
import pyarrow as pa

from features import schemas as s
from features.errors import InputError
from features.timeformat import EPOCH_SECONDS, has_time_of_day, has_zone

# Names the validation query gives its own columns; a source column may not be called so.
INTERNAL_COLUMNS = (
    "_cid",
    "_instant",
    "_wall_time",
    "_ts",
    "_amount",
    "_order",
    "_cancelled",
    "_early",
    "_valid",
    "_dup",
    "_reason",
)
# Unicode's White_Space characters, and the format characters that show as nothing (soft hyphen, Mongolian vowel
# separator, zero-width space and joiners, direction marks and isolates, word joiner, invisible operators, byte
# order mark): copied from a spreadsheet or a web page they cling to values, and no id or number is made of them.
WHITESPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)
INVISIBLE = (
    "\xad\u180e\u200b\u200c\u200d\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2060\u2061\u2062\u2063\u2064"
    "\u2066\u2067\u2068\u2069\u206a\u206b\u206c\u206d\u206e\u206f\ufeff"
)
# C0 and C1 control characters (NUL, tab, escape, DEL, NEL...): inside an id they are a broken export, not a name.
CONTROL_CHARACTERS = "[\\x00-\\x1F\\x7F-\\x9F]"
NULL_MARKERS = ("", "nan", "none", "null", "na", "n/a", "<na>")
# The tables of the connection ``classify`` works in: the raw rows it reads, and the rows with their reasons.
RAW = "raw"
CLASSIFIED = "classified"


@dataclasses.dataclass(frozen=True)
class CleaningRules:
    """What the source columns mean and how to treat returns, zero spend and duplicates."""

    customer_id: str
    timestamp: str
    amount: str | None
    quantity: str | None
    unit_price: str | None
    order_id: str | None
    timestamp_format: str
    timezone: str
    duplicate_key: tuple[str, ...]
    cancellation_prefix: str | None
    returns: Literal["net", "drop"]
    zero_amount: Literal["keep", "quarantine"]
    max_abs_amount: float
    thousands_separator: str | None

    def mapped_columns(self) -> list[str]:
        names = [self.customer_id, self.timestamp, self.amount, self.quantity, self.unit_price, self.order_id]
        return list(dict.fromkeys(n for n in names if n is not None))


@dataclasses.dataclass(frozen=True)
class Classified:
    """Every source row with its reason (NULL for a kept row), in the table ``CLASSIFIED`` of a DuckDB connection,
    and the counts over it. ``kept_sql`` and ``quarantined_sql`` read the two outputs from it in source order."""

    rows_in: int
    quarantined_by_reason: dict[str, int]
    local_times_ambiguous: int  # kept rows whose wall-clock time happened twice (clocks went back)
    local_times_nonexistent: int  # and never (clocks went forward)
    kept_sql: str
    quarantined_sql: str

    @property
    def rows_quarantined(self) -> int:
        return sum(self.quarantined_by_reason.values())

    @property
    def rows_kept(self) -> int:
        return self.rows_in - self.rows_quarantined


def _q(name: str) -> str:
    """Quote an identifier for DuckDB."""
    return '"' + name.replace('"', '""') + '"'


def _lit(text: str) -> str:
    """Quote a string literal for DuckDB."""
    return "'" + text.replace("'", "''") + "'"


def _text(col: str) -> str:
    """The column as text in Unicode's composed form (NFC), without surrounding whitespace or invisible characters;
    '' is NULL.

    Text of printable ASCII only (nearly every value) can have nothing but spaces to trim and is already NFC, so it
    skips the slower trim over the long list of characters (5x the cost).
    """
    text = f"CAST({_q(col)} AS VARCHAR)"
    unicode = f"nfc_normalize(TRIM({text}, {_lit(WHITESPACE + INVISIBLE)}))"
    return f"NULLIF(CASE WHEN regexp_matches({text}, '[^ -~]') THEN {unicode} ELSE TRIM({text}) END, '')"


def _number(col: str, arrow_type: pa.DataType, thousands_separator: str | None) -> str:
    if pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type):
        value = f"CAST({_q(col)} AS DOUBLE)"
    elif thousands_separator is not None:
        # only digits grouped in threes lose their separator: "12,34" (a decimal comma?) stays unreadable
        sep = re.escape(thousands_separator)
        grouped = _lit(rf"^[+-]?\d{{1,3}}({sep}\d{{3}})+(\.\d*)?$")
        text = _text(col)
        value = (
            f"(CASE WHEN NOT contains({text}, {_lit(thousands_separator)}) THEN TRY_CAST({text} AS DOUBLE) "
            f"WHEN regexp_full_match({text}, {grouped}) "
            f"THEN TRY_CAST(replace({text}, {_lit(thousands_separator)}, '') AS DOUBLE) END)"
        )
    else:
        value = f"TRY_CAST({_text(col)} AS DOUBLE)"
    # TRY_CAST accepts 'inf' and 'nan'; neither is a spend.
    return f"(CASE WHEN isfinite({value}) THEN {value} END)"


NO_INSTANT = "CAST(NULL AS TIMESTAMPTZ)"
NO_WALL_TIME = "CAST(NULL AS TIMESTAMP)"


@dataclasses.dataclass(frozen=True)
class _TimestampSql:
    """How a row's moment is read: an instant the value fixes itself, or else a wall-clock time in the zone."""

    instant: str  # TIMESTAMPTZ: from an offset or zone in the value, epoch seconds, or a date (midnight UTC)
    wall_time: str  # TIMESTAMP, read in ingest.timezone; may refer to the column _instant


def _timestamp(col: str, arrow_type: pa.DataType, fmt: str) -> _TimestampSql:
    if pa.types.is_timestamp(arrow_type) and arrow_type.tz is not None:
        return _TimestampSql(f"CAST({_q(col)} AS TIMESTAMPTZ)", NO_WALL_TIME)
    # A calendar date has no time of day, so no zone to convert from: it is stored as that day at midnight UTC,
    # as the features count purchases on the UTC date. Read as midnight in a zone east of UTC, it would move a day back.
    if pa.types.is_date(arrow_type):
        return _TimestampSql(f"timezone('UTC', CAST({_q(col)} AS TIMESTAMP))", NO_WALL_TIME)
    if pa.types.is_timestamp(arrow_type):
        return _TimestampSql(NO_INSTANT, f"CAST({_q(col)} AS TIMESTAMP)")
    if fmt == EPOCH_SECONDS:  # an instant, so no zone applies; outside years 1..9999 to_timestamp would raise
        numeric = pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type)
        seconds = f"CAST({_q(col)} AS DOUBLE)" if numeric else f"TRY_CAST({_text(col)} AS DOUBLE)"
        return _TimestampSql(
            f"(CASE WHEN {seconds} BETWEEN -62135596800 AND 253402300799 THEN to_timestamp({seconds}) END)",
            NO_WALL_TIME,
        )
    if not has_time_of_day(fmt):  # a zone with a date only is refused by the config
        return _TimestampSql(f"timezone('UTC', TRY_STRPTIME({_text(col)}, {_lit(fmt)}))", NO_WALL_TIME)
    if has_zone(fmt):
        # an offset or zone name in the value wins; a value without one is local time in the zone. ISO 8601's Z is
        # the offset +00:00 for %z, and the zone UTC for %Z.
        utc = "+00:00" if "%z" in fmt else "UTC"
        text = f"regexp_replace({_text(col)}, '([0-9 ])Z$', '\\1{utc}')"
        without = re.sub(r"\s*%[zZ]", "", fmt).strip()
        return _TimestampSql(
            f"TRY_STRPTIME({text}, {_lit(fmt)})",
            f"CASE WHEN _instant IS NULL THEN TRY_STRPTIME({_text(col)}, {_lit(without)}) END",
        )
    return _TimestampSql(NO_INSTANT, f"TRY_STRPTIME({_text(col)}, {_lit(fmt)})")


def _clock_changes(con: duckdb.DuckDBPyConnection, tz: str) -> tuple[int, int]:
    """Kept rows whose wall-clock time in ``tz`` happened twice (clocks went back) or never (went forward).

    Only days with a change of offset between noon the day before and noon the day after can hold such a time,
    so the rows of other days cost one cast each. On those days a wall time L has two candidate instants, L minus
    each offset: both map back to L when it is ambiguous, neither does when it does not exist.
    """
    zone = _lit(tz)
    offset_at = "epoch_us({t}) - epoch_us(timezone(" + zone + ", {t}))"  # local minus UTC, at a wall time
    maps_back = "timezone(" + zone + ", make_timestamptz(epoch_us(_wall_time) - {o})) = _wall_time"
    ambiguous, nonexistent = con.execute(
        f"""WITH days AS (
                SELECT DISTINCT CAST(_wall_time AS DATE) AS day FROM {CLASSIFIED}
                WHERE _reason IS NULL AND _wall_time IS NOT NULL),
            changes AS (
                SELECT * FROM (
                    SELECT day, {offset_at.format(t="CAST(day AS TIMESTAMP) - INTERVAL 12 HOUR")} AS before_us,
                           {offset_at.format(t="CAST(day AS TIMESTAMP) + INTERVAL 36 HOUR")} AS after_us
                    FROM days)
                WHERE before_us <> after_us)
            SELECT count(*) FILTER (WHERE {maps_back.format(o="before_us")} AND {maps_back.format(o="after_us")}),
                   count(*) FILTER (WHERE timezone({zone}, _ts) <> _wall_time)
            FROM {CLASSIFIED} JOIN changes ON CAST(_wall_time AS DATE) = changes.day
            WHERE _reason IS NULL"""
    ).fetchone() or (0, 0)
    return int(ambiguous), int(nonexistent)


def _squash(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def _did_you_mean(name: str, columns: Sequence[str]) -> str:
    """', did you mean 'X'?' for a column renamed by case, spacing or punctuation, else ''."""
    same = [c for c in columns if _squash(c) == _squash(name)]
    close = same or difflib.get_close_matches(name, list(columns), n=1, cutoff=0.75)
    return f" (did you mean '{close[0]}'?)" if close else ""


def check_source_columns(columns: Sequence[str], rules: CleaningRules, source: str) -> None:
    """Raise ``InputError`` when the source lacks a mapped column or clashes with the quarantine columns."""
    if len(set(columns)) != len(columns):
        dupes = sorted({c for c in columns if list(columns).count(c) > 1})
        raise InputError(f"{source}: column name(s) {dupes} appear more than once in the header; rename them")
    for key in ("customer_id", "timestamp", "amount", "quantity", "unit_price", "order_id"):
        name = getattr(rules, key)
        if name is not None and name not in columns:
            raise InputError(
                f"{source}: column '{name}' (ingest.columns.{key}) not found{_did_you_mean(name, columns)}; the "
                f"file has {list(columns)}. Set ingest.columns.{key} in params.yaml to one of them"
            )
    for name in rules.duplicate_key:
        if name not in columns:
            raise InputError(
                f"{source}: ingest.duplicate_key names '{name}', which is not a column; the file has {list(columns)}"
            )
    empty = [i + 1 for i, c in enumerate(columns) if not c.strip()]
    if empty:
        raise InputError(
            f"{source}: header column(s) {empty} have no name (a trailing or doubled delimiter?); name or remove them"
        )
    for reserved in (s.SOURCE_ROW, s.REASON, *INTERNAL_COLUMNS):
        if reserved in columns:
            raise InputError(
                f"{source}: has a column named '{reserved}', which ingest uses itself; rename it before ingesting"
            )


def _key_value(column: str, rules: CleaningRules, arrow_type: pa.DataType) -> str:
    """A duplicate-key column as the pipeline reads it: cleaned id, parsed time, parsed number, trimmed text."""
    if column == rules.customer_id:
        return "_cid"
    if column == rules.timestamp:
        return "CAST(_ts AS VARCHAR)"
    if column in (rules.amount, rules.quantity, rules.unit_price):
        return f"CAST({_number(column, arrow_type, rules.thousands_separator)} AS VARCHAR)"
    return _text(column)


@dataclasses.dataclass(frozen=True)
class RowChecks:
    """The checks a row gets on its own, as SQL over the table ``RAW``: what an engine can run on any slice of the
    log. ``sql`` gives every raw column and ``_cid``, ``_ts``, ``_amount``, ``_order``, ``_cancelled``, ``_early``
    (the first reason that needs no other row) and ``_valid`` (no such reason), plus ``_wall_time`` when the zone is
    not UTC. ``keys`` are the duplicate key's values over those columns, compared as text."""

    sql: str
    keys: tuple[str, ...]


def row_checks(schema: pa.Schema, rules: CleaningRules, source: str, now: dt.datetime | None = None) -> RowChecks:
    """The per-row part of ``classify``, for ``schema``'s columns (see ``classify`` for the parameters)."""
    columns = list(schema.names)
    check_source_columns(columns, rules, source)
    types = dict(zip(schema.names, schema.types, strict=True))

    cid = _text(rules.customer_id)
    null_markers = ", ".join(_lit(m) for m in NULL_MARKERS)
    # A numeric id exported through a float column reads "17850.0"; it is the same customer as "17850".
    cid_clean = (
        f"CASE WHEN lower({cid}) IN ({null_markers}) OR {cid} IS NULL THEN NULL "
        f"ELSE regexp_replace({cid}, '^([0-9]+)\\.0+$', '\\1') END"
    )
    ts = _timestamp(rules.timestamp, types[rules.timestamp], rules.timestamp_format)
    # UTC has no clock changes: its wall times need not be kept for _clock_changes
    dropped = "_instant, _wall_time" if rules.timezone == "UTC" else "_instant"
    sep = rules.thousands_separator
    if rules.amount is not None:
        amount = _number(rules.amount, types[rules.amount], sep)
    else:
        assert rules.quantity is not None and rules.unit_price is not None  # guaranteed by the config
        quantity = _number(rules.quantity, types[rules.quantity], sep)
        amount = f"({quantity} * {_number(rules.unit_price, types[rules.unit_price], sep)})"
    order = _text(rules.order_id) if rules.order_id is not None else "CAST(NULL AS VARCHAR)"
    cancelled = "FALSE"
    if rules.cancellation_prefix is not None:
        cancelled = f"coalesce(starts_with({order}, {_lit(rules.cancellation_prefix)}), FALSE)"
    now = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    latest = _lit((now + dt.timedelta(days=1)).strftime("%Y-%m-%d %H:%M:%S+00"))

    early_sql = f"""
        CASE
            WHEN _cid IS NULL THEN {_lit(s.MISSING_CUSTOMER_ID)}
            WHEN regexp_matches(_cid, {_lit(CONTROL_CHARACTERS)}) THEN {_lit(s.INVALID_CUSTOMER_ID)}
            WHEN _ts IS NULL THEN {_lit(s.UNPARSEABLE_TIMESTAMP)}
            WHEN _ts < TIMESTAMPTZ '1970-01-01 00:00:00+00' OR _ts > CAST({latest} AS TIMESTAMPTZ)
                THEN {_lit(s.TIMESTAMP_OUT_OF_RANGE)}
            WHEN _amount IS NULL THEN {_lit(s.NON_NUMERIC_AMOUNT)}
            WHEN NOT isfinite(_amount) OR abs(_amount) > CAST({_lit(repr(float(rules.max_abs_amount)))} AS DOUBLE)
                THEN {_lit(s.AMOUNT_OUT_OF_RANGE)}
        END"""
    sql = f"""SELECT *, _early IS NULL AS _valid FROM (
                  SELECT *, {early_sql} AS _early FROM (
                      SELECT * EXCLUDE ({dropped}),
                             coalesce(_instant, timezone({_lit(rules.timezone)}, _wall_time)) AS _ts FROM (
                          SELECT *, {ts.wall_time} AS _wall_time FROM (
                              SELECT *, {cid_clean} AS _cid, {ts.instant} AS _instant,
                                     {amount} AS _amount, {order} AS _order, {cancelled} AS _cancelled
                              FROM {RAW}))))"""
    return RowChecks(sql, tuple(_key_value(k, rules, types[k]) for k in rules.duplicate_key))


def reason_sql(rules: CleaningRules) -> str:
    """A row's reason from its ``_early`` reason and ``_dup`` (its rank among the valid rows with its key, by source
    position): plain SQL that DuckDB and Spark read alike."""
    return f"""
        CASE
            WHEN _early IS NOT NULL THEN _early
            WHEN _dup > 1 THEN {_lit(s.DUPLICATE)}
            WHEN {_lit(rules.returns)} = 'drop' AND (_cancelled OR _amount < 0) THEN {_lit(s.CANCELLATION)}
            WHEN {_lit(rules.zero_amount)} = 'quarantine' AND _amount = 0 THEN {_lit(s.ZERO_AMOUNT)}
        END"""


def engine_error(exc: Exception | str, source: str) -> InputError:
    """DuckDB's refusal of a zone or a format (``InvalidInputException``), as the stage's one line."""
    return InputError(f"{source}: {str(exc).splitlines()[0]}; check ingest.timezone and ingest.timestamp_format")


def classify(
    con: duckdb.DuckDBPyConnection,
    schema: pa.Schema,
    rules: CleaningRules,
    source: str,
    now: dt.datetime | None = None,
) -> Classified:
    """Give every row of the table ``RAW`` in ``con`` its reason, or none, in a new table ``CLASSIFIED``.

    Parameters
    ----------
    con
        A connection (with ``TimeZone`` set to UTC) holding the raw log as the table or view ``RAW``: one row per
        input line, the source's columns, text or already typed (Parquet), and ``schemas.SOURCE_ROW``, the line's
        position among the data rows from 0.
    schema
        The source's columns and their Arrow types, which say how each one is parsed.
    rules
        The column mapping and handling rules.
    source
        Name of the input, used in error messages.
    now
        The moment of ingest (default: the clock); a timestamp more than a day after it is a clock error.

    Returns
    -------
    Classified
        The counts, and the queries of ``transactions`` (the ``schemas.TRANSACTIONS`` columns) and of
        ``quarantine`` (the row position, every original value as text, and the reason), both in source order.
    """
    row = row_checks(schema, rules, source, now)
    rows_in = _count(con, f"SELECT count(*) FROM {RAW}")
    if rows_in == 0:
        raise no_rows(source)
    # only rows that pass the earlier checks compete: a bad line does not make its good twin a duplicate
    keys = ", ".join(row.keys)
    dup_rank = f"row_number() OVER (PARTITION BY _valid, {keys} ORDER BY {s.SOURCE_ROW})" if keys else "1"
    try:
        con.execute(
            f"""CREATE TABLE {CLASSIFIED} AS
            SELECT *, {reason_sql(rules)} AS _reason FROM (SELECT *, {dup_rank} AS _dup FROM ({row.sql}))"""
        )
    except (duckdb.InvalidInputException, duckdb.NotImplementedException) as exc:
        raise engine_error(exc, source) from exc
    return summarise(con, list(schema.names), rules, source, rows_in)


def no_rows(source: str) -> InputError:
    return InputError(f"{source}: has a header but no data rows; point ingest.source at a non-empty log")


def summarise(
    con: duckdb.DuckDBPyConnection, columns: Sequence[str], rules: CleaningRules, source: str, rows_in: int
) -> Classified:
    """The counts over ``CLASSIFIED`` in ``con`` (a table or view with ``SOURCE_ROW``, the source ``columns``,
    ``_cid``, ``_ts``, ``_amount``, ``_order``, ``_cancelled``, ``_reason`` and, outside UTC, ``_wall_time``), and
    the queries of the two outputs."""
    try:
        clock_changes = (0, 0) if rules.timezone == "UTC" else _clock_changes(con, rules.timezone)
    except (duckdb.InvalidInputException, duckdb.NotImplementedException) as exc:
        raise engine_error(exc, source) from exc
    counts = dict(con.execute(f"SELECT _reason, count(*) FROM {CLASSIFIED} GROUP BY 1").fetchall())
    originals = ", ".join(f"CAST({_q(c)} AS VARCHAR) AS {_q(c)}" for c in columns)
    return Classified(
        rows_in=rows_in,
        quarantined_by_reason={reason: int(counts.get(reason, 0)) for reason in s.QUARANTINE_REASONS},
        local_times_ambiguous=clock_changes[0],
        local_times_nonexistent=clock_changes[1],
        kept_sql=f"""SELECT _cid AS {s.CUSTOMER_ID}, _ts AS {s.TS},
                            CASE WHEN _cancelled THEN -abs(_amount) ELSE _amount END AS {s.AMOUNT},
                            _order AS {s.ORDER_ID}
                     FROM {CLASSIFIED} WHERE _reason IS NULL ORDER BY {s.SOURCE_ROW}""",
        quarantined_sql=f"""SELECT {s.SOURCE_ROW}, {originals}, _reason AS {s.REASON}
                            FROM {CLASSIFIED} WHERE _reason IS NOT NULL ORDER BY {s.SOURCE_ROW}""",
    )


# How a slice of the log leaves ``per_row_sql``: the source columns as text under their positions, the duplicate
# key's values likewise (an engine may not take every name a CSV header can hold).
ORIGINAL = "_c{}"
KEY = "_k{}"


def per_row_sql(columns: Sequence[str], row: RowChecks, timezone: str) -> str:
    """``row``'s checks over ``RAW``, with only what the rest of ``classify`` needs: the source row, the originals as
    text (``ORIGINAL``), the parsed values, ``_early``, ``_valid``, ``_wall_time`` (NULL in UTC) and the key values
    (``KEY``). An engine that splits the log runs this on each slice, then ranks duplicates and gives reasons over
    the whole with ``reason_sql``."""
    originals = [f"CAST({_q(c)} AS VARCHAR) AS {ORIGINAL.format(i)}" for i, c in enumerate(columns)]
    wall = "_wall_time" if timezone != "UTC" else "CAST(NULL AS TIMESTAMP) AS _wall_time"
    keys = [f"{k} AS {KEY.format(i)}" for i, k in enumerate(row.keys)]
    picked = [s.SOURCE_ROW, *originals, "_cid", "_ts", "_amount", "_order", "_cancelled", wall, "_early", "_valid"]
    return f"SELECT {', '.join([*picked, *keys])} FROM ({row.sql})"


def classified_view(columns: Sequence[str], parquet_glob: str) -> str:
    """The view ``CLASSIFIED`` over Parquet files of ``per_row_sql``'s columns with ``_reason`` added: the source
    columns under their own names again."""
    originals = ", ".join(f"{ORIGINAL.format(i)} AS {_q(c)}" for i, c in enumerate(columns))
    return f"""CREATE VIEW {CLASSIFIED} AS
               SELECT {s.SOURCE_ROW}, {originals}, _cid, CAST(_ts AS TIMESTAMPTZ) AS _ts, _amount, _order, _cancelled,
                      CAST(_wall_time AS TIMESTAMP) AS _wall_time, _reason
               FROM read_parquet({_lit(parquet_glob)})"""


def _count(con: duckdb.DuckDBPyConnection, sql: str) -> int:
    row = con.execute(sql).fetchone()
    return int(row[0]) if row else 0
