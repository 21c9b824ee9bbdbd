"""Stage ``measure``: what the campaign's contacts changed, on every logged week whose horizon has passed.

1. The assignment log (``pipeline.campaign_log``) and each assigned customer's outcome from the transaction log:
   retained = any purchase in the ``features.horizon_days`` from the scoring date on, and the revenue (net of
   returns) in them. A week is measured once the log reaches the end of its horizon.
2. Intention to treat, target against control (``models.campaign``): per segment and overall in each week, and
   pooled over the weeks per segment, per action and overall; retention lift with Newcombe's interval, revenue
   per customer with Welch's, incremental revenue and profit (x ``clv.margin_ratio``), and the minimum
   detectable effect of the groups' sizes (``campaign.power``, ``campaign.evidence_level``).
   With ``campaign.contacts`` (who marketing actually reached), the per-protocol view and the effect on the
   reached beside it.
3. Each priced action's effect for the next list: the pooled measured lift where it is significant and at
   least its MDE, else the assumed one.
4. The uplift model (``models.uplift``), once ``campaign.uplift.min_customers`` assigned customers have outcomes:
   fitted on the earlier measured weeks, judged on the latest ``holdout_weeks`` by the paired Qini gain over the
   risk ranking (p_churn); it serves only when the gain's lower bound clears ``min_improvement``. It is then
   refitted on every measured week (``artifacts/uplift/model.json``).

The log is no DVC dependency (it must not be DVC's to restore), so the stage is ``always_changed``: it rereads
the log on every `dvc repro`, and what follows it reruns only when its results change.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from features import schemas as s
from features.errors import InputError
from models import campaign as cp
from models.uplift import TwoModelUplift, paired_qini_gain
from pipeline import campaign_log, cli, tracking
from pipeline.assign import UPLIFT_MODEL
from pipeline.config import (
    BaseConfig,
    CampaignConfig,
    ClvConfig,
    FeaturesConfig,
    load_params,
    section,
)
from pipeline.engine import check_transactions
from pipeline.io import atomic_path, finite_json, read_user_table, write_csv, write_json

log = logging.getLogger("measure")

ALL = "all customers"
LIFT_CSV = "lift.csv"


@dataclasses.dataclass(frozen=True)
class Settings:
    base: BaseConfig
    features: FeaturesConfig
    clv: ClvConfig
    campaign: CampaignConfig


@dataclasses.dataclass(frozen=True)
class Inputs:
    log: Path
    transactions: Path


@dataclasses.dataclass(frozen=True)
class Outputs:
    metrics: Path
    plots: Path
    uplift: Path


def outcomes(assigned: pd.DataFrame, transactions: Path, horizon_days: int) -> tuple[pd.DataFrame, str | None]:
    """The measurable rows of ``assigned`` with ``retained`` and ``horizon_revenue``, and the log's last day.

    A week is measurable when the transaction log reaches the last day of its horizon
    (``as_of + horizon_days - 1``)."""
    check_transactions(transactions)
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        tx = str(transactions).replace("'", "''")
        last = con.execute(f"SELECT max(CAST({s.TS} AS DATE)) FROM read_parquet('{tx}')").fetchone()
        last_day = pd.Timestamp(last[0]) if last and last[0] is not None else None
        if last_day is None or assigned.empty:
            day = str(last_day.date()) if last_day is not None else None
            return assigned.iloc[0:0].assign(**{s.RETAINED: False, s.HORIZON_REVENUE: 0.0}), day
        ends = assigned[s.AS_OF] + pd.Timedelta(days=horizon_days - 1)
        rows = assigned[ends <= last_day].reset_index(drop=True)
        keys = rows[[s.CUSTOMER_ID, s.AS_OF]].assign(row=np.arange(len(rows)))
        con.register("keys", keys)
        found = con.execute(
            f"""SELECT k.row, bool_or(t.{s.AMOUNT} >= 0) AS retained, sum(t.{s.AMOUNT}) AS revenue
            FROM keys k JOIN read_parquet('{tx}') t ON t.{s.CUSTOMER_ID} = k.{s.CUSTOMER_ID}
              AND CAST(t.{s.TS} AS DATE) >= CAST(k.{s.AS_OF} AS DATE)
              AND CAST(t.{s.TS} AS DATE) < CAST(k.{s.AS_OF} AS DATE) + INTERVAL {int(horizon_days)} DAY
            GROUP BY k.row"""
        ).df()
    finally:
        con.close()
    retained = np.zeros(len(rows), dtype=bool)
    revenue = np.zeros(len(rows), dtype=np.float64)
    retained[found["row"].to_numpy()] = found["retained"].fillna(False).to_numpy(bool)
    revenue[found["row"].to_numpy()] = found["revenue"].to_numpy(np.float64)
    return rows.assign(**{s.RETAINED: retained, s.HORIZON_REVENUE: revenue}), str(last_day.date())


def _compare(rows: pd.DataFrame, cfg: Settings) -> dict[str, Any]:
    c = cfg.campaign
    return cp.compare_arms(
        rows[s.RETAINED].to_numpy(),
        rows[s.HORIZON_REVENUE].to_numpy(),
        (rows[s.ARM] == cp.TARGET).to_numpy(),
        margin_ratio=cfg.clv.margin_ratio,
        level=c.evidence_level,
        power=c.power,
        cost=rows[s.CONTACT_COST].to_numpy(),
    ).as_dict()


def _pool(rows: pd.DataFrame, cfg: Settings) -> dict[str, Any]:
    """Pooled over the (week, segment) strata the rows fall in."""
    groups = [g for _, g in rows.groupby([s.WEEK, s.SEGMENT], sort=True)]
    strata = [
        (g[s.RETAINED].to_numpy(), g[s.HORIZON_REVENUE].to_numpy(), (g[s.ARM] == cp.TARGET).to_numpy()) for g in groups
    ]
    c = cfg.campaign
    return cp.pool(
        strata,
        margin_ratio=cfg.clv.margin_ratio,
        level=c.evidence_level,
        power=c.power,
        costs=[g[s.CONTACT_COST].to_numpy() for g in groups],
    ).as_dict()


def lift_results(measured: pd.DataFrame, cfg: Settings) -> dict[str, Any]:
    """Per week (its segments, and pooled over them) and over all measured weeks (per segment, per action, all)."""
    weeks: dict[str, Any] = {}
    for week, rows in measured.groupby(s.WEEK, sort=True):
        weeks[str(week)] = {
            "as_of": str(pd.Timestamp(rows[s.AS_OF].iloc[0]).date()),
            "segments": {str(n): _compare(g, cfg) for n, g in rows.groupby(s.SEGMENT, sort=True)},
            "overall": _pool(rows, cfg),
        }
    return {
        "weeks": weeks,
        "pooled": {
            "segments": {str(n): _pool(g, cfg) for n, g in measured.groupby(s.SEGMENT, sort=True)},
            "actions": {str(n): _pool(g, cfg) for n, g in measured.groupby(s.RECOMMENDED_ACTION, sort=True)},
            "overall": _pool(measured, cfg) if len(measured) else None,
        },
    }


def effects(cfg: CampaignConfig, pooled_actions: dict[str, Any]) -> dict[str, Any]:
    """Each priced action's effect for the next list, and why (see ``models.campaign.measured_effect``)."""
    out = {}
    for a in cfg.actions:
        result = pooled_actions.get(a.action)
        measured = cp.measured_effect(result) if result else None
        if measured is not None:
            why = "measured: the pooled lift is significant and at least its minimum detectable effect"
        elif result is None or result.get("lift") is None:
            why = "assumed: no measured week has this action in both arms yet"
        elif not result.get("significant"):
            why = "assumed: the measured lift is not significant"
        else:
            why = "assumed: the measured lift is below its minimum detectable effect"
        out[a.action] = {
            "assumed": a.assumed_effect,
            "measured": measured,
            "used": measured if measured is not None else a.assumed_effect,
            "source": "measured" if measured is not None else "assumed",
            "why": why,
        }
    return out


