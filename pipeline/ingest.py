"""Stage ``ingest``: read the raw transaction log, validate it, write clean transactions and a quarantine.

Sources (``ingest.source``): a path to a ``.csv``, ``.csv.gz`` or ``.parquet`` file, or one of the builtin CDNOW
logs that ship inside the lifetimes wheel (``cdnow``: 23,570 customers; ``cdnow_sample``: 2,357 customers).
The name says CSV or Parquet, in any case (``.CSV.GZ``); whether a CSV is gzip-compressed is told by its first
bytes, so a gzip file named ``.csv`` is read, and so is plain text named ``.csv.gz``.

A CSV line with no value in any field (empty, whitespace only, or only delimiters such as ``,,``) is a blank line,
not a row: it is skipped, and counted in ``blank_lines_skipped`` of metrics/ingest.json and in the log line. A line
with another number of fields than the header stops the stage with the line's text.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import dataclasses
import gzip
import hashlib
import importlib.resources
import io
import logging
import re
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, TextIO

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from features import cleaning
from features import schemas as s
from features.cleaning import RAW, Classified, CleaningRules, check_source_columns, classify
from features.errors import InputError
from pipeline import cli
from pipeline.config import BaseConfig, IngestConfig, load_params, section
from pipeline.io import write_json, write_query

log = logging.getLogger("ingest")

# Builtin logs: file inside lifetimes/datasets, and the column names we give its whitespace-separated fields.
# In the 1/10 sample the customer is its own sample id (1..2357), as in lifetimes' summary of it.
BUILTIN_SOURCES: dict[str, tuple[str, list[str], bool]] = {
    "cdnow": ("CDNOW_master.txt", ["customer_id", "date", "number_of_cds", "dollar_value"], True),
    "cdnow_sample": (
        "CDNOW_sample.txt",
        ["master_id", "customer_id", "date", "number_of_cds", "dollar_value"],
        False,
    ),
}


def _builtin(name: str) -> tuple[pa.Table, str]:
    filename, names, has_header = BUILTIN_SOURCES[name]
    resource = importlib.resources.files("lifetimes") / "datasets" / filename
    data = resource.read_bytes()
    frame = pd.read_csv(
        io.BytesIO(data),
        sep=r"\s+",
        header=0 if has_header else None,
        names=names,
        dtype=str,
        keep_default_na=False,
    )
    return pa.Table.from_pandas(frame, preserve_index=False), hashlib.sha256(data).hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


_LINE_END = re.compile(rb"\r\n|\r|\n")


def _lines(fh: io.BufferedIOBase, chunk_bytes: int = 1 << 16) -> Iterator[bytes]:
    """The physical lines of a byte stream without their ends, split as Arrow splits them: at LF, CRLF and a lone CR.

    Read in chunks, so a file with lone CRs (an old Mac export), which has no LF at all, is not read whole; with
    ``read1``, so the header of a truncated .gz is read before the damage is (which read_source reports).
    Only for encodings in which a line break is the byte itself (not UTF-16 or UTF-32).
    """
    pending = b""
    for chunk in iter(lambda: fh.read1(chunk_bytes), b""):
        data = pending + chunk
        held = b"\r" if data.endswith(b"\r") else b""  # may be the first half of a CRLF split between two reads
        *complete, pending = _LINE_END.split(data[: len(data) - len(held)])
        pending += held
        yield from complete
    *complete, last = _LINE_END.split(pending)
    yield from complete
    if last:
        yield last


# What a file is, told by its first bytes: a name can say .csv of a gzip file, or .csv.gz of plain text.
MAGIC_BYTES = {
    b"\x1f\x8b": "gzip",
    b"PAR1": "parquet",
    b"PK\x03\x04": "zip",
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
}


def _content(path: Path) -> str | None:
    """The kind of file by its magic bytes (``'gzip'``, ``'parquet'``, ...), or None for anything else (text)."""
    with path.open("rb") as fh:
        head = fh.read(8)
    return next((kind for magic, kind in MAGIC_BYTES.items() if head.startswith(magic)), None)


def _open(path: Path, gzipped: bool) -> io.BufferedIOBase:
    return gzip.open(path, "rb") if gzipped else path.open("rb")


def _open_text(path: Path, gzipped: bool, encoding: str) -> TextIO:
    # newline="": a line ends at LF, CRLF or a lone CR, and keeps its end
    return gzip.open(path, "rt", encoding=encoding, newline="") if gzipped else path.open(encoding=encoding, newline="")


def _is_blank(line: str, delimiter: str) -> bool:
    """A line with no value in any field: empty, whitespace, or only delimiters and quotes (``,,`` or ``"",""``)."""
    return not line.replace(delimiter, "").replace('"', "").strip()


def _first_lines(path: Path, encoding: str, gzipped: bool) -> Iterator[str]:
    """The file's lines as text, without their ends, read no further than asked."""
    if codecs.lookup(encoding).name.startswith(("utf-16", "utf-32")):  # a line break is several bytes
        with _open_text(path, gzipped, encoding) as text:
            for line in text:
                yield line.rstrip("\r\n")
    else:  # only the header's bytes: a bad byte further down is read_source's to report, with its line
        with _open(path, gzipped) as fh:
            for raw in _lines(fh):
                yield raw.decode(encoding)


