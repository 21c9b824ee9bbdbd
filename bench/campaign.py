"""`make demo-campaign`: the campaign loop with a known true effect, on CDNOW through the real stages and on a
simulated business over many seeds.

**CDNOW, end to end.** In a scratch project folder the pipeline's own stage commands (dvc.yaml's) ingest CDNOW and
train as of the first week; then, week after week, ``snapshot`` -> ``score`` -> ``measure`` -> ``assign`` ->
``report`` run as `make weekly` runs them, and the simulator (``models.campaign_sim``) applies a known,
customer-varying effect to the contacted arm: a saved customer gets one purchase (their average order) on a
random day of the week's horizon, written into the clean transaction log, so later weeks' scores and the measure
stage see it. At the end the measured lift per segment, pooled over the weeks, stands beside the truth (the mean
of ``tau x (1 - retained_0)`` over the same customers).

**Synthetic, many seeds.** Synthetic scored weeks through the assign stage's selection and arms
(``pipeline.assign.assignment``) and the measure stage's functions: the table for one season, how often the
pooled 95% interval covers the true lift over ``--seeds`` seasons, and the uplift gate on a customer-varying and
on a uniform effect.

    python -m bench.campaign --weeks 10 --customers 6000 --seeds 20 [--skip-cdnow]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from features import schemas as s
from models import campaign as cp
from models import campaign_sim as sim
from pipeline import assign, measure
from pipeline.config import (
    BaseConfig,
    CampaignAction,
    CampaignConfig,
    ClvConfig,
    FeaturesConfig,
    ScoreConfig,
    load_params,
    section,
)
from pipeline.io import write_table

ACTION_COST = 0.5
ROOT = Path(__file__).resolve().parents[1]
TRAINING = ("ingest", "features", "backtest", "train_clv", "train_churn")
WEEKLY = ("snapshot", "score", "measure", "assign", "report")


def settings(params: dict[str, Any], seed: int, segments: int = 4) -> tuple[assign.Settings, measure.Settings]:
    """The project's settings, with one cheap action per simulated segment (so every customer is worth a contact)."""
    base = dataclasses.replace(section(params, "base", BaseConfig), seed=seed)
    feats = section(params, "features", FeaturesConfig)
    camp = section(params, "campaign", CampaignConfig)
    actions = tuple(CampaignAction(f"band {i + 1}", ACTION_COST, 0.05) for i in range(segments))
    camp = dataclasses.replace(camp, actions=actions, no_contact_actions=(), budget=None)
    return (
        assign.Settings(base, feats, section(params, "score", ScoreConfig), camp),
        measure.Settings(base, feats, section(params, "clv", ClvConfig), camp),
    )


def season(
    params: dict[str, Any], *, seed: int, weeks: int, customers: int, shape: sim.Shape, max_effect: float
) -> pd.DataFrame:
    """``weeks`` weekly lists assigned, treated and observed: the log with outcomes, ``tau`` and ``retained_0``."""
    a_cfg, _ = settings(params, seed)
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2026-01-05")  # a Monday: one ISO week per list
    logged = []
    for w in range(weeks):
        as_of = start + pd.Timedelta(weeks=w)
        scores = sim.synthetic_scores(customers, rng, as_of=str(as_of.date()))
        scores[s.CUSTOMER_ID] = [f"w{w:02d}-{cid}" for cid in scores[s.CUSTOMER_ID]]  # new customers each week
        effects = {a.action: (a.assumed_effect, "assumed") for a in a_cfg.campaign.actions}
        frame, _ = assign.assignment(
            scores, a_cfg, as_of=as_of, effects=effects, uplift=None, history=pd.DataFrame(), scored="simulation"
        )
        retained_0, revenue_0 = sim.baseline_outcomes(frame, rng)
        tau = sim.true_effect(frame[s.P_CHURN].to_numpy(), shape, max_effect)
        saved = sim.saved(tau, retained_0, (frame[s.ARM] == cp.TARGET).to_numpy(), rng)
        revenue = revenue_0 + saved * frame[s.CLV].to_numpy() * 0.25  # a saved customer buys a quarter of their CLV
        logged.append(
            frame.assign(
                **{s.RETAINED: retained_0 | saved, s.HORIZON_REVENUE: revenue, "tau": tau, "retained_0": retained_0}
            )
        )
    return pd.concat(logged, ignore_index=True)


