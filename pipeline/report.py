"""Stage ``report``: the weekly churn-risk list marketing opens on Monday, and its one-page summary.

Writes ``<weekly>/<ISO year>-W<week>/`` for the week of ``score.as_of``:

* ``churn_risk.csv`` — every customer of the scored population, ranked by value at risk, in a fixed column
  order; UTF-8 with a byte-order mark so Excel shows accents correctly, and no cell that Excel or Sheets would run
  as a formula (a cell starting with ``=``, ``+``, ``-``, ``@``, tab or carriage return gets a leading ``'``,
  unless it is a plain number such as ``-12.50``, which stays a number);
* ``churn_risk.parquet`` — the same list with native types, for analysts;
* ``segments.csv`` — the KPIs of every value x risk segment;
* ``summary.html`` — one self-contained page: the segment grid, KPIs, risk distribution, the top of the list,
  drift warnings and, when an earlier week's folder exists, what changed since then.

With ``score.pseudonymise_ids`` every customer id in these four files is a keyed hash (``features.privacy``), the
key taken from the environment variable ``CHURN_CLV_ID_KEY`` and never stored.

Earlier weeks' folders are kept (the DVC output is persistent), so running the pipeline for several past dates
back-fills several weeks and each summary compares with the latest earlier one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from matplotlib.figure import Figure
from pandera.pandas import DataFrameSchema

from features import schemas as s
from features.errors import InputError
from features.privacy import MIN_KEY_CHARS, check_key, pseudonymise
from models import churn as cm
from models import monitoring
from models import segments as seg
from models import value_booster as vb
from pipeline import cli
from pipeline import html as h
from pipeline.config import BaseConfig, ClvConfig, FeaturesConfig, IngestConfig, ScoreConfig, load_params, section
from pipeline.io import (
    FORMULA_PREFIXES,
    PLAIN_NUMBER,
    WRITE_CHUNK_ROWS,
    atomic_path,
    check_finite,
    duplicate_in_file,
    neutralise,
    read_chunks,
    read_csv_table,
    read_stage_json,
    read_table,
    without_unique,
    write_csv,
    write_frames,
    write_json,
)
from pipeline.weeks import grid, iso_week

log = logging.getLogger("report")

WEEK_FOLDER = re.compile(r"^\d{4}-W\d{2}$")
LIST_CSV = "churn_risk.csv"
LIST_PARQUET = "churn_risk.parquet"
SEGMENTS_CSV = "segments.csv"
SUMMARY = "summary.html"
WEEK_JSON = "week.json"  # what the week's folder was made from: the log, the date, the models that scored it
ID_KEY_ENV = "CHURN_CLV_ID_KEY"  # the pseudonymisation key (score.pseudonymise_ids)
MODERATE_PSI = 0.1

# Decimals in the CSV: money to the cent, probabilities to 4 places.
MONEY = (
    s.NET_VALUE,
    s.CONTACT_COST,
    s.VALUE_AT_RISK,
    s.CLV,
    s.CLV_P05,
    s.CLV_P95,
    s.CLV_NET,
    s.TOTAL_SPEND,
    s.REVENUE_LAST_HORIZON,
)
PROBABILITIES = (s.P_CHURN, s.P_ALIVE)


def churn_risk_list(scores: pd.DataFrame, assignments: pd.DataFrame | None = None) -> pd.DataFrame:
    """The weekly list in one frame: ``list_chunks`` over ``scores`` held in memory."""
    return pd.concat(list(list_chunks(lambda: [scores], assignments)), ignore_index=True)


def list_chunks(
    score_chunks: Callable[[], Iterable[pd.DataFrame]], assignments: pd.DataFrame | None = None
) -> Iterator[pd.DataFrame]:
    """The weekly list a chunk at a time, in its order: a rank (1 = most value at risk) and ``LIST_COLUMNS``.

    ``score_chunks()`` gives the scores in their order, a chunk at a time (``pipeline.io.read_chunks``). Without
    ``assignments`` the list is the scores in that order. With the week's assignments the control arm is left off
    (it must not be contacted), the target arm comes first as ``contact``, best expected net value first, then
    everyone else as ``no contact`` in the scores' order, with the net value and the cost of a contact beside each
    assigned customer. The scores are then read twice (once to find the target arm's rows, once for everyone
    else), so memory holds a chunk and the target arm, which the campaign's budget bounds."""
    rank = 1

    def ranked(frame: pd.DataFrame) -> pd.DataFrame:
        nonlocal rank
        frame.insert(0, s.RANK, np.arange(rank, rank + len(frame), dtype=np.int64))
        rank += len(frame)
        return frame

    if assignments is None:
        for chunk in score_chunks():
            yield ranked(_listed(chunk))
        return
    arm = assignments.set_index(s.CUSTOMER_ID)  # unique, as the assignment schema says
    is_target = (arm[s.ARM] == s.TARGET_ARM).to_numpy()
    values = {c: arm[c].to_numpy(np.float64) for c in (s.NET_VALUE, s.CONTACT_COST)}
    found = np.zeros(len(arm), dtype=bool)
    at_parts: list[npt.NDArray[np.intp]] = []
    row_parts: list[pd.DataFrame] = []
    for chunk in score_chunks():
        at = arm.index.get_indexer(chunk[s.CUSTOMER_ID])  # each row's place in the assignments, -1 if not assigned
        found[at[at >= 0]] = True
        keep = np.flatnonzero((at >= 0) & is_target[np.maximum(at, 0)])
        at_parts.append(at[keep])
        row_parts.append(_listed(chunk.take(keep)))
    if not found.all():
        unknown = sorted(arm.index[~found])
        raise InputError(
            f"the week's assignments name {len(unknown)} customer(s) the scores do not have (e.g. {unknown[0]!r});"
            " they belong to another scoring of this week: rerun `dvc repro`"
        )
    at = np.concatenate(at_parts) if at_parts else np.zeros(0, dtype=np.intp)
    order = np.argsort(at, kind="stable")  # in the assignment's order: best net value first
    if row_parts:
        targets = pd.concat(row_parts, ignore_index=True).take(order).reset_index(drop=True)
        yield ranked(_with_arm(targets, s.CONTACT, values[s.NET_VALUE][at[order]], values[s.CONTACT_COST][at[order]]))
    for chunk in score_chunks():
        rest = _listed(chunk[arm.index.get_indexer(chunk[s.CUSTOMER_ID]) < 0])
        missing = np.full(len(rest), np.nan)
        yield ranked(_with_arm(rest, s.NO_CONTACT, missing, missing))


def _listed(scores: pd.DataFrame) -> pd.DataFrame:
    """The list's columns of ``scores``, in the list's column order."""
    return scores[[c for c in s.LIST_COLUMNS if c in scores]].reset_index(drop=True)


def _with_arm(
    rows: pd.DataFrame, group: str, net_value: npt.NDArray[np.float64], cost: npt.NDArray[np.float64]
) -> pd.DataFrame:
    """``rows`` with the group, the net value and the cost of a contact beside the customer id."""
    at = int(rows.columns.get_loc(s.CUSTOMER_ID)) + 1
    for offset, (name, column) in enumerate(
        ((s.GROUP, np.full(len(rows), group)), (s.NET_VALUE, net_value), (s.CONTACT_COST, cost))
    ):
        rows.insert(at + offset, name, column)
    return rows


