"""Every case of the bad-input catalogue through the stages' command-line entry points, as DVC runs them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from features import schemas as s
from pipeline import cli
from tests.conftest import project_params
from tests.robustness.catalogue import CASES, STAGES, Case, Fails, Folder, Quarantines, Runs
from tests.stages import MODULES, argv


def case_params(case: Case, source: Path) -> dict[str, Any]:
    params = project_params()
    params["ingest"].update(
        source=str(source),
        columns={
            "customer_id": "customer_id",
            "timestamp": "date",
            "amount": "amount",
            "quantity": None,
            "unit_price": None,
            "order_id": None,
        },
        timestamp_format="%Y-%m-%d",
    )
    params["ingest"].update(case.ingest)
    params["features"]["cutoffs"] = []
    params["clv"].update(calibration_cutoff=None, bootstrap_samples=5)
    for dotted, value in case.params.items():
        section, *path, key = dotted.split(".")
        target = params[section]
        for part in path:
            target = target[part]
        target[key] = value
    return params


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_catalogue_case(
    case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / f"source{case.suffix}"
    if isinstance(case.data, Folder):
        source.mkdir()
        for name, content in case.data.files.items():
            (source / name).write_bytes(content)
    elif case.data is not None:
        source.write_bytes(case.data())
    params_file = tmp_path / "params.yaml"
    text = yaml.safe_dump(case_params(case, source))
    params_file.write_text(case.params_text(text) if case.params_text else text)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.chdir(tmp_path)  # MLflow writes run artifacts under ./mlruns
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)

    last = STAGES.index(case.last_stage)
    for stage in STAGES[: last + 1]:
        capsys.readouterr()
        args = argv(stage, tmp_path, params_file)
        failing = isinstance(case.expect, Fails) and stage == case.expect.stage
        if failing:
            with pytest.raises(SystemExit) as stopped:
                cli.run(MODULES[stage].main, args)
            assert stopped.value.code == 2
            err = capsys.readouterr().err
            seeds = [
                str(n) for n, line in enumerate(params_file.read_text().splitlines(), 1) if line.startswith("  seed:")
            ]
            expected = case.expect.message.format(
                src=source, dir=tmp_path, params=params_file, seed_lines="lines " + " and ".join(seeds)
            )
            assert err.strip().splitlines() == ["error: " + expected], err
            return
        cli.run(MODULES[stage].main, args)
        if stage == "ingest":
            check_nothing_lost(tmp_path, case)
        if case.damage is not None and case.damage[0] == stage:
            case.damage[1](tmp_path)

    if isinstance(case.expect, Runs):
        ran = STAGES[: last + 1]
        outputs = {
            name: pd.read_parquet(tmp_path / f"data/{name}.parquet") for name in ("clv", "churn") if "score" in ran
        }
        case.expect.check(outputs)


def check_nothing_lost(d: Path, case: Case) -> None:
    """Rows in = rows kept + rows quarantined, in the metrics and in the two files; reasons as the case expects."""
    metrics = json.loads((d / "metrics/ingest.json").read_text())
    tx, q = pd.read_parquet(d / "data/transactions.parquet"), pd.read_parquet(d / "data/quarantine.parquet")
    assert metrics["rows_in"] == metrics["rows_kept"] + metrics["rows_quarantined"]
    assert (metrics["rows_kept"], metrics["rows_quarantined"]) == (len(tx), len(q))
    assert q[s.REASON].value_counts().to_dict() == {k: v for k, v in metrics["quarantined_by_reason"].items() if v}
    if isinstance(case.expect, Quarantines):
        assert metrics["rows_kept"] == case.expect.kept
        assert {k: v for k, v in metrics["quarantined_by_reason"].items() if v} == case.expect.reasons
        if case.expect.check is not None:
            case.expect.check(tx)
        assert {k: metrics[k] for k in case.expect.metrics} == case.expect.metrics