def truth_table(log: pd.DataFrame, results: dict[str, Any]) -> pd.DataFrame:
    """Measured pooled lift per segment and overall (the measure stage's ``pooled``), beside the true lift of the
    same customers (``log`` with ``tau`` and ``retained_0``); groups without a measured lift are left out."""
    rows = []
    groups = [*log.groupby(s.SEGMENT, sort=True), ("all customers", log)]
    for name, g in groups:
        pooled = results["pooled"]
        r = pooled["overall"] if name == "all customers" else pooled["segments"].get(name)
        if not r or r.get("lift") is None:
            continue
        truth = sim.true_lift(g["tau"].to_numpy(), g["retained_0"].to_numpy())
        rows.append(
            {
                "segment": name,
                "contacted": r["n_target"],
                "held out": r["n_control"],
                "true lift": truth,
                "measured": r["lift"],
                "low": r["lift_low"],
                "high": r["lift_high"],
                "mde": r["mde"],
                "covered": r["lift_low"] <= truth <= r["lift_high"],
            }
        )
    return pd.DataFrame(rows)


def coverage(params: dict[str, Any], *, seeds: int, weeks: int, customers: int, max_effect: float) -> int:
    """In how many of ``seeds`` seasons the pooled interval covers the true pooled lift."""
    hits = 0
    for seed in range(seeds):
        log = season(params, seed=seed, weeks=weeks, customers=customers, shape="heterogeneous", max_effect=max_effect)
        _, m_cfg = settings(params, seed)
        overall = measure.lift_results(log, m_cfg)["pooled"]["overall"]
        truth = sim.true_lift(log["tau"].to_numpy(), log["retained_0"].to_numpy())
        hits += int(overall["lift_low"] <= truth <= overall["lift_high"])
    return hits


def uplift_gate(
    params: dict[str, Any], *, shape: sim.Shape, seed: int, weeks: int, customers: int, max_effect: float
) -> dict[str, Any]:
    """The measure stage's uplift decision on one simulated season."""
    log = season(params, seed=seed, weeks=weeks, customers=customers, shape=shape, max_effect=max_effect)
    _, m_cfg = settings(params, seed)
    m_cfg = dataclasses.replace(
        m_cfg,
        campaign=dataclasses.replace(
            m_cfg.campaign, uplift=dataclasses.replace(m_cfg.campaign.uplift, min_customers=500)
        ),
    )
    doc, _ = measure.judge_uplift(log, m_cfg)
    return doc


def _stage(folder: Path, name: str) -> None:
    """One stage, with the command dvc.yaml gives it, in ``folder`` (the scratch project)."""
    argv = shlex.split(yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"][name]["cmd"])
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}",
    }
    done = subprocess.run([sys.executable, *argv[1:]], cwd=folder, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"demo: stage {name} failed:\n{done.stderr[-3000:]}")


def _set(folder: Path, **dates: str) -> None:
    path = folder / "params.yaml"
    params = yaml.safe_load(path.read_text(encoding="utf-8"))
    for key, value in dates.items():
        sec, name = key.split("__")
        params[sec][name] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")


def treat(
    folder: Path, horizon_days: int, rng: np.random.Generator, shape: sim.Shape, max_effect: float
) -> pd.DataFrame:
    """The simulated effect of this week's contacts, written into the scratch log; returns the week's truth rows."""
    arms = pd.read_parquet(folder / "data/assignments.parquet")
    tx_path = folder / "data/transactions.parquet"
    tx = pd.read_parquet(tx_path)
    as_of = pd.Timestamp(arms[s.AS_OF].iloc[0]).tz_localize("UTC")
    window = (tx[s.TS] >= as_of) & (tx[s.TS] < as_of + pd.Timedelta(days=horizon_days)) & (tx[s.AMOUNT] >= 0)
    retained_0 = arms[s.CUSTOMER_ID].isin(set(tx.loc[window, s.CUSTOMER_ID])).to_numpy()
    tau = sim.true_effect(arms[s.P_CHURN].to_numpy(), shape, max_effect)
    saved = sim.saved(tau, retained_0, (arms[s.ARM] == cp.TARGET).to_numpy(), rng)
    who = arms[saved]
    order = (who[s.TOTAL_SPEND] / who[s.PURCHASE_DAYS]).round(2).to_numpy()
    days = rng.integers(0, horizon_days, len(who))
    added = pd.DataFrame(
        {
            s.CUSTOMER_ID: who[s.CUSTOMER_ID].to_numpy(),
            s.TS: (as_of + pd.to_timedelta(days, unit="D")).astype("datetime64[us, UTC]"),
            s.AMOUNT: order,
            s.ORDER_ID: pd.Series([None] * len(who), dtype="str"),
        }
    )
    write_table(pd.concat([tx, added], ignore_index=True), tx_path, s.TRANSACTIONS)
    return arms[[s.WEEK, s.CUSTOMER_ID, s.SEGMENT, s.ARM]].assign(tau=tau, retained_0=retained_0, saved=saved)


