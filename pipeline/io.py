"""Reading and writing the files between stages: schema-checked on the way in and out, written atomically.

Two layers keep a stage's previous outputs whole whatever happens to the stage:

* every file is written to a hidden temporary beside its target and renamed over it only when complete
  (``atomic_path``), so no reader ever sees half a file;
* a stage run from the command line (``pipeline.cli.run``) writes all its outputs into hidden staging folders
  beside their final places (``StagedOutputs``) and moves them into place together once it has finished. A stage
  that fails, or is killed at any moment before that last step, leaves every previous output as it was. dvc.yaml
  marks the outputs ``persist: true`` so that DVC does not delete them itself before running the stage.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import dataclasses
import errno
import glob
import hashlib
import itertools
import json
import math
import os
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow as pa_arrow
import pyarrow.parquet as pq

from features.errors import InputError
from features.schemas import validate


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _writer_tag() -> str:
    """``<pid>@<host hash>``: which process on which machine owns a temporary file."""
    host = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
    return f"{os.getpid()}@{host}"


def remove_stale_temporaries(target: Path) -> list[Path]:
    """Delete temporaries of ``target`` left by killed writers: on this machine, and their process is gone.

    Temporaries are files (``atomic_path``) or staging folders (``StagedOutputs``). One from another machine
    sharing the folder is left alone (its pid means nothing here).
    """
    removed = []
    host = _writer_tag().split("@")[1]
    for tmp in target.parent.glob(f".{glob.escape(target.name)}.*@*.tmp"):
        pid, _, tag = tmp.name[len(target.name) + 2 :].split(".", 1)[0].partition("@")
        if tag == host and pid.isdigit() and not _alive(int(pid)):
            try:
                if tmp.is_dir() and not tmp.is_symlink():
                    shutil.rmtree(tmp)
                else:
                    tmp.unlink()
            except OSError:  # already gone, or not ours to delete: the write itself succeeded
                continue
            removed.append(tmp)
    return removed


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):  # no glibc, or one older than 2.28
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):  # a file system without the exchange: rename instead
        return False
    raise OSError(err, os.strerror(err), str(b))


@dataclasses.dataclass(frozen=True)
class _Staged:
    target: Path
    box: Path  # the hidden staging folder beside the target; the output is written to box / target.name
    directory: bool

    @property
    def path(self) -> Path:
        return self.box / self.target.name


class StagedOutputs:
    """The outputs of one stage run, written under hidden names beside their final places and moved there together.

    ``file(target)`` and ``directory(target)`` return where the stage writes instead: ``<target's folder>/.<name>.
    <pid>@<host>.<random>.tmp/<name>``, so the output keeps its own name (MLflow artifacts, error messages) and
    stays on the target's file system (the final move is a rename). ``commit()`` moves every output into place in
    the order they were declared: a file by one rename, a folder by an atomic exchange with the old one (or, where
    the file system has none, two renames). ``discard()`` removes them. A writer killed before ``commit`` leaves
    hidden staging folders, which the next commit of the same targets on this machine removes.
    """

    def __init__(self) -> None:
        self._staged: list[_Staged] = []
        self.inputs: list[Path] = []  # the files the stage reads (``input_file``), for naming a damaged one
        self._settled = False  # committed or discarded: nothing left to move or remove

    def _box(self, target: Path) -> Path:
        target.parent.mkdir(parents=True, exist_ok=True)
        box = Path(tempfile.mkdtemp(prefix=f".{target.name}.{_writer_tag()}.", suffix=".tmp", dir=target.parent))
        os.chmod(box, 0o777 & ~_umask())
        return box

    def file(self, target: str | Path) -> Path:
        staged = _Staged(Path(target), self._box(Path(target)), directory=False)
        self._staged.append(staged)
        return staged.path

    def directory(self, target: str | Path, keep_existing: bool = False) -> Path:
        """A staging folder for the folder ``target``: empty, or with ``keep_existing`` a copy of what it holds now
        (hard links, so the copy costs no space) for a stage that adds to its folder instead of rewriting it."""
        staged = _Staged(Path(target), self._box(Path(target)), directory=True)
        if keep_existing and staged.target.is_dir():
            shutil.copytree(staged.target, staged.path, copy_function=_link_or_copy, symlinks=True)
        else:
            staged.path.mkdir()
        self._staged.append(staged)
        return staged.path

    def targets(self) -> list[Path]:
        return [staged.target for staged in self._staged]

    def final_names(self, text: str) -> str:
        """``text`` (an error message) with each staged path written as the output it stands for."""
        for staged in self._staged:
            text = text.replace(str(staged.path), str(staged.target))
        return text

    def commit(self) -> None:
        if self._settled:
            raise RuntimeError("these outputs were already committed or discarded")
        for staged in self._staged:
            if not staged.path.exists():
                raise InputError(f"{staged.target}: the stage finished without writing it; this is a bug in the stage")
        for staged in self._staged:
            if staged.directory and staged.target.is_dir() and not staged.target.is_symlink():
                if not _exchange(staged.path, staged.target):
                    # two renames: for a moment the target is missing, never half-written
                    old = staged.box / f"{staged.target.name}.old"
                    os.rename(staged.target, old)
                    os.rename(staged.path, staged.target)
            else:
                if staged.target.is_dir() and not staged.target.is_symlink():
                    shutil.rmtree(staged.target)  # a file output where a folder was: replace it whole
                os.replace(staged.path, staged.target)
        self._settled = True
        for staged in self._staged:
            shutil.rmtree(staged.box, ignore_errors=True)  # the old folder, after an exchange
            remove_stale_temporaries(staged.target)

    def discard(self) -> None:
        if not self._settled:
            self._settled = True
            for staged in self._staged:
                shutil.rmtree(staged.box, ignore_errors=True)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # a file system without hard links
        shutil.copy2(src, dst)


_STAGING: list[StagedOutputs] = []  # the stage run in progress in this process (pipeline.cli.run), if any


@contextlib.contextmanager
def staging(staged: StagedOutputs) -> Iterator[StagedOutputs]:
    """Stage every output declared with ``output_file`` / ``output_directory`` in the block; commit if it succeeds.

    On any error, and on a kill, the previous outputs stay as they were.
    """
    _STAGING.append(staged)
    try:
        yield staged
        _STAGING.pop()
        staged.commit()
    finally:
        if _STAGING and _STAGING[-1] is staged:
            _STAGING.pop()
        staged.discard()


def output_file(target: str) -> Path:
    """Where a stage writes its output file ``target``: staged inside ``staging()``, else ``target`` itself."""
    return _STAGING[-1].file(target) if _STAGING else Path(target)


def output_directory(target: str, keep_existing: bool = False) -> Path:
    """Where a stage writes its output folder ``target``: staged inside ``staging()``, else ``target`` itself."""
    return _STAGING[-1].directory(target, keep_existing) if _STAGING else Path(target)


def input_file(value: str) -> Path:
    """An input file of the stage in progress (``pipeline.cli.input``): a Parquet file's footer is checked at once.

    A damaged, cut-short or empty Parquet file between stages is then one line naming it, not a reader's traceback
    from deep inside the stage. Its data pages are checked when a reader fails (``find_damaged_input``).
    """
    path = Path(value)
    if _STAGING:
        _STAGING[-1].inputs.append(path)
    if path.suffix == ".parquet" and path.is_file():
        reason = parquet_problem(path, pages=False)
        if reason is not None:
            raise DamagedInput(path, reason)
    return path


# Not an InputError: argparse would turn that, raised while reading the arguments, into a usage message.
class DamagedInput(Exception):
    """An input Parquet file that cannot be read: ``path`` and the reader's ``reason`` (``pipeline.cli`` says so)."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def parquet_problem(path: Path, pages: bool) -> str | None:
    """Why ``path`` is not a readable Parquet file (its footer; with ``pages`` every data page too), or None."""
    try:
        if path.stat().st_size == 0:
            return "the file is empty (0 bytes)"
        with pq.ParquetFile(path) as file:
            if pages:
                for i in range(file.num_row_groups):
                    file.read_row_group(i)
    except (pa_arrow.ArrowException, OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        first = re.sub(r"^Could not open Parquet input source '.*?': ", "", first)
        first = first.split(". Either the file")[0].rstrip(".")
        return f"not a readable Parquet file ({first})"
    return None


def find_damaged_input(staged: StagedOutputs) -> DamagedInput | None:
    """The first input Parquet file of the stage run ``staged`` that cannot be read to the end, if any."""
    for path in staged.inputs:
        if path.suffix == ".parquet" and path.is_file():
            reason = parquet_problem(path, pages=True)
            if reason is not None:
                return DamagedInput(path, reason)
    return None


def final_names(text: str) -> str:
    """``text`` with the staged paths of the stage in progress written as their outputs' own paths."""
    return _STAGING[-1].final_names(text) if _STAGING else text


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary is named ``.<name>.<pid>@<host>.<random>.tmp``. A writer killed before the rename (SIGKILL,
    power loss) leaves ``path`` as it was plus that hidden file; the next successful write of ``path`` on the same
    machine deletes it.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.{_writer_tag()}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp creates the file for its owner only; an output should get the permissions any new file gets
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield tmp
        os.replace(tmp, target)
        remove_stale_temporaries(target)
    finally:
        tmp.unlink(missing_ok=True)


# Rows validated and converted at a time when a frame is written: beyond it, a frame of 10M customers would be held
# three more times at once (pandera's coerced copy, the Arrow table, its reordering).
WRITE_CHUNK_ROWS = 1 << 20


def write_table(
    df: pd.DataFrame, path: str | Path, schema: pa.DataFrameSchema, *, order: np.ndarray | None = None
) -> None:
    """Validate ``df`` against ``schema`` and write it as Parquet, atomically.

    ``order``: the row positions to write, in that order (the checks do not depend on it). A frame of more than
    ``WRITE_CHUNK_ROWS`` rows is checked for the uniqueness ``schema`` asks first, then validated, converted and
    written a chunk at a time, so writing costs a chunk of memory instead of three copies of the frame.
    """
    if len(df) <= WRITE_CHUNK_ROWS:
        checked = validate(df, schema, where=f"writing {path}")
        table = pa_arrow.Table.from_pandas(checked, preserve_index=False)
        if order is not None:
            table = table.take(pa_arrow.array(order))
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp, compression="zstd")
        return
    check_unique(df, schema, where=f"writing {path}")
    rows = np.arange(len(df)) if order is None else np.asarray(order)
    chunks = (df.take(rows[i : i + WRITE_CHUNK_ROWS]) for i in range(0, len(rows), WRITE_CHUNK_ROWS))
    write_frames(chunks, path, without_unique(schema))