@dataclasses.dataclass(frozen=True)
class CsvHeader:
    names: list[str]
    blank_lines_before: int  # skipped and counted, like blank lines among the rows


def _csv_header(path: Path, delimiter: str, encoding: str, gzipped: bool) -> CsvHeader:
    blank_before = 0
    first_line = ""
    try:
        for line in _first_lines(path, encoding, gzipped):
            # A UTF-8 byte order mark would otherwise stick to the first column name.
            first_line = line.lstrip("\ufeff") if blank_before == 0 else line
            if not _is_blank(first_line, delimiter):
                break
            blank_before += 1
        else:
            first_line = ""
        header = next(csv.reader([first_line], delimiter=delimiter), None)
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{path}: header is not valid {encoding} ({exc.reason} at byte {exc.start}); "
            "set ingest.encoding to the file's encoding (e.g. latin-1)"
        ) from exc
    except (OSError, EOFError) as exc:
        raise InputError(f"{path}: cannot be read as {'gzip ' if gzipped else ''}CSV ({exc})") from exc
    if not header or all(not h.strip() for h in header):
        raise InputError(f"{path}: the file is empty (no header line); point ingest.source at a transaction log")
    if len(header) == 1:
        found = [d for d in SEPARATORS if d != delimiter and d in header[0]]
        if found:
            raise InputError(
                f"{path}: the header is one column {header[0]!r} with delimiter {delimiter!r}; it looks "
                f"{found[0]!r}-separated: set ingest.csv_delimiter to {found[0]!r}"
            )
    return CsvHeader([h.strip() for h in header], blank_before)


SEPARATORS = (",", ";", "\t", "|")


def _first_undecodable_line(path: Path, encoding: str, gzipped: bool) -> str:
    """Where a file stops being valid ``encoding``: 'line N (bytes ...)', for an error message."""
    with _open(path, gzipped) as fh:
        for number, line in enumerate(_lines(fh), start=1):
            try:
                line.decode(encoding)
            except UnicodeDecodeError as exc:
                return f"line {number} (bytes {line[max(0, exc.start - 10) : exc.end + 10]!r})"
    return "an unknown line"


READABLE = (".csv", ".csv.gz", ".parquet")


def _check_is_a_file(path: Path) -> None:
    if path.is_dir():
        inside = sorted(p.name for p in path.iterdir() if p.is_file() and p.name.lower().endswith(READABLE))
        if not inside:
            raise InputError(
                f"{path}: is a directory, with no .csv, .csv.gz or .parquet file in it; set ingest.source to a file"
            )
        raise InputError(
            f"{path}: is a directory; ingest reads one file: set ingest.source to one of the {len(inside)} .csv, "
            f".csv.gz or .parquet files in it, e.g. {path / inside[0]}"
        )
    if not path.is_file():
        builtins = ", ".join(BUILTIN_SOURCES)
        raise InputError(f"{path}: file not found; set ingest.source to an existing file or one of: {builtins}")


class Sink(Protocol):
    """Where the source's rows go, batch by batch. A read may start again (a CSV read with other options): ``start``
    then drops whatever was appended before."""

    def start(self, schema: pa.Schema) -> None: ...

    def append(self, batch: pa.Table) -> None: ...


class TableSink:
    """The rows held as one Arrow table: for small logs and tests."""

    def __init__(self) -> None:
        self.schema = pa.schema([])
        self._parts: list[pa.Table] = []

    def start(self, schema: pa.Schema) -> None:
        self.schema, self._parts = schema, []

    def append(self, batch: pa.Table) -> None:
        self._parts.append(batch)

    def table(self) -> pa.Table:
        return pa.concat_tables(self._parts) if self._parts else self.schema.empty_table()


