"""Compare the latest training runs side by side without the MLflow UI: what changed, and which run did best.

``python -m pipeline.compare`` (or ``make compare LAST=5``) reads the last ``--last`` finished runs of each model stage
(``clv`` and ``churn``) from the project's MLflow store and compares like with like: the runs of one data source
(``ingest.source``) judged on one holdout (the churn validation cutoff, the clv calibration cutoff) form a group, and
each group is one markdown table, groups in the order of their newest run. Its columns are the runs (newest first)
and its rows are

* the run: start time, git commit (``-dirty`` when the code differed from it; a `dvc exp run` whose only changes
  are its params is clean), the DVC experiment name when the run came from ``dvc exp run``, the registered model,
  version and the alias the champion gate gave it, and the interval of its paired gain over the champion it was
  judged against;
* every param whose value differs between those runs (params they share are left out: they explain nothing);
* the stage's holdout metrics, the best value of each row in bold within the group (lower is better for errors
  and losses, nearer 0 for a signed error); a row where every run scored the same has no bold. Figures of another
  log or another holdout are never ranked against each other.

After them, the latest ``backtest`` runs, one table per data source: each churn candidate's ROC-AUC pooled over the
evaluation origins and each pair's pooled gain with its 95% paired interval. The same text is written to ``--out``
(default ``reports/compare.md``) for a review ticket.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from pipeline import cli, tracking
from pipeline.config import BaseConfig, load_params, section
from pipeline.io import atomic_path

log = logging.getLogger("compare")

Better = Literal["higher", "lower", "nearer 0"]

# The holdout metrics a reviewer signs off on, per stage, and which direction is better.
KEY_METRICS: dict[str, tuple[tuple[str, Better], ...]] = {
    "clv": (
        ("model/purchases_rmse", "lower"),
        ("model/purchases_mae", "lower"),
        ("model/purchases_pct_error", "nearer 0"),
        ("model/spend_mae", "lower"),
        ("model/spearman", "higher"),
        ("model/gini", "higher"),
        ("model/top_decile_capture", "higher"),
    ),
    "churn": (
        ("model/roc_auc", "higher"),
        ("model/pr_auc", "higher"),
        ("model/brier", "lower"),
        ("model/log_loss", "lower"),
        ("model/ece", "lower"),
        ("model/top_decile_lift", "higher"),
        ("model/precision_at_k", "higher"),
        ("model/recall_at_k", "higher"),
    ),
}


def changed_params(runs: Sequence[tracking.RunSummary]) -> list[str]:
    """Names of the params whose value is not the same in every run (missing counts as a value)."""
    names = sorted({name for r in runs for name in r.params})
    return [n for n in names if len({r.params.get(n) for r in runs}) > 1]


def best_indices(values: Sequence[float | None], better: Better) -> set[int]:
    """Indices of the runs with the best value (all of them on a tie); none when the runs do not differ."""
    present = {i: v for i, v in enumerate(values) if v is not None}
    if len(set(present.values())) < 2:
        return set()
    score = {i: (v if better == "higher" else -abs(v) if better == "nearer 0" else -v) for i, v in present.items()}
    top = max(score.values())
    return {i for i, sc in score.items() if sc == top}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def decimals(values: Sequence[float | None]) -> int:
    """4 decimals, or up to 7 when fewer would print two different values alike."""
    present = [v for v in values if v is not None]
    for d in range(4, 8):
        if len({round(v, d) for v in present}) == len(set(present)):
            return d
    return 7


def _number(value: float, places: int) -> str:
    return f"{value:.{places}f}" if abs(value) < 1000 else f"{value:,.1f}"


UNRECORDED = "(not recorded)"  # runs logged before the stages tagged their data source or holdout


def group_key(run: tracking.RunSummary) -> tuple[str, str]:
    """What makes two runs' holdout figures comparable: the same data source and the same holdout. A run that did
    not record its source is placed by its registered model, which is named after the source."""
    return run.source or run.model_name or UNRECORDED, run.holdout or UNRECORDED


def groups(
    runs: Sequence[tracking.RunSummary], key: Callable[[tracking.RunSummary], tuple[str, ...]] = group_key
) -> list[list[tracking.RunSummary]]:
    """``runs`` (newest first) split by ``key``, each group newest first, groups in the order of their newest run."""
    out: dict[tuple[str, ...], list[tracking.RunSummary]] = {}
    for run in runs:
        out.setdefault(key(run), []).append(run)
    return list(out.values())


def _what(runs: Sequence[tracking.RunSummary]) -> str:
    """`` on `cdnow`, holdout after 1998-04-01``: what the runs of one group share, for its heading."""
    source, holdout = group_key(runs[0])
    on = " (data source not recorded)" if source == UNRECORDED else f" on `{source}`"
    return on + ("" if holdout == UNRECORDED else f", holdout after {holdout}")


def stage_tables(stage: str, runs: Sequence[tracking.RunSummary]) -> str:
    """One ``stage_table`` per data source and holdout (``group_key``)."""
    if not runs:
        return stage_table(stage, runs)
    return "\n".join(stage_table(stage, group) for group in groups(runs))


def stage_table(stage: str, runs: Sequence[tracking.RunSummary]) -> str:
    """The markdown table of one stage's runs of one data source and holdout (see the module docstring); the best
    figure of each row is bold among these runs only."""
    if not runs:
        return f"## {stage}\n\nNo finished `{stage}` runs in this store yet: run the pipeline (`make run`).\n"
    if len(groups(runs)) > 1:
        raise ValueError(f"stage_table: these {stage} runs are of several data sources or holdouts; use stage_tables")
    header = ["", *(f"`{r.run_id[:8]}`" for r in runs)]
    rows = [
        ["started (UTC)", *(r.started for r in runs)],
        ["git commit", *(r.git_commit[:7] + ("-dirty" if r.git_commit.endswith("-dirty") else "") for r in runs)],
        ["experiment", *(r.experiment or "-" for r in runs)],
        ["registered as", *(r.registry or "-" for r in runs)],
        ["gain over the champion", *(r.evidence or "-" for r in runs)],
    ]
    params = changed_params(runs)
    rows += [[f"param `{p}`", *(r.params.get(p, "-") for r in runs)] for p in params]
    for name, better in KEY_METRICS[stage]:
        values = [r.metrics.get(name) for r in runs]
        best, places = best_indices(values, better), decimals(values)
        cells = [
            "-" if v is None else (f"**{_number(v, places)}**" if i in best else _number(v, places))
            for i, v in enumerate(values)
        ]
        rows.append([f"{name} ({better} is better)", *cells])
    lines = [
        "| " + " | ".join(_cell(c) for c in header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(_cell(str(c)) for c in row) + " |" for row in rows),
    ]
    note = "" if params else "\nNo param differs between these runs.\n"
    title = "the latest run" if len(runs) == 1 else f"the last {len(runs)} runs, newest first"
    return f"## {stage}{_what(runs)}: {title}\n\n" + "\n".join(lines) + "\n" + note


# The groups of figures a stage logs on the same holdout as its model: ``<group>/<name>/<metric>``.
_PEERS = {"baselines": "baseline", "candidates": "candidate"}


def against_baselines(stage: str, run: tracking.RunSummary) -> pd.DataFrame:
    """One run's holdout metrics next to its baselines' (and, for clv, every candidate model's) on the same rows.

    Rows are the stage's ``KEY_METRICS`` without the ``model/`` prefix; columns are ``better`` (the direction),
    ``model``, then ``baseline <name>`` and ``candidate <name>`` for each one the run logged, in name order. A figure
    the run did not log is NaN. What a reviewer asks first: does the model beat the naive rule it replaces?
    """
    names = [key.split("/", 1)[1] for key, _ in KEY_METRICS[stage]]
    columns = {"model": "model"}
    for key in sorted(run.metrics):
        group, _, rest = key.partition("/")
        peer, _, _ = rest.partition("/")
        if group in _PEERS and peer:
            columns.setdefault(f"{_PEERS[group]} {peer}", f"{group}/{peer}")
    table = pd.DataFrame(
        {col: [run.metrics.get(f"{prefix}/{n}", np.nan) for n in names] for col, prefix in columns.items()},
        index=pd.Index(names, name="metric"),
    )
    table.insert(0, "better", [better for _, better in KEY_METRICS[stage]])
    return table


def _interval(run: tracking.RunSummary, key: str) -> str:
    values = [run.metrics.get(f"{key}/{part}") for part in ("pooled", "low", "high")]
    if any(v is None for v in values):
        return "-"
    gain, low, high = values
    return f"{gain:+.4f} [{low:+.4f}, {high:+.4f}]"


def backtest_source(run: tracking.RunSummary) -> tuple[str]:
    """A backtest run's group: its data source (its origins follow from the log and the params that differ)."""
    return (run.source or UNRECORDED,)


def backtest_tables(runs: Sequence[tracking.RunSummary]) -> str:
    """One ``backtest_table`` per data source."""
    if not runs:
        return backtest_table(runs)
    return "\n".join(backtest_table(group) for group in groups(runs, backtest_source))


def backtest_table(runs: Sequence[tracking.RunSummary]) -> str:
    """The latest backtest runs of one data source side by side: each candidate's pooled ROC-AUC, and each pair's
    pooled gain with its 95% paired interval (``pipeline.backtest``), the model's pairs first."""
    if not runs:
        return "## backtest\n\nNo finished `backtest` runs in this store yet: run the pipeline (`make run`).\n"
    if len(groups(runs, backtest_source)) > 1:
        raise ValueError("backtest_table: these backtest runs are of several data sources; use backtest_tables")
    header = ["", *(f"`{r.run_id[:8]}`" for r in runs)]
    rows = [
        ["started (UTC)", *(r.started for r in runs)],
        ["git commit", *(r.git_commit[:7] + ("-dirty" if r.git_commit.endswith("-dirty") else "") for r in runs)],
        ["serves (churn scorer)", *(r.serving or "-" for r in runs)],
        ["values customers (CLV)", *(r.clv_serving or "-" for r in runs)],
    ]
    candidates = sorted({k.split("/")[1] for r in runs for k in r.metrics if k.startswith("pooled/")})
    for name in sorted(candidates, key=lambda n: (n != "model", n)):
        values = [r.metrics.get(f"pooled/{name}/roc_auc") for r in runs]
        rows.append([f"pooled ROC-AUC, {name}", *("-" if v is None else f"{v:.4f}" for v in values)])
    pairs = sorted({k.rsplit("/", 1)[0] for r in runs for k in r.metrics if k.startswith("gain/")})
    for key in sorted(pairs, key=lambda k: (not k.split("/")[2].startswith("model_"), k)):
        _, metric, pair = key.split("/")
        rows.append([f"{metric} gain, {pair.replace('_vs_', ' over ')}", *(_interval(r, key) for r in runs)])
    lines = [
        "| " + " | ".join(_cell(c) for c in header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(_cell(str(c)) for c in row) + " |" for row in rows),
    ]
    title = "the latest run" if len(runs) == 1 else f"the last {len(runs)} runs, newest first"
    levels = sorted({r.params.get("backtest/evidence_level", "") for r in runs} - {""})
    level = f"{float(levels[0]):.0%}" if len(levels) == 1 else "paired"
    note = (
        "\nA gain is the first candidate's metric minus the second's over all origins (each origin's gain weighted "
        f"by its customers), with its {level} interval.\n"
    )
    source = backtest_source(runs[0])[0]
    on = " (data source not recorded)" if source == UNRECORDED else f" on `{source}`"
    return f"## backtest{on}: {title}\n\n" + "\n".join(lines) + "\n" + note


def report(experiment: str, last: int, stages: Sequence[str]) -> str:
    """The whole comparison as markdown: per stage, one table per data source and holdout; then the backtest runs,
    one table per data source."""
    parts = [f"# MLflow experiment `{experiment}` at {tracking.tracking_uri()}\n"]
    for stage in stages:
        parts.append(stage_tables(stage, tracking.recent_stage_runs(experiment, stage, last)))
    parts.append(backtest_tables(tracking.recent_stage_runs(experiment, "backtest", last)))
    return "\n".join(parts)


def main(argv: Sequence[str]) -> None:
    p = cli.parser(__doc__.splitlines()[0])
    p.add_argument("--last", type=int, default=5, help="how many of the latest runs per stage (default: 5)")
    p.add_argument("--stage", choices=sorted(KEY_METRICS), action="append", help="only this stage (repeatable)")
    p.add_argument("--out", type=Path, default=Path("reports/compare.md"), help="markdown file to write")
    args = p.parse_args(argv)
    if args.last < 1:
        p.error("--last must be at least 1")
    base = section(load_params(args.params), "base", BaseConfig)
    text = report(base.mlflow_experiment, args.last, args.stage or sorted(KEY_METRICS))
    print(text)
    with atomic_path(args.out) as tmp:
        tmp.write_text(text, encoding="utf-8")
    log.info("written to %s", args.out)


if __name__ == "__main__":
    cli.run(main)
