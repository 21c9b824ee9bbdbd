"""A stage's outputs move into place together when it finishes; failed, killed or out of disk, it leaves the old ones.

The stage here is a small stand-in with the shape of the real ones (a file, a folder and a folder it adds to,
declared with ``pipeline.cli.output``); tests/robustness/test_dvc_runs.py kills the real stages under ``dvc repro``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.pandas as pandera
import pyarrow.parquet as pq
import pytest

from features.errors import InputError
from pipeline import cli, io
from tests.conftest import ROOT

log = logging.getLogger("toy")


def toy_main(argv: Sequence[str]) -> None:
    """Writes ``--table`` (a file), ``--models`` (a folder, rewritten) and ``--weekly/<week>`` (a folder it adds to)."""
    p = cli.parser("a stage")
    cli.output(p, "--table")
    cli.output(p, "--models", directory=True)
    cli.output(p, "--weekly", directory=True, keep_existing=True)
    p.add_argument("--week", required=True)
    p.add_argument("--fail-with", choices=("input", "disk", "bug"))
    p.add_argument("--payload-bytes", type=int, default=10)
    args = p.parse_args(argv)
    with io.atomic_path(args.table) as tmp:
        tmp.write_bytes(f"table of {args.week}".encode() + b"x" * args.payload_bytes)
    (args.models / "model.txt").write_text(f"model of {args.week}")
    (args.weekly / args.week).mkdir(exist_ok=True)
    (args.weekly / args.week / "list.csv").write_text(f"list of {args.week}")
    log.info("wrote %s", args.weekly / args.week / "list.csv")
    if args.fail_with == "input":
        raise InputError(f"{args.table}: a data problem")
    if args.fail_with == "disk":
        raise OSError(errno.ENOSPC, "No space left on device")
    if args.fail_with == "bug":
        raise ZeroDivisionError("a bug keeps its traceback")


def toy_args(d: Path, week: str, *extra: str) -> list[str]:
    outputs = ["--table", f"{d}/data/table.parquet", "--models", f"{d}/artifacts/models", "--weekly", f"{d}/weekly"]
    return [*outputs, "--week", week, *extra]


def snapshot(d: Path) -> dict[str, str]:
    """sha256 of every file under ``d``, hidden ones included, by relative path."""
    return {
        str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()
    }


def hidden(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob(".*"))


def test_outputs_move_into_place_together_and_folders_are_rewritten(tmp_path: Path) -> None:
    cli.run(toy_main, toy_args(tmp_path, "W01"))
    (tmp_path / "artifacts/models/stale.txt").write_text("from an older version of the stage")
    cli.run(toy_main, toy_args(tmp_path, "W02"))
    assert (tmp_path / "data/table.parquet").read_text().startswith("table of W02")
    assert sorted(p.name for p in (tmp_path / "artifacts/models").iterdir()) == ["model.txt"]  # no stale file
    assert (tmp_path / "weekly/W01/list.csv").read_text() == "list of W01"  # earlier weeks stay
    assert (tmp_path / "weekly/W02/list.csv").read_text() == "list of W02"
    assert hidden(tmp_path) == []


def test_the_two_rename_fallback_gives_the_same_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(io, "_exchange", lambda a, b: False)  # a file system without renameat2's exchange
    cli.run(toy_main, toy_args(tmp_path, "W01"))
    cli.run(toy_main, toy_args(tmp_path, "W02"))
    assert (tmp_path / "artifacts/models/model.txt").read_text() == "model of W02"
    assert sorted(p.name for p in (tmp_path / "weekly").iterdir()) == ["W01", "W02"]
    assert hidden(tmp_path) == []


@pytest.mark.parametrize(
    ("failure", "message"),
    [
        ("input", "error: {d}/data/table.parquet: a data problem"),
        (
            "disk",
            "error: writing {d}/data/table.parquet, {d}/artifacts/models, {d}/weekly: No space left on device; free "
            "some space and run the stage again (the previous outputs are unchanged)",
        ),
    ],
)
def test_a_failing_stage_leaves_every_previous_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], failure: str, message: str
) -> None:
    cli.run(toy_main, toy_args(tmp_path, "W01"))
    before = snapshot(tmp_path)
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        cli.run(toy_main, toy_args(tmp_path, "W02", "--fail-with", failure))
    assert stopped.value.code == 2
    # the staged path of the table is named as the table itself, in the error and in the log line
    assert capsys.readouterr().err.strip().splitlines()[-1] == message.format(d=tmp_path)
    assert snapshot(tmp_path) == before
    assert hidden(tmp_path) == []


def test_a_bug_keeps_its_traceback_and_the_previous_outputs(tmp_path: Path) -> None:
    cli.run(toy_main, toy_args(tmp_path, "W01"))
    before = snapshot(tmp_path)
    with pytest.raises(ZeroDivisionError):
        cli.run(toy_main, toy_args(tmp_path, "W02", "--fail-with", "bug"))
    assert snapshot(tmp_path) == before


def test_log_lines_name_outputs_by_their_own_paths(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="toy"):
        cli.run(toy_main, toy_args(tmp_path, "W01"))
    assert caplog.messages == [f"wrote {tmp_path}/weekly/W01/list.csv"]


# The stand-in stage run as its own process, which kills itself with SIGKILL after writing every output to its
# staging place and before moving them (no cleanup handler runs): the latest moment a kill can leave old outputs.
KILLED = textwrap.dedent(
    """
    import os, signal, sys
    from pipeline import cli, io
    from tests.test_staging import toy_main

    def die(self):
        os.kill(os.getpid(), signal.SIGKILL)

    io.StagedOutputs.commit = die
    cli.run(toy_main, sys.argv[1:])
    """
)


def test_a_killed_stage_leaves_every_previous_output_and_the_next_run_tidies(tmp_path: Path) -> None:
    cli.run(toy_main, toy_args(tmp_path, "W01"))
    before = snapshot(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    killed = subprocess.run([sys.executable, "-c", KILLED, *toy_args(tmp_path, "W02")], cwd=ROOT, env=env, check=False)
    assert killed.returncode == -signal.SIGKILL
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before  # the old outputs, untouched
    leftovers = hidden(tmp_path)
    assert len(leftovers) >= 3 and all(".tmp" in name for name in leftovers)  # the staged W02 outputs
    cli.run(toy_main, toy_args(tmp_path, "W03"))
    assert hidden(tmp_path) == []  # a dead writer's staging folders are removed by the next commit
    assert sorted(p.name for p in (tmp_path / "weekly").iterdir()) == ["W01", "W03"]


@contextlib.contextmanager
def tmpfs(where: Path, size: str, read_only: bool = False) -> Iterator[Path]:
    """A small RAM file system mounted at ``where`` (root only): a real full disk, a real read-only folder."""
    where.mkdir()
    options = f"size={size}" + (",ro" if read_only else "")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()}); the injected fault tests cover it")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_real_full_disk_is_one_line_and_keeps_the_previous_outputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with tmpfs(tmp_path / "disk", "256k") as d:
        cli.run(toy_main, toy_args(d, "W01"))
        before = snapshot(d)
        capsys.readouterr()
        with pytest.raises(SystemExit) as stopped:
            cli.run(toy_main, toy_args(d, "W02", "--payload-bytes", str(1 << 20)))  # 1 MB on a 256 kB disk
        assert stopped.value.code == 2
        assert capsys.readouterr().err.strip().splitlines() == [
            f"error: writing {d}/data/table.parquet, {d}/artifacts/models, {d}/weekly: No space left on device; "
            "free some space and run the stage again (the previous outputs are unchanged)"
        ]
        assert snapshot(d) == before
        assert hidden(d) == []


def test_a_real_read_only_folder_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with tmpfs(tmp_path / "ro", "64k", read_only=True) as d:
        capsys.readouterr()
        with pytest.raises(SystemExit) as stopped:
            cli.run(toy_main, toy_args(d, "W01"))
        assert stopped.value.code == 2
        assert capsys.readouterr().err.strip().splitlines() == [
            f"error: {d}/data: Read-only file system; the file system is mounted read-only: remount it writable, or "
            "run the project from a writable copy (the previous outputs are unchanged)"
        ]


def test_a_denied_folder_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # root reads and writes through permission bits, so the denial is injected where the stage stages its table
    real = io.StagedOutputs._box

    def denied(self: io.StagedOutputs, target: Path) -> Path:
        if target.name == "table.parquet":
            raise PermissionError(errno.EACCES, "Permission denied", str(target.parent / f".{target.name}.1@a.b.tmp"))
        return real(self, target)

    monkeypatch.setattr(io.StagedOutputs, "_box", denied)
    with pytest.raises(SystemExit):
        cli.run(toy_main, toy_args(tmp_path, "W01"))
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {tmp_path}/data: Permission denied; make it readable and writable for this user (the previous "
        "outputs are unchanged)"
    ]


def test_a_damaged_file_between_stages_names_the_stage_that_writes_it() -> None:
    dvc_yaml = ROOT / "dvc.yaml"
    assert cli.writer_stage(Path("data/features.parquet"), dvc_yaml) == "features"
    assert cli.writer_stage(Path("./data/clv.parquet"), dvc_yaml) == "score"
    assert cli.writer_stage(Path("metrics/churn.json"), dvc_yaml) == "train_churn"
    assert cli.writer_stage(Path("artifacts/clv/params.json"), dvc_yaml) == "train_clv"  # inside an output folder
    assert cli.writer_stage(Path("data/elsewhere.parquet"), dvc_yaml) is None
    assert cli.writer_stage(Path("data/features.parquet"), ROOT / "no-such-dvc.yaml") is None


def test_a_large_table_is_written_in_chunks_with_the_same_rows_and_checks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from features import schemas as s

    rng = np.random.default_rng(2)
    n = 2500
    frame = pd.DataFrame(
        {
            s.SEGMENT: [f"seg {i}" for i in range(n)],
            "customers": rng.integers(0, 100, n),
            "customer_share": rng.random(n),
        }
    )
    schema = pandera.DataFrameSchema(
        {
            s.SEGMENT: pandera.Column(str, coerce=True),
            "customers": pandera.Column("int64", pandera.Check.ge(0), coerce=True),
            "customer_share": pandera.Column(float, pandera.Check.le(1), coerce=True),
        },
        strict=True,
        ordered=True,
        unique=[s.SEGMENT],
        name="kpis",
    )
    order = rng.permutation(n)
    io.write_table(frame, tmp_path / "whole.parquet", schema, order=order)
    monkeypatch.setattr(io, "WRITE_CHUNK_ROWS", 1000)
    io.write_table(frame, tmp_path / "chunks.parquet", schema, order=order)
    whole, chunks = pq.read_table(tmp_path / "whole.parquet"), pq.read_table(tmp_path / "chunks.parquet")
    assert chunks.equals(whole) and chunks.num_rows == n
    assert pq.ParquetFile(tmp_path / "chunks.parquet").metadata.num_row_groups == 3
    assert whole.column(s.SEGMENT).to_pylist()[:2] == [f"seg {i}" for i in order[:2]]
    # a key repeated across chunks, and a bad value in the last chunk, are each caught
    repeated = frame.assign(**{s.SEGMENT: frame[s.SEGMENT].where(frame.index != 2400, "seg 3")})
    with pytest.raises(InputError, match=r"1 row\(s\) repeat a segment of an earlier row \(e\.g\. \['seg 3'\]\)"):
        io.write_table(repeated, tmp_path / "bad.parquet", schema)
    broken = frame.assign(customer_share=np.where(frame.index == 2400, 1.5, frame["customer_share"]))
    with pytest.raises(InputError, match=r"\(batch 2\): 1 schema violation\(s\); first: column 'customer_share'"):
        io.write_table(broken, tmp_path / "bad.parquet", schema)
    assert not (tmp_path / "bad.parquet").exists()