class DuckDBSink:
    """The rows appended to the table ``cleaning.RAW`` of a DuckDB connection, each with its position among the data
    rows (``schemas.SOURCE_ROW``), so that no more than a batch of the log is held in Python's memory. The columns
    are checked against the rules before any row is stored (a duplicated or reserved name is not a table column)."""

    def __init__(self, con: duckdb.DuckDBPyConnection, rules: CleaningRules, source: str) -> None:
        self.con, self.rules, self.source = con, rules, source
        self.rows = 0

    def start(self, schema: pa.Schema) -> None:
        check_source_columns(schema.names, self.rules, self.source)
        self.rows = 0
        self.con.execute(f"DROP TABLE IF EXISTS {RAW}")
        self.con.register("_batch", self._numbered(schema.empty_table()))
        self.con.execute(f"CREATE TABLE {RAW} AS SELECT * FROM _batch")
        self.con.unregister("_batch")

    def append(self, batch: pa.Table) -> None:
        if batch.num_rows == 0:
            return
        self.con.register("_batch", self._numbered(batch))
        self.con.execute(f"INSERT INTO {RAW} SELECT * FROM _batch")
        self.con.unregister("_batch")
        self.rows += batch.num_rows

    def _numbered(self, batch: pa.Table) -> pa.Table:
        positions = pa.array(np.arange(self.rows, self.rows + batch.num_rows, dtype=np.int64))
        return batch.append_column(s.SOURCE_ROW, positions)


class ParquetSink:
    """The rows written to one Parquet file as they come, numbered (``schemas.SOURCE_ROW``), the columns under their
    positions (``cleaning.ORIGINAL``): the staged copy of a CSV that Spark's executors read. Checks the columns
    against the rules before any row is written, as ``DuckDBSink`` does."""

    def __init__(self, path: Path, rules: CleaningRules, source: str) -> None:
        self.path, self.rules, self.source = path, rules, source
        self.rows = 0
        self._writer: pq.ParquetWriter | None = None

    def start(self, schema: pa.Schema) -> None:
        check_source_columns(schema.names, self.rules, self.source)
        self.close()
        self.rows = 0
        fields = [pa.field(cleaning.ORIGINAL.format(i), f.type) for i, f in enumerate(schema)]
        self._schema = pa.schema([(s.SOURCE_ROW, pa.int64()), *fields])
        self._writer = pq.ParquetWriter(self.path, self._schema)

    def append(self, batch: pa.Table) -> None:
        if batch.num_rows == 0:
            return
        assert self._writer is not None, "start() comes first"
        positions = pa.array(np.arange(self.rows, self.rows + batch.num_rows, dtype=np.int64))
        table = pa.Table.from_arrays([positions, *batch.columns], schema=self._schema)
        self._writer.write_table(table, row_group_size=STAGED_ROW_GROUP_ROWS)
        self.rows += batch.num_rows

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


@dataclasses.dataclass(frozen=True)
class SourceRead:
    """What reading the source found besides its rows: their columns and types, the file's sha256, and the blank
    lines skipped (a CSV line with no value in any field: empty, whitespace, or only delimiters such as ``,,``).
    The file's lines are its header, its rows (with the line breaks in their quoted values) and its blank lines,
    which the CSV reader checks."""

    schema: pa.Schema
    sha256: str
    blank_lines: int


@dataclasses.dataclass(frozen=True)
class RawLog:
    """The source as read into memory: a row per data line (text columns) or per stored row (Parquet's types)."""

    table: pa.Table
    sha256: str
    blank_lines: int


# Arrow parses a CSV in blocks of this many bytes (its default), cut at line breaks.
CSV_BLOCK_BYTES = 1 << 20
# A record longer than this is not a purchase but a quote that never closes, running on to the end of the file.
MAX_CSV_BLOCK_BYTES = 1 << 28
# Rows per batch read from a Parquet source.
PARQUET_BATCH_ROWS = 1 << 17
# Rows per row group of the staged copy of a CSV that Spark reads: its executors split a file at row groups.
STAGED_ROW_GROUP_ROWS = 1 << 17


def read_source(source: str, delimiter: str, encoding: str, block_bytes: int = CSV_BLOCK_BYTES) -> RawLog:
    """The raw log as one Arrow table (text columns for CSV, stored types for Parquet) and its sha256: for small
    logs; the stage streams it into DuckDB instead (``stream_source``)."""
    sink = TableSink()
    read = stream_source(source, delimiter, encoding, sink, block_bytes)
    return RawLog(sink.table(), read.sha256, read.blank_lines)


