"""Audit a finished run: every row accounted for from the raw log to the weekly list, and no NaN or infinity.

``python -m pipeline.audit`` (or ``make audit``) reads the outputs under the project folder and prints one line per
check. It exits with status 1 if a check fails, so it can gate a hand-over to marketing. The checks:

* ingest: rows in = rows kept + rows quarantined, in the metrics and in the two files, reason by reason;
* snapshot: the scoring snapshot holds exactly the customers with a purchase day before the scoring date;
* clv: one value per scoring-snapshot customer; churn: one risk per customer of the active population;
* score and report: the scores, and the weekly list of their week, hold the churn population the score stage scored;
* every float column of every Parquet file, and every number in every CSV file, is finite (a null in a column
  the schema declares nullable, such as the gap of a one-purchase customer, is a missing value, not a NaN).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features import schemas as s
from pipeline import cli
from pipeline.config import ChurnConfig, load_params, section
from pipeline.weeks import iso_week


@dataclasses.dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def _rows(path: Path) -> int:
    return int(pq.read_metadata(path).num_rows)


def ingest_checks(root: Path) -> list[Check]:
    m = json.loads((root / "metrics/ingest.json").read_text())
    kept, quarantined = _rows(root / "data/transactions.parquet"), _rows(root / "data/quarantine.parquet")
    reasons = pq.read_table(root / "data/quarantine.parquet", columns=[s.REASON]).column(0).to_pandas()
    by_reason = {k: v for k, v in m["quarantined_by_reason"].items() if v}
    return [
        Check(
            "ingest: rows in = kept + quarantined",
            m["rows_in"] == m["rows_kept"] + m["rows_quarantined"]
            and (kept, quarantined) == (m["rows_kept"], m["rows_quarantined"]),
            f"{m['rows_in']:,} = {kept:,} + {quarantined:,}",
        ),
        Check(
            "ingest: quarantine reasons match the file",
            reasons.value_counts().to_dict() == by_reason,
            ", ".join(f"{k} {v:,}" for k, v in by_reason.items()) or "none",
        ),
    ]


def _path(path: Path) -> str:
    """``path`` as a DuckDB string literal."""
    return "'" + str(path).replace("'", "''") + "'"


def _one(con: duckdb.DuckDBPyConnection, sql: str) -> tuple[Any, ...]:
    row = con.execute(sql).fetchone()
    assert row is not None  # an aggregate always returns a row
    return row


def population_checks(root: Path, lookback_days: int) -> list[Check]:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    tx, feats = root / "data/transactions.parquet", root / "data/snapshot.parquet"
    cutoff, scored = _one(
        con, f"SELECT max({s.CUTOFF}), count(*) FROM read_parquet({_path(feats)}) WHERE {s.IS_SCORING}"
    )
    buyers = _one(
        con,
        f"SELECT count(DISTINCT {s.CUSTOMER_ID}) FROM read_parquet({_path(tx)}) "
        f"WHERE {s.AMOUNT} >= 0 AND CAST({s.TS} AS DATE) <= DATE '{cutoff}'",
    )[0]
    active = _one(
        con,
        f"SELECT count(*) FROM read_parquet({_path(feats)}) WHERE {s.IS_SCORING} "
        f"AND {s.DAYS_SINCE_LAST_PURCHASE} <= {lookback_days}",
    )[0]
    returns_only = _one(
        con,
        f"SELECT count(DISTINCT {s.CUSTOMER_ID}) FROM read_parquet({_path(tx)}) "
        f"WHERE CAST({s.TS} AS DATE) <= DATE '{cutoff}' AND {s.CUSTOMER_ID} NOT IN "
        f"(SELECT {s.CUSTOMER_ID} FROM read_parquet({_path(tx)}) WHERE {s.AMOUNT} >= 0)",
    )[0]
    clv_rows = _rows(root / "data/clv.parquet")
    churn_rows = _rows(root / "data/churn.parquet")
    scores = pd.read_parquet(root / "data/scores.parquet", columns=[s.AS_OF])
    listed = root / "reports/weekly" / iso_week(pd.Timestamp(scores[s.AS_OF].iloc[0]).date()) / "churn_risk.parquet"
    list_rows = _rows(listed) if listed.is_file() else -1
    assigned = root / "data/assignments.parquet"
    arms = pd.read_parquet(assigned, columns=[s.ARM]) if assigned.is_file() else pd.DataFrame({s.ARM: []})
    held_out = int((arms[s.ARM] == s.CONTROL_ARM).sum())
    return [
        Check(
            "snapshot: a row per buyer before the scoring cutoff",
            scored == buyers,
            f"{scored:,} of {buyers:,}"
            + (f" ({returns_only:,} customers with only returns have no purchase)" if returns_only else ""),
        ),
        Check("clv: a value per scoring-snapshot customer", clv_rows == scored, f"{clv_rows:,} of {scored:,}"),
        Check(
            f"churn: a risk per customer active within {lookback_days} days",
            churn_rows == active,
            f"{churn_rows:,} of {active:,}",
        ),
        Check("score: one row per churn-scored customer", len(scores) == churn_rows, f"{len(scores):,}"),
        Check(
            f"report: the list of {listed.parent.name} has every scored customer but the control arm",
            list_rows == len(scores) - held_out,
            f"{list_rows:,} + {held_out:,} held out",
        ),
    ]


def finite_checks(root: Path) -> list[Check]:
    checks = []
    for path in sorted([*(root / "data").glob("*.parquet"), *(root / "reports").rglob("*.parquet")]):
        table = pq.read_table(path)
        bad = []
        for name, column in zip(table.column_names, table.columns, strict=True):
            if pa.types.is_floating(column.type):
                n = (pc.sum(pc.is_nan(column)).as_py() or 0) + (pc.sum(pc.is_inf(column)).as_py() or 0)
                if n:
                    bad.append(f"{name} {n:,}")
        checks.append(Check(f"finite: {path.relative_to(root)}", not bad, "; ".join(bad) or f"{table.num_rows:,} rows"))
    csvs = [*(root / "data").glob("*.csv"), *(root / "reports").rglob("*.csv"), *(root / "plots").rglob("*.csv")]
    for path in sorted(csvs):
        frame = pd.read_csv(path, keep_default_na=False, dtype=str, encoding="utf-8-sig")
        values = frame.to_numpy().ravel()
        words = {"nan", "inf", "-inf", "+inf", "infinity", "-infinity", "'-inf"}
        n = int(sum(str(v).strip().lower() in words for v in values))
        checks.append(
            Check(f"finite: {path.relative_to(root)}", n == 0, f"{n} NaN/inf cells" if n else f"{len(frame):,} rows")
        )
    return checks


def audit(root: Path, params_path: Path) -> list[Check]:
    params = load_params(params_path)
    lookback = section(params, "churn", ChurnConfig).population_lookback_days
    return [*ingest_checks(root), *population_checks(root, lookback), *finite_checks(root)]


def main(argv: Sequence[str]) -> None:
    p = cli.parser(__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=Path("."), help="the project folder (default: .)")
    args = p.parse_args(argv)
    checks = audit(args.root, args.params if Path(args.params).is_absolute() else args.root / args.params)
    width = max(len(c.name) for c in checks)
    for c in checks:
        print(f"{'ok  ' if c.ok else 'FAIL'}  {c.name:<{width}}  {c.detail}")
    failed = [c for c in checks if not c.ok]
    print(f"{len(checks) - len(failed)} of {len(checks)} checks passed")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    cli.run(main)
