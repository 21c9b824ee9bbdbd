"""Stage ``assign``: this week's campaign. Who is worth a contact, and who of them is held out as the control.

1. The week's logged assignment, if there is one (``pipeline.campaign_log``): a rerun keeps it, arms and all,
   and adds nothing to the log.
2. Otherwise the eligible customers: a segment whose action is priced in ``campaign.actions``, and no assignment
   in the last ``features.horizon_days`` (each customer's outcome window belongs to one assignment only).
3. Each one's expected net value of a contact, ``min(effect, p_churn) x clv - cost`` (``models.campaign``), with
   the action's measured lift where the measure stage found one significant and at least its MDE, else the
   assumed effect; where the measure stage's uplift model serves, its predicted uplift instead.
4. Those worth it (net value > 0), best first, within ``campaign.budget``; the control arm drawn in each segment.
5. The week appended to the log, and ``data/assignments.parquet`` (the same rows) for the report stage, which
   puts the target arm on the list and leaves the control arm off it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from features import schemas as s
from features.errors import InputError
from models import campaign as cp
from models.uplift import FEATURES as TWO_MODEL_FEATURES
from models.uplift import TwoModelUplift
from pipeline import campaign_log, cli
from pipeline.config import BaseConfig, CampaignConfig, FeaturesConfig, ScoreConfig, load_params, section
from pipeline.io import read_chunks, read_stage_json, read_table, write_json, write_table
from pipeline.weeks import grid, iso_week

log = logging.getLogger("assign")

UPLIFT_MODEL = "model.json"
LOG_COLUMNS = [c for c in s.assignment_schema().columns]
# What assign reads of the scores: the columns the log keeps and the uplift model's inputs.
INPUTS = frozenset({*LOG_COLUMNS, *TWO_MODEL_FEATURES})


@dataclasses.dataclass(frozen=True)
class Settings:
    base: BaseConfig
    features: FeaturesConfig
    score: ScoreConfig
    campaign: CampaignConfig


@dataclasses.dataclass(frozen=True)
class Inputs:
    scores: Path
    score_metrics: Path
    campaign_metrics: Path  # the measure stage's: measured effects and whether the uplift model serves
    uplift: Path  # the measure stage's uplift model folder
    log: Path  # the assignment log (outside DVC)


@dataclasses.dataclass(frozen=True)
class Outputs:
    assignments: Path
    metrics: Path


def scored_by(score_metrics: dict[str, Any]) -> str:
    """Which models scored the week, for the log: churn scorer and version, CLV model and version."""
    served = score_metrics.get("served") or {}
    churn, clv = served.get("churn") or {}, served.get("clv") or {}
    scorer = (churn.get("scorer") or {}).get("scorer", "?")
    return (
        f"churn {scorer} ({churn.get('model_name', '?')} v{churn.get('version') or 'workspace'}); "
        f"clv {clv.get('model', '?')} ({clv.get('model_name', '?')} v{clv.get('version') or 'workspace'})"
    )


def effects_in_use(cfg: CampaignConfig, campaign_metrics: dict[str, Any]) -> dict[str, tuple[float, str]]:
    """Each priced action's effect and where it comes from: the measured lift the measure stage accepted, else the
    assumed one."""
    measured = campaign_metrics.get("effects") or {}
    out = {}
    for a in cfg.actions:
        m = (measured.get(a.action) or {}).get("measured")
        out[a.action] = (float(m), "measured") if isinstance(m, int | float) else (a.assumed_effect, "assumed")
    return out


def serving_uplift(campaign_metrics: dict[str, Any], folder: Path) -> TwoModelUplift | None:
    """The uplift model, where the measure stage's gate let it serve."""
    if not (campaign_metrics.get("uplift") or {}).get("serves"):
        return None
    path = folder / UPLIFT_MODEL
    doc = read_stage_json(path, "measure")
    return TwoModelUplift.from_dict(doc)


def recently_assigned(history: pd.DataFrame, as_of: pd.Timestamp, horizon_days: int) -> set[str]:
    """Customers of another logged week whose outcome window overlaps this week's."""
    if history.empty:
        return set()
    gap = (history[s.AS_OF] - as_of).abs()
    return set(history.loc[gap < pd.Timedelta(days=horizon_days), s.CUSTOMER_ID])