def stream_source(
    source: str, delimiter: str, encoding: str, sink: Sink, block_bytes: int = CSV_BLOCK_BYTES
) -> SourceRead:
    """Read the raw log batch by batch into ``sink``: text columns for CSV, stored types for Parquet (dictionary
    columns decoded). Memory holds one batch, whatever the file's size.

    ``block_bytes`` is where a CSV read starts (tests use small blocks to reach the retries without large files).
    """
    if source in BUILTIN_SOURCES:
        table, sha256 = _builtin(source)
        sink.start(table.schema)
        sink.append(table)
        return SourceRead(table.schema, sha256, blank_lines=0)
    path = Path(source)
    _check_is_a_file(path)
    name = path.name.lower()
    if name.endswith(".parquet"):
        return SourceRead(_stream_parquet(path, sink), _sha256(path), blank_lines=0)
    if not name.endswith((".csv", ".csv.gz")):
        raise InputError(f"{path}: unsupported file type; ingest reads .csv, .csv.gz and .parquet")
    gzipped = _is_gzip_csv(path)
    header = _csv_header(path, delimiter, encoding, gzipped)
    blank = _read_csv(path, gzipped, header, delimiter, encoding, block_bytes, sink)
    schema = pa.schema([(n, pa.string()) for n in header.names])
    return SourceRead(schema, _sha256(path), header.blank_lines_before + blank)


def _decoded(schema: pa.Schema) -> pa.Schema:
    """The schema with dictionary columns as their values' type: a batch's dictionary is its own, not the file's."""
    return pa.schema(
        [f.with_type(f.type.value_type) if pa.types.is_dictionary(f.type) else f for f in schema],
        metadata=schema.metadata,
    )


def _stream_parquet(path: Path, sink: Sink) -> pa.Schema:
    try:
        parquet = pq.ParquetFile(path)
        schema = _decoded(parquet.schema_arrow)
        sink.start(schema)
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS):
            sink.append(pa.Table.from_batches([batch]).cast(schema))
    except pa.ArrowException as exc:
        raise _unreadable_parquet(path, exc) from exc
    return schema


def _unreadable_parquet(path: Path, exc: pa.ArrowException) -> InputError:
    reason = re.sub(r"^Could not open Parquet input source '.*?': ", "", str(exc).splitlines()[0])
    return InputError(f"{path}: not a readable Parquet file ({reason})")


def _parquet_source(path: Path) -> tuple[pa.Schema, int]:
    """A Parquet source's columns (dictionary columns decoded) and rows, from its footer."""
    try:
        parquet = pq.ParquetFile(path)
        return _decoded(parquet.schema_arrow), parquet.metadata.num_rows
    except pa.ArrowException as exc:
        raise _unreadable_parquet(path, exc) from exc


def _is_gzip_csv(path: Path) -> bool:
    """Whether a file named as a CSV is gzip-compressed; a one-line error if it is not CSV text at all."""
    content = _content(path)
    if content == "parquet":
        raise InputError(f"{path}: is a Parquet file, not CSV text; rename it to end in .parquet")
    if content == "zip":
        raise InputError(
            f"{path}: is a zip archive (an Excel workbook?), not CSV text; save the sheet as CSV, or unzip the CSV "
            "in it"
        )
    if content not in (None, "gzip"):
        raise InputError(
            f"{path}: is {content}-compressed, not gzip or CSV text; decompress it, or recompress it with gzip "
            "(ingest reads .csv, .csv.gz and .parquet)"
        )
    return content == "gzip"


