"""The pipeline under `dvc repro` in a throw-away copy of the project: forced reruns and a stage killed mid-write.

The copy holds the project's code, dvc.yaml and params.yaml (on the 2,357-customer CDNOW sample, with fewer
cutoffs and bootstrap refits so a run takes well under a minute).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from pipeline.audit import audit
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


def git(project: Path, *args: str) -> None:
    who = ["-c", "user.name=test", "-c", "user.email=test@example.com", "-c", "commit.gpgsign=false"]
    done = subprocess.run(["git", *who, *args], cwd=project, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


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
    (d / ".gitignore").write_text("mlflow.db\nmlartifacts/\n/campaign/\n__pycache__/\n")
    git(d, "init", "-q")
    assert dvc(d, "init", "-q").returncode == 0
    first = dvc(d, "repro")
    assert first.returncode == 0, first.stderr[-2000:]
    git(d, "add", "-A")
    git(d, "commit", "-q", "-m", "the pipeline's first run")  # the baseline `dvc exp run` starts from
    yield d


def test_forced_rerun_is_byte_identical(project: Path) -> None:
    """`dvc repro --force` after the first run changes no byte of any output (Parquet, CSV, JSON, PNG, HTML,
    model files) nor of dvc.lock. The registry keeps its versions in between: the rerun trains the same models,
    which reuse the registered versions and their decisions, so the metrics files say what the first run's said.
    (The fixture's run and this one are the two runs compared; a third would take the rerun's path again.)"""
    before = outputs(project)
    assert len(before) >= 30 and {p.split("/")[0] for p in before} == {*OUTPUT_FOLDERS, "dvc.lock"}
    assert any(p.startswith("reports/weekly/") for p in before) and any(p.endswith(".png") for p in before)
    again = dvc(project, "repro", "--force")
    assert again.returncode == 0, again.stderr[-2000:]
    after = outputs(project)
    assert sorted(after) == sorted(before)
    assert sorted(p for p in before if after[p] != before[p]) == []


def test_each_repro_is_a_parent_run_with_a_child_per_stage(project: Path) -> None:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project}/mlflow.db")
    (experiment,) = [e for e in client.search_experiments() if e.name == project_params()["base"]["mlflow_experiment"]]
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("stage") == "pipeline"]
    assert len(parents) >= 2  # the fixture's repro and at least the forced one
    for parent in parents:
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert sorted(r.data.tags["stage"] for r in children) == ["backtest", "churn", "clv", "measure", "score"]
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


def every_output(project: Path) -> dict[str, str]:
    """sha256 of every file the pipeline wrote (all of data/, artifacts/, metrics/, reports/, plots/), hidden ones
    aside: those are staging places of a stage that did not finish."""
    found = {}
    for folder in ("data", "artifacts", "metrics", "reports", "plots"):
        for path in sorted((project / folder).rglob("*")):
            relative = path.relative_to(project)
            if path.is_file() and not any(part.startswith(".") for part in relative.parts):
                found[str(relative)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def staging_leftovers(project: Path) -> list[str]:
    return sorted(str(p.relative_to(project)) for p in project.rglob(".*.tmp"))


# Injected into the stage's own process (and no other) as a sitecustomize module: DVC runs the stage's real command,
# and the process kills itself with SIGKILL at a chosen point, where no cleanup handler runs. That is kill -9 at an
# exact moment instead of at a moment a timer happens to pick.
KILL_SWITCH = textwrap.dedent(
    """
    import os, signal

    with open("/proc/self/cmdline", "rb") as f:
        _args = f.read().split(b"\\0")
    if b"pipeline.{stage}" in _args:
        import pyarrow.parquet as pq

        def _die():
            os.kill(os.getpid(), signal.SIGKILL)

        if "{point}" == "mid-write":  # half of the first batch written to the features table's file, then killed
            class WriterThatDies(pq.ParquetWriter):
                def write_table(self, table, *args, **kwargs):
                    super().write_table(table.slice(0, table.num_rows // 2), *args, **kwargs)
                    _die()

            pq.ParquetWriter = WriterThatDies
        else:  # "second-table": after the stage wrote its first table in full, while it writes the next one
            _real, _calls = pq.write_table, []

            def write_table(*args, **kwargs):
                _calls.append(1)
                if len(_calls) == 2:
                    _die()
                return _real(*args, **kwargs)

            pq.write_table = write_table
    """
)


def up_to_date(status: str) -> bool:
    """`dvc status` with nothing to run but the measure stage, which is always changed: it rereads the campaign's
    assignment log, which DVC does not track."""
    return status == "measure:\n\talways changed\n"


def killed_repro(project: Path, tmp_path: Path, stage: str, point: str, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "sitecustomize.py").write_text(KILL_SWITCH.format(stage=stage, point=point))
    env = _env(project)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), *filter(None, [env.get("PYTHONPATH")])])
    return subprocess.run(
        [sys.executable, "-m", "dvc", "repro", *args], cwd=project, env=env, capture_output=True, text=True
    )


def test_features_killed_mid_write_under_dvc_repro_leaves_every_output(project: Path, tmp_path: Path) -> None:
    before = every_output(project)
    killed = killed_repro(project, tmp_path, "features", "mid-write", "--force", "--single-item", "features")
    assert killed.returncode != 0
    assert "failed to reproduce 'features'" in killed.stderr
    assert every_output(project) == before  # DVC did not delete them, the stage did not replace them
    assert any(".features.parquet." in p for p in staging_leftovers(project))  # the half-written file, hidden
    # nothing changed but a run that did not finish: the outputs are still those dvc.lock records
    assert up_to_date(dvc(project, "status").stdout)
    again = dvc(project, "repro", "--force", "--single-item", "features")
    assert again.returncode == 0, again.stderr[-2000:]
    assert staging_leftovers(project) == []  # removed by the next run of the stage
    assert every_output(project) == before


def test_score_killed_between_two_outputs_under_dvc_repro_leaves_every_output(project: Path, tmp_path: Path) -> None:
    params_file = project / "params.yaml"
    original = params_file.read_text()
    params = yaml.safe_load(original)
    params["score"]["risk_tier_thresholds"]["high"] = 0.8  # the score stage now has something new to write
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    before = every_output(project)
    try:
        # killed while writing data/churn.parquet, after writing data/clv.parquet in full
        killed = killed_repro(project, tmp_path, "score", "second-table", "--single-item", "score")
        assert killed.returncode != 0
        assert "failed to reproduce 'score'" in killed.stderr
        assert every_output(project) == before  # data/clv.parquet included: it was staged, not yet moved
        status = dvc(project, "status").stdout
        assert status.startswith("score:\n\tchanged deps:\n\t\tparams.yaml:")  # DVC knows it has still to run
        assert "changed outs" not in status  # and finds every output as dvc.lock records it
    finally:
        params_file.write_text(original)
    assert up_to_date(dvc(project, "status").stdout)


def test_a_stage_that_stops_on_bad_input_under_dvc_repro_leaves_its_outputs(project: Path) -> None:
    params_file = project / "params.yaml"
    original = params_file.read_text()
    params = yaml.safe_load(original)
    params["ingest"]["source"] = "orders_that_are_not_there.csv"
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    before, leftovers = every_output(project), staging_leftovers(project)
    try:
        stopped = dvc(project, "repro", "--single-item", "ingest")
        assert stopped.returncode != 0
        assert "error: orders_that_are_not_there.csv: file not found" in stopped.stderr
        assert every_output(project) == before
        assert staging_leftovers(project) == leftovers  # its own staging places removed
    finally:
        params_file.write_text(original)


def test_a_misspelt_section_reaches_a_stage_under_dvc_repro(project: Path) -> None:
    params_file = project / "params.yaml"
    original = params_file.read_text()
    params_file.write_text(original + "scroe:\n  pseudonymise_ids: true\n")
    before = every_output(project)
    try:
        stopped = dvc(project, "repro")
        assert stopped.returncode != 0  # the report stage depends on the whole file, so DVC runs it
        assert "error: params.yaml: unknown section 'scroe' (did you mean 'score'?)" in stopped.stderr
        assert every_output(project) == before  # the list with the real ids was not rewritten either
    finally:
        params_file.write_text(original)


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


def test_an_experiment_keeps_its_metrics_for_exp_show_and_metrics_diff(project: Path) -> None:
    """Metrics are DVC-cached outputs, so `dvc exp run` stores them with the experiment: `dvc exp show` and
    `dvc metrics diff` read real values for the baseline commit and for the experiment, and the key figures
    (metrics/key.json) are there. Last in this file: the experiment's results stay applied to the workspace."""
    base = json.loads((project / "metrics/key.json").read_text())
    assert 0.5 < base["churn_roc_auc"] < 1 and base["list_customers"] > 0 and base["scored_week"] == "1998-W27"
    clean = dvc(project, "metrics", "diff")
    assert clean.returncode == 0 and "failed to load" not in clean.stderr, clean.stderr
    ran = dvc(project, "exp", "run", "-n", "week-1998-W27", "-S", "score.summary_top_customers=10")
    assert ran.returncode == 0, ran.stderr[-2000:]
    shown = json.loads(dvc(project, "exp", "show", "--json").stdout)
    (commit,) = [c for c in shown if c["rev"] != "workspace"]
    (exp,) = [e for e in commit["experiments"] if e["name"] == "week-1998-W27"]
    for data in (commit["data"], exp["revs"][0]["data"]):
        key = data["metrics"]["metrics/key.json"]["data"]
        assert key["churn_roc_auc"] == base["churn_roc_auc"]  # the churn model was not retrained
        assert key["list_customers"] == base["list_customers"]
    assert exp["revs"][0]["data"]["params"]["params.yaml"]["data"]["score"]["summary_top_customers"] == 10
    diff = dvc(project, "metrics", "diff", "--json")
    assert diff.returncode == 0 and "failed to load" not in diff.stderr, diff.stderr