def _pairs(frame: pd.DataFrame) -> pd.Series:
    return pd.Series(list(zip(frame[s.WEEK], frame[s.CUSTOMER_ID], strict=True)), index=frame.index, dtype=object)


def reached(path: Path, assigned: pd.DataFrame) -> tuple[set[tuple[str, str]], dict[str, int]]:
    """The (week, customer) pairs marketing reached (``campaign.contacts``: week, customer_id), and the counts a
    reader needs against the whole log: rows read, matched, not in the log, control customers contacted."""
    where = f"campaign.contacts ({path})"
    frame = read_user_table(path, where, text_columns=[s.WEEK, s.CUSTOMER_ID])
    missing = [c for c in (s.WEEK, s.CUSTOMER_ID) if c not in frame.columns]
    if missing:
        raise InputError(f"{where}: no column {missing[0]!r}; it needs week (e.g. 1998-W10) and customer_id")
    keys = set(zip(frame[s.WEEK].astype(str), frame[s.CUSTOMER_ID].astype(str), strict=True))
    hit = _pairs(assigned).isin(keys)
    return keys, {
        "rows": len(frame),
        "distinct": len(keys),
        "matched": int(hit.sum()),
        "not_in_the_log": len(keys) - int(hit.sum()),
        "control_contacted": int((hit & (assigned[s.ARM] == cp.CONTROL)).sum()),
    }