def without_unique(schema: pa.DataFrameSchema) -> pa.DataFrameSchema:
    """``schema`` without its uniqueness checks, for validating one chunk of a table (``check_unique`` does the
    whole)."""
    unique_columns = [name for name, column in schema.columns.items() if column.unique]
    chunk = schema.update_columns({name: {"unique": False} for name in unique_columns}) if unique_columns else schema
    chunk = copy.deepcopy(chunk)
    chunk.unique = None
    return chunk


def check_unique(df: pd.DataFrame, schema: pa.DataFrameSchema, where: str) -> None:
    """Raise ``InputError`` where ``df`` repeats a key ``schema`` says is unique (its ``unique`` columns together, or
    a column marked unique): the checks that span the chunks of a table written in chunks."""
    keys = [list(schema.unique)] if schema.unique else []
    keys += [[name] for name, column in schema.columns.items() if column.unique]
    for key in keys:
        repeated = df.duplicated(subset=key)
        if repeated.any():
            example = df.loc[repeated, key].iloc[0].tolist()
            raise InputError(
                f"{where}: {int(repeated.sum())} row(s) repeat a {'+'.join(key)} of an earlier row (e.g. {example!r}); "
                f"the '{schema.name}' schema allows each once"
            )


def write_frames(frames: Iterable[pd.DataFrame], path: str | Path, schema: pa.DataFrameSchema) -> int:
    """Validate and write a stream of frames as one Parquet file, atomically; return the row count. Memory holds one
    frame; checks that span frames (uniqueness) are the producer's (``check_unique``)."""
    rows = 0
    writer: pq.ParquetWriter | None = None
    with atomic_path(path) as tmp:
        try:
            for i, frame in enumerate(frames):
                checked = validate(frame, schema, where=f"writing {path} (batch {i})", copy=False)
                table = pa_arrow.Table.from_pandas(checked, preserve_index=False)
                if writer is None:
                    writer = pq.ParquetWriter(tmp, _text_where_null(table.schema), compression="zstd")
                writer.write_table(table.cast(writer.schema))
                rows += table.num_rows
            if writer is None:
                raise InputError(f"writing {path}: no rows to write")
        finally:
            if writer is not None:
                writer.close()
    return rows


