"""Stage ``score``: churn risk x customer value for every customer in the population, with a segment and an action.

Joins the churn stage's scored population (``p_churn`` and reasons) with the clv stage's value (CLV, its
interval, P(alive), value tier) as of the same scoring cutoff, adds the risk tier, the value x risk segment, its
retention action from ``score.segments`` and ``value_at_risk`` = p_churn x clv, and the recent behaviour the
KPIs need (revenue over the last ``features.horizon_days``, net of returns). Writes ``data/scores.parquet``
sorted by value at risk, the overall and per-segment KPIs to ``metrics/score.json``, and an MLflow run.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow.parquet as pq

from features import schemas as s
from features.behaviour import net_revenue
from features.errors import InputError
from models import segments as seg
from models.evaluation import round_metrics
from pipeline import cli, tracking
from pipeline.config import BaseConfig, ClvConfig, FeaturesConfig, ScoreConfig, load_params, section
from pipeline.engine import backend, open_transactions
from pipeline.io import finite_json, read_table, write_csv, write_json, write_table

log = logging.getLogger("score")

SNAPSHOT_COLUMNS = [s.CUSTOMER_ID, s.CUTOFF, s.DAYS_SINCE_LAST_PURCHASE, s.TENURE_DAYS, s.PURCHASE_DAYS, s.TOTAL_SPEND]


@dataclasses.dataclass(frozen=True)
class Outputs:
    scores: Path
    metrics: Path
    segments: Path


def iso_week(as_of: dt.date) -> str:
    """The ISO week of ``as_of`` as ``YYYY-Www`` (1998-03-02 -> 1998-W10), the weekly report's folder name."""
    year, week, _ = as_of.isocalendar()
    return f"{year}-W{week:02d}"


def grid(cfg: ScoreConfig) -> dict[tuple[str, str], tuple[str, str]]:
    """``score.segments`` as (value tier, risk tier) -> (name, action)."""
    cells = {}
    for v in s.VALUE_TIERS:
        for r in seg.RISK_TIERS:
            cell = cfg.segments.cell(v, r)
            cells[(v, r)] = (cell.name, cell.action)
    return cells


