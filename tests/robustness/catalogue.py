"""The catalogue of bad inputs: each case is a small generated log or a params change, and its expected outcome.

An outcome is either ``Fails`` (a stage exits with status 2 and exactly one line of error text, which is spelled out
here in full) or ``Quarantines`` (ingest keeps ``kept`` rows, quarantines the rest with the named reasons, and rows
in = rows kept + rows quarantined). ``Runs`` cases go through every stage up to ``upto`` and check the result.

Logs use the layout ``customer_id,date,amount`` with dates as ``%Y-%m-%d`` unless a case overrides ``ingest``.
"""

from __future__ import annotations

import bz2
import dataclasses
import datetime as dt
import gzip
import io
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from features import schemas as s
from tests.conftest import ONLINE_RETAIL_INGEST

# In an order dvc.yaml allows, with the snapshot before the training stages: a case about the scoring date stops
# there without training anything first.
STAGES = ("ingest", "features", "snapshot", "train_clv", "train_churn", "backtest", "score")
HEADER = "customer_id,date,amount"


@dataclasses.dataclass(frozen=True)
class Fails:
    stage: str
    # The whole line after "error: "; {src}, {dir} and {params}: the source, its folder, the params file;
    # {seed_lines}: where the written params file has its `seed:` lines ("lines 8 and 13").
    message: str


@dataclasses.dataclass(frozen=True)
class Quarantines:
    kept: int
    reasons: dict[str, int]  # the reasons with a non-zero count
    check: Callable[[pd.DataFrame], None] | None = None  # more about the kept transactions
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)  # more of metrics/ingest.json


@dataclasses.dataclass(frozen=True)
class Runs:
    upto: str
    check: Callable[[dict[str, Any]], None]  # gets the stage outputs read back: {"clv": frame, "churn": frame, ...}


@dataclasses.dataclass(frozen=True)
class Folder:
    """A directory as ``ingest.source``, holding these files."""

    files: dict[str, bytes]


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    data: Callable[[], bytes] | Folder | None  # None: the source file does not exist
    expect: Fails | Quarantines | Runs
    ingest: dict[str, Any] = dataclasses.field(default_factory=dict)
    params: dict[str, Any] = dataclasses.field(default_factory=dict)  # dotted keys outside ingest
    suffix: str = ".csv"
    params_text: Callable[[str], str] | None = None  # edits params.yaml as text (what a dict cannot hold)
    damage: tuple[str, Callable[[Path], None]] | None = None  # after that stage, does this to the stage folder

    @property
    def last_stage(self) -> str:
        if isinstance(self.expect, Fails):
            return self.expect.stage
        if isinstance(self.expect, Runs):
            return self.expect.upto
        return "ingest"


# --- generators ---------------------------------------------------------------------------------------------------


def lines(*rows: str, header: str = HEADER) -> Callable[[], bytes]:
    text = "\n".join([header, *rows]) + "\n"
    return lambda: text.encode("utf-8")


def raw(data: bytes) -> Callable[[], bytes]:
    return lambda: data


GOOD = ("1,2020-01-05,10.0", "2,2020-01-06,20.0", "1,2020-02-01,15.0")


def history(customers: int = 300, seed: int = 7, one_time: bool = False, extra: Sequence[str] = ()) -> bytes:
    """Two years of purchases: customers start in the first 60 days and buy every ~60 days until they drop out."""
    rng = np.random.default_rng(seed)
    start, end = dt.date(2020, 1, 1), dt.date(2021, 12, 31)
    rows = []
    for c in range(customers):
        day = start + dt.timedelta(days=int(rng.integers(0, 60 if not one_time else 700)))
        rows.append(f"{c},{day},{10 + c % 7}.0")
        while not one_time:
            day += dt.timedelta(days=int(rng.exponential(60)) + 1)
            if day > end or rng.random() < 0.1:
                break
            rows.append(f"{c},{day},{rng.gamma(2.0, 10.0):.2f}")
    return ("\n".join([HEADER, *rows, *extra]) + "\n").encode("utf-8")


def notes_with_line_breaks(rows: int) -> bytes:
    """A log whose every line has a quoted note with a line break in it: 37 bytes a row."""
    body = "".join(f'{i % 500},2020-01-{1 + i % 28:02d},{i % 90 + 10}.0,"a note\nin two lines"\n' for i in range(rows))
    return (f"{HEADER},note\n" + body).encode()


def unclosed_quote_at(row: int, rows: int = 100_000) -> bytes:
    """A 2 MB log whose note opens a quote at ``row`` and never closes it."""
    body = [f"{i},2020-01-06,2.0,ok\n" for i in range(rows)]
    body[row] = f'{row},2020-01-06,2.0,"never closed\n'
    return (f"{HEADER},note\n" + "".join(body)).encode()


def parquet_bytes() -> bytes:
    return b"PAR1 this is not a parquet file"


def cut_short(name: str, keep_bytes: int) -> Callable[[Path], None]:
    """A stage's output file cut to its first ``keep_bytes`` bytes, as by a full disk or a failed copy."""

    def damage(d: Path) -> None:
        (d / name).write_bytes((d / name).read_bytes()[:keep_bytes])

    return damage


def scrambled(name: str, start: int, stop: int) -> Callable[[Path], None]:
    """A stage's output file with bytes ``start:stop`` changed (bad sectors): its footer still reads."""

    def damage(d: Path) -> None:
        data = bytearray((d / name).read_bytes())
        data[start:stop] = bytes((b * 7 + 3) % 256 for b in data[start:stop])
        (d / name).write_bytes(bytes(data))

    return damage


def insert_after(anchor: str, text: str) -> Callable[[str], str]:
    def edit(params: str) -> str:
        assert anchor in params
        return params.replace(anchor, anchor + text, 1)

    return edit


def parquet(**columns: pa.Array) -> Callable[[], bytes]:
    """A Parquet file of the given Arrow columns, keeping their types (date32, naive timestamps, ...)."""

    def write() -> bytes:
        out = io.BytesIO()
        pq.write_table(pa.table(columns), out)
        return out.getvalue()

    return write


# --- checks on kept rows ------------------------------------------------------------------------------------------


def utc_times(*expected: str) -> Callable[[pd.DataFrame], None]:
    def check(tx: pd.DataFrame) -> None:
        assert [t.strftime("%Y-%m-%d %H:%M") for t in tx[s.TS]] == list(expected)
        assert str(tx[s.TS].dt.tz) == "UTC"

    return check


def instants(*expected: str) -> Callable[[pd.DataFrame], None]:
    """The kept times to the microsecond, in UTC (ISO 8601)."""

    def check(tx: pd.DataFrame) -> None:
        assert [t.isoformat() for t in tx[s.TS]] == list(expected)

    return check


def amounts(*expected: float) -> Callable[[pd.DataFrame], None]:
    def check(tx: pd.DataFrame) -> None:
        assert tx[s.AMOUNT].tolist() == list(expected)

    return check


def customers(*expected: str) -> Callable[[pd.DataFrame], None]:
    def check(tx: pd.DataFrame) -> None:
        assert tx[s.CUSTOMER_ID].tolist() == list(expected)

    return check


def whale_is_scored(out: dict[str, Any]) -> None:
    value, risk = out["clv"], out["churn"]
    whale = value[value[s.CUSTOMER_ID] == "9999"].iloc[0]
    assert whale[s.FREQUENCY] > 600  # ~700 purchase days: the largest history in the log by far
    assert np.isfinite(whale[s.CLV]) and whale[s.CLV] == value[s.CLV].max()
    assert 0 < whale[s.P_ALIVE] <= 1
    p = risk.loc[risk[s.CUSTOMER_ID] == "9999", s.P_CHURN].iloc[0]
    assert p < risk[s.P_CHURN].median()  # it bought yesterday and every day before