def _read_csv(
    path: Path,
    gzipped: bool,
    header: CsvHeader,
    delimiter: str,
    encoding: str,
    block_bytes: int,
    sink: Sink,
) -> int:
    """Stream the CSV's rows as text columns into ``sink``; return the blank lines skipped among them.

    The first read assumes that line breaks end records, which lets Arrow cut the file into blocks at any line
    break. A quoted value with a line break in it breaks that when a block boundary falls inside it ("CSV parser
    got out of sync with chunker", or a malformed line), so the file is read again with quote-aware cutting
    (``newlines_in_values``). A record longer than a block ("straddling object") is read again with 16x larger
    blocks. Each read is checked against the file's own count of lines, because the fast path can also lose the
    rest of a block without an error when a quote is not closed. A read that starts again starts the sink again.
    """
    try:
        in_file = _file_lines(path, gzipped, encoding)
    except (OSError, EOFError) as exc:  # e.g. a truncated .gz
        raise _damaged(path, exc) from exc
    schema = pa.schema([(n, pa.string()) for n in header.names])
    newlines_in_values = False
    while True:
        lines = _LineHandler(delimiter)
        sink.start(schema)
        seen = _CsvRead()
        try:
            reader = _arrow_csv(path, gzipped, header, delimiter, encoding, block_bytes, newlines_in_values, lines)
            for batch in reader:
                seen.add(pa.Table.from_batches([batch]), sink)
        except (OSError, EOFError) as exc:
            raise _damaged(path, exc) from exc
        except pa.ArrowInvalid as exc:
            message = str(exc)
            # A block cut inside a quoted value shows as Arrow's "out of sync", or as a line with too few fields
            # (the value's second half), which the quote-aware read tells apart from a line that really is wrong.
            if ("out of sync with chunker" in message or lines.malformed is not None) and not newlines_in_values:
                log.info("%s: reading again with quote-aware block cutting (%s)", path, message.splitlines()[0].strip())
                newlines_in_values = True
            elif "straddling object" in message and block_bytes < MAX_CSV_BLOCK_BYTES:
                block_bytes *= 16
                log.info(
                    "%s: a record is longer than a block; reading again in blocks of %s", path, _bytes(block_bytes)
                )
            else:
                raise _csv_error(path, exc, lines, delimiter, encoding, gzipped) from exc
            continue
        if in_file is not None:
            if seen.last is not None:
                _check_last_value_is_closed(path, seen.last, in_file)
            read = header.blank_lines_before + 1 + seen.rows + seen.breaks + lines.blank_lines
            if read != in_file.lines and not newlines_in_values:
                log.info(
                    "%s: %d lines read as %d; reading again with quote-aware block cutting", path, in_file.lines, read
                )
                newlines_in_values = True
                continue
            if read != in_file.lines:
                raise InputError(
                    f"{path}: has {in_file.lines} lines, but its header, rows and blank lines account for {read}; the "
                    'quoting is broken somewhere (a quote that is not closed?): check the quotes ("")'
                )
        return lines.blank + seen.blank_rows


@dataclasses.dataclass
class _CsvRead:
    """One pass over a CSV: rows as parsed (blank ones included), line breaks inside values, blank rows, and the
    last non-empty batch (whose last value tells a quote that never closed)."""

    rows: int = 0
    breaks: int = 0
    blank_rows: int = 0
    last: pa.Table | None = None

    def add(self, batch: pa.Table, sink: Sink) -> None:
        if batch.num_rows == 0:
            return
        self.rows += batch.num_rows
        self.breaks += _breaks_in_values(batch)
        self.last = batch.slice(batch.num_rows - 1)
        kept, blank = _without_blank_rows(batch)
        self.blank_rows += blank
        sink.append(kept)


def _damaged(path: Path, exc: OSError | EOFError) -> InputError:
    return InputError(f"{path}: cannot be read to the end ({exc}); the file looks truncated or damaged")


@dataclasses.dataclass(frozen=True)
class _FileLines:
    lines: int  # physical lines, at LF, CRLF or a lone CR, the last one with or without its end
    ends_with_quote: bool  # the last character other than whitespace is a double quote


def _file_lines(path: Path, gzipped: bool, encoding: str) -> _FileLines | None:
    """The file's lines, counted on its bytes; None for encodings in which a line break is not its ASCII byte."""
    if "x\r\n".encode(encoding)[len("x".encode(encoding)) :] != b"\r\n":  # UTF-16, UTF-32, EBCDIC (past a BOM)
        return None
    lf = cr = crlf = 0
    tail = b""
    with _open(path, gzipped) as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            lf += chunk.count(b"\n")
            if b"\r" in chunk or tail.endswith(b"\r"):  # the two-byte search only where a CR is (rare)
                cr, crlf = cr + chunk.count(b"\r"), crlf + chunk.count(b"\r\n")
                crlf += tail.endswith(b"\r") and chunk.startswith(b"\n")  # a CRLF split between two chunks
            tail = (tail + chunk)[-64:]
    ends_open = bool(tail) and not tail.endswith((b"\n", b"\r"))  # a last line without a line break
    return _FileLines(lf + cr - crlf + ends_open, tail.rstrip().endswith(b'"'))