def read_value(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise InputError(f"{path}: file not found; run the clv stage first (`dvc repro`)")
    with_net = s.CLV_NET in pq.read_schema(path).names
    return read_table(path, s.clv_schema(with_net))


def read_snapshot(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise InputError(f"{path}: file not found; run the features stage first (`dvc repro`)")
    frame = pq.read_table(path, columns=SNAPSHOT_COLUMNS, filters=[(s.IS_SCORING, "=", True)]).to_pandas()
    if frame.empty:
        raise InputError(f"{path}: no scoring rows; rebuild it with the features stage")
    return frame


def _one_cutoff(frames: dict[str, pd.DataFrame]) -> pd.Timestamp:
    """The scoring cutoff all inputs share; an input from an older run names itself."""
    seen = {name: sorted({pd.Timestamp(v).date() for v in pd.unique(f[s.CUTOFF])}) for name, f in frames.items()}
    values = {tuple(v) for v in seen.values()}
    if len(values) != 1 or len(next(iter(values))) != 1:
        found = "; ".join(f"{n}: {', '.join(map(str, v))}" for n, v in seen.items())
        raise InputError(f"score: the inputs were scored at different cutoffs ({found}); rerun `dvc repro`")
    return pd.Timestamp(next(iter(values))[0])


def rows_of(keys: pd.Series, frames: Sequence[pd.DataFrame]) -> list[npt.NDArray[np.int64]]:
    """For each frame (one row per ``customer_id``), the position of each key's row in it, -1 where it has none.

    The ids of all inputs are factorised together once: at 10M customers that is several times faster than a
    join per input, which hashes the same strings again each time.
    """
    ids = [keys, *(f[s.CUSTOMER_ID] for f in frames)]
    codes, uniques = pd.factorize(pd.concat(ids, ignore_index=True))
    if (codes < 0).any():
        raise InputError("score: a customer_id is missing in an input; rerun `dvc repro`")
    bounds = np.cumsum([0, *map(len, ids)])
    key_codes = codes[: bounds[1]]
    out = []
    for k, f in enumerate(frames, start=1):
        own = codes[bounds[k] : bounds[k + 1]]
        if len(own) and np.bincount(own, minlength=len(uniques)).max() > 1:
            raise InputError("score: an input has more than one row for a customer; rerun `dvc repro`")
        where = np.full(len(uniques), -1, dtype=np.int64)
        where[own] = np.arange(len(f))
        out.append(where[key_codes])
    return out


def build_scores(
    churn: pd.DataFrame,
    value: pd.DataFrame,
    snapshot: pd.DataFrame,
    revenue: pd.DataFrame,
    cfg: ScoreConfig,
    *,
    horizon_days: int,
) -> pd.DataFrame:
    """The scores table (``scores_schema`` columns, riskiest value first) for the churn stage's population."""
    cutoff = _one_cutoff({"churn": churn, "clv": value, "features": snapshot})
    value_cols = [s.CUSTOMER_ID, s.CLV, s.CLV_P05, s.CLV_P95, s.VALUE_TIER, s.P_ALIVE]
    if s.CLV_NET in value:
        value_cols.append(s.CLV_NET)
    frame = churn[[s.CUSTOMER_ID, s.P_CHURN, *s.REASONS]].reset_index(drop=True)
    in_value, in_snapshot, in_revenue = rows_of(frame[s.CUSTOMER_ID], [value, snapshot, revenue])
    for missing, what in [(in_value < 0, "CLV"), (in_snapshot < 0, "scoring features row")]:
        if missing.any():
            raise InputError(
                f"score: {int(missing.sum())} customers of the churn population have no {what} (e.g. "
                f"{frame[s.CUSTOMER_ID].iloc[int(np.argmax(missing))]!r}); rerun `dvc repro` so every stage sees "
                "the same data"
            )
    for column in value_cols[1:]:
        frame[column] = value[column].array.take(in_value)
    for column in snapshot.columns.difference([s.CUSTOMER_ID, s.CUTOFF], sort=False):
        frame[column] = snapshot[column].array.take(in_snapshot)
    spent = in_revenue >= 0  # no transaction in the last horizon: no revenue
    frame[s.REVENUE_LAST_HORIZON] = 0.0
    frame.loc[spent, s.REVENUE_LAST_HORIZON] = revenue[s.REVENUE_LAST_HORIZON].to_numpy(np.float64)[in_revenue[spent]]
    days_since = frame[s.DAYS_SINCE_LAST_PURCHASE].astype("int64")
    frame[s.LAST_PURCHASE_DATE] = cutoff - pd.to_timedelta(days_since, unit="D")
    # The last horizon is the `horizon_days` ending at the cutoff: customers who had bought before it started
    # are the retention base, and those with a purchase inside it were retained.
    frame[s.ACTIVE_AT_HORIZON_START] = frame[s.TENURE_DAYS].astype("int64") >= horizon_days
    frame[s.BOUGHT_IN_LAST_HORIZON] = days_since < horizon_days
    frame[s.AS_OF] = cutoff + pd.Timedelta(days=1)
    t = cfg.risk_tier_thresholds
    frame = seg.assign(frame, grid(cfg), high=t.high, medium=t.medium)
    frame = seg.list_order(frame)
    return frame[list(s.scores_schema(s.CLV_NET in frame).columns)]


def run(
    base: BaseConfig,
    fcfg: FeaturesConfig,
    ccfg: ClvConfig,
    cfg: ScoreConfig,
    *,
    churn: Path,
    value: Path,
    features: Path,
    transactions: Path,
    out: Outputs,
    track: bool = True,
) -> dict[str, Any]:
    """Score, segment and write; returns the metrics."""
    churned = read_table(churn, s.churn_schema())
    valued = read_value(value)
    snapshot = read_snapshot(features)
    cutoff = _one_cutoff({"churn": churned, "clv": valued, "features": snapshot})
    con = backend(base)
    start = cutoff.date() - dt.timedelta(days=fcfg.horizon_days)
    revenue = net_revenue(open_transactions(con, transactions), start, cutoff.date()).to_pandas()

    scores = build_scores(churned, valued, snapshot, revenue, cfg, horizon_days=fcfg.horizon_days)
    write_table(scores, out.scores, s.scores_schema(s.CLV_NET in scores))
    order = seg.segment_order(grid(cfg))
    kpis = seg.kpi_table(scores, order, margin_ratio=ccfg.margin_ratio)
    write_csv(kpis, out.segments, undefined_allowed=seg.KPI_COLUMNS)

    as_of = (cutoff + pd.Timedelta(days=1)).date()
    overall = kpis[kpis[s.SEGMENT] == seg.ALL].iloc[0]
    metrics: dict[str, Any] = {
        "as_of": str(as_of),
        "week": iso_week(as_of),
        "horizon_days": fcfg.horizon_days,
        "overall": {k: float(overall[k]) for k in seg.KPI_COLUMNS},
        "risk_tiers": {r: int((scores[s.RISK_TIER] == r).sum()) for r in seg.RISK_TIERS},
        # keyed by tiers, not by name: MLflow metric keys cannot hold the commas of "high value, at risk"
        "segments": {
            f"{v}_value_{r}_risk": {
                "name": name,
                "customers": int(row["customers"]),
                "value_at_risk": float(row["value_at_risk"]),
                "churn_rate": float(row["churn_rate"]),
            }
            for (v, r), (name, _) in grid(cfg).items()
            for row in [kpis[kpis[s.SEGMENT] == name].iloc[0]]
        },
    }
    metrics = finite_json(round_metrics(metrics))
    write_json(metrics, out.metrics)
    if track:
        _track(base, cfg, [churn, value, features, transactions], out, metrics)
    top = scores.iloc[0] if len(scores) else None
    log.info(
        "%d customers scored as of %s (%s): value at risk %.0f, %d in the high risk tier%s",
        len(scores),
        as_of,
        metrics["week"],
        metrics["overall"]["value_at_risk"],
        metrics["risk_tiers"]["high"],
        f"; first on the list: {top[s.CUSTOMER_ID]} ({top[s.SEGMENT]})" if top is not None else "",
    )
    return metrics


def _track(base: BaseConfig, cfg: ScoreConfig, inputs: list[Path], out: Outputs, metrics: dict[str, Any]) -> None:
    transactions = inputs[-1]
    tags = {**tracking.data_fingerprint(transactions), "score.as_of": metrics["as_of"], "score.week": metrics["week"]}
    params = {"score": dataclasses.asdict(cfg)}
    with tracking.stage_run(base.mlflow_experiment, "score", params, tags, inputs=inputs):
        tracking.log_metrics({k: v for k, v in metrics.items() if k in ("overall", "risk_tiers", "segments")})
        tracking.log_artifacts({"score": out.segments})


def main(argv: Sequence[str]) -> None:
    p = cli.parser(__doc__.splitlines()[0])
    for name in ("churn", "clv", "features", "transactions"):
        cli.input_file(p, f"--{name}")
    for name in ("scores", "metrics", "segments"):
        cli.output(p, f"--{name}")
    args = p.parse_args(argv)
    params = load_params(args.params)
    run(
        section(params, "base", BaseConfig),
        section(params, "features", FeaturesConfig),
        section(params, "clv", ClvConfig),
        section(params, "score", ScoreConfig),
        churn=args.churn,
        value=args.clv,
        features=args.features,
        transactions=args.transactions,
        out=Outputs(scores=args.scores, metrics=args.metrics, segments=args.segments),
    )


if __name__ == "__main__":
    cli.run(main)
