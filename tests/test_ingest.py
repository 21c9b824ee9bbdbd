"""Reading the source: Arrow's block-wise CSV reader, retried where a valid file does not fit its fast path."""

from __future__ import annotations

import copy
import gzip
import logging
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest

from features.errors import InputError
from pipeline import ingest, io
from pipeline.config import BaseConfig, IngestConfig, section

HEADER = "customer_id,date,amount,note\n"


def quoted_line_breaks(rows: int) -> str:
    """Every row's note has a line break in quotes, so roughly every other line break is inside a value."""
    return HEADER + "".join(f'{i},2020-01-05,{i}.5,"line one\nline two"\n' for i in range(rows))


def test_quoted_line_breaks_across_blocks_are_read_again_quote_aware(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    src = tmp_path / "notes.csv"
    src.write_text(quoted_line_breaks(200))  # 8 KB: 32 blocks of 256 bytes
    header = ingest._csv_header(src, ",", "utf-8", gzipped=False)
    with pytest.raises(pa.ArrowInvalid, match="out of sync with chunker"):  # the fast path alone fails
        ingest._arrow_csv(src, False, header, ",", "utf-8", 256, False, ingest._LineHandler(",")).read_all()
    with caplog.at_level(logging.INFO, logger="ingest"):
        raw = ingest.read_source(str(src), ",", "utf-8", block_bytes=256)
    assert raw.table.num_rows == 200 and raw.blank_lines == 0
    assert raw.table["note"].unique().to_pylist() == ["line one\nline two"]
    assert raw.table["amount"].to_pylist()[-1] == "199.5"
    assert "reading again with quote-aware block cutting" in caplog.text


def test_quoted_line_breaks_in_a_gzip_are_read_again(tmp_path: Path) -> None:
    src = tmp_path / "notes.csv.gz"
    src.write_bytes(gzip.compress(quoted_line_breaks(200).encode()))
    assert ingest.read_source(str(src), ",", "utf-8", block_bytes=256).table.num_rows == 200


def test_a_record_longer_than_a_block_is_read_in_larger_blocks(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    src = tmp_path / "long.csv"
    src.write_text(HEADER + "1,2020-01-05,1.0,short\n" + "2,2020-01-06,2.0," + "x" * 5000 + "\n")
    with caplog.at_level(logging.INFO, logger="ingest"):
        raw = ingest.read_source(str(src), ",", "utf-8", block_bytes=1024)  # 1 KiB, then 16 KiB
    assert [len(v) for v in raw.table["note"].to_pylist()] == [5, 5000]
    assert "reading again in blocks of 16 KiB" in caplog.text


def test_a_record_longer_than_the_largest_block_stops_the_retries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingest, "MAX_CSV_BLOCK_BYTES", 4096)
    src = tmp_path / "huge.csv"
    src.write_text(HEADER + "1,2020-01-05,1.0," + "x" * 10_000 + "\n")
    with pytest.raises(InputError, match=r"huge.csv: a record is longer than 4 KiB, so a quote probably never"):
        ingest.read_source(str(src), ",", "utf-8", block_bytes=256)  # 256 bytes, 4 KiB, then no further


def test_the_rows_lost_by_arrows_fast_path_are_found_by_counting_lines(tmp_path: Path) -> None:
    src = tmp_path / "unclosed.csv"
    src.write_text(
        HEADER + '0,2020-01-05,1.0,"never closed\n' + "".join(f"{i},2020-01-06,2.0,ok\n" for i in range(1, 1000))
    )
    header = ingest._csv_header(src, ",", "utf-8", gzipped=False)
    # Arrow's fast path either stops out of sync, or reads on without an error, the rest of a block gone
    try:
        fast = ingest._arrow_csv(src, False, header, ",", "utf-8", 256, False, ingest._LineHandler(",")).read_all()
        assert fast.num_rows < 1000
    except pa.ArrowInvalid as exc:
        assert "out of sync with chunker" in str(exc)
    with pytest.raises(InputError, match=r"a quote is not closed: the value of 'note' in the last row runs from"):
        ingest.read_source(str(src), ",", "utf-8", block_bytes=256)


@pytest.mark.parametrize(
    ("content", "lines"),
    [
        (b"", 0),
        (b"a", 1),
        (b"a\n", 1),
        (b"a\r\nb\rc\n\n", 4),
        (b"a" * ((1 << 20) - 1) + b"\r\nb", 2),  # a CRLF split between two reads is one line end
    ],
)
def test_file_lines_are_counted_at_lf_crlf_and_cr(tmp_path: Path, content: bytes, lines: int) -> None:
    src = tmp_path / "lines.csv"
    src.write_bytes(content)
    counted = ingest._file_lines(src, False, "utf-8")
    assert counted is not None and counted.lines == lines


def test_file_lines_are_not_counted_where_a_line_break_is_not_its_ascii_byte(tmp_path: Path) -> None:
    src = tmp_path / "lines.csv"
    src.write_bytes("a\nb\n".encode("utf-16"))
    assert ingest._file_lines(src, False, "utf-16") is None
    assert ingest._file_lines(src, False, "utf-8-sig") is not None


def test_clock_changes_are_counted_and_logged(
    tmp_path: Path, params: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    src = tmp_path / "athens.csv"
    src.write_text("id,when,spend\n1,2020-10-25 03:30:00,1.0\n2,2020-03-29 03:10:00,2.0\n3,2020-03-29 03:50:00,3.0\n")
    params["ingest"].update(source=str(src), timestamp_format="%Y-%m-%d %H:%M:%S", timezone="Europe/Athens")
    params["ingest"]["columns"].update(customer_id="id", timestamp="when", amount="spend")
    with caplog.at_level(logging.INFO, logger="ingest"):
        out = ingest.run(
            section(params, "base", BaseConfig),
            section(params, "ingest", IngestConfig),
            tmp_path / "t.parquet",
            tmp_path / "q.parquet",
            tmp_path / "m.json",
        )
    assert (out["local_times_ambiguous"], out["local_times_nonexistent"]) == (1, 2)
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "1 kept times fell where clocks in Europe/Athens go back" in warning.getMessage()
    assert "and 2 where they go forward" in warning.getMessage()


# --- streaming: the log is read, classified and written in batches ---------------------------------------------------


def _log(rows: int) -> pd.DataFrame:
    """A log with a bad row every 7th line, a repeated line every 11th, and the customer id as a category."""
    ids = [f"c{i % 50:02d}" for i in range(rows)]
    days = [f"2020-01-{1 + i % 28:02d}" for i in range(rows)]
    amounts = [f"{i % 9}.5" if i % 7 else "n/a" for i in range(rows)]
    frame = pd.DataFrame({"customer_id": ids, "date": days, "amount": amounts, "line": [str(i) for i in range(rows)]})
    frame.loc[frame.index % 11 == 10, "line"] = frame["line"].shift(1)  # the line before, again
    frame["customer_id"] = frame["customer_id"].astype("category")  # a dictionary column in Parquet
    return frame


def _ingest(tmp_path: Path, params: dict[str, Any], source: Path, out: str) -> tuple[pd.DataFrame, pd.DataFrame, Any]:
    params["ingest"].update(
        source=str(source),
        timestamp_format="%Y-%m-%d",
        duplicate_key=["line"],
        columns={
            "customer_id": "customer_id",
            "timestamp": "date",
            "amount": "amount",
            "quantity": None,
            "unit_price": None,
            "order_id": "line",
        },
    )
    (tmp_path / out).mkdir()
    metrics = ingest.run(
        section(params, "base", BaseConfig),
        section(params, "ingest", IngestConfig),
        tmp_path / out / "t.parquet",
        tmp_path / out / "q.parquet",
        tmp_path / out / "m.json",
    )
    return pd.read_parquet(tmp_path / out / "t.parquet"), pd.read_parquet(tmp_path / out / "q.parquet"), metrics


def test_small_batches_in_and_out_give_the_same_outputs(
    tmp_path: Path, params: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "log.parquet"
    _log(2000).to_parquet(source, index=False, row_group_size=300)
    whole = _ingest(tmp_path, copy.deepcopy(params), source, "whole")
    monkeypatch.setattr(ingest, "PARQUET_BATCH_ROWS", 97)  # 21 batches in, none aligned with the row groups
    monkeypatch.setattr(io, "WRITE_BATCH_ROWS", 64)  # and 24 batches out of DuckDB for the kept rows
    batched = _ingest(tmp_path, copy.deepcopy(params), source, "batched")
    pd.testing.assert_frame_equal(whole[0], batched[0])
    pd.testing.assert_frame_equal(whole[1], batched[1])
    assert whole[2] == batched[2]
    tx, q, m = batched
    # 286 unreadable amounts (every 7th line); of the 181 repeated lines, 26 are unreadable themselves and 26 repeat
    # an unreadable line, which makes them no duplicate: 129. The kept rows in file order.
    assert m["quarantined_by_reason"]["non_numeric_amount"] == 286
    repeats = [i for i in range(2000) if i % 11 == 10 and i % 7 and (i - 1) % 7]
    assert m["quarantined_by_reason"]["duplicate"] == len(repeats) == 129
    assert m["rows_kept"] == len(tx) == 2000 - 286 - 129
    assert q["source_row"].is_monotonic_increasing
    assert q.loc[q["reason"] == "non_numeric_amount", "source_row"].tolist() == list(range(0, 2000, 7))
    assert q.loc[q["reason"] == "duplicate", "source_row"].tolist() == repeats
    assert tx["order_id"].astype(int).is_monotonic_increasing