def _breaks_in_values(table: pa.Table) -> int:
    """Line breaks inside the values (quoted), counted as in the file: CRLF as one."""
    total = 0
    for column in table.columns:
        for chunk in (c for c in column.chunks if len(c)):
            # the bytes of all the chunk's values, end to end: one vectorised count instead of one per value
            offsets = np.frombuffer(chunk.buffers()[1], dtype=np.int32)[chunk.offset : chunk.offset + len(chunk) + 1]
            data = chunk.buffers()[2]
            text = np.frombuffer(data, dtype=np.uint8)[offsets[0] : offsets[-1]] if data is not None else np.empty(0)
            lf, cr = int(np.count_nonzero(text == 10)), int(np.count_nonzero(text == 13))
            crlf = (pc.sum(pc.count_substring(chunk, "\r\n")).as_py() or 0) if lf and cr else 0  # within values
            total += lf + cr - crlf
    return total


def _check_last_value_is_closed(path: Path, table: pa.Table, in_file: _FileLines) -> None:
    """A quote that never closes runs on to the end of the file, and Arrow ends the value there without a word."""
    if table.num_rows == 0 or in_file.ends_with_quote:
        return
    last = table.column(table.num_columns - 1)[-1].as_py()
    first, *more = re.split(r"\r\n|\r|\n", last.rstrip("\r\n"))
    if more:
        raise InputError(
            f"{path}: a quote is not closed: the value of {table.column_names[-1]!r} in the last row runs from "
            f"{first[:80]!r} over {len(more)} more line(s) to the end of the file; close the quote, or double a "
            'quote meant as text ("")'
        )


def _arrow_csv(
    path: Path,
    gzipped: bool,
    header: CsvHeader,
    delimiter: str,
    encoding: str,
    block_bytes: int,
    newlines_in_values: bool,
    lines: _LineHandler,
) -> pacsv.CSVStreamingReader:
    """A reader of the CSV's record batches, one block at a time (single-threaded, so memory holds one block)."""
    return pacsv.open_csv(
        # the compression is the content's, not the name's (Arrow would go by a lower-case .gz)
        pa.input_stream(str(path), compression="gzip" if gzipped else None),
        read_options=pacsv.ReadOptions(
            column_names=header.names,
            skip_rows=header.blank_lines_before + 1,
            encoding=encoding,
            block_size=block_bytes,
        ),
        # Arrow would skip empty lines without a count; they come back as rows of empty fields, dropped after
        parse_options=pacsv.ParseOptions(
            delimiter=delimiter,
            newlines_in_values=newlines_in_values,
            ignore_empty_lines=False,
            invalid_row_handler=lines,
        ),
        convert_options=pacsv.ConvertOptions(
            column_types=dict.fromkeys(header.names, pa.string()), strings_can_be_null=False
        ),
    )