def rechunked(frames: Iterable[pd.DataFrame], rows: int) -> Iterator[pd.DataFrame]:
    """``frames`` cut and joined into frames of ``rows`` rows (the last one shorter): the list's parts are the
    same whatever sizes it was found in. Nothing but empty frames: one empty frame, so the columns are known."""
    held: list[pd.DataFrame] = []
    count = 0
    last: pd.DataFrame | None = None
    emitted = False
    for frame in frames:
        last = frame
        if len(frame) == 0:
            continue
        held.append(frame)
        count += len(frame)
        while count >= rows:
            whole = pd.concat(held, ignore_index=True) if len(held) > 1 else held[0]
            yield whole.iloc[:rows].reset_index(drop=True)
            emitted = True
            held = [whole.iloc[rows:]] if count > rows else []
            count -= rows
    if held:
        yield (pd.concat(held, ignore_index=True) if len(held) > 1 else held[0]).reset_index(drop=True)
    elif not emitted and last is not None:
        yield last.reset_index(drop=True)


# The list's cells are formatted and written by DuckDB (``write_list_csv``): at 10M rows Python's csv module
# took about a minute to format and write what DuckDB writes in seconds, with the same bytes.
_FORMULA_FIRST = ", ".join(f"chr({ord(c)})" for c in FORMULA_PREFIXES)
_PLAIN_NUMBER_RE2 = PLAIN_NUMBER.pattern.removeprefix("^").removesuffix(r"\Z")


def _cell_sql(column: str, values: pd.Series) -> str:
    """The SQL that renders one column's cells as the list shows them: money to the cent, probabilities to 4
    decimals, dates as YYYY-MM-DD, a missing value as an empty cell, and any text that would start a spreadsheet
    formula neutralised (``pipeline.io.neutralise``: a leading ``'`` unless it is a plain number)."""
    c = '"' + column.replace('"', '""') + '"'
    if column in MONEY or column in PROBABILITIES:  # a number, maybe negative: a plain number, never a formula
        fmt = "%.2f" if column in MONEY else "%.4f"
        return f"CASE WHEN {c} IS NULL OR isnan({c}) THEN NULL ELSE printf('{fmt}', {c}) END"
    if pd.api.types.is_bool_dtype(values):
        return f"CASE WHEN {c} THEN 'True' WHEN NOT {c} THEN 'False' END"
    if pd.api.types.is_integer_dtype(values):  # digits and a minus sign: never a formula
        return f"CAST({c} AS VARCHAR)"
    if pd.api.types.is_datetime64_any_dtype(values):  # YYYY-MM-DD starts with a digit: never a formula
        return f"strftime({c}, '%Y-%m-%d')"
    text = f"NULLIF({c}, '')"  # an empty text is an empty cell, as a missing one is
    risky = f"left({text}, 1) IN ({_FORMULA_FIRST}) AND NOT regexp_full_match({text}, '{_PLAIN_NUMBER_RE2}')"
    return f"CASE WHEN {risky} THEN chr(39) || {text} ELSE {text} END"


def _as_arrow(column: str, values: pd.Series) -> pa.Array:
    """One column for DuckDB; anything but numbers, dates and text becomes its ``str`` first."""
    if pd.api.types.is_datetime64_any_dtype(values) and getattr(values.dt, "tz", None) is not None:
        values = values.dt.tz_localize(None)  # the wall time in its own zone, as strftime shows it
    kinds = (pd.api.types.is_numeric_dtype, pd.api.types.is_datetime64_any_dtype, pd.api.types.is_string_dtype)
    if any(kind(values) for kind in kinds):
        return pa.array(values, from_pandas=True)
    return pa.array([None if pd.isna(v) else str(v) for v in values], type=pa.string())


def list_headers(horizon_days: int, clv_months: int, currency: str) -> dict[str, str]:
    """The weekly CSV's header for each column of the list: words and units a marketer reads in a spreadsheet
    (``churn_risk.parquet`` keeps the code names for analysts; the summary's glossary says what each means)."""
    cur = f" ({currency})" if currency else ""
    return {
        s.RANK: "rank",
        s.CUSTOMER_ID: "customer id",
        s.GROUP: "group",
        s.NET_VALUE: f"expected net value of contact{cur}",
        s.CONTACT_COST: f"cost of contact{cur}",
        s.SEGMENT: "segment",
        s.RECOMMENDED_ACTION: "recommended action",
        s.VALUE_AT_RISK: f"value at risk{cur}",
        s.P_CHURN: f"churn probability, next {horizon_days} days",
        s.RISK_TIER: "risk tier",
        s.CLV: f"CLV, next {clv_months} months{cur}",
        s.CLV_P05: f"CLV low (5th percentile){cur}",
        s.CLV_P95: f"CLV high (95th percentile){cur}",
        s.CLV_NET: f"CLV net of acquisition cost{cur}",
        s.VALUE_TIER: "value tier",
        s.P_ALIVE: "probability still a customer",
        **{r: f"reason {i}" for i, r in enumerate(s.REASONS, start=1)},
        s.DAYS_SINCE_LAST_PURCHASE: "days since last purchase",
        s.LAST_PURCHASE_DATE: "last purchase date",
        s.PURCHASE_DAYS: "purchase days (days with a purchase)",
        s.TOTAL_SPEND: f"total spend{cur}",
        s.REVENUE_LAST_HORIZON: f"revenue, last {horizon_days} days{cur}",
    }


# Rows of the list CSV formatted and sorted by DuckDB at a time: what the writer holds, however long the list.
CSV_CHUNK_ROWS = 1 << 19


def write_list_csv(
    frames: pd.DataFrame | Iterable[pd.DataFrame], path: Path, headers: dict[str, str] | None = None
) -> None:
    """The list (a frame, or its chunks in order) as CSV at ``path`` (``ListCsv``)."""
    with ListCsv(path, headers) as out:
        for frame in [frames] if isinstance(frames, pd.DataFrame) else frames:
            out.add(frame)


class ListCsv:
    """The list's CSV, written a chunk at a time: UTF-8 with a byte-order mark (which Excel needs to read UTF-8),
    every cell formatted and neutralised, quoted only where needed, CRLF line ends (RFC 4180). ``headers`` renames
    columns in the header row (``list_headers``).

    DuckDB's parallel CSV writer can emit its 2,048-row chunks out of order (seen on a busy machine despite
    preserve_insertion_order), so rows are written ORDER BY their position; the sort holds its formatted rows, so
    each chunk is written ``CSV_CHUNK_ROWS`` rows at a time, each part to its own file in a temporary folder, and
    the parts are joined in order when the writer closes without an error (at 10M rows one sort of the whole list
    held 4 GB more than the list itself)."""

    def __init__(self, path: Path, headers: dict[str, str] | None = None) -> None:
        self.path, self.headers = Path(path), headers or {}
        self._work = tempfile.TemporaryDirectory(prefix="churn-clv-list-")
        self._con = duckdb.connect()
        self._con.execute("SET preserve_insertion_order = true")  # the rows stay in the list's order
        self._parts: list[Path] = []

    def __enter__(self) -> ListCsv:
        return self

    def add(self, frame: pd.DataFrame) -> None:
        """The next rows of the list."""
        order = "__position"
        table = pa.table({**{c: _as_arrow(c, frame[c]) for c in frame.columns}, order: np.arange(len(frame))})
        names = [neutralise(self.headers.get(c, c)) for c in frame.columns]
        names[0] = "\ufeff" + names[0]  # the byte-order mark, as the start of the header: DuckDB writes no prefix
        cells = ", ".join(
            f'{_cell_sql(c, frame[c])} AS "{n.replace(chr(34), chr(34) * 2)}"'
            for c, n in zip(frame.columns, names, strict=True)
        )
        for start in range(0, max(len(frame), 1), CSV_CHUNK_ROWS):
            part = Path(self._work.name) / f"{len(self._parts):06d}.csv"
            self._con.register("list", table.slice(start, CSV_CHUNK_ROWS))  # a view of the rows, not a copy
            target = str(part).replace("'", "''")
            header = "false" if self._parts else "true"
            self._con.execute(
                f"COPY (SELECT {cells} FROM list ORDER BY {order}) TO '{target}' "
                f"(FORMAT csv, HEADER {header}, NEW_LINE '\\r\\n')"
            )
            self._con.unregister("list")
            self._parts.append(part)

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        try:
            self._con.close()
            if kind is None:
                with self.path.open("wb") as out:
                    for part in self._parts:
                        with part.open("rb") as chunk:
                            shutil.copyfileobj(chunk, out, 1 << 20)
        finally:
            self._work.cleanup()