# --- the catalogue ------------------------------------------------------------------------------------------------

OR_LAYOUT = {
    "columns": dict(ONLINE_RETAIL_INGEST["columns"]),
    "timestamp_format": "%Y-%m-%d %H:%M:%S",
    "duplicate_key": ["InvoiceNo", "StockCode", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID"],
    "cancellation_prefix": "C",
}
OR_HEADER = "InvoiceNo,StockCode,Quantity,InvoiceDate,UnitPrice,CustomerID"
FILE_HAS = "['customer_id', 'date', 'amount']"

CASES: list[Case] = [
    # --- the file and its header -----------------------------------------------------------------------------
    Case(
        "missing_column",
        lines("1,2020-01-05", header="customer_id,date"),
        Fails(
            "ingest",
            "{src}: column 'amount' (ingest.columns.amount) not found; the file has ['customer_id', 'date']. "
            "Set ingest.columns.amount in params.yaml to one of them",
        ),
    ),
    Case(
        "renamed_column",
        lines(*GOOD, header="Customer ID,date,amount"),
        Fails(
            "ingest",
            "{src}: column 'customer_id' (ingest.columns.customer_id) not found (did you mean 'Customer ID'?); "
            "the file has ['Customer ID', 'date', 'amount']. Set ingest.columns.customer_id in params.yaml to one "
            "of them",
        ),
    ),
    Case(
        "duplicated_column",
        lines("1,2020-01-05,10.0,11.0", header="customer_id,date,amount,amount"),
        Fails("ingest", "{src}: column name(s) ['amount'] appear more than once in the header; rename them"),
    ),
    Case(
        "empty_file",
        raw(b""),
        Fails("ingest", "{src}: the file is empty (no header line); point ingest.source at a transaction log"),
    ),
    Case(
        "header_only",
        lines(),
        Fails("ingest", "{src}: has a header but no data rows; point ingest.source at a non-empty log"),
    ),
    Case(
        "wrong_delimiter",
        raw(b"customer_id;date;amount\n1;2020-01-05;10.0\n"),
        Fails(
            "ingest",
            "{src}: the header is one column 'customer_id;date;amount' with delimiter ','; it looks ';'-separated: "
            "set ingest.csv_delimiter to ';'",
        ),
    ),
    Case(
        "non_utf8_bytes",
        raw(b"customer_id,date,amount,note\n1,2020-01-05,10.0,ok\n2,2020-01-06,20.0,caf\xe9\n"),
        Fails(
            "ingest",
            "{src}: not valid utf-8 at line 3 (bytes b'6,20.0,caf\\xe9'); set ingest.encoding to the file's "
            "encoding (often latin-1 or cp1252 for spreadsheet exports)",
        ),
    ),
    Case(
        "non_utf8_bytes_read_as_latin1",
        raw(b"customer_id,date,amount,note\n1,2020-01-05,10.0,ok\n2,2020-01-06,20.0,caf\xe9\n"),
        Quarantines(kept=2, reasons={}, check=customers("1", "2")),
        ingest={"encoding": "latin-1"},
    ),
    Case(
        "byte_order_mark",
        raw(b"\xef\xbb\xbf" + "\n".join([HEADER, *GOOD]).encode() + b"\n"),
        Quarantines(kept=3, reasons={}, check=customers("1", "2", "1")),
    ),
    Case(
        "missing_file",
        None,
        Fails("ingest", "{src}: file not found; set ingest.source to an existing file or one of: cdnow, cdnow_sample"),
    ),
    Case(
        "truncated_gzip",
        lambda: gzip.compress(history())[:2000],
        Fails(
            "ingest",
            "{src}: cannot be read to the end (Compressed file ended before the end-of-stream marker was reached); "
            "the file looks truncated or damaged",
        ),
        suffix=".csv.gz",
    ),
    Case(
        "utf16_export",
        lambda: "\n".join([HEADER, *GOOD]).encode("utf-16"),
        Quarantines(kept=3, reasons={}, check=customers("1", "2", "1")),
        ingest={"encoding": "utf-16"},
    ),
    Case(
        "unknown_encoding",
        lines(*GOOD),
        Fails("ingest", "ingest.encoding 'utf-9' is not an encoding Python knows; e.g. utf-8, latin-1, cp1252"),
        ingest={"encoding": "utf-9"},
    ),
    Case(
        "trailing_delimiter_in_header",
        lines("1,2020-01-05,10.0,", header="customer_id,date,amount,"),
        Fails(
            "ingest", "{src}: header column(s) [4] have no name (a trailing or doubled delimiter?); name or remove them"
        ),
    ),
    Case(
        "column_named_like_an_internal_one",
        lines("1,2020-01-05,10.0,x", header="customer_id,date,amount,_cid"),
        Fails("ingest", "{src}: has a column named '_cid', which ingest uses itself; rename it before ingesting"),
    ),
    Case(
        "unknown_time_zone",
        lines(*GOOD),
        Fails("ingest", "ingest.timezone 'Europe/Atens' is not an IANA time zone (did you mean 'Europe/Athens'?)"),
        ingest={"timezone": "Europe/Atens"},
    ),
    Case(
        "unsupported_file_type",
        lines(*GOOD),
        Fails("ingest", "{src}: unsupported file type; ingest reads .csv, .csv.gz and .parquet"),
        suffix=".xlsx",
    ),
    Case(
        "corrupt_parquet",
        parquet_bytes,
        Fails(
            "ingest",
            "{src}: not a readable Parquet file (Parquet magic bytes not found in footer. Either the file is "
            "corrupted or this is not a parquet file.)",
        ),
        suffix=".parquet",
    ),
    Case(
        "every_row_bad",
        lines("1,05/01/2020,10.0", "2,06/01/2020,20.0"),
        Fails(
            "ingest",
            "{src}: all 2 rows were quarantined (mostly 'unparseable_timestamp': 2); check ingest.columns, "
            "ingest.timestamp_format and the quarantine rules in params.yaml",
        ),
    ),
    # --- timestamps ----------------------------------------------------------------------------------------------
    Case(
        "unparseable_timestamps",
        lines(*GOOD, "3,2020-13-01,5.0", "3,yesterday,5.0", "3,,5.0"),
        Quarantines(kept=3, reasons={s.UNPARSEABLE_TIMESTAMP: 3}),
    ),
    Case(
        "future_timestamps",
        lines(*GOOD, "3,2999-01-01,5.0", f"3,{dt.date.today() + dt.timedelta(days=3)},5.0"),
        Quarantines(kept=3, reasons={s.TIMESTAMP_OUT_OF_RANGE: 2}),
    ),
    Case(
        "pre_1970_timestamps",
        lines(*GOOD, "3,1969-12-31,5.0", "3,1900-01-01,5.0"),
        Quarantines(kept=3, reasons={s.TIMESTAMP_OUT_OF_RANGE: 2}),
    ),
    Case(
        "mixed_time_zones",
        lines(
            "1,2020-01-05 10:00:00+01:00,10.0",
            "2,2020-01-05 10:00:00-05:00,10.0",
            "3,2020-01-05 10:00:00+00:00,10.0",
            "4,2020-01-05 10:00:00,10.0",  # no offset: read in ingest.timezone
        ),
        Quarantines(
            kept=4,
            reasons={},
            check=utc_times("2020-01-05 09:00", "2020-01-05 15:00", "2020-01-05 10:00", "2020-01-05 08:00"),
        ),
        ingest={"timestamp_format": "%Y-%m-%d %H:%M:%S%z", "timezone": "Europe/Athens"},
    ),
    Case(
        "iso_8601_with_z",
        lines("1,2020-01-05T10:00:00Z,10.0", "2,2020-01-05T10:00:00+02:00,10.0", "3,2020-01-05T10:00:00,10.0"),
        Quarantines(kept=3, reasons={}, check=utc_times("2020-01-05 10:00", "2020-01-05 08:00", "2020-01-05 10:00")),
        ingest={"timestamp_format": "%Y-%m-%dT%H:%M:%S%z"},
    ),
    Case(
        "offsets_the_format_does_not_expect",
        lines("1,2020-01-05 10:00:00,10.0", "2,2020-01-05 10:00:00+01:00,10.0"),
        Quarantines(kept=1, reasons={s.UNPARSEABLE_TIMESTAMP: 1}, check=utc_times("2020-01-05 10:00")),
        ingest={"timestamp_format": "%Y-%m-%d %H:%M:%S"},
    ),
    # --- customer ids --------------------------------------------------------------------------------------------
    Case(
        "null_marker_ids",
        lines(*GOOD, "NaN,2020-01-07,5.0", "nan,2020-01-07,5.0", "None,2020-01-07,5.0", "NULL,2020-01-07,5.0"),
        Quarantines(kept=3, reasons={s.MISSING_CUSTOMER_ID: 4}),
    ),
    Case(
        "empty_and_whitespace_ids",
        lines(*GOOD, ",2020-01-07,5.0", "   ,2020-01-07,5.0", '"\t",2020-01-07,5.0'),
        Quarantines(kept=3, reasons={s.MISSING_CUSTOMER_ID: 3}),
    ),
    Case(
        "ids_written_as_floats",
        lines("17850,2020-01-05,10.0", "17850.0,2020-01-06,10.0", " 17850 ,2020-01-07,10.0", "A17.0,2020-01-07,1"),
        Quarantines(kept=4, reasons={}, check=customers("17850", "17850", "17850", "A17.0")),
    ),
    # --- amounts -------------------------------------------------------------------------------------------------
    Case(
        "negative_amounts_netted",
        lines(*GOOD, "1,2020-02-02,-15.0"),
        Quarantines(kept=4, reasons={}, check=amounts(10.0, 20.0, 15.0, -15.0)),
    ),
    Case(
        "negative_amounts_dropped",
        lines(*GOOD, "1,2020-02-02,-15.0"),
        Quarantines(kept=3, reasons={s.CANCELLATION: 1}),
        ingest={"returns": "drop"},
    ),
    Case(
        "zero_amounts_kept",
        lines(*GOOD, "2,2020-02-02,0", "2,2020-02-03,0.00"),
        Quarantines(kept=5, reasons={}, check=amounts(10.0, 20.0, 15.0, 0.0, 0.0)),
    ),
    Case(
        "zero_amounts_quarantined",
        lines(*GOOD, "2,2020-02-02,0", "2,2020-02-03,0.00"),
        Quarantines(kept=3, reasons={s.ZERO_AMOUNT: 2}),
        ingest={"zero_amount": "quarantine"},
    ),
    Case(
        "huge_amounts",
        lines(*GOOD, "2,2020-02-02,1e12", "2,2020-02-03,-50000000", "2,2020-02-04,999999.99"),
        Quarantines(kept=4, reasons={s.AMOUNT_OUT_OF_RANGE: 2}, check=amounts(10.0, 20.0, 15.0, 999999.99)),
    ),
    Case(
        "non_numeric_amounts",
        lines(*GOOD, "2,2020-02-02,abc", "2,2020-02-03,", "2,2020-02-04,inf", "2,2020-02-05,NaN", "2,2020-02-06,1e999"),
        Quarantines(kept=3, reasons={s.NON_NUMERIC_AMOUNT: 5}),
    ),
    Case(
        "thousands_separators_unannounced",
        lines(*GOOD, '2,2020-02-02,"1,234.50"'),
        Quarantines(kept=3, reasons={s.NON_NUMERIC_AMOUNT: 1}),
    ),
    Case(
        "thousands_separators_announced",
        lines(*GOOD, '2,2020-02-02,"1,234.50"'),
        Quarantines(kept=4, reasons={}, check=amounts(10.0, 20.0, 15.0, 1234.5)),
        ingest={"thousands_separator": ","},
    ),
    Case(
        "decimal_commas_are_not_thousands",
        lines(*GOOD, '2,2020-02-02,"12,34"', '2,2020-02-03,"1,2,3"', '2,2020-02-04,"-2,500"'),
        Quarantines(kept=4, reasons={s.NON_NUMERIC_AMOUNT: 2}, check=amounts(10.0, 20.0, 15.0, -2500.0)),
        ingest={"thousands_separator": ","},
    ),
    Case(
        "quantity_times_price_overflows",
        lines("A1,S1,1e200,2020-01-05 10:00:00,1e200,1", "A2,S1,2,2020-01-05 11:00:00,1.5,1", header=OR_HEADER),
        Quarantines(kept=1, reasons={s.AMOUNT_OUT_OF_RANGE: 1}, check=amounts(3.0)),
        ingest=OR_LAYOUT,
    ),
    # --- orders: cancellations and duplicates ------------------------------------------------------------------
    Case(
        "cancellations",
        lines(
            "A1,S1,2,2020-01-05 10:00:00,1.5,1",
            "C2,S1,-2,2020-01-06 10:00:00,1.5,1",
            "C3,S1,2,2020-01-06 10:00:00,1.5,1",  # a cancellation written with a positive quantity
            header=OR_HEADER,
        ),
        Quarantines(kept=3, reasons={}, check=amounts(3.0, -3.0, -3.0)),
        ingest=OR_LAYOUT,
    ),
    Case(
        "cancellations_dropped",
        lines("A1,S1,2,2020-01-05 10:00:00,1.5,1", "C2,S1,-2,2020-01-06 10:00:00,1.5,1", header=OR_HEADER),
        Quarantines(kept=1, reasons={s.CANCELLATION: 1}),
        ingest={**OR_LAYOUT, "returns": "drop"},
    ),
    Case(
        "exact_duplicates",
        lines(*["A1,S1,2,2020-01-05 10:00:00,1.5,1"] * 3, "A1,S2,2,2020-01-05 10:00:00,1.5,1", header=OR_HEADER),
        Quarantines(kept=2, reasons={s.DUPLICATE: 2}),
        ingest=OR_LAYOUT,
    ),
    Case(
        "near_duplicates",
        lines(
            "A1,S1,2,2020-01-05 10:00:00,1.5,1",
            "A1 ,S1,2,2020-01-05 10:00:00,1.5,1.0",  # the same line after trimming and the float id
            "A1,S1,3,2020-01-05 10:00:00,1.5,1",  # another quantity: a second line of the order, kept
            header=OR_HEADER,
        ),
        Quarantines(kept=2, reasons={s.DUPLICATE: 1}, check=amounts(3.0, 4.5)),
        ingest=OR_LAYOUT,
    ),
    Case(
        "duplicates_differing_in_number_format",
        lines("A1,S1,2,2020-01-05 10:00:00,1.5,1", "A1,S1,2.0,2020-01-05 10:00:00,1.50,1", header=OR_HEADER),
        Quarantines(kept=1, reasons={s.DUPLICATE: 1}),
        ingest=OR_LAYOUT,
    ),
    Case(
        "a_bad_line_and_its_good_twin",
        # the export wrote the quantity badly, then again correctly: the correct line is the purchase
        lines("A1,S1,x,2020-01-05 10:00:00,1.5,1", "A1,S1,2,2020-01-05 10:00:00,1.5,1", header=OR_HEADER),
        Quarantines(kept=1, reasons={s.NON_NUMERIC_AMOUNT: 1}, check=amounts(3.0)),
        ingest={**OR_LAYOUT, "duplicate_key": ["InvoiceNo", "StockCode", "InvoiceDate", "CustomerID"]},
    ),
    Case(
        "identical_lines_without_an_order_id",
        lines(*GOOD, "1,2020-02-01,15.0"),  # two real purchases may look the same: without a key both are kept
        Quarantines(kept=4, reasons={}),
    ),
    # --- histories the models cannot or can barely fit ---------------------------------------------------------
    Case(
        "one_customer",
        lines(*[f"1,{dt.date(2020, 1, 1) + dt.timedelta(days=7 * i)},10.0" for i in range(80)]),
        Fails(
            "train_clv",
            "clv: the calibration cutoff 2021-04-08 has 1 customer(s); the BTYD models need at least 20. "
            "Use a log with more customers",
        ),
    ),
    Case(
        "all_one_time_buyers",
        lambda: history(400, one_time=True),
        Fails(
            "train_clv",
            "clv: at the calibration cutoff 2021-09-01 all 336 customers bought on one day only, so Gamma-Gamma has "
            "no repeat spend to learn from; use a longer history, or a later clv.calibration_cutoff",
        ),
    ),
    Case(
        "a_customer_with_thousands_of_purchases",
        lambda: history(extra=[f"9999,{dt.date(2020, 1, 1) + dt.timedelta(days=i // 3)},5.0" for i in range(3 * 730)]),
        Runs("score", whale_is_scored),
    ),
    # --- dates and params ------------------------------------------------------------------------------------------
    Case(
        "cutoff_before_the_first_transaction",
        lambda: history(),
        Fails(
            "features",
            "features.cutoffs: 2019-06-30 is before the first transaction day 2020-01-01; no customer has history",
        ),
        params={"features.cutoffs": ["2019-06-30"]},
    ),
    Case(
        "cutoff_after_the_last_transaction",
        lambda: history(),
        Fails(
            "features",
            "features.cutoffs: 2022-03-01 + horizon_days 90 ends after the last observed day 2021-12-31 (the labels "
            "would be incomplete); use cutoffs on or before 2021-10-02, or shorten features.horizon_days",
        ),
        params={"features.cutoffs": ["2022-03-01"]},
    ),
    Case(
        "horizon_longer_than_the_data",
        lambda: history(),
        Fails(
            "features",
            "no training cutoff fits the data (2020-01-01 to 2021-12-31) with horizon_days 1000: set "
            "features.cutoffs or features.cutoff_schedule.count, or shorten features.horizon_days",
        ),
        params={"features.horizon_days": 1000},
    ),
    Case(
        "scoring_date_before_the_data",
        lambda: history(),
        Fails(
            "snapshot",
            "score.as_of=2019-01-01 is on or before the first transaction day 2020-01-01: there is no history "
            "before it; set score.as_of to a later date or null",
        ),
        params={"score.as_of": "2019-01-01"},
    ),
    Case(
        "training_date_before_the_data",
        lambda: history(),
        Fails(
            "features",
            "train.as_of=2019-01-01 is on or before the first transaction day 2020-01-01: there is no history "
            "before it; set train.as_of to a later date or null",
        ),
        params={"train.as_of": "2019-01-01"},
    ),
    Case(
        "training_date_long_after_the_data",
        lambda: history(),
        Fails(
            "features",
            "train.as_of=2023-01-01 is more than horizon_days 90 after the last transaction day 2021-12-31: the log "
            "is missing the recent weeks; load a newer export or set train.as_of to 2022-01-01 or earlier",
        ),
        params={"train.as_of": "2023-01-01"},
    ),
    Case(
        "scoring_date_before_the_training_date",  # a back-fill DVC alone cannot do: the models saw later weeks
        lambda: history(),
        Fails(
            "score",
            "score: the models were trained as of 2022-01-01, after score.as_of 2021-06-01, and no registered model is "
            "older (champion v1 was trained as of 2022-01-01, after this week); back-fill that week with "
            "`make weekly AS_OF=2021-06-01`, which trains models as of it",
        ),
        params={"score.as_of": "2021-06-01"},
    ),
    Case(
        "scoring_date_long_after_the_data",
        lambda: history(),
        Fails(
            "snapshot",
            "score.as_of=2023-01-01 is more than horizon_days 90 after the last transaction day 2021-12-31: the log "
            "is missing the recent weeks; load a newer export or set score.as_of to 2022-01-01 or earlier",
        ),
        params={"score.as_of": "2023-01-01"},
    ),
    Case(
        "param_of_the_wrong_type",
        lambda: history(),
        Fails("features", "features.horizon_days: expected a whole number, got '90 days'"),
        params={"features.horizon_days": "90 days"},
    ),
    Case(
        "param_outside_its_choices",
        lines(*GOOD),
        Fails("ingest", "ingest.returns: must be one of net, drop; got 'keep'"),
        ingest={"returns": "keep"},
    ),
    Case(
        "thousands_separator_that_is_the_decimal_point",
        lines(*GOOD),
        Fails(
            "ingest",
            "ingest.thousands_separator must be one character that cannot be part of a number, such as ',' (amounts "
            "use '.' for decimals); got '.'",
        ),
        ingest={"thousands_separator": "."},
    ),
    # --- settings: typos, duplicates and values no stage could use ----------------------------------------------
    Case(
        "misspelt_section",
        lines(*GOOD),
        Fails(
            "ingest",
            "{params}: unknown section 'scroe' (did you mean 'score'?); the sections are base, ingest, features, clv, "
            "churn, score, train, backtest, campaign",
        ),
        params_text=lambda text: text + "scroe:\n  pseudonymise_ids: true\n",
    ),
    Case(
        "key_given_twice",
        lines(*GOOD),
        Fails(
            "ingest",
            "{params}: key 'seed' is given twice in one mapping ({seed_lines}); YAML would silently keep the last "
            "one: delete one of them",
        ),
        params_text=insert_after("base:\n", "  seed: 1\n"),
    ),
    Case(
        "missing_section",
        lines(*GOOD),
        Fails("features", "params.yaml: section 'features' is missing"),
        params_text=lambda text: re.sub(r"(?m)^features:\n(?:[ -].*\n)+", "", text),
    ),
    Case(
        "not_a_number_setting",
        lambda: history(),
        Fails("train_clv", "clv.registry.min_improvement: expected a finite number, got nan"),
        params={"clv.registry.min_improvement": float("nan")},
    ),
    Case(
        "infinite_setting",
        lambda: history(),
        Fails("train_clv", "clv.discount_rate_monthly: expected a finite number, got inf"),
        params={"clv.discount_rate_monthly": float("inf")},
    ),
    Case(
        "seed_out_of_range",
        lambda: history(),
        Fails("ingest", "base.seed must be a whole number from 0 to 2,147,483,647, got -1"),
        params={"base.seed": -1},
    ),
    Case(
        "seed_beyond_32_bits",
        lambda: history(),
        Fails("ingest", "base.seed: 4294967296 is out of range (at most 2,147,483,647 in size)"),
        params={"base.seed": 2**32},
    ),
    Case(
        "horizon_beyond_any_calendar",
        lambda: history(),
        Fails("features", "features.horizon_days: 1000000000000 is out of range (at most 2,147,483,647 in size)"),
        params={"features.horizon_days": 10**12},
    ),
    Case(
        "window_of_a_thousand_years",
        lambda: history(),
        Fails("features", "features.windows_days[1] must be between 1 and 36,525 days (100 years), got 365,000"),
        params={"features.windows_days": [30, 365_000]},
    ),
    Case(
        "cutoff_schedule_reaching_back_millennia",
        lambda: history(),
        Fails(
            "features",
            "features.cutoff_schedule: count 100,000 x every_days 28 reaches back more than 36,525 days (100 years); "
            "lower the count",
        ),
        params={"features.cutoff_schedule.count": 100_000},
    ),
    Case(
        "empty_experiment_name",
        lambda: history(),
        Fails("ingest", "base.mlflow_experiment must be a name of 1 to 500 characters, got ''"),
        params={"base.mlflow_experiment": ""},
    ),
    Case(
        "registry_name_mlflow_rejects",
        lambda: history(),
        Fails(
            "train_clv",
            "clv.registry.model_name must be letters, digits, '_', '-', '.' or spaces, starting with a letter or digit "
            "(at most 200 characters); got 'team/clv'",
        ),
        params={"clv.registry.model_name": "team/clv"},
    ),
    # --- files between stages: damaged, cut short or emptied after the stage that wrote them ------------------
    Case(
        "transactions_emptied_between_stages",
        lambda: history(),
        Fails(
            "features",
            "{dir}/data/transactions.parquet: the file is empty (0 bytes); it is damaged or was cut short: rerun the "
            "stage that writes it (`dvc repro --force`)",
        ),
        damage=("ingest", cut_short("data/transactions.parquet", 0)),
    ),
    Case(
        "features_cut_short_between_stages",
        lambda: history(),
        Fails(
            "train_clv",
            "{dir}/data/features.parquet: not a readable Parquet file (Parquet magic bytes not found in footer); it is "
            "damaged or was cut short: rerun the stage that writes it (`dvc repro --force`)",
        ),
        damage=("features", cut_short("data/features.parquet", 5000)),
    ),
    Case(
        "features_with_a_bad_sector_between_stages",
        lambda: history(),
        Fails(
            "train_clv",
            "{dir}/data/features.parquet: not a readable Parquet file (Couldn't deserialize thrift: No more data to "
            "read); it is damaged or was cut short: rerun the stage that writes it (`dvc repro --force`)",
        ),
        damage=("features", scrambled("data/features.parquet", 200, -2000)),  # all but the footer
    ),
    # --- dates without a time of day: the day the log says, whatever ingest.timezone --------------------------
    Case(
        "date_only_in_a_zone_ahead_of_utc",
        lines("1,2020-01-05,10.0", "2,2020-07-01,20.0", "3,2020-03-29,5.0"),  # winter, summer, the day clocks change
        Quarantines(kept=3, reasons={}, check=utc_times("2020-01-05 00:00", "2020-07-01 00:00", "2020-03-29 00:00")),
        ingest={"timezone": "Europe/Athens"},
    ),
    Case(
        "date_only_in_a_zone_behind_utc",
        lines("1,05/01/2020,10.0", "2,31/12/2020,20.0"),
        Quarantines(kept=2, reasons={}, check=utc_times("2020-01-05 00:00", "2020-12-31 00:00")),
        ingest={"timezone": "America/Los_Angeles", "timestamp_format": "%d/%m/%Y"},
    ),
    Case(
        "parquet_date32_in_a_non_utc_zone",
        parquet(
            customer_id=pa.array(["1", "2"]),
            date=pa.array([dt.date(2020, 1, 5), dt.date(2020, 7, 1)], type=pa.date32()),
            amount=pa.array([10.0, 20.0]),
        ),
        Quarantines(kept=2, reasons={}, check=utc_times("2020-01-05 00:00", "2020-07-01 00:00")),
        ingest={"timezone": "Europe/Athens"},
        suffix=".parquet",
    ),
    Case(
        "parquet_naive_timestamps_are_local_times",
        parquet(
            customer_id=pa.array(["1", "2"]),
            date=pa.array([dt.datetime(2020, 1, 5, 10, 0), dt.datetime(2020, 7, 1, 0, 0)], type=pa.timestamp("us")),
            amount=pa.array([10.0, 20.0]),
        ),
        Quarantines(kept=2, reasons={}, check=utc_times("2020-01-05 08:00", "2020-06-30 21:00")),
        ingest={"timezone": "Europe/Athens"},
        suffix=".parquet",
    ),
    Case(
        "parquet_date64_in_a_zone_behind_utc",
        parquet(
            customer_id=pa.array(["1"]),
            date=pa.array([dt.date(2020, 12, 31)], type=pa.date64()),
            amount=pa.array([10.0]),
        ),
        Quarantines(kept=1, reasons={}, check=utc_times("2020-12-31 00:00")),
        ingest={"timezone": "America/Los_Angeles"},
        suffix=".parquet",
    ),
    Case(
        "parquet_timestamps_with_a_zone_keep_their_instant",  # ingest.timezone is for times written without one
        parquet(
            customer_id=pa.array(["1"]),
            date=pa.array(
                [dt.datetime(2020, 1, 5, 15, 0, tzinfo=dt.UTC)], type=pa.timestamp("us", tz="America/New_York")
            ),
            amount=pa.array([10.0]),
        ),
        Quarantines(kept=1, reasons={}, check=utc_times("2020-01-05 15:00")),
        ingest={"timezone": "Europe/Athens"},
        suffix=".parquet",
    ),
    Case(
        "midnight_written_as_a_time_is_a_local_time",  # the format decides: a time of day, even 00:00, has a zone
        lines("1,2020-01-05 00:00:00,10.0"),
        Quarantines(kept=1, reasons={}, check=utc_times("2020-01-04 22:00")),
        ingest={"timezone": "Europe/Athens", "timestamp_format": "%Y-%m-%d %H:%M:%S"},
    ),
    # --- the encoding: a codec Python knows that does not decode bytes to text ---------------------------------
    Case(
        "encoding_that_transforms_text",
        lines(*GOOD),
        Fails(
            "ingest",
            "ingest.encoding 'rot13' is a codec that does not decode bytes to text; use a text encoding, e.g. utf-8, "
            "latin-1, cp1252",
        ),
        ingest={"encoding": "rot13"},
    ),
    Case(
        "encoding_that_transforms_bytes",
        lines(*GOOD),
        Fails(
            "ingest",
            "ingest.encoding 'zlib' is a codec that does not decode bytes to text; use a text encoding, e.g. utf-8, "
            "latin-1, cp1252",
        ),
        ingest={"encoding": "zlib"},
    ),
    Case(
        "encoding_that_never_decodes",
        lines(*GOOD),
        Fails(
            "ingest",
            "ingest.encoding 'undefined' is a codec that does not decode bytes to text; use a text encoding, e.g. "
            "utf-8, latin-1, cp1252",
        ),
        ingest={"encoding": "undefined"},
    ),
    # --- line endings: LF, CRLF, a lone CR (old Mac exports) or a mix, as Arrow reads them ---------------------
    Case(
        "cr_line_endings",
        raw("\r".join([HEADER, *GOOD]).encode() + b"\r"),
        Quarantines(kept=3, reasons={}, check=customers("1", "2", "1")),
    ),
    Case(
        "crlf_line_endings",
        raw("\r\n".join([HEADER, *GOOD]).encode() + b"\r\n"),
        Quarantines(kept=3, reasons={}, check=amounts(10.0, 20.0, 15.0)),
    ),
    Case(
        "mixed_line_endings",
        raw(f"{HEADER}\r\n{GOOD[0]}\n{GOOD[1]}\r{GOOD[2]}".encode()),  # and no line break at the end
        Quarantines(kept=3, reasons={}, check=utc_times("2020-01-05 00:00", "2020-01-06 00:00", "2020-02-01 00:00")),
    ),
    Case(
        "byte_order_mark_and_cr_line_endings",
        raw(b"\xef\xbb\xbf" + "\r".join([HEADER, *GOOD]).encode() + b"\r"),
        Quarantines(kept=3, reasons={}, check=customers("1", "2", "1")),
    ),
    Case(
        "utf16_export_with_cr_line_endings",
        lambda: "\r".join([HEADER, *GOOD]).encode("utf-16"),
        Quarantines(kept=3, reasons={}, check=customers("1", "2", "1")),
        ingest={"encoding": "utf-16"},
    ),
    Case(
        "non_utf8_bytes_with_cr_line_endings",  # the line is counted at the lone CRs too
        raw(b"customer_id,date,amount,note\r1,2020-01-05,10.0,ok\r2,2020-01-06,20.0,caf\xe9\r"),
        Fails(
            "ingest",
            "{src}: not valid utf-8 at line 3 (bytes b'6,20.0,caf\\xe9'); set ingest.encoding to the file's "
            "encoding (often latin-1 or cp1252 for spreadsheet exports)",
        ),
    ),
    # --- what the file is: told by its first bytes, not by its name --------------------------------------------
    Case(
        "gzip_with_an_upper_case_name",
        lambda: gzip.compress("\n".join([HEADER, *GOOD]).encode()),
        Quarantines(kept=3, reasons={}, check=customers("1", "2", "1")),
        suffix=".CSV.GZ",
    ),
    Case(
        "gzip_named_csv",
        lambda: gzip.compress("\n".join([HEADER, *GOOD]).encode()),
        Quarantines(kept=3, reasons={}, check=customers("1", "2", "1")),
    ),
    Case(
        "plain_text_named_csv_gz",
        lines(*GOOD),
        Quarantines(kept=3, reasons={}, check=customers("1", "2", "1")),
        suffix=".csv.gz",
    ),
    Case(
        "upper_case_parquet_name",
        parquet(
            customer_id=pa.array(["1", "2"]), date=pa.array(["2020-01-05", "2020-01-06"]), amount=pa.array([1.0, 2.0])
        ),
        Quarantines(kept=2, reasons={}, check=amounts(1.0, 2.0)),
        suffix=".PARQUET",
    ),
    Case(
        "parquet_named_csv",
        parquet(customer_id=pa.array(["1"]), date=pa.array(["2020-01-05"]), amount=pa.array([1.0])),
        Fails("ingest", "{src}: is a Parquet file, not CSV text; rename it to end in .parquet"),
    ),
    Case(
        "excel_workbook_named_csv",
        raw(b"PK\x03\x04\x14\x00\x06\x00\x08\x00[Content_Types].xml"),
        Fails(
            "ingest",
            "{src}: is a zip archive (an Excel workbook?), not CSV text; save the sheet as CSV, or unzip the CSV in it",
        ),
    ),
    Case(
        "bzip2_named_csv_gz",
        lambda: bz2.compress("\n".join([HEADER, *GOOD]).encode()),
        Fails(
            "ingest",
            "{src}: is bzip2-compressed, not gzip or CSV text; decompress it, or recompress it with gzip (ingest reads "
            ".csv, .csv.gz and .parquet)",
        ),
        suffix=".csv.gz",
    ),
    Case(
        "empty_directory",
        Folder({}),
        Fails(
            "ingest", "{src}: is a directory, with no .csv, .csv.gz or .parquet file in it; set ingest.source to a file"
        ),
        suffix="",
    ),
    Case(
        "directory_of_exports",
        Folder({"part-1.csv": b"", "part-0.csv": b"", "notes.txt": b""}),
        Fails(
            "ingest",
            "{src}: is a directory; ingest reads one file: set ingest.source to one of the 2 .csv, .csv.gz or "
            ".parquet files in it, e.g. {src}/part-0.csv",
        ),
        suffix="",
    ),
    # --- timestamp formats: what DuckDB's strptime reads, epoch seconds, zone names, fractions of a second ---
    Case(
        "epoch_milliseconds_format",
        lines("1,1578182400000,10.0"),
        Fails(
            "ingest",
            "ingest.timestamp_format '%Q': %Q (milliseconds since 1970) is not read; store the column as a Parquet "
            "timestamp, or as seconds with timestamp_format '%s'",
        ),
        ingest={"timestamp_format": "%Q"},
    ),
    Case(
        "epoch_seconds_inside_a_format",
        lines("1,1578182400.5,10.0"),
        Fails(
            "ingest",
            "ingest.timestamp_format '%s.%f': %s (seconds since 1970-01-01 UTC) is read only as the whole format: set "
            "it to '%s'",
        ),
        ingest={"timestamp_format": "%s.%f"},
    ),
    Case(
        "epoch_seconds",  # an instant: ingest.timezone does not apply
        lines(
            "1,1578182400,10.0",
            "2,1593561600.25,20.0",
            "3,-1,5.0",  # 1969-12-31 23:59:59
            "3,1e30,5.0",
            "3,2020-01-05,5.0",
        ),
        Quarantines(
            kept=2,
            reasons={s.TIMESTAMP_OUT_OF_RANGE: 1, s.UNPARSEABLE_TIMESTAMP: 2},
            check=instants("2020-01-05T00:00:00+00:00", "2020-07-01T00:00:00.250000+00:00"),
        ),
        ingest={"timestamp_format": "%s", "timezone": "Europe/Athens"},
    ),
    Case(
        "epoch_seconds_in_a_parquet_integer_column",
        parquet(
            customer_id=pa.array(["1", "2"]),
            date=pa.array([1578182400, 1593561600], type=pa.int64()),
            amount=pa.array([10.0, 20.0]),
        ),
        Quarantines(kept=2, reasons={}, check=utc_times("2020-01-05 00:00", "2020-07-01 00:00")),
        ingest={"timestamp_format": "%s", "timezone": "Asia/Tokyo"},
        suffix=".parquet",
    ),
    Case(
        "python_only_directive",
        lines(*GOOD),
        Fails(
            "ingest",
            "ingest.timestamp_format '%F': %F is not a directive DuckDB's strptime reads (write %Y-%m-%d); see "
            "https://duckdb.org/docs/sql/functions/dateformat",
        ),
        ingest={"timestamp_format": "%F"},
    ),
    Case(
        "format_written_as_a_pattern",
        lines(*GOOD),
        Fails(
            "ingest",
            "ingest.timestamp_format 'yyyy-MM-dd': has no % directive (strptime writes a year as %Y, a day as %d): "
            "e.g. '%Y-%m-%d %H:%M:%S'",
        ),
        ingest={"timestamp_format": "yyyy-MM-dd"},
    ),
    Case(
        "format_ending_in_a_lone_percent",
        lines(*GOOD),
        Fails("ingest", "ingest.timestamp_format '%Y-%m-%d%': ends with a lone %; write %% for a percent sign"),
        ingest={"timestamp_format": "%Y-%m-%d%"},
    ),
    Case(
        "date_only_format_with_an_offset",
        lines("1,2020-01-05+02:00,10.0"),
        Fails(
            "ingest",
            "ingest.timestamp_format '%Y-%m-%d%z': has a zone (%z or %Z) but no time of day; a date is kept as that "
            "day whatever the zone, so remove the zone, or add the time",
        ),
        ingest={"timestamp_format": "%Y-%m-%d%z"},
    ),
    Case(
        "zone_names",
        lines(
            "1,2020-01-05 10:00 EST,10.0",
            "2,2020-01-05 10:00 America/New_York,10.0",
            "3,2020-01-05 10:00 UTC,10.0",
            "4,2020-01-05 10:00 Z,10.0",
            "5,2020-01-05 10:00,10.0",  # no zone: read in ingest.timezone
        ),
        Quarantines(
            kept=5,
            reasons={},
            check=utc_times(
                "2020-01-05 15:00", "2020-01-05 15:00", "2020-01-05 10:00", "2020-01-05 10:00", "2020-01-05 08:00"
            ),
        ),
        ingest={"timestamp_format": "%Y-%m-%d %H:%M %Z", "timezone": "Europe/Athens"},
    ),
    Case(
        "timestamps_with_microseconds",
        lines("1,2020-01-05 10:00:00.123456,10.0", "2,2020-01-05 10:00:00,10.0"),  # the fraction is not optional
        Quarantines(kept=1, reasons={s.UNPARSEABLE_TIMESTAMP: 1}, check=instants("2020-01-05T10:00:00.123456+00:00")),
        ingest={"timestamp_format": "%Y-%m-%d %H:%M:%S.%f"},
    ),
    Case(
        "twelve_hour_clock",
        lines("1,05/01/2020 01:30 PM,10.0", "2,05/01/2020 12:05 AM,10.0"),
        Quarantines(kept=2, reasons={}, check=utc_times("2020-01-05 13:30", "2020-01-05 00:05")),
        ingest={"timestamp_format": "%d/%m/%Y %I:%M %p"},
    ),
    # --- blank lines (no value in any field) are skipped and counted; a malformed line stops ingest -----------
    Case(
        "trailing_whitespace_line",
        lines(*GOOD, "   "),
        Quarantines(kept=3, reasons={}, metrics={"blank_lines_skipped": 1, "rows_in": 3}),
    ),
    Case(
        "blank_lines_between_rows",
        lines(GOOD[0], "", GOOD[1], " \t ", GOOD[2], "\u3000\u00a0", ""),  # and an empty line at the end
        Quarantines(kept=3, reasons={}, check=customers("1", "2", "1"), metrics={"blank_lines_skipped": 4}),
    ),
    Case(
        "rows_of_only_delimiters",  # what a spreadsheet writes for empty rows, with the right count or not
        lines(*GOOD, ",,", " , , ", '"","",""', ",,,,"),
        Quarantines(kept=3, reasons={}, metrics={"blank_lines_skipped": 4, "rows_in": 3}),
    ),
    Case(
        "blank_lines_before_the_header",
        raw(b"\xef\xbb\xbf\r\n  \r\n" + "\r\n".join([HEADER, *GOOD]).encode() + b"\r\n\r\n"),
        Quarantines(kept=3, reasons={}, check=customers("1", "2", "1"), metrics={"blank_lines_skipped": 3}),
    ),
    Case(
        "only_blank_lines_after_the_header",
        lines("", "  ", ",,"),
        Fails("ingest", "{src}: has a header but no data rows; point ingest.source at a non-empty log"),
    ),
    Case(
        "a_value_of_blank_lines_is_not_a_blank_line",
        lines('1,2020-01-05,10.0,"\n  \n"', '2,2020-01-06,20.0,""', header=HEADER + ",note"),
        Quarantines(kept=2, reasons={}, metrics={"blank_lines_skipped": 0, "rows_in": 2}),
    ),
    Case(
        "a_line_with_an_extra_field",
        lines(*GOOD, "4,2020-01-07,5.0,gift"),
        Fails(
            "ingest",
            "{src}: a line has 4 fields where the header has 3: '4,2020-01-07,5.0,gift'; quote values that contain "
            "',', or check ingest.csv_delimiter",
        ),
    ),
    Case(
        "a_truncated_last_line",
        raw("\n".join([HEADER, *GOOD, "4,2020-01"]).encode()),
        Fails(
            "ingest",
            "{src}: a line has 2 fields where the header has 3: '4,2020-01'; quote values that contain ',', or check "
            "ingest.csv_delimiter",
        ),
    ),
    Case(
        "a_quote_that_is_not_closed",
        lines(GOOD[0], '2,2020-01-06,"20.0', GOOD[2], '4,"5 inch,3.0'),
        Fails(
            "ingest",
            "{src}: a quoted value from the line '2,2020-01-06,\"20.0' runs on over 2 more line(s), leaving 4 fields "
            'where the header has 3: a quote that is not closed? close it, or double a quote meant as text ("")',
        ),
    ),
    Case(
        "quoted_values_with_quotes_delimiters_and_line_breaks",
        lines(
            '1,2020-01-05,10.0,"said ""hi"", then\nleft"',
            '2,2020-01-06,20.0,"a\r\nb,c"',
            "3,2020-01-07,5.0,plain",
            header=HEADER + ",note",
        ),
        Quarantines(kept=3, reasons={}, check=amounts(10.0, 20.0, 5.0), metrics={"rows_in": 3}),
    ),
    # --- valid files that do not fit Arrow's fast path: read again, not refused ---------------------------------
    Case(
        "quoted_line_breaks_in_a_file_larger_than_a_block",  # 2.7 MB: Arrow cuts its 1 MiB blocks at line breaks
        lambda: notes_with_line_breaks(60_000),
        Quarantines(kept=60_000, reasons={}, metrics={"rows_in": 60_000, "blank_lines_skipped": 0}),
    ),
    Case(
        "quoted_line_breaks_in_a_large_gzip",
        lambda: gzip.compress(notes_with_line_breaks(60_000)),
        Quarantines(kept=60_000, reasons={}),
        suffix=".csv.gz",
    ),
    Case(
        "a_3_mb_field",  # longer than Arrow's 1 MiB block
        lines("1,2020-01-05,10.0,short", "2,2020-01-06,20.0," + "x" * 3_000_000, header=HEADER + ",note"),
        Quarantines(kept=2, reasons={}, check=amounts(10.0, 20.0)),
    ),
    # --- a quote that is not closed: its value runs on to the end of the file, never silently -------------------
    Case(
        "a_quote_not_closed_before_the_last_line",  # Arrow ends the value at the end of the file, and kept 2 of 3
        lines(
            "1,2020-01-05,10.0,ok", '2,2020-01-06,20.0,"unclosed note', "1,2020-02-01,15.0,ok", header=HEADER + ",note"
        ),
        Fails(
            "ingest",
            "{src}: a quote is not closed: the value of 'note' in the last row runs from 'unclosed note' over 1 "
            'more line(s) to the end of the file; close the quote, or double a quote meant as text ("")',
        ),
    ),
    Case(
        "a_quote_not_closed_near_the_top_of_a_large_file",  # Arrow's fast path kept 55,854 of 100,000 rows, silently
        lambda: unclosed_quote_at(5),
        Fails(
            "ingest",
            "{src}: a quote is not closed: the value of 'note' in the last row runs from 'never closed' over 99994 "
            'more line(s) to the end of the file; close the quote, or double a quote meant as text ("")',
        ),
    ),
    Case(
        "a_quote_not_closed_in_the_middle_of_a_large_file",  # the fast path kept 62,158 of 100,000 rows
        lambda: unclosed_quote_at(50_000),
        Fails(
            "ingest",
            "{src}: a quote is not closed: the value of 'note' in the last row runs from 'never closed' over 49999 "
            'more line(s) to the end of the file; close the quote, or double a quote meant as text ("")',
        ),
    ),
    # --- customer ids: every Unicode whitespace and invisible character, one spelling (NFC), no control bytes ----
    Case(
        "ids_of_unicode_whitespace_or_invisible_characters",
        lines(
            *GOOD,
            *(
                f"{blank},2020-01-07,5.0"
                for blank in ("\u3000", "\u2003", "\ufeff", "\u200b", "\u00a0\u2009", "\u2060\u200e")
            ),
        ),
        Quarantines(kept=3, reasons={s.MISSING_CUSTOMER_ID: 6}),
    ),
    Case(
        "ids_trimmed_of_unicode_whitespace_and_invisible_characters",
        lines(
            "\u30001\u200b,2020-01-05,10.0",
            "\ufeff2,2020-01-06,20.0",
            "1\u2003,2020-02-01,15.0",
            "\u202f1.0,2020-02-02,1.0",
        ),
        Quarantines(kept=4, reasons={}, check=customers("1", "2", "1", "1")),
    ),
    Case(
        "ids_spelled_in_nfc_and_nfd",  # "José" with a composed é, and with e + a combining acute accent
        lines("Jos\u00e9,2020-01-05,10.0", "Jose\u0301,2020-01-06,20.0", "\u212bngstr\u00f6m,2020-01-07,5.0"),
        Quarantines(kept=3, reasons={}, check=customers("Jos\u00e9", "Jos\u00e9", "\u00c5ngstr\u00f6m")),
    ),
    Case(
        "ids_with_control_characters",
        lines(
            *GOOD,
            *(f"{bad},2020-01-07,5.0" for bad in ("a\x00b", "\x00", "7\x00", '"a\tb"', "x\x1fy", "\x7f", "a\x85b")),
        ),
        Quarantines(kept=3, reasons={s.INVALID_CUSTOMER_ID: 7}),
    ),
    Case(
        "control_characters_before_other_faults",  # the id's reason comes first, as for a missing id
        lines(*GOOD, "a\x00b,not a date,5.0", "c\x01,2020-01-07,abc"),
        Quarantines(kept=3, reasons={s.INVALID_CUSTOMER_ID: 2}),
    ),
    Case(
        "invisible_characters_inside_an_id_are_kept",  # a zero-width joiner is part of some scripts' spelling
        lines("a\u200db,2020-01-05,10.0", "ab,2020-01-06,20.0"),
        Quarantines(kept=2, reasons={}, check=customers("a\u200db", "ab")),
    ),
    Case(
        "parquet_ids_with_control_characters_and_nfd",
        parquet(
            customer_id=pa.array(["Jose\u0301", "a\x00b", "\u3000"]),
            date=pa.array([dt.date(2020, 1, 5)] * 3, type=pa.date32()),
            amount=pa.array([10.0, 20.0, 5.0]),
        ),
        Quarantines(kept=1, reasons={s.INVALID_CUSTOMER_ID: 1, s.MISSING_CUSTOMER_ID: 1}, check=customers("Jos\u00e9")),
        suffix=".parquet",
    ),
    Case(
        "duplicates_whose_ids_differ_in_spelling_only",
        lines(
            "A1,S1,2,2020-01-05 10:00:00,1.5,Jos\u00e9",
            "A1,S1,2,2020-01-05 10:00:00,1.5,Jose\u0301\u3000",
            header=OR_HEADER,
        ),
        Quarantines(kept=1, reasons={s.DUPLICATE: 1}),
        ingest=OR_LAYOUT,
    ),
    Case(
        "timestamps_and_amounts_with_unicode_spaces",
        lines("1,\u20032020-01-05\u3000,\u00a010.0\u200b", "2,2020-01-06\ufeff,20.0\u2009"),
        Quarantines(kept=2, reasons={}, check=amounts(10.0, 20.0)),
    ),
    # --- local times when clocks change: kept, resolved by one rule, and counted ---------------------------------
    Case(
        "clock_changes_in_athens",
        lines(
            "1,2020-10-25 03:30:00,10.0",  # clocks go back at 04:00 EEST to 03:00 EET: 03:30 happens twice
            "2,2020-03-29 03:30:00,20.0",  # clocks go forward at 03:00 EET to 04:00 EEST: 03:30 never happens
            "3,2020-10-25 02:30:00,5.0",
            "4,2020-03-29 02:30:00,5.0",
            "5,2020-07-01 12:00:00,5.0",
            "6,2020-10-25 03:15:00,abc",  # quarantined: not counted
        ),
        Quarantines(
            kept=5,
            reasons={s.NON_NUMERIC_AMOUNT: 1},
            # the later of the two instants; the offset before the change (03:30 EET, i.e. 04:30 EEST)
            check=utc_times(
                "2020-10-25 01:30", "2020-03-29 01:30", "2020-10-24 23:30", "2020-03-29 00:30", "2020-07-01 09:00"
            ),
            metrics={"local_times_ambiguous": 1, "local_times_nonexistent": 1},
        ),
        ingest={"timestamp_format": "%Y-%m-%d %H:%M:%S", "timezone": "Europe/Athens"},
    ),
    Case(
        "clock_changes_in_new_york",
        lines("1,2020-11-01 01:30:00,10.0", "2,2020-03-08 02:30:00,20.0", "3,2020-11-01 01:30:00,5.0"),
        Quarantines(
            kept=3,
            reasons={},
            check=utc_times("2020-11-01 06:30", "2020-03-08 07:30", "2020-11-01 06:30"),
            metrics={"local_times_ambiguous": 2, "local_times_nonexistent": 1},
        ),
        ingest={"timestamp_format": "%Y-%m-%d %H:%M:%S", "timezone": "America/New_York"},
    ),
    Case(
        "half_hour_clock_changes",  # Lord Howe Island moves its clocks by 30 minutes
        lines("1,2020-04-05 01:45:00,10.0", "2,2020-10-04 02:15:00,20.0", "3,2020-10-04 02:45:00,5.0"),
        Quarantines(
            kept=3,
            reasons={},
            check=utc_times("2020-04-04 15:15", "2020-10-03 15:45", "2020-10-03 15:45"),
            metrics={"local_times_ambiguous": 1, "local_times_nonexistent": 1},
        ),
        ingest={"timestamp_format": "%Y-%m-%d %H:%M:%S", "timezone": "Australia/Lord_Howe"},
    ),
    Case(
        "clock_changes_with_offsets_in_the_log",  # an offset makes the time exact: only the one without counts
        lines(
            "1,2020-10-25 03:30:00+03:00,10.0",
            "2,2020-10-25 03:30:00+02:00,20.0",
            "3,2020-10-25 03:30:00,5.0",
        ),
        Quarantines(
            kept=3,
            reasons={},
            check=utc_times("2020-10-25 00:30", "2020-10-25 01:30", "2020-10-25 01:30"),
            metrics={"local_times_ambiguous": 1, "local_times_nonexistent": 0},
        ),
        ingest={"timestamp_format": "%Y-%m-%d %H:%M:%S%z", "timezone": "Europe/Athens"},
    ),
    Case(
        "clock_changes_in_parquet_naive_timestamps",
        parquet(
            customer_id=pa.array(["1", "2"]),
            date=pa.array([dt.datetime(2020, 10, 25, 3, 30), dt.datetime(2020, 3, 29, 3, 30)], type=pa.timestamp("ms")),
            amount=pa.array([10.0, 20.0]),
        ),
        Quarantines(
            kept=2,
            reasons={},
            check=utc_times("2020-10-25 01:30", "2020-03-29 01:30"),
            metrics={"local_times_ambiguous": 1, "local_times_nonexistent": 1},
        ),
        ingest={"timezone": "Europe/Athens"},
        suffix=".parquet",
    ),
    Case(
        "clock_changes_are_nothing_in_utc",
        lines("1,2020-10-25 03:30:00,10.0", "2,2020-03-29 03:30:00,20.0"),
        Quarantines(
            kept=2,
            reasons={},
            check=utc_times("2020-10-25 03:30", "2020-03-29 03:30"),
            metrics={"local_times_ambiguous": 0, "local_times_nonexistent": 0},
        ),
        ingest={"timestamp_format": "%Y-%m-%d %H:%M:%S"},
    ),
]
