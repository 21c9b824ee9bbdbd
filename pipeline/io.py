"""Reading and writing the files between stages: schema-checked on the way in and out, written atomically.

A write goes to a temporary file in the destination folder and is renamed over the target only when complete,
so a stage killed mid-write leaves the previous output intact.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import math
import os
import re
import socket
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

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

    A temporary from another machine sharing the folder is left alone (its pid means nothing here).
    """
    removed = []
    host = _writer_tag().split("@")[1]
    for tmp in target.parent.glob(f".{glob.escape(target.name)}.*@*.tmp"):
        pid, _, tag = tmp.name[len(target.name) + 2 :].split(".", 1)[0].partition("@")
        if tag == host and pid.isdigit() and not _alive(int(pid)):
            try:
                tmp.unlink()
            except OSError:  # already gone, or not ours to delete: the write itself succeeded
                continue
            removed.append(tmp)
    return removed


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


def write_table(df: pd.DataFrame, path: str | Path, schema: pa.DataFrameSchema) -> pd.DataFrame:
    """Validate ``df`` against ``schema`` and write it as Parquet, atomically. Returns the validated frame."""
    checked = validate(df, schema, where=f"writing {path}")
    table = pa_arrow.Table.from_pandas(checked, preserve_index=False)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return checked


def write_batches(batches: Iterable[pa_arrow.RecordBatch], path: str | Path, schema: pa.DataFrameSchema) -> int:
    """Validate and write a stream of record batches as one Parquet file, atomically; return the row count.

    Memory stays bounded by one batch, so a table larger than RAM can be written. Checks that span batches
    (uniqueness) are the producer's to guarantee.
    """
    rows = 0
    writer: pq.ParquetWriter | None = None
    with atomic_path(path) as tmp:
        try:
            for i, batch in enumerate(batches):
                checked = validate(batch.to_pandas(), schema, where=f"writing {path} (batch {i})")
                table = pa_arrow.Table.from_pandas(checked, preserve_index=False)
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema, compression="zstd")
                writer.write_table(table.cast(writer.schema))
                rows += table.num_rows
            if writer is None:
                raise InputError(f"writing {path}: no rows to write")
        finally:
            if writer is not None:
                writer.close()
    return rows


# A cell starting with one of these is run as a formula by spreadsheet programs (CSV injection).
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


PLAIN_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


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


def read_table(path: str | Path, schema: pa.DataFrameSchema) -> pd.DataFrame:
    """Read a Parquet file written by an earlier stage and validate it against ``schema``."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: file not found; run the stage that writes it first (`dvc repro`)")
    return validate(pd.read_parquet(p), schema, where=str(p))


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