def assignment(
    scores: pd.DataFrame,
    cfg: Settings,
    *,
    as_of: pd.Timestamp,
    effects: dict[str, tuple[float, str]],
    uplift: TwoModelUplift | None,
    history: pd.DataFrame,
    scored: str,
    unpriced: int = 0,
) -> tuple[pd.DataFrame, dict[str, int]]:
    """The week's assignment (``assignment_schema``), best net value first, and how many were left out and why.
    ``unpriced``: customers of the week left out of ``scores`` already because their action has no price."""
    week = iso_week(as_of.date())
    camp = cfg.campaign
    priced = scores[s.RECOMMENDED_ACTION].isin(priced_actions(camp)).to_numpy()
    recent = scores[s.CUSTOMER_ID].isin(recently_assigned(history, as_of, cfg.features.horizon_days)).to_numpy()
    eligible = priced & ~recent
    frame = scores if eligible.all() else scores[eligible]  # most weeks everyone is eligible: no copy
    action = frame[s.RECOMMENDED_ACTION]
    cost = action.map({a.action: a.cost_per_contact for a in camp.actions}).to_numpy(np.float64)
    if uplift is not None:
        effect = np.clip(uplift.predict(frame), -1.0, 1.0)
        source = np.full(len(frame), "uplift model", dtype=object)
    else:
        effect = action.map({k: v[0] for k, v in effects.items()}).to_numpy(np.float64)
        source = action.map({k: v[1] for k, v in effects.items()}).to_numpy(object)
    value = cp.net_value(frame[s.P_CHURN].to_numpy(), frame[s.CLV].to_numpy(), effect, cost)
    worth = value > 0
    chosen = cp.within_budget(value, cost, budget=camp.budget, control_share=camp.control_share)
    frame = frame[chosen].assign(  # the chosen few get their economics beside them, not every eligible customer
        **{
            s.CONTACT_COST: cost[chosen],
            s.EFFECT: effect[chosen],
            s.EFFECT_SOURCE: source[chosen],
            s.NET_VALUE: value[chosen],
        }
    )
    # best first; ties by id so the order is the same whatever order the scores came in
    frame = frame.sort_values([s.NET_VALUE, s.CUSTOMER_ID], ascending=[False, True], kind="mergesort")
    frame = frame.reset_index(drop=True)
    frame[s.ARM] = cp.assign_arms(
        frame[s.CUSTOMER_ID],
        frame[s.SEGMENT],
        week=week,
        seed=cfg.base.seed,
        share=camp.control_share,
        min_per_segment=camp.min_control_per_segment,
    )
    frame[s.WEEK], frame[s.SCORED_BY] = week, scored
    left_out = {
        "no_contact_action": unpriced + int((~priced).sum()),
        "assigned_in_the_last_horizon": int((priced & recent).sum()),
        "not_worth_a_contact": int((~worth).sum()),
        "beyond_budget": int((worth & ~chosen).sum()),
    }
    return frame[LOG_COLUMNS], left_out


def priced_actions(cfg: CampaignConfig) -> list[str]:
    """The actions a contact is priced for (``campaign.actions``): only customers in their segments are assigned."""
    return [a.action for a in cfg.actions]


def read_priced(path: Path, cfg: CampaignConfig) -> tuple[pd.DataFrame, int, pd.Timestamp]:
    """The scores of the customers whose action is priced, with the columns assign uses (``INPUTS``); how many
    customers the file holds; the week's date. Memory holds the priced rows' dozen columns, not the whole table."""
    with_net = s.CLV_NET in pq.read_schema(path).names
    schema = s.scores_schema(with_net)
    columns = [c for c in schema.columns if c in INPUTS]
    scored = pq.ParquetFile(path)
    total = scored.metadata.num_rows
    if total == 0:
        raise InputError(f"{path}: no customers scored this week; nothing to assign")
    as_of = pd.Timestamp(next(read_chunks(path, schema, columns=[s.AS_OF], rows=1))[s.AS_OF].iloc[0])
    frame = read_table(path, schema, columns=columns, filters=[(s.RECOMMENDED_ACTION, "in", priced_actions(cfg))])
    return frame, total, as_of