# --- the previous week ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Previous:
    week: str
    churn_list: Path  # its churn_risk.parquet, compared with this week's by DuckDB (``compare_lists``)
    kpis: pd.DataFrame


# What the change since the previous week reads of each list.
COMPARED = (s.CUSTOMER_ID, s.SEGMENT, s.RISK_TIER, s.P_CHURN, s.VALUE_AT_RISK)


@dataclasses.dataclass(frozen=True)
class Change:
    """This week's list against the previous week's: counts of customers, and the risers (``compare_lists``)."""

    new: int  # on this week's list only
    gone: int  # on the previous week's only
    common: int
    moved: int  # on both, in another segment
    into_high: int  # on both, in the high risk tier now and not before
    risers: pd.DataFrame  # the ones who moved into the high risk tier with the most value at risk, most first


def folder_source(folder: Path) -> str | None:
    """The log a week's folder was made from (its ``week.json``); None for a folder written without one."""
    try:
        return str(json.loads((folder / WEEK_JSON).read_text(encoding="utf-8"))["source"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def previous_week(weekly: Path, week: str, source: str | None = None) -> tuple[Previous | None, str | None]:
    """The latest week folder before ``week`` made from the same log ``source`` (``ingest.source``), with a
    readable list, or why none could be used. A week of another log is never compared: every customer would look
    new or gone."""
    if not weekly.is_dir():
        return None, None
    earlier = sorted(p for p in weekly.iterdir() if p.is_dir() and WEEK_FOLDER.match(p.name) and p.name < week)
    others = [p for p in earlier if source is not None and folder_source(p) != source]
    earlier = [p for p in earlier if p not in others]
    if not earlier:
        if others:
            return None, (
                f"no earlier week of this log ({source}); the earlier weeks here ({others[-1].name} the latest) were "
                "made from another log, or before a week's folder recorded its log"
            )
        return None, None
    folder = earlier[-1]
    try:
        path = folder / LIST_PARQUET
        if not path.is_file():
            raise InputError(f"{path}: file not found")
        with_net = s.CLV_NET in pq.read_schema(path).names
        expected = s.churn_risk_list_schema(with_net)
        problem = schema_problem(pq.read_schema(path), expected, COMPARED)
        if problem:
            raise InputError(f"{path}: {problem}")
        kpis = read_csv_table(folder / SEGMENTS_CSV, s.segment_kpis_schema(seg.KPI_TABLE_COLUMNS))
    except (InputError, OSError, ValueError) as exc:  # ValueError: pyarrow and pandas on a damaged file
        reason = f"the previous week's folder {folder.name} could not be compared: {exc}"
        log.warning("%s", reason)
        return None, reason
    return Previous(folder.name, path, kpis), None


def schema_problem(found: pa.Schema, expected: Any, columns: Sequence[str]) -> str | None:
    """What is wrong with a list file's Arrow schema for reading ``columns``: a column missing, or of another
    kind (text, number) than the list schema ``expected`` gives it; None if nothing."""
    for c in columns:
        if c not in found.names:
            return f"no column {c!r}"
        kind = found.field(c).type
        wants_number = str(expected.columns[c].dtype).startswith(("float", "int"))
        if wants_number != (pa.types.is_floating(kind) or pa.types.is_integer(kind)):
            return f"column {c!r} is {kind}, not what the list holds"
    return None


def compare_lists(current: Path, previous: Path, top: int, memory_limit_mb: int | None = None) -> Change:
    """This week's list file against the previous week's, by customer id, in DuckDB over the two files: memory
    holds DuckDB's hash tables (within ``memory_limit_mb``, spilling beyond it) and ``top`` risers, not the lists.
    Raises ``duckdb.Error`` on a file it cannot read."""
    cols = ", ".join(f'"{c}"' for c in COMPARED)
    with tempfile.TemporaryDirectory(prefix="churn-clv-compare-") as spill:
        con = duckdb.connect(config={"temp_directory": spill})
        try:
            if memory_limit_mb is not None:
                con.execute(f"SET memory_limit = '{int(memory_limit_mb)}MB'")
            now, before = (str(path).replace("'", "''") for path in (current, previous))
            con.execute(f"CREATE VIEW now AS SELECT {cols}, \"{s.RANK}\" FROM read_parquet('{now}')")
            con.execute(f"CREATE VIEW before AS SELECT {cols} FROM read_parquet('{before}')")
            i, seg_, tier, p, var = (f'"{c}"' for c in COMPARED)
            into_high = f"n.{tier} = 'high' AND b.{tier} <> 'high'"
            row = con.execute(
                f"""SELECT
                    (SELECT count(*) FROM now), (SELECT count(*) FROM before),
                    count(*), count(*) FILTER (WHERE n.{seg_} <> b.{seg_}), count(*) FILTER (WHERE {into_high})
                FROM now n JOIN before b ON n.{i} = b.{i}"""
            ).fetchone()
            risers = con.execute(
                f"""SELECT n.{i} AS {i}, b.{seg_} AS "segment before", n.{seg_} AS {seg_},
                    b.{p} AS "p_churn before", n.{p} AS {p}, n.{var} AS {var}
                FROM now n JOIN before b ON n.{i} = b.{i} WHERE {into_high}
                ORDER BY n.{var} DESC, n."{s.RANK}" LIMIT {int(top)}"""
            ).df()
        finally:
            con.close()
    assert row is not None
    n_now, n_before, common, moved, high = (int(v) for v in row)
    return Change(n_now - common, n_before - common, common, moved, high, risers)


class ListTally:
    """What the page and the key figures need of the list, counted while it is written a chunk at a time: its
    size, the contacts, the sums of value at risk and of the contacts' net value, and its first ``top`` rows."""

    def __init__(self, top: int) -> None:
        self.customers = self.contacts = 0
        self.value_at_risk = self.expected_net_value = 0.0
        self._top_n = top
        self._heads: list[pd.DataFrame] = []

    def add(self, chunk: pd.DataFrame) -> None:
        self.customers += len(chunk)
        self.value_at_risk += float(chunk[s.VALUE_AT_RISK].sum())
        if s.GROUP in chunk:
            contact = (chunk[s.GROUP] == s.CONTACT).to_numpy()
            self.contacts += int(contact.sum())
            self.expected_net_value += float(chunk.loc[contact, s.NET_VALUE].sum())
        held = sum(len(head) for head in self._heads)
        if held < self._top_n or not self._heads:
            self._heads.append(chunk.head(self._top_n - held))

    @property
    def top(self) -> pd.DataFrame:
        """The list's first ``top`` rows."""
        heads = [head for head in self._heads if len(head)] or self._heads[:1]
        return pd.concat(heads, ignore_index=True) if len(heads) > 1 else heads[0]


def write_list(
    chunks: Iterable[pd.DataFrame],
    folder: Path,
    *,
    headers: dict[str, str],
    schema: DataFrameSchema,
    top: int,
) -> ListTally:
    """Write the list's CSV and Parquet file in ``folder`` as its chunks come, each chunk checked for non-finite
    numbers first; returns the tally. Each file appears whole or not at all."""
    undefined = (s.CLV_P05, s.CLV_P95, s.NET_VALUE, s.CONTACT_COST)  # no interval, or not assigned: an empty cell
    tally = ListTally(top)
    with atomic_path(folder / LIST_CSV) as tmp, ListCsv(tmp, headers) as csv_out:

        def written() -> Iterator[pd.DataFrame]:
            for chunk in rechunked(chunks, WRITE_CHUNK_ROWS):
                where = f"writing {folder / LIST_CSV} (from rank {tally.customers + 1:,})"
                check_finite(chunk, where, undefined_allowed=undefined)
                csv_out.add(chunk)
                tally.add(chunk)
                yield chunk

        write_frames(written(), folder / LIST_PARQUET, without_unique(schema))  # ids: unique as the scores'
    return tally


def week_change(
    current: Path, previous: Previous, top: int, memory_limit_mb: int | None
) -> tuple[Change | None, str | None]:
    """This week's list against ``previous``'s, or why it cannot be compared (then None)."""
    try:
        change = compare_lists(current, previous.churn_list, top, memory_limit_mb)
    except duckdb.Error as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        problem = f"the previous week's folder {previous.week} could not be compared: {first}"
        log.warning("%s", problem)
        return None, problem
    if change.common == 0:
        # ids switched between real and pseudonymised, or the key changed: every customer would look new
        problem = (
            f"the previous week's list {previous.week} has no customer id in common with this one (was "
            f"score.pseudonymise_ids or {ID_KEY_ENV} changed?); no comparison is shown"
        )
        log.warning("%s", problem)
        return None, problem
    return change, None


# The scores' columns the page reads for every customer: the segment grid, the risk chart and the KPIs.
PAGE_COLUMNS = frozenset({s.AS_OF, s.VALUE_TIER, s.RISK_TIER, s.P_CHURN, s.VALUE_AT_RISK, *seg.KPI_INPUTS})


# --- the summary page ----------------------------------------------------------------------------------------------


def _tiles(items: Sequence[tuple[str, str]]) -> str:
    cells = "".join(
        f'<div class="tile"><div class="value">{h.esc(v)}</div><div class="label">{h.esc(k)}</div></div>'
        for k, v in items
    )
    return f'<div class="tiles">{cells}</div>'


def _grid_section(scores: pd.DataFrame, cells: dict[tuple[str, str], tuple[str, str]]) -> str:
    customers = seg.grid_table(scores, "customers")
    at_risk = seg.grid_table(scores, s.VALUE_AT_RISK)
    head = "".join(f"<th>{h.esc(r)} risk</th>" for r in seg.RISK_TIERS)
    rows = []
    for v in s.VALUE_TIERS:
        tds = []
        for r in seg.RISK_TIERS:
            name, action = cells[(v, r)]
            tds.append(
                f'<td class="risk-{r}"><div class="cell-name">{h.esc(name)}</div>'
                f"<div>{h.count(customers.loc[v, r])} customer{'' if customers.loc[v, r] == 1 else 's'} · "
                f"value at risk {h.money(at_risk.loc[v, r])}</div>"
                f'<div class="muted">{h.esc(action)}</div></td>'
            )
        rows.append(f"<tr><th>{h.esc(v)} value</th>{''.join(tds)}</tr>")
    return f'<table class="grid"><thead><tr><th></th>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


KPI_HEADERS = {
    s.SEGMENT: "segment",
    "customers": "customers",
    "customer_share": "share",
    "repeat_purchase_rate": "repeat-purchase rate",
    "retention_base": "retention base",
    "retention_rate": "retention rate",
    "churn_rate": "churn rate",
    "revenue_last_horizon": "revenue",
    "profit_last_horizon": "profit contribution",
    "avg_clv": "average CLV",
    "total_clv": "total CLV",
    "value_at_risk": "value at risk",
    "expected_churners": "expected churners",
    "mean_p_churn": "mean p_churn",
}
KPI_FORMATS: dict[str, h.Formatter] = {
    "customers": h.count,
    "customer_share": h.pct,
    "repeat_purchase_rate": h.pct,
    "retention_base": h.count,
    "retention_rate": h.pct,
    "churn_rate": h.pct,
    "revenue_last_horizon": h.money,
    "profit_last_horizon": h.money,
    "avg_clv": h.money2,
    "total_clv": h.money,
    "value_at_risk": h.money,
    "expected_churners": h.money,
    "mean_p_churn": h.prob,
}


def _risk_chart(scores: pd.DataFrame, cfg: ScoreConfig) -> str:
    fig = Figure(figsize=(10, 4))
    ax = fig.add_subplot()
    edges = np.linspace(0, 1, 21)
    bottom = np.zeros(20)
    for tier, colour in zip(s.VALUE_TIERS, ("#1f4e8c", "#5d8fd1", "#b9cde8"), strict=True):
        counts, _ = np.histogram(scores.loc[scores[s.VALUE_TIER] == tier, s.P_CHURN], bins=edges)
        ax.bar(edges[:-1], counts, width=0.05, align="edge", bottom=bottom, color=colour, label=f"{tier} value")
        bottom = bottom + counts
    for name, x in (("medium", cfg.risk_tier_thresholds.medium), ("high", cfg.risk_tier_thresholds.high)):
        ax.axvline(x, color="#b3261e", linestyle="--", linewidth=1)
        ax.text(x, bottom.max() * 0.97, f" {name} risk", color="#b3261e", va="top", fontsize=8)
    ax.set(xlabel="p_churn (calibrated probability of no purchase in the horizon)", ylabel="customers", xlim=(0, 1))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return h.svg(fig, "Risk distribution: customers by p_churn, stacked by value tier")


def _value_chart(kpis: pd.DataFrame) -> str:
    rows = kpis[kpis[s.SEGMENT] != seg.ALL].iloc[::-1]
    fig = Figure(figsize=(10, 4))
    ax = fig.add_subplot()
    ax.barh(rows[s.SEGMENT], rows["value_at_risk"], color="#b3261e")
    ax.set(xlabel="value at risk (sum of p_churn x CLV)")
    ax.grid(alpha=0.3, axis="x")
    ax.tick_params(axis="y", labelsize=8)
    return h.svg(fig, "Value at risk by segment")


def _top_section(top: pd.DataFrame) -> str:
    cols = [s.RANK, s.CUSTOMER_ID, s.SEGMENT, s.RECOMMENDED_ACTION, s.VALUE_AT_RISK, s.P_CHURN, s.CLV, *s.REASONS]
    formats: dict[str, h.Formatter] = {s.VALUE_AT_RISK: h.money2, s.P_CHURN: h.prob, s.CLV: h.money2}
    return h.table(
        top[cols],
        formats=formats,
        numeric=[s.RANK, s.VALUE_AT_RISK, s.P_CHURN, s.CLV],
        headers={s.RECOMMENDED_ACTION: "action", s.VALUE_AT_RISK: "value at risk"},
    )


def drift_status(psi: float, warning: float, feature: str = "") -> str:
    """A drift table row's status; an input the verdict does not judge (``models.monitoring.comparable``) says why."""
    if feature and feature != s.P_CHURN and not monitoring.comparable(feature):
        if feature.endswith(cm.RANK_SUFFIX):
            return "not judged: a rank within the week"
        return "not judged: grows with the calendar"
    if psi > warning:
        return "shift: check before acting"
    return "moderate" if psi > MODERATE_PSI else "stable"


def drift_banner(drift: pd.DataFrame, cfg: ScoreConfig) -> str:
    """The warning that opens the page when the week's scores rest on customers unlike the reference's
    (``models.monitoring.verdict``), in words; empty when nothing that changes the scores moved."""
    if drift.empty:
        return ""
    judged = monitoring.verdict(drift, cfg.drift_warning_psi)
    if not judged.shifted:
        return ""
    ref = pd.Timestamp(drift["reference_cutoff"].iloc[0]).date()
    why = []
    if judged.score_psi is not None and judged.score_psi > judged.warning_psi:
        why.append(f"the churn scores themselves are spread differently (stability index {judged.score_psi:.2f})")
    if judged.input_psi is not None and judged.input_psi > judged.warning_psi:
        why.append(f"the customer data the model relies on has moved (weighted stability index {judged.input_psi:.2f})")
    most = ""
    if judged.movers:
        shown = [monitoring.label(f) for f in judged.movers[:3]]
        more = f", and {len(judged.movers) - 3} more" if len(judged.movers) > 3 else ""
        most = f" Most of all: {', '.join(shown)}{more}."
    return (
        f'<p class="warning" role="alert"><strong>Drift warning:</strong> this week\'s customers are unlike those the '
        f"churn model was checked on ({ref}): {h.esc(' and '.join(why))} (above {cfg.drift_warning_psi} is a "
        f"shift).{h.esc(most)} The risk tiers may be less reliable this week: check the list before acting on it; "
        "the details are at the bottom of the page.</p>"
    )


def _drift_section(drift: pd.DataFrame, cfg: ScoreConfig) -> str:
    if drift.empty:
        return "<p>No drift figures were written by the score stage.</p>"
    ref = pd.Timestamp(drift["reference_cutoff"].iloc[0]).date()
    judged = monitoring.verdict(drift, cfg.drift_warning_psi)
    figures = []
    if judged.score_psi is not None:
        figures.append(f"the churn scores {judged.score_psi:.3f}")
    if judged.input_psi is not None:
        figures.append(f"the inputs, weighted by how much each moves the score, {judged.input_psi:.3f}")
    decision = "a shift worth checking" if judged.shifted else "no shift that changes the scores"
    intro = (
        f"<p>This week's customers against those of {ref}, the latest cutoff with known outcomes and the one the "
        f"churn model was validated and calibrated on. Stability index (PSI): {h.esc('; '.join(figures))}. Below "
        f"{MODERATE_PSI} is stable, above {cfg.drift_warning_psi} a shift: this week, {decision}. Inputs that grow "
        "with the calendar (customer age, days since the last purchase, totals to date and the purchase model's "
        "figures built on them) are listed but not judged: they move every week for every customer who stays "
        "silent, and their forms relative to each customer's own history are judged instead.</p>"
    )
    view = drift.drop(columns=["reference_cutoff", "scoring_cutoff", s.DRIFT_COMPARED]).copy()
    view.insert(0, "input", [monitoring.label(f) for f in view[s.DRIFT_FEATURE]])
    pairs = zip(view[s.DRIFT_FEATURE], view[s.PSI], strict=True)
    view.insert(3, "status", [drift_status(p, cfg.drift_warning_psi, f) for f, p in pairs])
    fmt = {
        s.PSI: lambda v: f"{float(v):.3f}",
        s.DRIFT_WEIGHT: h.pct,
        "reference_mean": lambda v: f"{float(v):,.3f}",
        "scoring_mean": lambda v: f"{float(v):,.3f}",
        "reference_missing_share": h.pct,
        "scoring_missing_share": h.pct,
    }
    shifted = set(judged.movers) | ({s.P_CHURN} if (judged.score_psi or 0) > judged.warning_psi else set())
    numeric = [s.PSI, s.DRIFT_WEIGHT, "reference_mean", "scoring_mean"]
    numeric += ["reference_missing_share", "scoring_missing_share"]
    return (
        intro
        + f"<details><summary>Technical table: PSI of every input ({len(view)} rows)</summary>"
        + h.table(
            view,
            formats=fmt,
            numeric=numeric,
            headers={s.DRIFT_WEIGHT: "weight (share of the model's attention)"},
            row_class=lambda r: "risk-high" if r[s.DRIFT_FEATURE] in shifted else "",
        )
        + "</details>"
    )


def _change_section(prev: Previous, change: Change, kpis: pd.DataFrame) -> str:
    tiles = _tiles(
        [
            ("new on the list", h.count(change.new)),
            ("no longer on the list", h.count(change.gone)),
            ("changed segment", h.count(change.moved)),
            ("moved into high risk", h.count(change.into_high)),
        ]
    )
    merged = kpis[[s.SEGMENT, "customers", "value_at_risk", "expected_churners"]].merge(
        prev.kpis[[s.SEGMENT, "customers", "value_at_risk", "expected_churners"]],
        on=s.SEGMENT,
        how="left",
        suffixes=("", "_before"),
    )
    table = pd.DataFrame(
        {
            s.SEGMENT: merged[s.SEGMENT],
            "customers": merged["customers"],
            "change in customers": merged["customers"] - merged["customers_before"],
            "value at risk": merged["value_at_risk"],
            "change in value at risk": merged["value_at_risk"] - merged["value_at_risk_before"],
        }
    )
    seg_table = h.table(
        table,
        formats={
            "customers": h.count,
            "change in customers": h.signed(h.count),
            "value at risk": h.money,
            "change in value at risk": h.signed(h.money),
        },
        numeric=["customers", "change in customers", "value at risk", "change in value at risk"],
        row_class=lambda r: "total" if r[s.SEGMENT] == seg.ALL else "",
    )
    risers = change.risers
    risers_html = (
        "<p>No customer moved into the high risk tier.</p>"
        if risers.empty
        else "<p>Most value at risk among the customers who moved into the high risk tier:</p>"
        + h.table(
            risers,
            formats={"p_churn before": h.prob, s.P_CHURN: h.prob, s.VALUE_AT_RISK: h.money2},
            numeric=["p_churn before", s.P_CHURN, s.VALUE_AT_RISK],
        )
    )
    return f"<h2>Change since {h.esc(prev.week)}</h2>{tiles}{seg_table}{risers_html}"


# --- the campaign ----------------------------------------------------------------------------------------------------

LIFT_HEADERS = {
    "group": "segment",
    "n_target": "contacted",
    "n_control": "held out",
    "retention_target": "retention, contacted",
    "retention_control": "retention, held out",
    "lift": "retention lift",
    "interval": "95% interval",
    "mde": "detectable (MDE)",
    "verdict": "reading",
    "incremental_profit": "incremental profit",
    "contact_cost": "contact cost",
}


def _verdict(r: dict[str, Any]) -> str:
    if r.get("lift") is None:
        return "no comparison: one arm is empty"
    if r.get("significant"):
        return "real effect" if abs(r["lift"]) >= (r.get("mde") or 0) else "significant, below the MDE: read with care"
    return "no effect shown (within noise)"


def _lift_chart(rows: list[tuple[str, dict[str, Any]]]) -> str:
    shown = [(n, r) for n, r in rows if r.get("lift") is not None][::-1]
    fig = Figure(figsize=(6.4, 0.5 + 0.45 * max(len(shown), 1)))
    ax = fig.add_subplot()
    y = np.arange(len(shown))
    lift = np.array([r["lift"] for _, r in shown])
    low = np.array([r["lift_low"] for _, r in shown])
    high = np.array([r["lift_high"] for _, r in shown])
    mde = np.array([r.get("mde") or 0.0 for _, r in shown])
    ax.barh(y, 2 * mde, left=-mde, color="#e8e8e8", height=0.6, label="within +/- MDE (undetectable)")
    ax.errorbar(
        lift, y, xerr=[lift - low, high - lift], fmt="o", color="#1f4e8c", capsize=3, label="lift, 95% interval"
    )
    ax.axvline(0, color="#5b6475", linewidth=1)
    ax.set_yticks(y, [n for n, _ in shown], fontsize=8)
    ax.set(xlabel="retention lift: contacted minus held out (share of customers)")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3, axis="x")
    return h.svg(fig, "Measured retention lift by segment, pooled over the measured weeks")


def campaign_section(assignments: pd.DataFrame, campaign: dict[str, Any], horizon_days: int) -> str:
    """This week's campaign (who is contacted, who held out, the economics) and what earlier weeks' contacts did."""
    target = assignments[s.ARM] == s.TARGET_ARM
    n_t, n_c = int(target.sum()), int((~target).sum())
    sources = sorted(set(assignments[s.EFFECT_SOURCE]))
    parts = [
        "<h2>Campaign: this week and its measured effect</h2>",
        _tiles(
            [
                ("to contact (on the list as contact)", h.count(n_t)),
                ("held out as control (not on the list)", h.count(n_c)),
                ("expected contact cost", h.money2(assignments.loc[target, s.CONTACT_COST].sum())),
                ("expected net value of the contacts", h.money2(assignments.loc[target, s.NET_VALUE].sum())),
            ]
        ),
        "<p class='muted'>Expected net value of a contact = min(effect, p_churn) x CLV - cost of the action. Effect "
        f"used this week: {h.esc(', '.join(sources) or 'none')} (per action below). Held-out customers are the "
        "comparison that measures the contacts; contacting them spoils it.</p>",
    ]
    effects = campaign.get("effects") or {}
    if effects:
        frame = pd.DataFrame(
            [
                {"action": a, "assumed": e["assumed"], "measured": e["measured"], "used": e["used"], "why": e["why"]}
                for a, e in effects.items()
            ]
        )
        parts.append(
            h.table(
                frame,
                formats={c: h.signed(h.prob) for c in ("assumed", "measured", "used")},
                numeric=["assumed", "measured", "used"],
            )
        )
    pooled = (campaign.get("pooled") or {}).get("segments") or {}
    overall = (campaign.get("pooled") or {}).get("overall")
    measured = campaign.get("measured_weeks") or []
    if not measured:
        as_of = pd.Timestamp(assignments[s.AS_OF].iloc[0]) if len(assignments) else None
        nxt = (as_of + pd.Timedelta(days=horizon_days - 1)).date() if as_of is not None else None
        when = f" This week's result is due once the transaction log reaches {nxt}." if nxt else ""
        parts.append(
            f"<p>No week has been measured yet: a week's outcome is whether each customer bought within "
            f"{horizon_days} days of its list.{h.esc(when)}</p>"
        )
    else:
        rows = [*pooled.items(), *([(seg.ALL, overall)] if overall else [])]
        table = pd.DataFrame(
            [
                {
                    "group": name,
                    "n_target": r["n_target"],
                    "n_control": r["n_control"],
                    "retention_target": r.get("retention_target"),
                    "retention_control": r.get("retention_control"),
                    "lift": r.get("lift"),
                    "interval": (
                        f"[{r['lift_low']:+.3f}, {r['lift_high']:+.3f}]" if r.get("lift_low") is not None else ""
                    ),
                    "mde": r.get("mde"),
                    "verdict": _verdict(r),
                    "incremental_profit": r.get("incremental_profit"),
                    "contact_cost": r.get("contact_cost"),
                }
                for name, r in rows
            ]
        )
        parts.append(
            f"<p class='muted'>Weeks measured: {h.esc(', '.join(measured))}. Intention to treat: every assigned "
            f"customer counts in the arm drawn for them. Retention = any purchase within {horizon_days} days. The "
            "MDE is the smallest lift these group sizes detect 8 times in 10; a lift inside it is not evidence.</p>"
            + h.table(
                table,
                formats={
                    "n_target": h.count,
                    "n_control": h.count,
                    "retention_target": h.pct,
                    "retention_control": h.pct,
                    "lift": h.signed(h.prob),
                    "mde": h.prob,
                    "incremental_profit": h.signed(h.money2),
                    "contact_cost": h.money2,
                },
                headers=LIFT_HEADERS,
                numeric=[
                    "n_target",
                    "n_control",
                    "retention_target",
                    "retention_control",
                    "lift",
                    "mde",
                    "incremental_profit",
                    "contact_cost",
                ],
                row_class=lambda r: "total" if r["group"] == seg.ALL else "",
            )
            + f'<div class="charts">{_lift_chart(rows)}</div>'
        )
    protocol = campaign.get("contacts")
    if protocol and protocol.get("reach_rate") is not None:
        c = protocol["contacts"]
        pp = protocol.get("per_protocol") or {}
        reached = protocol.get("effect_on_the_reached")
        words = [
            f"Marketing's contact file: {h.count(c['matched'])} of its {h.count(c['distinct'])} customers are in the "
            f"log; {h.pct(protocol['reach_rate'])} of the measured contacted arm was reached."
        ]
        if pp.get("lift") is not None:
            words.append(
                f"Per protocol (reached against held out; biased where reach depends on the customer): lift "
                f"{pp['lift']:+.3f} [{pp['lift_low']:+.3f}, {pp['lift_high']:+.3f}]."
            )
        if reached:
            words.append(
                f"Effect on the reached (intention to treat / reach rate): {reached['lift']:+.3f} "
                f"[{reached['lift_low']:+.3f}, {reached['lift_high']:+.3f}]."
            )
        if c["control_contacted"]:
            words.append(f"Warning: {h.count(c['control_contacted'])} held-out customers were contacted.")
        parts.append(f"<p>{h.esc(' '.join(words))}</p>")
    uplift = campaign.get("uplift") or {}
    if uplift.get("status"):
        parts.append(f"<p class='muted'>Uplift model: {h.esc(uplift['status'])}.</p>")
    return "".join(parts)


def summary_page(
    scores: pd.DataFrame,
    listed: ListTally,
    kpis: pd.DataFrame,
    drift: pd.DataFrame,
    cfg: ScoreConfig,
    *,
    week: str,
    horizon_days: int,
    previous: Previous | None,
    previous_problem: str | None,
    change: Change | None = None,
    ranked_by: str = "",
    campaign: str = "",
    currency: str = "",
    clv_months: int = 12,
) -> str:
    """The summary.html document. ``scores`` holds ``PAGE_COLUMNS`` of every scored customer, ``listed`` the
    list's size and head, ``change`` the comparison with the ``previous`` week; ``ranked_by`` says which models
    scored and ranked the list and why (``scorer_words``), ``campaign`` is ``campaign_section``'s HTML,
    ``currency`` labels every sum."""
    cur = f" ({currency})" if currency else ""
    as_of = pd.Timestamp(scores[s.AS_OF].iloc[0]).date() if len(scores) else None
    total = kpis[kpis[s.SEGMENT] == seg.ALL].iloc[0]
    cells = grid(cfg)
    top_name = cells[("high", "high")][0]
    sections = []
    banner = drift_banner(drift, cfg)
    if banner:
        sections.append(banner)
    sections.append(
        _tiles(
            [
                ("customers scored", h.count(total["customers"])),
                (f"expected to buy nothing in {horizon_days} days", h.money(total["expected_churners"])),
                (f"value at risk{cur}: p_churn x CLV", h.money(total["value_at_risk"])),
                (f"churn rate over the last {horizon_days} days", h.pct(total["churn_rate"])),
                (top_name, h.count(kpis.loc[kpis[s.SEGMENT] == top_name, "customers"].iloc[0])),
            ]
        )
    )
    if ranked_by:
        sections.append(f'<p class="models"><strong>Models this week.</strong> {h.esc(ranked_by)}</p>')
    if campaign:
        sections.append(campaign)
    sections.append("<h2>Segments: value tier x risk tier</h2>" + _grid_section(scores, cells))
    sections.append(
        f"<h2>KPIs by segment</h2><p class='muted'>Revenue and profit contribution (revenue x margin) over the last "
        f"{horizon_days} days, net of returns{', in ' + currency if currency else ''}. Retention: of the customers "
        "who had bought before those days, the share who bought again in them.</p>"
        + h.table(
            kpis,
            formats=KPI_FORMATS,
            headers={
                k: v + (cur if KPI_FORMATS.get(k) in (h.money, h.money2) and k != "expected_churners" else "")
                for k, v in KPI_HEADERS.items()
            },
            numeric=list(KPI_FORMATS),
            row_class=lambda r: "total" if r[s.SEGMENT] == seg.ALL else "",
        )
    )
    sections.append(f'<h2>Risk and value</h2><div class="charts">{_risk_chart(scores, cfg)}{_value_chart(kpis)}</div>')
    sections.append(
        f"<h2>Top {len(listed.top)} of the list</h2>"
        f"<p class='muted'>The whole list, {listed.customers:,} customers, is in {LIST_CSV} beside this page.</p>"
        + _top_section(listed.top)
    )
    if previous is not None and change is not None:
        sections.append(_change_section(previous, change, kpis))
    else:
        why = previous_problem or "no earlier week's folder exists yet"
        sections.append(f"<h2>Change since the previous week</h2><p>Not shown: {h.esc(why)}.</p>")
    sections.append("<h2>Drift</h2>" + _drift_section(drift, cfg))
    sections.append(glossary(horizon_days, clv_months, currency, cfg.drift_warning_psi))
    title = f"Churn-risk list, week {week}"
    subtitle = (
        f"Scored as of {as_of} on the history before it; p_churn is the probability of no purchase in the next "
        f"{horizon_days} days."
    )
    return h.page(title, subtitle, sections)


def glossary(horizon_days: int, clv_months: int, currency: str, warning_psi: float) -> str:
    """What the words of this page and of the list's columns mean, for a reader who has not met them."""
    money = f"in {currency}" if currency else "in the log's currency"
    terms = [
        (
            "churn probability (p_churn)",
            f"the calibrated chance that the customer buys nothing in the next "
            f"{horizon_days} days: 0.7 means that of 10 such customers, about 7 buy nothing.",
        ),
        ("risk tier", "high, medium or low churn probability (thresholds in params.yaml, score.risk_tier_thresholds)."),
        (
            "CLV (customer lifetime value)",
            f"the profit the customer is expected to bring in the next {clv_months} "
            f"months: expected purchases x expected spend per purchase x margin, discounted, {money}. CLV low / high: "
            "the 5th and 95th percentile of that estimate.",
        ),
        ("value tier", "high, mid or low CLV (the CLV quantiles where a tier starts: clv.value_tier_quantiles)."),
        ("value at risk", f"churn probability x CLV, {money}: the profit expected to be lost if nothing is done."),
        (
            "segment and recommended action",
            "the value tier x risk tier cell the customer falls in, and what marketing does for that cell.",
        ),
        (
            "group",
            "contact: on this week's campaign, best expected net value first; no contact: not worth a "
            "contact this week (or no action for the segment). A random control group is held out of the list to "
            "measure what the contacts change.",
        ),
        (
            "expected net value of contact",
            f"the CLV a contact is expected to save (its effect on the churn "
            f"probability x CLV) minus its cost, {money}.",
        ),
        (
            "probability still a customer (p_alive)",
            "the purchase model's chance that the customer has not silently left for good.",
        ),
        (
            "reasons",
            "up to three facts about the customer that raise the churn probability most, each beside "
            "the typical (median) value of the customers who stayed, at the date the model was validated on; "
            "'no warning signs' below the medium risk tier.",
        ),
        ("purchase days", "days with at least one purchase (several orders on one day count once)."),
        (
            "PSI (population stability index)",
            "how far a distribution moved between the model's reference data "
            f"and this week: below {MODERATE_PSI} stable, above {warning_psi} a shift (score.drift_warning_psi).",
        ),
    ]
    items = "".join(f"<dt>{h.esc(term)}</dt><dd>{h.esc(text)}</dd>" for term, text in terms)
    return f'<h2>Words on this page and in the list</h2><dl class="glossary">{items}</dl>'


# --- the key figures ------------------------------------------------------------------------------------------------


def _num(doc: dict[str, Any], *path: str) -> float | None:
    """``doc[path[0]][path[1]]...`` as a float rounded for display in `dvc exp show`; None where absent."""
    v: Any = doc
    for k in path:
        v = v.get(k) if isinstance(v, dict) else None
    return None if v is None or isinstance(v, str) else round(float(v), 4)


def key_figures(
    listed: ListTally,
    score_metrics: dict[str, Any],
    churn_metrics: dict[str, Any],
    clv_metrics: dict[str, Any],
    campaign: dict[str, Any],
) -> dict[str, Any]:
    """The dozen figures a data scientist compares experiments by and a reviewer signs off on, from the stages'
    own metrics: the churn model's holdout ROC-AUC and the backtest's paired edge of the serving scorer over the
    best one-line rule (with its interval), the CLV model's holdout Gini and total purchases error, the list's
    size and value at risk, and the measured retention lift when there is one. Flat, with names no params.yaml key
    has, so `dvc exp show` and `make exp` print them unprefixed."""
    scorer = ((score_metrics.get("served") or {}).get("churn") or {}).get("scorer") or {}
    overall = (campaign.get("pooled") or {}).get("overall") or {}
    return {
        "churn_roc_auc": _num(churn_metrics, "model", "roc_auc"),
        "churn_scorer": scorer.get("scorer"),
        "churn_edge_over_best_rule": _num(scorer, "gain"),
        "churn_edge_low": _num(scorer, "low"),
        "churn_edge_high": _num(scorer, "high"),
        "churn_best_rule": scorer.get("best_rule"),
        # the purchase model and its holdout figures; clv_valued_by: what values the list (the challenger, if it serves)
        "clv_model": clv_metrics.get("chosen_model"),
        "clv_valued_by": (clv_metrics.get("value_model") or {}).get("name") or clv_metrics.get("chosen_model"),
        "clv_gini": _num(clv_metrics, "model", "gini"),
        "clv_purchases_error_pct": _num(clv_metrics, "model", "purchases_pct_error"),
        "list_customers": listed.customers,
        "list_to_contact": listed.contacts,
        "list_value_at_risk": round(listed.value_at_risk, 2),
        "list_expected_net_value": round(listed.expected_net_value, 2) if listed.contacts else 0.0,
        "campaign_lift": _num(overall, "lift"),
        "campaign_lift_low": _num(overall, "lift_low"),
        "campaign_lift_high": _num(overall, "lift_high"),
    }


# --- the stage -------------------------------------------------------------------------------------------------------


def scorer_words(score_metrics: dict[str, Any]) -> str:
    """Which churn scorer ranked this week's list, and why, in a sentence (from the score stage's metrics)."""
    churn = (score_metrics.get("served") or {}).get("churn") or {}
    choice = churn.get("scorer") or {}
    name = choice.get("scorer")
    if not name:
        return ""
    who = "the churn model (LightGBM)" if name == "model" else f"the {cm.RULE_WORDS[name]}, calibrated by the run of"
    version = f" v{churn['version']}" if churn.get("version") else " (the workspace's)"
    ranked = f"Churn risk ranked by {who} {churn.get('model_name', '')}{version}. Why: {choice.get('reason', '')}."
    return ranked + value_words(score_metrics)


def value_words(score_metrics: dict[str, Any]) -> str:
    """Which CLV model valued the customers (value tiers, the CLV column), and why, in a sentence."""
    clv = (score_metrics.get("served") or {}).get("clv") or {}
    if not clv.get("model"):
        return ""
    version = f" v{clv['version']}" if clv.get("version") else " (the workspace's)"
    why = f" Why: {clv['chosen_by']}." if clv.get("chosen_by") else ""
    who = "the CLV challenger (LightGBM)" if clv["model"] == vb.NAME else f"the {clv['model']} model"
    return f" Customers valued by {who} of {clv.get('model_name', '')}{version}.{why}"


def id_key() -> str:
    """The pseudonymisation key from the environment (it is never read from or written to a file)."""
    key = os.environ.get(ID_KEY_ENV, "")
    if not key:
        raise InputError(
            f"score.pseudonymise_ids is true but {ID_KEY_ENV} is not set; export a secret of {MIN_KEY_CHARS}+ "
            "characters in it (the same one each week, so lists can be compared)"
        )
    check_key(key)
    return key


def run(
    fcfg: FeaturesConfig,
    ccfg: ClvConfig,
    cfg: ScoreConfig,
    *,
    scores_path: Path,
    drift_path: Path,
    weekly: Path,
    score_metrics: Path | None = None,
    assignments_path: Path | None = None,
    campaign_metrics: Path | None = None,
    churn_metrics: Path | None = None,
    clv_metrics: Path | None = None,
    key_metrics: Path | None = None,
    source: str | None = None,
    currency: str = "",
    memory_limit_mb: int | None = None,
) -> Path:
    """Write this week's folder under ``weekly``; returns it. ``score_metrics`` (metrics/score.json) names the
    scorer that ranked the list on the summary page; with ``assignments_path`` (the assign stage's) and
    ``campaign_metrics`` (the measure stage's) the list leaves the control arm off and the page shows the
    campaign. ``key_metrics`` gets ``key_figures`` (with the training stages' ``churn_metrics`` and
    ``clv_metrics``). ``source`` (ingest.source) is recorded in the folder: the change since an earlier week is
    shown only against a week of the same log. ``currency`` labels every sum.

    Memory holds a few columns of every scored customer for the page (``PAGE_COLUMNS``), a chunk of the list and
    the target arm; the list is read from the scores and written a chunk at a time, and compared with the previous
    week's by DuckDB within ``memory_limit_mb`` (base.duckdb_memory_limit_mb)."""
    if not scores_path.is_file():
        raise InputError(f"{scores_path}: file not found; run the score stage first (`dvc repro`)")
    ranked_by = ""
    score_doc: dict[str, Any] = {}
    if score_metrics is not None:
        try:
            score_doc = json.loads(score_metrics.read_text(encoding="utf-8"))
            ranked_by = scorer_words(score_doc)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(
                f"{score_metrics}: not the score stage's metrics ({exc!r}); rerun the score stage"
            ) from exc
    with_net = s.CLV_NET in pq.read_schema(scores_path).names
    schema = s.scores_schema(with_net)
    scores = read_table(scores_path, schema, columns=[c for c in schema.columns if c in PAGE_COLUMNS])
    drift = read_table(drift_path, s.drift_schema())
    if scores.empty:
        raise InputError(f"{scores_path}: no customers to report on")
    repeated = duplicate_in_file(scores_path, s.CUSTOMER_ID, memory_limit_mb)
    if repeated is not None:
        raise InputError(f"{scores_path}: customer {repeated!r} is scored on more than one row; rerun the score stage")
    assignments = read_table(assignments_path, s.assignment_schema()) if assignments_path is not None else None
    campaign = read_stage_json(campaign_metrics, "measure") if campaign_metrics is not None else {}
    key = id_key() if cfg.pseudonymise_ids else None
    if key is not None and assignments is not None:
        assignments[s.CUSTOMER_ID] = pseudonymise(assignments[s.CUSTOMER_ID], key)
    as_of = pd.Timestamp(scores[s.AS_OF].iloc[0]).date()
    week = iso_week(as_of)
    folder = weekly / week
    if assignments is not None and len(assignments) and set(assignments[s.WEEK]) != {iso_week(as_of)}:
        raise InputError(
            f"{assignments_path}: the assignments of {sorted(set(assignments[s.WEEK]))}, not of {iso_week(as_of)}; "
            "rerun the assign stage (`dvc repro`)"
        )

    def score_chunks() -> Iterator[pd.DataFrame]:
        listed_columns = [c for c in s.LIST_COLUMNS if c in schema.columns]
        for chunk in read_chunks(scores_path, schema, columns=listed_columns, rows=WRITE_CHUNK_ROWS):
            if key is not None:
                chunk[s.CUSTOMER_ID] = pseudonymise(chunk[s.CUSTOMER_ID], key)
            yield chunk

    folder.mkdir(parents=True, exist_ok=True)
    listed = write_list(
        list_chunks(score_chunks, assignments),
        folder,
        headers=list_headers(fcfg.horizon_days, ccfg.clv_horizon_months, currency),
        schema=s.churn_risk_list_schema(with_net, assignments is not None),
        top=cfg.summary_top_customers,
    )
    previous, problem = previous_week(weekly, week, source)
    change = None
    if previous is not None:
        change, problem = week_change(folder / LIST_PARQUET, previous, cfg.summary_top_customers, memory_limit_mb)
        if change is None:
            previous = None
    kpis = seg.kpi_table(scores, seg.segment_order(grid(cfg)), margin_ratio=ccfg.margin_ratio)
    page = summary_page(
        scores,
        listed,
        kpis,
        drift,
        cfg,
        week=week,
        horizon_days=fcfg.horizon_days,
        previous=previous,
        previous_problem=problem,
        change=change,
        ranked_by=ranked_by,
        campaign=(campaign_section(assignments, campaign, fcfg.horizon_days) if assignments is not None else ""),
        currency=currency,
        clv_months=ccfg.clv_horizon_months,
    )
    write_csv(seg.for_csv(kpis), folder / SEGMENTS_CSV, undefined_allowed=seg.KPI_COLUMNS)
    with atomic_path(folder / SUMMARY) as tmp:
        tmp.write_text(page, encoding="utf-8")
    served = score_doc.get("served") or {}
    stamp = {
        "week": week,
        "as_of": str(as_of),
        "source": source,
        "currency": currency or None,
        "models": {k: {f: v.get(f) for f in ("model_name", "version", "source")} for k, v in served.items()},
    }
    write_json(stamp, folder / WEEK_JSON)
    if key_metrics is not None:
        figures = key_figures(
            listed,
            score_doc,
            read_stage_json(churn_metrics, "train_churn") if churn_metrics is not None else {},
            read_stage_json(clv_metrics, "train_clv") if clv_metrics is not None else {},
            campaign,
        )
        write_json({"scored_week": week, "currency": currency or None, **figures}, key_metrics)
    log.info(
        "week %s: %d customers on the list, %s; %s",
        week,
        listed.customers,
        f"compared with {previous.week}" if previous else "no earlier week to compare with",
        folder / SUMMARY,
    )
    return folder


def main(argv: Sequence[str]) -> None:
    p = cli.parser(__doc__.splitlines()[0])
    cli.input_file(p, "--scores")
    cli.input_file(p, "--drift")
    cli.input_file(p, "--score-metrics")
    cli.input_file(p, "--assignments")
    cli.input_file(p, "--campaign-metrics")
    cli.input_file(p, "--churn-metrics")
    cli.input_file(p, "--clv-metrics")
    cli.output(p, "--weekly", directory=True, keep_existing=True)  # earlier weeks' folders stay
    cli.output(p, "--key-metrics")
    args = p.parse_args(argv)
    params = load_params(args.params)
    run(
        section(params, "features", FeaturesConfig),
        section(params, "clv", ClvConfig),
        section(params, "score", ScoreConfig),
        scores_path=args.scores,
        drift_path=args.drift,
        weekly=args.weekly,
        score_metrics=args.score_metrics,
        assignments_path=args.assignments,
        campaign_metrics=args.campaign_metrics,
        churn_metrics=args.churn_metrics,
        clv_metrics=args.clv_metrics,
        key_metrics=args.key_metrics,
        source=section(params, "ingest", IngestConfig).source,
        currency=section(params, "base", BaseConfig).currency,
        memory_limit_mb=section(params, "base", BaseConfig).duckdb_memory_limit_mb,
    )


if __name__ == "__main__":
    cli.run(main)
