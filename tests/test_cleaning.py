"""Ingest rules on a hand-made messy log whose outcome is known line by line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from features import schemas as s
from features.errors import InputError
from pipeline import ingest
from pipeline.config import BaseConfig, IngestConfig, section
from tests.conftest import ONLINE_RETAIL_INGEST, project_params

MESSY = """InvoiceNo,StockCode,Quantity,InvoiceDate,UnitPrice,CustomerID
A1,S1,2,2011-01-01 10:00:00,1.5,100.0
A1,S1,2,2011-01-01 10:00:00,1.5,100.0
A2,S1,1,2011-01-02 10:00:00,2.0,
A3,S1,1,not a date,2.0,101
A4,S1,x,2011-01-03 10:00:00,2.0,101
C5,S1,-1,2011-01-04 10:00:00,2.0,100
A6,S1,1,2011-01-05 10:00:00,0,101
A7,S1,1,2011-01-05 10:00:00,2.0, NaN
A8,S1,1,bad,x,
A9,S1,3,2011-01-06 10:00:00,inf,102
A10,S2,1,2011-01-06 11:00:00,4.0,102
"""


def messy_config(params: dict[str, Any], path: Path, **overrides: object) -> IngestConfig:
    cfg = params["ingest"]
    cfg.update(
        source=str(path),
        columns=dict(ONLINE_RETAIL_INGEST["columns"]),  # the messy log mimics Online Retail's layout
        timestamp_format="%Y-%m-%d %H:%M:%S",
        duplicate_key=["InvoiceNo", "StockCode", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID"],
        cancellation_prefix="C",
    )
    cfg.update(overrides)
    return section(params, "ingest", IngestConfig)


def run_ingest(tmp_path: Path, cfg: IngestConfig) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    out = ingest.run(
        section(project_params(), "base", BaseConfig),
        cfg,
        tmp_path / "tx.parquet",
        tmp_path / "q.parquet",
        tmp_path / "m.json",
    )
    return pd.read_parquet(tmp_path / "tx.parquet"), pd.read_parquet(tmp_path / "q.parquet"), out


def test_reason_counts_drop_returns_and_zero(tmp_path: Path, params: dict[str, Any]) -> None:
    src = tmp_path / "messy.csv"
    src.write_text(MESSY)
    cfg = messy_config(params, src, returns="drop", zero_amount="quarantine")
    tx, q, m = run_ingest(tmp_path, cfg)
    assert m["rows_in"] == 11
    assert m["quarantined_by_reason"] == {
        s.MISSING_CUSTOMER_ID: 3,  # empty, " NaN", and A8 whose other fields are bad too: first reason wins
        s.INVALID_CUSTOMER_ID: 0,
        s.UNPARSEABLE_TIMESTAMP: 1,
        s.TIMESTAMP_OUT_OF_RANGE: 0,
        s.NON_NUMERIC_AMOUNT: 2,  # "x" and "inf"
        s.AMOUNT_OUT_OF_RANGE: 0,
        s.DUPLICATE: 1,
        s.CANCELLATION: 1,
        s.ZERO_AMOUNT: 1,
    }
    assert m["rows_kept"] == 2 and m["rows_quarantined"] == 9
    assert m["rows_in"] == m["rows_kept"] + m["rows_quarantined"]
    # A float-formatted id is the same customer as the integer one.
    assert tx[s.CUSTOMER_ID].tolist() == ["100", "102"]
    assert tx[s.AMOUNT].tolist() == [3.0, 4.0]
    assert tx[s.ORDER_ID].tolist() == ["A1", "A10"]
    assert str(tx[s.TS].dt.tz) == "UTC"
    # Quarantine keeps the original text and the line position (0 = first data line).
    assert q[s.SOURCE_ROW].tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    dup = q[q[s.REASON] == s.DUPLICATE].iloc[0]
    assert (dup["CustomerID"], dup["UnitPrice"]) == ("100.0", "1.5")
    assert q.loc[q[s.REASON] == s.NON_NUMERIC_AMOUNT, "Quantity"].tolist() == ["x", "3"]


def test_net_returns_keep_negative_amounts_and_zero_spend(tmp_path: Path, params: dict[str, Any]) -> None:
    src = tmp_path / "messy.csv"
    src.write_text(MESSY)
    cfg = messy_config(params, src, returns="net", zero_amount="keep")
    tx, _, m = run_ingest(tmp_path, cfg)
    assert m["rows_kept"] == 4 and m["rows_quarantined"] == 7
    assert tx[s.ORDER_ID].tolist() == ["A1", "C5", "A6", "A10"]
    assert tx[s.AMOUNT].tolist() == [3.0, -2.0, 0.0, 4.0]
    assert m["returns_kept"] == 1


def test_identical_lines_are_kept_without_a_duplicate_key(tmp_path: Path, params: dict[str, Any]) -> None:
    src = tmp_path / "messy.csv"
    src.write_text(MESSY)
    cfg = messy_config(params, src, duplicate_key=[])
    _, _, m = run_ingest(tmp_path, cfg)
    assert m["quarantined_by_reason"][s.DUPLICATE] == 0


def test_missing_column_names_the_param(tmp_path: Path, params: dict[str, Any]) -> None:
    src = tmp_path / "renamed.csv"
    src.write_text(MESSY.replace("CustomerID", "Customer"))
    cfg = messy_config(params, src)
    with pytest.raises(InputError, match=r"column 'CustomerID' \(ingest\.columns\.customer_id\) not found"):
        run_ingest(tmp_path, cfg)


def test_empty_and_header_only_files(tmp_path: Path, params: dict[str, Any]) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(InputError, match=r"empty.csv: the file is empty"):
        run_ingest(tmp_path, messy_config(params, empty))
    header = tmp_path / "header.csv"
    header.write_text(MESSY.splitlines()[0] + "\n")
    with pytest.raises(InputError, match=r"header.csv: has a header but no data rows"):
        run_ingest(tmp_path, messy_config(params, header))


def test_missing_file(tmp_path: Path, params: dict[str, Any]) -> None:
    with pytest.raises(InputError, match=r"nope.csv: file not found; set ingest.source"):
        run_ingest(tmp_path, messy_config(params, tmp_path / "nope.csv"))


def test_parquet_source_with_typed_columns(tmp_path: Path, params: dict[str, Any]) -> None:
    src = tmp_path / "typed.parquet"
    pd.DataFrame(
        {
            "cust": ["a", "b", None],
            "when": pd.to_datetime(["2020-01-01 23:30", "2020-01-02 00:00", "2020-01-03 00:00"]),
            "value": [1.0, float("nan"), 3.0],
        }
    ).to_parquet(src)
    params["ingest"].update(source=str(src), timezone="Europe/Berlin")
    params["ingest"]["columns"].update(customer_id="cust", timestamp="when", amount="value")
    tx, _, m = run_ingest(tmp_path, section(params, "ingest", IngestConfig))
    assert m["quarantined_by_reason"][s.NON_NUMERIC_AMOUNT] == 1
    assert m["quarantined_by_reason"][s.MISSING_CUSTOMER_ID] == 1
    # 23:30 in Berlin (UTC+1 in winter) is 22:30 UTC.
    assert tx[s.TS].iloc[0] == pd.Timestamp("2020-01-01 22:30", tz="UTC")


def test_all_rows_quarantined_is_an_error(tmp_path: Path, params: dict[str, Any]) -> None:
    src = tmp_path / "messy.csv"
    src.write_text(MESSY)
    cfg = messy_config(params, src, timestamp_format="%d/%m/%Y")
    with pytest.raises(InputError, match=r"all 11 rows were quarantined \(mostly 'unparseable_timestamp': 8\)"):
        run_ingest(tmp_path, cfg)


def test_online_retail_counts(tmp_path: Path, params: dict[str, Any], online_retail: Path) -> None:
    params["ingest"] = dict(ONLINE_RETAIL_INGEST)
    _, q, m = run_ingest(tmp_path, section(params, "ingest", IngestConfig))
    assert m["rows_in"] == 541_909
    assert m["quarantined_by_reason"][s.MISSING_CUSTOMER_ID] == 135_080
    assert m["rows_in"] == m["rows_kept"] + m["rows_quarantined"]
    assert len(q) == m["rows_quarantined"]
    assert m["customers"] == 4_372 - 1  # one CustomerID appears only on zero-price lines


def test_whitespace_is_unicodes_and_invisible_characters_are_format_characters() -> None:
    import unicodedata

    from features.cleaning import INVISIBLE, WHITESPACE

    # Python's isspace adds the four ASCII information separators (U+001C..U+001F), which are control characters
    white_space = {chr(c) for c in range(0x110000) if chr(c).isspace()} - set("\x1c\x1d\x1e\x1f")
    assert set(WHITESPACE) == white_space
    assert {unicodedata.category(c) for c in INVISIBLE} == {"Cf"}