def _bytes(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB" if n >= 1 << 10 else f"{n} bytes"


def _csv_error(
    path: Path, exc: pa.ArrowInvalid, lines: _LineHandler, delimiter: str, encoding: str, gzipped: bool
) -> InputError:
    message = str(exc)
    if "invalid UTF8" in message:
        return InputError(
            f"{path}: not valid {encoding} at {_first_undecodable_line(path, encoding, gzipped)}; set ingest.encoding "
            "to the file's encoding (often latin-1 or cp1252 for spreadsheet exports)"
        )
    if lines.malformed is not None:
        return InputError(_malformed_line(path, lines.malformed, delimiter))
    if "straddling object" in message:
        return InputError(
            f"{path}: a record is longer than {_bytes(MAX_CSV_BLOCK_BYTES)}, so a quote probably never closes and "
            'its value runs on to the end of the file; close it, or double a quote meant as text ("")'
        )
    return InputError(
        f"{path}: cannot be parsed as CSV with delimiter {delimiter!r} and encoding {encoding} "
        f"({message.splitlines()[0]}); check ingest.csv_delimiter and ingest.encoding"
    )


class _LineHandler:
    """Arrow's handler of lines with the wrong number of fields: skips and counts the blank ones (a stray ``   ``
    line), and keeps the first other one for the error message. Arrow may call it from several threads."""

    def __init__(self, delimiter: str) -> None:
        self.delimiter = delimiter
        self.blank = 0
        self.blank_lines = 0  # the lines they span: a quoted line break ('"  \n  "') makes two
        self.malformed: pacsv.InvalidRow | None = None
        self._lock = threading.Lock()

    def __call__(self, row: pacsv.InvalidRow) -> str:
        with self._lock:
            if _is_blank(row.text, self.delimiter):
                self.blank += 1
                self.blank_lines += 1 + len(re.findall(r"\r\n|\r|\n", row.text))
                return "skip"
            if self.malformed is None:
                self.malformed = row
            return "error"


def _malformed_line(path: Path, row: pacsv.InvalidRow, delimiter: str) -> str:
    text = row.text
    first, *more = re.split(r"\r\n|\r|\n", text)
    if more and '"' in text:  # a quote not closed where its line ends runs on into the next lines
        return (
            f"{path}: a quoted value from the line {first[:80]!r} runs on over {len(more)} more line(s), leaving "
            f"{row.actual_columns} fields where the header has {row.expected_columns}: a quote that is not closed? "
            'close it, or double a quote meant as text ("")'
        )
    return (
        f"{path}: a line has {row.actual_columns} fields where the header has {row.expected_columns}: "
        f"{text[:80]!r}; quote values that contain {delimiter!r}, or check ingest.csv_delimiter"
    )


def _without_blank_rows(table: pa.Table) -> tuple[pa.Table, int]:
    """The rows with a value in some field, and how many had none (empty lines, ``,,``): blank lines, not rows."""
    blank: pa.ChunkedArray | None = None
    for column in table.columns:
        empty = pc.or_(pc.equal(pc.binary_length(column), 0), pc.utf8_is_space(column))
        blank = empty if blank is None else pc.and_(blank, empty)
        if not pc.any(blank).as_py():  # mostly decided by the first column
            return table, 0
    assert blank is not None  # a header has at least one column
    return table.filter(pc.invert(blank)), int(pc.sum(blank).as_py())


def rules_from(cfg: IngestConfig) -> CleaningRules:
    c = cfg.columns
    return CleaningRules(
        customer_id=c.customer_id,
        timestamp=c.timestamp,
        amount=c.amount,
        quantity=c.quantity,
        unit_price=c.unit_price,
        order_id=c.order_id,
        timestamp_format=cfg.timestamp_format,
        timezone=cfg.timezone,
        duplicate_key=cfg.duplicate_key,
        cancellation_prefix=cfg.cancellation_prefix,
        returns=cfg.returns,
        zero_amount=cfg.zero_amount,
        max_abs_amount=cfg.max_abs_amount,
        thousands_separator=cfg.thousands_separator,
    )


def ingest_metrics(con: duckdb.DuckDBPyConnection, result: Classified, source: str, read: SourceRead) -> dict[str, Any]:
    """The stage's counts; the kept rows' customers, returns and days counted in the engine, not in memory."""
    customers, returns, first, last = con.execute(
        f"""SELECT count(DISTINCT {s.CUSTOMER_ID}), count(*) FILTER (WHERE {s.AMOUNT} < 0),
                   min(CAST({s.TS} AS DATE)), max(CAST({s.TS} AS DATE))
            FROM ({result.kept_sql})"""
    ).fetchone() or (0, 0, None, None)
    return {
        "source": source,
        "source_sha256": read.sha256,
        "blank_lines_skipped": read.blank_lines,
        "local_times_ambiguous": result.local_times_ambiguous,
        "local_times_nonexistent": result.local_times_nonexistent,
        "rows_in": result.rows_in,
        "rows_kept": result.rows_kept,
        "rows_quarantined": result.rows_quarantined,
        "quarantined_by_reason": result.quarantined_by_reason,
        "customers": int(customers),
        "returns_kept": int(returns),
        "first_day": str(first) if first is not None else None,
        "last_day": str(last) if last is not None else None,
    }


@contextlib.contextmanager
def engine(memory_limit_mb: int, work: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """A DuckDB database in the folder ``work``, in UTC, that spills to disk beyond ``memory_limit_mb``: the raw log
    and its classified rows live there, not in memory."""
    con = duckdb.connect(str(work / "ingest.duckdb"))
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.execute(f"SET memory_limit = '{int(memory_limit_mb)}MB'")
        con.execute(f"SET temp_directory = '{work / 'spill'}'")
        con.execute("SET preserve_insertion_order = false")  # every output is explicitly ordered
        yield con
    finally:
        con.close()


def run(base: BaseConfig, cfg: IngestConfig, transactions: Path, quarantine: Path, metrics: Path) -> dict[str, Any]:
    """Read ``cfg.source``, validate it, and write the three outputs. Returns the metrics.

    With ``base.engine: duckdb`` the source streams into a DuckDB database on disk and is classified there. With
    ``spark`` the executors classify it (``classify_on_spark``). Either way the outputs stream out of that database,
    so the stage's memory is DuckDB's limit (``base.duckdb_memory_limit_mb``) plus a batch, whatever the log's size.
    """
    rules = rules_from(cfg)
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="churn-clv-ingest-")))
        con = stack.enter_context(engine(base.duckdb_memory_limit_mb, work))
        if base.engine == "spark":
            read, result = classify_on_spark(base, cfg, rules, con, work)
        else:
            read = stream_source(cfg.source, cfg.csv_delimiter, cfg.encoding, DuckDBSink(con, rules, cfg.source))
            result = classify(con, read.schema, rules, source=cfg.source)
            con.execute(f"DROP TABLE {RAW}")  # the classified table holds every raw column too
        if result.rows_in != result.rows_kept + result.rows_quarantined:  # pragma: no cover - an invariant
            raise AssertionError("ingest lost rows: rows_in != rows_kept + rows_quarantined")
        if result.rows_kept == 0:
            worst = max(result.quarantined_by_reason.items(), key=lambda kv: kv[1])
            raise InputError(
                f"{cfg.source}: all {result.rows_in} rows were quarantined (mostly '{worst[0]}': {worst[1]}); "
                "check ingest.columns, ingest.timestamp_format and the quarantine rules in params.yaml"
            )
        write_query(con, result.kept_sql, transactions, s.TRANSACTIONS)
        write_query(con, result.quarantined_sql, quarantine, s.quarantine_schema(read.schema.names))
        out = ingest_metrics(con, result, cfg.source, read)
    write_json(out, metrics)
    log_counts(out, cfg.timezone)
    return out


