"""The campaign's assignment log: what the pipeline told marketing, week by week, kept outside DVC.

One Parquet file per week, ``<log>/<ISO week>.parquet`` (``assignment_schema``). It is the record the campaign is
measured against, so it is **append-only**: a week's file is written once, whole, and never rewritten.

* *Where it lives.* ``campaign/assignments/`` in the workspace, named in dvc.yaml's commands but declared as no
  stage's output or dependency: DVC never deletes, checks out, restores or caches it, and `dvc exp` switching
  between experiments leaves it alone. It is gitignored; back it up as the company's record (it holds customer
  ids). A `dvc exp run --temp` or queued experiment runs in a copy of the workspace and writes its log there.
* *Killed runs.* A week is written to a hidden temporary file beside its final name, flushed to disk, then
  linked to the final name, which fails if the name exists: a killed writer leaves at most the hidden file
  (ignored by readers, removed by the next write), and two writers racing for one week cannot both win.
* *Reruns.* The assign stage finds the week's file and keeps it: the same arms, no new rows.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

import pandas as pd
import pyarrow as pa_arrow
import pyarrow.parquet as pq

from features import schemas as s
from features.errors import InputError
from pipeline.io import validate

WEEK_FILE = re.compile(r"^(\d{4}-W\d{2})\.parquet$")


def week_path(log_dir: Path, week: str) -> Path:
    return log_dir / f"{week}.parquet"


def weeks(log_dir: Path) -> list[str]:
    """The weeks logged so far, oldest first (hidden temporaries of killed writers are not weeks)."""
    if not log_dir.is_dir():
        return []
    return sorted(m.group(1) for p in log_dir.iterdir() if (m := WEEK_FILE.match(p.name)) and p.is_file())


def read_week(log_dir: Path, week: str) -> pd.DataFrame | None:
    """The logged assignment of ``week``, or None if the week has none yet."""
    path = week_path(log_dir, week)
    if not path.is_file():
        return None
    try:
        frame = pq.read_table(path).to_pandas()
    except (pa_arrow.ArrowInvalid, OSError) as exc:
        raise InputError(
            f"{path}: the assignment log of {week} cannot be read ({exc}); restore it from a backup (it is the "
            "record of what marketing was told, so the pipeline does not rewrite it)"
        ) from exc
    checked = validate(frame, s.assignment_schema(), where=str(path), copy=False)
    if len(checked) and set(checked[s.WEEK]) != {week}:  # an empty week: nobody was worth a contact
        raise InputError(f"{path}: holds weeks {sorted(set(checked[s.WEEK]))}, not {week} alone; restore it")
    return checked


def read_log(log_dir: Path) -> pd.DataFrame:
    """Every logged week, oldest first (an empty table with the log's columns when nothing is logged)."""
    frames = [f for w in weeks(log_dir) if (f := read_week(log_dir, w)) is not None and len(f)]
    if not frames:
        return validate(pd.DataFrame({c: [] for c in s.assignment_schema().columns}), s.assignment_schema(), "log")
    return pd.concat(frames, ignore_index=True)


def append_week(log_dir: Path, week: str, frame: pd.DataFrame) -> Path:
    """Write ``week``'s assignment once; ``FileExistsError`` if the week is already logged (see the docstring)."""
    checked = validate(frame, s.assignment_schema(), where=f"the assignment log of {week}")
    if set(checked[s.WEEK]) - {week}:
        raise ValueError(f"append_week: rows of weeks {sorted(set(checked[s.WEEK]) - {week})} given for {week}")
    log_dir.mkdir(parents=True, exist_ok=True)
    final = week_path(log_dir, week)
    tmp = log_dir / f".{final.name}.{os.getpid()}.tmp"
    for stale in log_dir.glob(f".{final.name}.*.tmp"):  # a killed writer's leftovers
        stale.unlink(missing_ok=True)
    try:
        pq.write_table(pa_arrow.Table.from_pandas(checked, preserve_index=False), tmp, compression="zstd")
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.link(tmp, final)  # atomic, and refuses to replace a week already logged
        with contextlib.suppress(OSError):  # the directory entry on disk too, where the platform allows it
            dir_fd = os.open(log_dir, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    finally:
        tmp.unlink(missing_ok=True)
    return final