def _text_where_null(schema: pa_arrow.Schema) -> pa_arrow.Schema:
    """``schema`` with a column Arrow typed as null (a text column with no value in the first frame, such as the
    reasons of the customers past the explained head) typed as text, so the next frames' texts fit it."""
    fields = [f.with_type(pa_arrow.string()) if pa_arrow.types.is_null(f.type) else f for f in schema]
    return pa_arrow.schema(fields, metadata=schema.metadata)


def write_batches(batches: Iterable[pa_arrow.RecordBatch], path: str | Path, schema: pa.DataFrameSchema) -> int:
    """Validate and write a stream of record batches as one Parquet file, atomically; return the row count.

    Memory stays bounded by one batch, so a table larger than RAM can be written. Checks that span batches
    (uniqueness) are the producer's to guarantee.
    """
    return write_frames((batch.to_pandas() for batch in batches), path, schema)


# Rows per batch written by write_query: the memory a writer holds beside DuckDB's own (base.duckdb_memory_limit_mb).
WRITE_BATCH_ROWS = 1 << 20


def write_query(con: duckdb.DuckDBPyConnection, sql: str, path: str | Path, schema: pa.DataFrameSchema) -> None:
    """Write a DuckDB query's rows to ``path`` as Parquet, atomically, batch by batch in the query's order, each batch
    validated against ``schema``: memory holds one batch however many rows there are. No rows: an empty table."""
    reader = con.execute(sql).to_arrow_reader(WRITE_BATCH_ROWS)
    batches = iter(reader)
    first = next(batches, None)
    if first is None:
        write_table(reader.schema.empty_table().to_pandas(), path, schema)
    else:
        write_batches(itertools.chain([first], batches), path, schema)


