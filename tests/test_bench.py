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