def classify_on_spark(
    base: BaseConfig, cfg: IngestConfig, rules: CleaningRules, con: duckdb.DuckDBPyConnection, work: Path
) -> tuple[SourceRead, Classified]:
    """Classify the source on Spark's executors, and open their output as the view ``CLASSIFIED`` on ``con``.

    A Parquet source is read by the executors themselves. A CSV (or a builtin log) is read here first, with the
    same streaming reader and checks as on one machine, into a staged Parquet copy in ``work``: CSV parsing (quoted
    line breaks, blank lines, encodings) is then the same on both engines. ``work`` must be readable by the
    executors (a shared mount on a cluster: set TMPDIR).
    """
    path = Path(cfg.source)
    if cfg.source not in BUILTIN_SOURCES and path.name.lower().endswith(".parquet"):
        _check_is_a_file(path)
        schema, rows_in = _parquet_source(path)
        check_source_columns(schema.names, rules, cfg.source)
        read, raw, positional = SourceRead(schema, _sha256(path), blank_lines=0), path, False
    else:
        raw, positional = work / "raw.parquet", True
        sink = ParquetSink(raw, rules, cfg.source)
        try:
            read = stream_source(cfg.source, cfg.csv_delimiter, cfg.encoding, sink)
        finally:
            sink.close()
        rows_in = sink.rows
    if rows_in == 0:
        raise cleaning.no_rows(cfg.source)
    from pipeline import spark  # brings models.churn and its libraries: only when asked for

    parts = work / "classified"
    spark.classify_rows(base.spark, raw, positional, read.schema, rules, cfg.source, parts)
    con.execute(cleaning.classified_view(read.schema.names, str(parts / "*.parquet")))
    return read, cleaning.summarise(con, read.schema.names, rules, cfg.source, rows_in)


def log_counts(out: dict[str, Any], timezone: str) -> None:
    """The stage's one line of counts, and a warning for wall times that clocks repeat or skip."""
    log.info(
        "%s: %d rows in, %d kept, %d quarantined %s%s",
        out["source"],
        out["rows_in"],
        out["rows_kept"],
        out["rows_quarantined"],
        {k: v for k, v in out["quarantined_by_reason"].items() if v},
        f"; {out['blank_lines_skipped']} blank lines skipped (no value in any field)"
        if out["blank_lines_skipped"]
        else "",
    )
    if out["local_times_ambiguous"] or out["local_times_nonexistent"]:
        log.warning(
            "%s: %d kept times fell where clocks in %s go back and a wall time happens twice (read as the later "
            "moment) and %d where they go forward and it never happens (read with the UTC offset from before the "
            "change: 02:30 at a 02:00->03:00 change is 03:30 on the new clock); write the UTC offset (%%z) in the "
            "log to make them exact",
            out["source"],
            out["local_times_ambiguous"],
            timezone,
            out["local_times_nonexistent"],
        )


def main(argv: Sequence[str]) -> None:
    p = cli.parser(__doc__.splitlines()[0])
    for flag in ("--transactions", "--quarantine", "--metrics"):
        cli.output(p, flag)
    args = p.parse_args(argv)
    params = load_params(args.params)
    run(
        section(params, "base", BaseConfig),
        section(params, "ingest", IngestConfig),
        args.transactions,
        args.quarantine,
        args.metrics,
    )


if __name__ == "__main__":
    cli.run(main)