def per_protocol(measured: pd.DataFrame, hit: pd.Series, counts: dict[str, int], cfg: Settings) -> dict[str, Any]:
    """Beside intention to treat: the reached target customers against the whole control (biased where reach
    depends on the customer: read it as a bound), the target arm's reach rate, and the effect on the reached,
    ITT / reach rate (Bloom 1984; the interval is ITT's scaled by the rate, the rate's own noise left out)."""
    target = measured[s.ARM] == cp.TARGET
    reach = float(hit[target].mean()) if target.any() else None
    pp_rows = measured[(target & hit) | ~target]
    itt = _pool(measured, cfg)
    on_reached = None
    if reach and itt.get("lift") is not None:
        on_reached = {k: itt[k] / reach for k in ("lift", "lift_low", "lift_high")}
    return {
        "contacts": counts,
        "reach_rate": reach,
        "per_protocol": _pool(pp_rows, cfg) if len(pp_rows) else None,
        "effect_on_the_reached": on_reached,
    }


def judge_uplift(measured: pd.DataFrame, cfg: Settings) -> tuple[dict[str, Any], TwoModelUplift | None]:
    """The uplift model's evidence on the held-out weeks, and the model refitted on every week if it serves."""
    u = cfg.campaign.uplift
    weeks = sorted(measured[s.WEEK].unique())
    doc: dict[str, Any] = {"customers_with_outcomes": len(measured), "min_customers": u.min_customers, "serves": False}
    if len(measured) < u.min_customers:
        doc["status"] = f"waiting: {len(measured):,} of the {u.min_customers:,} assigned customers with outcomes"
        return doc, None
    if len(weeks) <= u.holdout_weeks:
        doc["status"] = f"waiting: {len(weeks)} measured week(s); {u.holdout_weeks + 1} needed to hold some out"
        return doc, None
    held = measured[s.WEEK].isin(weeks[-u.holdout_weeks :]).to_numpy()
    train, test = measured[~held], measured[held]
    try:
        model = TwoModelUplift(seed=cfg.base.seed).fit(
            train, train[s.RETAINED].to_numpy(), (train[s.ARM] == cp.TARGET).to_numpy()
        )
    except ValueError as exc:
        doc["status"] = f"not fitted: {exc}"
        return doc, None
    gain = paired_qini_gain(
        test[s.RETAINED].to_numpy(),
        (test[s.ARM] == cp.TARGET).to_numpy(),
        model.predict(test),
        test[s.P_CHURN].to_numpy(),
        level=cfg.campaign.evidence_level,
        resamples=u.evidence_resamples,
        seed=cfg.base.seed,
    )
    serves = gain["low"] > u.min_improvement
    doc.update(
        {
            "train_weeks": [str(w) for w in weeks[: -u.holdout_weeks]],
            "holdout_weeks": [str(w) for w in weeks[-u.holdout_weeks :]],
            "holdout_customers": len(test),
            "qini": {"uplift": gain["challenger"], "risk": gain["incumbent"]},
            "qini_gain": gain["gain"],
            "qini_gain_low": gain["low"],
            "qini_gain_high": gain["high"],
            "serves": bool(serves),
            "status": (
                f"serves: Qini gain over the risk ranking {gain['gain']:+.4f} [{gain['low']:+.4f}, "
                f"{gain['high']:+.4f}] clears {u.min_improvement}"
                if serves
                else f"does not serve: Qini gain over the risk ranking {gain['gain']:+.4f} [{gain['low']:+.4f}, "
                f"{gain['high']:+.4f}] does not clear {u.min_improvement}; the risk ranking stays"
            ),
        }
    )
    if not serves:
        return doc, None
    final = TwoModelUplift(seed=cfg.base.seed).fit(
        measured, measured[s.RETAINED].to_numpy(), (measured[s.ARM] == cp.TARGET).to_numpy()
    )
    return doc, final


def lift_table(results: dict[str, Any]) -> pd.DataFrame:
    """The pooled lift per segment and overall, for plots/campaign/lift.csv and the summary's chart."""
    rows = [{"segment": name, **r} for name, r in results["pooled"]["segments"].items()]
    if results["pooled"]["overall"]:
        rows.append({"segment": ALL, **results["pooled"]["overall"]})
    cols = ["segment", "n_target", "n_control", "lift", "lift_low", "lift_high", "mde", "incremental_profit"]
    frame = pd.DataFrame(rows, columns=cols)
    return frame.astype({c: "float64" for c in cols[3:]}).astype({"n_target": "int64", "n_control": "int64"})


