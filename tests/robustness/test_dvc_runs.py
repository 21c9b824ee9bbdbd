"""The pipeline under `dvc repro` in a throw-away copy of the project: forced reruns and a stage killed mid-write.

The copy holds the project's code, dvc.yaml and params.yaml (on the 2,357-customer CDNOW sample, with fewer
cutoffs and bootstrap refits so a run takes well under a minute).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml

from features import schemas as s
from pipeline.audit import audit
from pipeline.config import FeaturesConfig, section
from pipeline.io import read_table
from tests.conftest import ROOT, project_params

pytestmark = pytest.mark.slow

OUTPUT_FOLDERS = ("data", "artifacts", "metrics", "reports", "plots")


def _env(project: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # the stages' `python`
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{project}/mlflow.db"
    env.pop("CHURN_CLV_DEBUG", None)
    return env


def dvc(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=project, env=_env(project), capture_output=True, text=True
    )


def outputs(project: Path) -> dict[str, str]:
    """sha256 of every file in the pipeline's output folders, and of dvc.lock, by path relative to the project."""
    found = {}
    for path in [*(p for f in OUTPUT_FOLDERS for p in sorted((project / f).rglob("*"))), project / "dvc.lock"]:
        if path.is_file():
            found[str(path.relative_to(project))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A copy of the project that has been through one `dvc repro`."""
    d = tmp_path_factory.mktemp("project")
    for package in ("pipeline", "features", "models"):
        shutil.copytree(ROOT / package, d / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", d / "dvc.yaml")
    params = project_params()
    params["ingest"]["source"] = "cdnow_sample"
    params["features"]["cutoff_schedule"]["count"] = 6
    params["clv"]["bootstrap_samples"] = 5
    (d / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert dvc(d, "init", "--no-scm", "-q").returncode == 0
    first = dvc(d, "repro")
    assert first.returncode == 0, first.stderr[-2000:]
    yield d


def test_forced_rerun_is_byte_identical(project: Path) -> None:
    """Two `dvc repro --force` after the first run change no byte of any output (Parquet, CSV, JSON, PNG, HTML,
    model files) nor of dvc.lock. The registry keeps its versions in between: the reruns train the same models,
    which reuse the registered versions and their decisions, so the metrics files say what the first run's said."""
    before = outputs(project)
    assert len(before) >= 30 and {p.split("/")[0] for p in before} == {*OUTPUT_FOLDERS, "dvc.lock"}
    assert any(p.startswith("reports/weekly/") for p in before) and any(p.endswith(".png") for p in before)
    for attempt in ("first", "second"):
        again = dvc(project, "repro", "--force")
        assert again.returncode == 0, again.stderr[-2000:]
        after = outputs(project)
        assert sorted(after) == sorted(before), f"{attempt} forced run"
        assert sorted(p for p in before if after[p] != before[p]) == [], f"{attempt} forced run"


def test_each_repro_is_a_parent_run_with_a_child_per_stage(project: Path) -> None:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project}/mlflow.db")
    (experiment,) = [e for e in client.search_experiments() if e.name == project_params()["base"]["mlflow_experiment"]]
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("stage") == "pipeline"]
    assert len(parents) >= 2  # the fixture's repro and at least the forced one
    for parent in parents:
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert sorted(r.data.tags["stage"] for r in children) == ["churn", "clv", "score"]
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    features_md5 = next(o["md5"] for o in lock["features"]["outs"] if o["path"] == "data/features.parquet")
    latest_churn = max((r for r in runs if r.data.tags.get("stage") == "churn"), key=lambda r: r.info.start_time)
    assert latest_churn.data.tags["dvc.lock.data/features.parquet"] == features_md5
    assert latest_churn.data.tags["git_dirty"] in ("true", "false")


def test_audit_accounts_for_every_row(project: Path) -> None:
    checks = audit(project, project / "params.yaml")
    assert [c.name for c in checks if not c.ok] == []
    names = {c.name for c in checks}
    assert "ingest: rows in = kept + quarantined" in names and "finite: data/features.parquet" in names
    assert sum(c.name.startswith("finite: ") for c in checks) >= 15


# The features stage run as DVC runs it, except that its Parquet writer stops halfway: it writes half of the first
# batch's rows to the temporary file, then the process kills itself with SIGKILL (no cleanup handler runs).
KILL_MID_WRITE = textwrap.dedent(
    """
    import os, signal, sys
    import pyarrow.parquet as pq

    class WriterThatDies(pq.ParquetWriter):
        def write_table(self, table, *args, **kwargs):
            super().write_table(table.slice(0, table.num_rows // 2), *args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)

    pq.ParquetWriter = WriterThatDies
    from pipeline import cli, features
    cli.run(features.main, sys.argv[1:])
    """
)


def test_stage_killed_mid_write_leaves_outputs_intact(project: Path) -> None:
    target = project / "data" / "features.parquet"
    before = target.read_bytes()
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["features"]["horizon_days"] = 60  # the features stage now has something new to write
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    args = ["--transactions", "data/transactions.parquet", "--features", "data/features.parquet"]
    args += ["--metrics", "metrics/features.json"]
    killed = subprocess.run(
        [sys.executable, "-c", KILL_MID_WRITE, *args], cwd=project, env=_env(project), capture_output=True, text=True
    )
    assert killed.returncode == -signal.SIGKILL
    assert target.read_bytes() == before  # the previous output, untouched
    (leftover,) = target.parent.glob(".features.parquet.*.tmp")  # the half-written file, beside it
    assert leftover.stat().st_size > 0

    status = dvc(project, "status")
    assert "features" in status.stdout  # DVC sees the new params, not a broken output
    redo = dvc(project, "repro")
    assert redo.returncode == 0, redo.stderr[-2000:]
    fcfg = section(params, "features", FeaturesConfig)
    table = read_table(target, s.feature_schema(fcfg.windows_days, fcfg.trend_window_days))
    labelled = table[~table[s.IS_SCORING]]
    assert pd.Timestamp(labelled[s.CUTOFF].max()) == pd.Timestamp("1998-06-30") - pd.Timedelta(days=60)
    assert not leftover.exists()  # removed by the next successful write
    assert "up to date" in dvc(project, "status").stdout


def test_audit_fails_on_a_lost_row_and_an_infinity(project: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(project, copy, ignore=shutil.ignore_patterns(".dvc", "mlflow.db", "mlartifacts"))
    metrics = json.loads((copy / "metrics/ingest.json").read_text())
    metrics["rows_in"] += 1  # a row that is neither kept nor quarantined
    (copy / "metrics/ingest.json").write_text(json.dumps(metrics))
    (copy / "plots/clv/deciles.csv").write_text("decile,clv\n1,inf\n2,3.5\n")
    failed = {c.name: c.detail for c in audit(copy, copy / "params.yaml") if not c.ok}
    assert failed == {
        "ingest: rows in = kept + quarantined": f"{metrics['rows_in']:,} = 6,919 + 0",
        "finite: plots/clv/deciles.csv": "1 NaN/inf cells",
    }