def cdnow_season(
    params: dict[str, Any], *, weeks: int, first: str, seed: int, shape: sim.Shape, max_effect: float, folder: Path
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """``weeks`` weekly runs of the real stages on CDNOW from ``first`` (a Monday); the truth rows and the last
    measure stage's metrics."""
    scratch = {**params, "base": {**params["base"], "seed": seed}}
    scratch["ingest"] = {**params["ingest"], "source": "cdnow"}
    scratch["train"] = {**params["train"], "as_of": first}
    scratch["score"] = {**params["score"], "as_of": first}
    scratch["clv"] = {**params["clv"], "bootstrap_samples": 10}  # the demo needs no CLV interval
    (folder / "params.yaml").write_text(yaml.safe_dump(scratch, sort_keys=False), encoding="utf-8")
    horizon = int(params["features"]["horizon_days"])
    rng = np.random.default_rng(seed)
    start = time.monotonic()
    for name in TRAINING:
        _stage(folder, name)
    print(f"   trained as of {first} in {time.monotonic() - start:.0f} s", flush=True)
    truth = []
    for w in range(weeks):
        as_of = (pd.Timestamp(first) + pd.Timedelta(weeks=w)).date()
        _set(folder, score__as_of=str(as_of))
        began = time.monotonic()
        for name in WEEKLY:
            _stage(folder, name)
        week = treat(folder, horizon, rng, shape, max_effect)
        truth.append(week)
        t = week[s.ARM] == cp.TARGET
        print(
            f"   week {week[s.WEEK].iloc[0] if len(week) else as_of}: {int(t.sum()):,} contacted, "
            f"{int((~t).sum()):,} held out, {int(week['saved'].sum()):,} saved by the simulated effect "
            f"({time.monotonic() - began:.0f} s)",
            flush=True,
        )
    _stage(folder, "measure")  # every week's horizon is in CDNOW's log (to 1998-06-30): all are measured
    metrics = yaml.safe_load((folder / "metrics/campaign.json").read_text(encoding="utf-8"))
    return pd.concat(truth, ignore_index=True), metrics


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--weeks", type=int, default=10)
    p.add_argument("--customers", type=int, default=6000, help="assigned per week")
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--max-effect", type=float, default=0.4)
    p.add_argument("--cdnow-weeks", type=int, default=10, help="weekly runs of the real stages on CDNOW")
    p.add_argument("--cdnow-first", default="1998-01-05", help="the first CDNOW week (a Monday)")
    p.add_argument("--cdnow-seed", type=int, default=0, help="base.seed of the CDNOW run (training and arms)")
    p.add_argument("--skip-cdnow", action="store_true")
    args = p.parse_args(argv)
    params = load_params(args.params)
    pd.set_option("display.width", 160)
    show = {"float_format": lambda v: f"{v:+.4f}", "index": False}
    if not args.skip_cdnow:
        print(
            f"== CDNOW, {args.cdnow_weeks} weeks from {args.cdnow_first} through the real stages, seed "
            f"{args.cdnow_seed}",
            flush=True,
        )
        with tempfile.TemporaryDirectory(prefix="demo-campaign-") as tmp:
            truth, metrics = cdnow_season(
                params,
                weeks=args.cdnow_weeks,
                first=args.cdnow_first,
                seed=args.cdnow_seed,
                shape="heterogeneous",
                max_effect=args.max_effect,
                folder=Path(tmp),
            )
        print(truth_table(truth, metrics).to_string(**show))
        print(f"   uplift model: {metrics['uplift']['status']}\n")
    sizes = {"weeks": args.weeks, "customers": args.customers, "max_effect": args.max_effect}
    log = season(params, seed=0, shape="heterogeneous", **sizes)
    _, m_cfg = settings(params, 0)
    table = truth_table(log, measure.lift_results(log, m_cfg))
    print(f"== {args.weeks} weekly lists, {args.customers:,} customers scored a week, heterogeneous effect (seed 0)")
    print(table.to_string(**show))
    hits = coverage(params, seeds=args.seeds, **sizes)
    print(f"\n== the pooled 95% interval covers the true pooled lift in {hits} of {args.seeds} seeds")
    for shape in ("heterogeneous", "homogeneous"):
        doc = uplift_gate(params, shape=shape, seed=1, **sizes)
        print(f"== uplift model, {shape} effect: {doc['status']}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
