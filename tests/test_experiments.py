"""``make exp``: the key figures and the params that differ, read from `dvc exp show --json`."""

from __future__ import annotations

from typing import Any

from pipeline import experiments as ex
from pipeline import schedule


def _data(num_leaves: int, auc: float | None) -> dict[str, Any]:
    metrics = {} if auc is None else {ex.KEY_FILE: {"data": {"churn_roc_auc": auc, "list_to_contact": 146}}}
    params = {"params.yaml": {"data": {"base": {"seed": 42}, "churn": {"lightgbm": {"num_leaves": num_leaves}}}}}
    return {"rev": "x", "metrics": metrics, "params": params}


def test_the_table_shows_changed_params_and_every_key_figure() -> None:
    shown = [
        {"rev": "workspace", "name": None, "data": _data(31, 0.8249), "experiments": None},
        {
            "rev": "3fb242ff",
            "name": "main",
            "data": _data(15, 0.8305),
            "experiments": [
                {
                    "name": "week-1998-W27",
                    "revs": [{"rev": "352a630d", "name": "week-1998-W27", "data": _data(31, 0.8249)}],
                }
            ],
        },
    ]
    lines = ex.table(ex.rows(shown)).splitlines()
    assert lines[0] == "| experiment | churn.lightgbm.num_leaves | churn_roc_auc | list_to_contact |"
    assert lines[2:] == [
        "| workspace | 31 | 0.8249 | 146 |",
        "| main | 15 | 0.8305 | 146 |",
        "|   week-1998-W27 (352a630) | 31 | 0.8249 | 146 |",
    ]


def test_rows_without_key_figures_say_how_to_get_them() -> None:
    shown = [{"rev": "workspace", "name": None, "data": _data(15, None), "experiments": None}]
    assert "no metrics/key.json in any row: run the pipeline" in ex.table(ex.rows(shown))


def test_weekly_experiments_are_named_by_week() -> None:
    import datetime as dt

    day = dt.date(1998, 3, 2)
    assert schedule.experiment_name(day, set(), train=False) == "week-1998-W10"
    assert schedule.experiment_name(day, {"week-1998-W10", "week-1998-W10-2"}, train=False) == "week-1998-W10-3"
    assert schedule.experiment_name(day, {"week-1998-W10"}, train=True) == "train-1998-W10"