# A cell starting with one of these is run as a formula by spreadsheet programs (CSV injection).
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


# ASCII digits only, and to the very end (``$`` would also match before a final newline): what a spreadsheet
# reads as a number. The report's DuckDB writer uses the same pattern.
PLAIN_NUMBER = re.compile(r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\Z")


def neutralise(text: str) -> str:
    """``text`` made safe to open in a spreadsheet: a leading ``'`` where it would start a formula.

    A plain number such as ``-12.50`` is left as it is: a spreadsheet reads it as that number and runs nothing.
    """
    if text.startswith(FORMULA_PREFIXES) and not PLAIN_NUMBER.match(text):
        return f"'{text}"
    return text


def check_finite(frame: pd.DataFrame, where: str, undefined_allowed: Iterable[str] = ()) -> None:
    """Raise ``InputError`` if a numeric column holds an infinity, or a NaN outside ``undefined_allowed``."""
    allowed = set(undefined_allowed)
    for i, column in enumerate(frame.columns):
        values = frame.iloc[:, i]
        if pd.api.types.is_bool_dtype(values) or not (
            pd.api.types.is_numeric_dtype(values) or pd.api.types.is_object_dtype(values)
        ):
            continue
        if pd.api.types.is_object_dtype(values):  # text with a stray number in it: only an infinity is wrong
            floats = values.map(lambda v: isinstance(v, float) and math.isinf(v)).to_numpy(dtype=bool)
            numbers = np.where(floats, np.inf, 0.0)
        else:
            numbers = values.to_numpy(dtype="float64", na_value=np.nan)
        bad = np.isinf(numbers) if column in allowed else ~np.isfinite(numbers)
        if bad.any():
            raise InputError(
                f"{where}: column {column!r} has {int(bad.sum())} non-finite value(s) (first at row "
                f"{int(np.argmax(bad))}: {numbers[bad][0]}); this is a bug in the stage, please report it"
            )


def write_csv(frame: pd.DataFrame, path: str | Path, undefined_allowed: Iterable[str] = ()) -> None:
    """Write ``frame`` as CSV atomically: finite numbers only, and text cells that cannot start a formula.

    ``undefined_allowed`` names columns where a missing value means "undefined" (a rate over no customers); it is
    written as an empty cell.
    """
    check_finite(frame, f"writing {path}", undefined_allowed)
    safe = frame.copy()
    safe.columns = [neutralise(str(c)) for c in frame.columns]
    for column in safe.columns:
        if not pd.api.types.is_numeric_dtype(safe[column]):
            safe[column] = safe[column].map(lambda v: neutralise(v) if isinstance(v, str) else v)
    with atomic_path(path) as tmp:
        safe.to_csv(tmp, index=False)


def read_table(
    path: str | Path,
    schema: pa.DataFrameSchema,
    *,
    columns: Sequence[str] | None = None,
    filters: list[tuple[str, str, Any]] | None = None,
) -> pd.DataFrame:
    """Read a Parquet file written by an earlier stage and validate it against ``schema``.

    ``columns`` reads (and checks) only those columns of the schema, ``filters`` only the matching rows (Arrow's
    row filters), so a stage that needs one cutoff's four columns does not load the whole table to check it.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: file not found; run the stage that writes it first (`dvc repro`)")
    if columns is not None:
        unknown = [c for c in columns if c not in schema.columns]
        if unknown:
            raise ValueError(f"read_table: columns {unknown} are not in the schema")
        schema = schema.select_columns(list(columns))
        if schema.unique and not set(schema.unique) <= set(columns):  # a key not read cannot be checked
            schema = _without_unique(schema)
    try:
        table = pq.read_table(p, columns=list(columns) if columns is not None else None, filters=filters)
        # each column's Arrow buffers freed once it is converted: the table and the frame are not held side by side
        frame = table.to_pandas(self_destruct=True, split_blocks=True)
        del table
    except (pa_arrow.ArrowInvalid, KeyError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"{p}: not the table this stage expects ({first}); rerun the stage that writes it") from exc
    return validate(frame, schema, where=str(p), copy=False)  # a frame of its own: coerced in place


# Rows read_chunks hands over at a time.
READ_CHUNK_ROWS = 1 << 20


def read_chunks(
    path: str | Path, schema: pa.DataFrameSchema, *, columns: Sequence[str] | None = None, rows: int = READ_CHUNK_ROWS
) -> Iterator[pd.DataFrame]:
    """``read_table`` a chunk of ``rows`` rows at a time, in the file's order, each chunk checked against
    ``schema``: memory holds a chunk however long the table. Uniqueness across chunks is not checked here
    (``duplicate_in_file`` checks a key over the whole file)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: file not found; run the stage that writes it first (`dvc repro`)")
    names = list(schema.columns) if columns is None else list(columns)
    unknown = [c for c in names if c not in schema.columns]
    if unknown:
        raise ValueError(f"read_chunks: columns {unknown} are not in the schema")
    checked = _without_unique(schema.select_columns(names))
    try:
        batches = pq.ParquetFile(p).iter_batches(batch_size=rows, columns=names)
        for i, batch in enumerate(batches):
            yield validate(batch.to_pandas(), checked, where=f"{p} (rows from {i * rows:,})", copy=False)
    except (pa_arrow.ArrowInvalid, KeyError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"{p}: not the table this stage expects ({first}); rerun the stage that writes it") from exc


def duplicate_in_file(path: str | Path, column: str, memory_limit_mb: int | None = None) -> str | None:
    """A value of ``column`` that more than one row of the Parquet file ``path`` holds, or None: the uniqueness
    check of a table read in chunks, made by DuckDB within ``memory_limit_mb`` (it spills to a temporary folder)."""
    with tempfile.TemporaryDirectory(prefix="churn-clv-unique-") as spill:
        con = duckdb.connect(config={"temp_directory": spill})
        try:
            if memory_limit_mb is not None:
                con.execute(f"SET memory_limit = '{int(memory_limit_mb)}MB'")
            quoted = '"' + column.replace('"', '""') + '"'
            row = con.execute(
                f"SELECT {quoted} FROM read_parquet(?) GROUP BY 1 HAVING count(*) > 1 LIMIT 1", [str(path)]
            ).fetchone()
        finally:
            con.close()
    return None if row is None else str(row[0])


def read_csv_table(path: str | Path, schema: pa.DataFrameSchema) -> pd.DataFrame:
    """Read a CSV file written by an earlier stage (``write_csv``) and validate it against ``schema``."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: file not found; run the stage that writes it first (`dvc repro`)")
    try:
        frame = pd.read_csv(p, encoding="utf-8")
    except (OSError, ValueError, UnicodeDecodeError) as exc:  # pandas' ParserError is a ValueError
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"{p}: not readable as CSV ({first}); rerun the stage that writes it") from exc
    return validate(frame, schema, where=str(p))


def read_user_table(path: str | Path, where: str, *, text_columns: Sequence[str] = ()) -> pd.DataFrame:
    """A table the user supplies (.csv, .csv.gz or .parquet), with one-line errors; ``text_columns`` are read
    as text (an id such as 00123 keeps its zeros). Its columns are the caller's to check and validate."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{where}: file not found")
    if not p.name.endswith((".parquet", ".csv", ".csv.gz")):
        raise InputError(f"{where}: use a .csv, .csv.gz or .parquet file")
    try:
        if p.suffix == ".parquet":
            return pq.read_table(p).to_pandas()
        return pd.read_csv(p, dtype={c: str for c in text_columns})
    except (pa_arrow.ArrowException, OSError, ValueError, UnicodeDecodeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"{where}: cannot be read ({first}); check the file, or export it again") from exc


def _without_unique(schema: pa.DataFrameSchema) -> pa.DataFrameSchema:
    copy = schema.select_columns(list(schema.columns))
    copy.unique = None
    return copy


def finite_json(value: Any) -> Any:
    """``value`` with NaN and infinities (e.g. a singular Hessian's standard errors) as None: JSON has neither."""
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(obj: dict[str, Any], path: str | Path) -> None:
    """Write ``obj`` as pretty, key-sorted JSON, atomically, so `dvc metrics diff` sees stable files."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n", encoding="utf-8")


def read_stage_json(path: Path, stage: str) -> Any:
    """A JSON file another stage wrote; a one-line error naming ``stage`` when it is missing or not JSON."""
    if not path.is_file():
        raise InputError(f"{path}: file not found; run the {stage} stage first (`dvc repro`)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not readable JSON ({exc}); rerun the {stage} stage") from exc