def _same(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    """The same customers in the same arms with the same economics (to float rounding)."""
    if len(a) != len(b):
        return False
    x = a.set_index(s.CUSTOMER_ID).sort_index()
    y = b.set_index(s.CUSTOMER_ID).sort_index()
    if not x.index.equals(y.index) or not (x[s.ARM] == y[s.ARM]).all():
        return False
    return bool(np.allclose(x[s.NET_VALUE].to_numpy(), y[s.NET_VALUE].to_numpy(), rtol=1e-9, atol=1e-9))


def assign_metrics(frame: pd.DataFrame, left_out: dict[str, int] | None) -> dict[str, Any]:
    target = frame[s.ARM] == cp.TARGET
    by_segment = {}
    for name, rows in frame.groupby(s.SEGMENT, sort=True):
        t = rows[s.ARM] == cp.TARGET
        by_segment[str(name)] = {"target": int(t.sum()), "control": int((~t).sum())}
    return {
        "week": str(frame[s.WEEK].iloc[0]) if len(frame) else None,
        "assigned": len(frame),
        "target": int(target.sum()),
        "control": int((~target).sum()),
        "contact_cost": float(frame.loc[target, s.CONTACT_COST].sum()),
        "expected_net_value": float(frame.loc[target, s.NET_VALUE].sum()),
        "left_out": left_out,
        "segments": by_segment,
        "effect_sources": {str(k): int(v) for k, v in frame[s.EFFECT_SOURCE].value_counts().sort_index().items()},
    }


def run(cfg: Settings, inp: Inputs, out: Outputs) -> dict[str, Any]:
    """Assign this week (or keep its logged assignment) and write it; returns the metrics."""
    cfg.campaign.check_against(action for _, action in grid(cfg.score).values())
    scores, total, as_of = read_priced(inp.scores, cfg.campaign)
    week = iso_week(as_of.date())
    logged = campaign_log.read_week(inp.log, week)
    campaign_metrics = read_stage_json(inp.campaign_metrics, "measure")
    history = campaign_log.read_log(inp.log)
    frame, counted = assignment(
        scores,
        cfg,
        as_of=as_of,
        unpriced=total - len(scores),
        effects=effects_in_use(cfg.campaign, campaign_metrics),
        uplift=serving_uplift(campaign_metrics, inp.uplift),
        history=history[history[s.WEEK] != week],  # the week itself is no earlier assignment
        scored=scored_by(read_stage_json(inp.score_metrics, "score")),
    )
    note = None
    left_out: dict[str, int] | None = counted
    if logged is None:
        if frame.empty:  # an empty week is still logged: the record says the pipeline contacted nobody that week
            log.warning("week %s: nobody is worth a contact (%s)", week, left_out)
        path = campaign_log.append_week(inp.log, week, frame)
        log.info("week %s: %d assigned, logged in %s", week, len(frame), path)
    else:
        logged_as_of = pd.Timestamp(logged[s.AS_OF].iloc[0]) if len(logged) else as_of
        if logged_as_of != as_of:
            raise InputError(
                f"{campaign_log.week_path(inp.log, week)}: week {week} was assigned as of {logged_as_of.date()}, "
                f"not {as_of.date()}; a week has one list: score a date of another week, or move that file away"
            )
        if not _same(frame, logged):
            # the inputs changed since (new scores, params or measured effects): the record of what marketing
            # was told stands, and the list follows it
            note = (
                f"week {week} was assigned before with other inputs; its logged {len(logged):,} assignments stand "
                f"(this run would have assigned {len(frame):,}); move {campaign_log.week_path(inp.log, week)} "
                "away to assign the week again"
            )
            log.warning("%s", note)
            left_out = None
        else:
            log.info("week %s is already in the assignment log: its %d assignments stand", week, len(logged))
        frame = logged
    write_table(frame, out.assignments, s.assignment_schema())
    metrics = assign_metrics(frame, left_out)
    metrics["week"], metrics["as_of"], metrics["note"] = week, str(as_of.date()), note
    write_json(metrics, out.metrics)
    log.info(
        "week %s: %d to contact, %d held out as control; expected cost %.2f, expected net value %.2f",
        week,
        metrics["target"],
        metrics["control"],
        metrics["contact_cost"],
        metrics["expected_net_value"],
    )
    return metrics


def main(argv: Sequence[str]) -> None:
    p = cli.parser(__doc__.splitlines()[0])
    cli.input_file(p, "--scores")
    cli.input_file(p, "--score-metrics")
    cli.input_file(p, "--campaign-metrics")
    p.add_argument("--uplift", type=Path, required=True, help="the measure stage's uplift model folder")
    p.add_argument("--log", type=Path, required=True, help="the assignment log's folder (outside DVC)")
    cli.output(p, "--assignments")
    cli.output(p, "--metrics")
    args = p.parse_args(argv)
    params = load_params(args.params)
    cfg = Settings(
        section(params, "base", BaseConfig),
        section(params, "features", FeaturesConfig),
        section(params, "score", ScoreConfig),
        section(params, "campaign", CampaignConfig),
    )
    inputs = Inputs(args.scores, args.score_metrics, args.campaign_metrics, args.uplift, args.log)
    run(cfg, inputs, Outputs(args.assignments, args.metrics))


if __name__ == "__main__":
    cli.run(main)