def run(cfg: Settings, inp: Inputs, out: Outputs, *, track: bool = True) -> dict[str, Any]:
    """Measure every week whose horizon has passed; returns the metrics."""
    assigned = campaign_log.read_log(inp.log)
    measured, last_day = outcomes(assigned, inp.transactions, cfg.features.horizon_days)
    results = lift_results(measured, cfg)
    protocol = None
    if cfg.campaign.contacts is not None:
        keys, counts = reached(Path(cfg.campaign.contacts), assigned)
        protocol = per_protocol(measured, _pairs(measured).isin(keys), counts, cfg)
        if counts["control_contacted"]:
            log.warning(
                "campaign.contacts: %d control customer(s) were contacted; the comparison is diluted",
                counts["control_contacted"],
            )
    uplift_doc, model = judge_uplift(measured, cfg)
    logged = sorted(assigned[s.WEEK].unique())
    # Only measured weeks shape the metrics: a week just logged changes nothing here until its horizon has
    # passed, so `dvc repro` after an assignment reruns nothing downstream (and dvc.lock stays as it was).
    metrics: dict[str, Any] = {
        "log": {"last_transaction_day": last_day, "measured_customers": len(measured)},
        "measured_weeks": sorted(results["weeks"]),
        **results,
        "effects": effects(cfg.campaign, results["pooled"]["actions"]),
        "uplift": uplift_doc,
        "contacts": protocol,
    }
    metrics = finite_json(metrics)
    out.uplift.mkdir(parents=True, exist_ok=True)
    write_json(uplift_doc, out.uplift / "decision.json")  # the folder always holds the gate's decision
    stored = out.uplift / UPLIFT_MODEL
    if model is not None:
        with atomic_path(stored) as tmp:
            tmp.write_text(json.dumps(model.to_dict()), encoding="utf-8")
    else:
        stored.unlink(missing_ok=True)
    out.plots.mkdir(parents=True, exist_ok=True)
    write_csv(
        lift_table(results),
        out.plots / LIFT_CSV,
        undefined_allowed=("lift", "lift_low", "lift_high", "mde", "incremental_profit"),
    )
    write_json(metrics, out.metrics)
    overall = results["pooled"]["overall"]
    if track:  # every run, an empty log included: the measure stage runs at every `dvc repro`
        _track(cfg, metrics, len(logged))
    log.info(
        "%d week(s) logged, %d measured%s; uplift model: %s",
        len(logged),
        len(results["weeks"]),
        f": retention lift {overall['lift']:+.4f} [{overall['lift_low']:+.4f}, {overall['lift_high']:+.4f}], MDE "
        f"{overall['mde']:.4f}"
        if overall and overall.get("lift") is not None
        else "",
        uplift_doc["status"],
    )
    return metrics


def _track(cfg: Settings, metrics: dict[str, Any], logged_weeks: int) -> None:
    tags = {"run.kind": "campaign", "campaign.measured_weeks": str(len(metrics["measured_weeks"]))}
    params = {"campaign": dataclasses.asdict(cfg.campaign)}
    with tracking.stage_run(cfg.base.mlflow_experiment, "measure", params, tags):
        overall = metrics["pooled"]["overall"] or {}
        tracking.log_metrics(
            {
                "pooled": {k: v for k, v in overall.items() if k != "significant"},
                "uplift": {
                    k: metrics["uplift"].get(k) for k in ("qini_gain", "qini_gain_low", "customers_with_outcomes")
                },
                "log": {"measured_customers": metrics["log"]["measured_customers"], "weeks": logged_weeks},
            }
        )
        tracking.log_key_figures({"campaign": {k: overall.get(k) for k in ("lift", "lift_low", "lift_high")}})


def main(argv: Sequence[str]) -> None:
    p = cli.parser(__doc__.splitlines()[0])
    p.add_argument("--log", type=Path, required=True, help="the assignment log's folder (outside DVC)")
    cli.input_file(p, "--transactions")
    cli.output(p, "--metrics")
    cli.output(p, "--plots", directory=True)
    cli.output(p, "--uplift", directory=True)
    args = p.parse_args(argv)
    params = load_params(args.params)
    cfg = Settings(
        section(params, "base", BaseConfig),
        section(params, "features", FeaturesConfig),
        section(params, "clv", ClvConfig),
        section(params, "campaign", CampaignConfig),
    )
    run(cfg, Inputs(args.log, args.transactions), Outputs(args.metrics, args.plots, args.uplift))


if __name__ == "__main__":
    cli.run(main)
