"""The pipeline benchmark runs end to end on a small log and writes the report its readers rely on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def test_bench_pipeline_report(tmp_path: Path) -> None:
    report = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.pipeline", "--customers", "3000", "--skip-pipeline", "--report", str(report)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(report.read_text())
    assert out["n_customers"] == 3000 and out["n_transactions"] > 3000
    steps = ["clv_path/rfm_summary", "clv_path/bgnbd_fit", "clv_path/gamma_gamma_fit", "clv_path/clv_12_months"]
    for side in ("project", "naive"):
        for step in [*steps, "clv_path"]:
            assert out[side][step]["wall_s"] > 0 and out[side][step]["peak_rss_mb"] > 50
    assert out["project"]["ingest"]["wall_s"] > 0
    assert out["ratio_clv"] == round(out["naive"]["clv_path"]["wall_s"] / out["project"]["clv_path"]["wall_s"], 2)
    # the two flows fit the same model to the same customers
    assert out["params_max_rel_diff"] < 1e-3
    assert abs(out["clv_total"]["project"] / out["clv_total"]["naive"] - 1) < 1e-3
    assert "CLV path:" in done.stdout and "faster than plain lifetimes" in done.stdout
    # each stage's log is kept beside the report
    assert "rows in" in (tmp_path / "bench-logs" / "ingest.log").read_text()


def test_growth_table_reads_the_runs_and_divides_largest_by_smallest(tmp_path: Path) -> None:
    from bench import growth

    def run(n: int, ingest_mb: float, churn_mb: float | None) -> dict[str, object]:
        project = {"ingest": {"wall_s": n / 1e5, "peak_rss_mb": ingest_mb}}
        if churn_mb is not None:
            project["train_churn"] = {"wall_s": 2.0, "peak_rss_mb": churn_mb}
        return {"n_customers": n, "project": project, "ratio_clv": None}

    for n, ingest_mb, churn_mb in [
        (3_000_000, 1200.0, None),
        (1_000_000, 1000.0, 2000.0),
        (30_000_000, 1500.0, 3000.0),
    ]:
        (tmp_path / f"{n}.json").write_text(json.dumps(run(n, ingest_mb, churn_mb)))
    (tmp_path / "features_1000000.json").write_text("{}")  # another bench's report: not a pipeline run
    lines = growth.table(growth.runs(tmp_path)).splitlines()
    assert lines[0] == (
        "| step | 1M: wall s, peak MB | 3M: wall s, peak MB | 30M: wall s, peak MB "
        "| peak growth, 1M to 30M (30x the customers) |"
    )
    assert lines[2] == "| ingest | 10.0, 1,000 | 30.0, 1,200 | 300.0, 1,500 | 1.5x |"
    assert lines[3] == "| train_churn | 2.0, 2,000 | - | 2.0, 3,000 | 1.5x |"
    assert len(lines) == 4


def test_bench_without_the_backtest_sets_what_serves_in_valid_params(tmp_path: Path) -> None:
    from bench.pipeline import bench_params
    from pipeline.config import ClvConfig, ScoreConfig, section

    fixed = bench_params(tmp_path / "raw.parquet", skip_backtest=True)
    chosen = bench_params(tmp_path / "raw.parquet")
    assert section(fixed, "clv", ClvConfig).model == "bgnbd"
    assert section(fixed, "score", ScoreConfig).churn_scorer == "btyd"
    assert (chosen["clv"]["model"], chosen["score"]["churn_scorer"]) == ("auto", "auto")
    assert {k: v for k, v in fixed["clv"].items() if k != "model"} == {
        k: v for k, v in chosen["clv"].items() if k != "model"
    }
