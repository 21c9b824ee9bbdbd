"""The weekly list and its summary: formula-safe CSV that Excel opens, week folders, and the change since last week."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import hmac
import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from features import schemas as s
from features.errors import InputError
from models import segments as seg
from pipeline import report
from pipeline.config import ClvConfig, FeaturesConfig, ScoreConfig, section
from pipeline.io import neutralise, read_table, write_table
from pipeline.weeks import grid

PLAIN = re.compile(r"^[+-]?\d+(\.\d+)?$")
HOSTILE_IDS = ['=HYPERLINK("http://x")', "+4420", "-12", "@SUM(A1:A9)", "\tTAB", "\rCR", "plain", "Zoë"]


def synthetic_scores(params: dict[str, Any], as_of: dt.date, n: int = 400, seed: int = 0) -> pd.DataFrame:
    """``n`` scored customers as the score stage writes them, with hostile ids and a negative revenue among them."""
    rng = np.random.default_rng(seed)
    cfg = section(params, "score", ScoreConfig)
    ids = [*HOSTILE_IDS, *(f"C{i:05d}" for i in range(n - len(HOSTILE_IDS)))]
    clv = rng.gamma(1.2, 40.0, n)
    tiers = np.where(clv >= np.quantile(clv, 0.8), "high", np.where(clv >= np.quantile(clv, 0.5), "mid", "low"))
    days_since = rng.integers(0, 700, n)
    cutoff = pd.Timestamp(as_of) - pd.Timedelta(days=1)
    frame = pd.DataFrame(
        {
            s.CUSTOMER_ID: ids,
            s.AS_OF: pd.Timestamp(as_of),
            s.P_CHURN: np.clip(days_since / 700 + rng.normal(0, 0.1, n), 0.01, 0.99),
            s.CLV: clv,
            s.CLV_P05: clv * 0.6,
            s.CLV_P95: clv * 1.5,
            s.VALUE_TIER: tiers,
            s.P_ALIVE: rng.uniform(0.2, 1.0, n),
            "reason_1": ["=cmd|' /C calc'!A0", "-no purchase", *(f"no purchase for {d} days" for d in days_since[2:])],
            "reason_2": "spend in the last 90 days, 12.50 (typical: 30.00)",
            "reason_3": None,
            s.DAYS_SINCE_LAST_PURCHASE: days_since,
            s.LAST_PURCHASE_DATE: cutoff - pd.to_timedelta(days_since, unit="D"),
            s.PURCHASE_DAYS: rng.integers(1, 12, n),
            s.TOTAL_SPEND: rng.gamma(2.0, 50.0, n),
            s.REVENUE_LAST_HORIZON: np.where(days_since < 90, rng.normal(40, 30, n), 0.0),
            s.ACTIVE_AT_HORIZON_START: rng.uniform(size=n) < 0.9,
            s.BOUGHT_IN_LAST_HORIZON: days_since < 90,
        }
    )
    t = cfg.risk_tier_thresholds
    frame = seg.assign(frame, grid(cfg), high=t.high, medium=t.medium)
    frame = frame.sort_values([s.VALUE_AT_RISK, s.CUSTOMER_ID], ascending=[False, True], ignore_index=True)
    return frame[list(s.scores_schema(False).columns)]


def synthetic_drift(as_of: dt.date, shifted: bool) -> pd.DataFrame:
    cutoff = pd.Timestamp(as_of) - pd.Timedelta(days=1)
    return pd.DataFrame(
        {
            "feature": [s.P_CHURN, s.DAYS_SINCE_LAST_PURCHASE, s.TOTAL_SPEND],
            "psi": [0.31 if shifted else 0.02, 0.12, 0.01],
            "weight": [np.nan, 0.3, 0.1],
            "compared": [True, False, False],
            "reference_mean": [0.6, 200.0, 80.0],
            "scoring_mean": [0.7, 230.0, 81.0],
            "reference_missing_share": [0.0, 0.0, 0.0],
            "scoring_missing_share": [0.0, 0.0, 0.0],
            "reference_cutoff": cutoff - pd.Timedelta(days=90),
            "scoring_cutoff": cutoff,
        }
    )


def write_week(
    tmp: Path, params: dict[str, Any], as_of: dt.date, *, seed: int, shifted: bool = False, source: str = "cdnow"
) -> Path:
    """Run the report stage on synthetic inputs for ``as_of`` from the log ``source``; returns the week folder."""
    scores = tmp / f"scores_{as_of}.parquet"
    drift = tmp / f"drift_{as_of}.parquet"
    write_table(synthetic_scores(params, as_of, seed=seed), scores, s.scores_schema(False))
    write_table(synthetic_drift(as_of, shifted), drift, s.drift_schema())
    return run_report(tmp, params, scores, drift, source=source, currency=params["base"]["currency"])


def run_report(tmp: Path, params: dict[str, Any], scores: Path, drift: Path, **options: Any) -> Path:
    """The report stage on these scores and drift files, writing under ``tmp / "weekly"``."""
    return report.run(
        section(params, "features", FeaturesConfig),
        section(params, "clv", ClvConfig),
        section(params, "score", ScoreConfig),
        scores_path=scores,
        drift_path=drift,
        weekly=tmp / "weekly",
        **options,
    )


def test_neutralise() -> None:
    assert (
        neutralise("=1+1") == "'=1+1"
        and neutralise("-1+1") == "'-1+1"
        and neutralise("+cmd|' /C calc'") == ("'+cmd|' /C calc'")
    )
    assert neutralise("@x") == "'@x" and neutralise("-") == "'-"
    assert neutralise("\tx") == "'\tx" and neutralise("\r1") == "'\r1"
    # a plain number runs nothing: it stays a number in the spreadsheet
    assert neutralise("-12.50") == "-12.50" and neutralise("+1") == "+1" and neutralise("-1e-3") == "-1e-3"
    assert neutralise("12.50") == "12.50" and neutralise("a=b") == "a=b" and neutralise("") == ""


def _cells(path: Path) -> list[list[str]]:
    raw = path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")  # the UTF-8 byte-order mark Excel needs to read UTF-8
    return list(csv.reader(io.StringIO(raw.decode("utf-8-sig"), newline="")))


def _python_csv(frame: pd.DataFrame) -> bytes:
    """The list as Python's csv module writes it, cell by cell: the oracle for the DuckDB writer."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([neutralise(c) for c in frame.columns])
    for row in frame.itertuples(index=False):
        cells = []
        for column, v in zip(frame.columns, row, strict=True):
            if v is None or (not isinstance(v, str) and pd.isna(v)):
                cells.append("")
            elif column in report.MONEY:
                cells.append(f"{v:.2f}")
            elif column in report.PROBABILITIES:
                cells.append(f"{v:.4f}")
            elif isinstance(v, pd.Timestamp):
                cells.append(v.strftime("%Y-%m-%d"))
            else:
                cells.append(neutralise(str(v)))
        writer.writerow(cells)
    return b"\xef\xbb\xbf" + out.getvalue().encode("utf-8")


HOSTILE = [None, "", "-", "-12.50", "+3", "=SUM(A1)", "@x", "\tpad", "\r1", "-12\n", "éclair", "ok", "1e5", "-٣", 'a"b']


def test_the_list_is_written_in_its_order_across_many_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # DuckDB's CSV writer works in 2,048-row chunks on several threads; a busy machine once got CDNOW's list with
    # rank 2441 on the first line. Written ORDER BY the row's position, 150,000 rows (73 chunks, split over several
    # Arrow chunks as pd.concat leaves them) come back in order.
    n = 150_000
    parts = [
        pd.DataFrame({s.RANK: np.arange(i, i + n // 3) + 1, s.CUSTOMER_ID: [f"c{i}"] * (n // 3)})
        for i in (0, 50_000, 100_000)
    ]
    frame = pd.concat(parts, ignore_index=True)
    path = tmp_path / "list.csv"
    report.write_list_csv(frame, path)
    written = pd.read_csv(path, encoding="utf-8-sig")[s.RANK].to_numpy()
    np.testing.assert_array_equal(written, np.arange(1, n + 1))
    # written 7,000 rows at a time (22 files joined, the header in the first only): the same bytes
    monkeypatch.setattr(report, "CSV_CHUNK_ROWS", 7_000)
    chunked = tmp_path / "chunked.csv"
    report.write_list_csv(frame, chunked)
    assert chunked.read_bytes() == path.read_bytes()


@pytest.mark.parametrize("dtype", ["str", "string[python]", "string[pyarrow]", object])
def test_the_list_has_the_bytes_python_csv_writes(tmp_path: Path, params: dict[str, Any], dtype: Any) -> None:
    """Formatting, neutralising, quoting and line ends, cell for cell as neutralise and Python's csv give them,
    whatever the text columns' dtype; a missing or empty cell is empty."""
    churn_list = report.churn_risk_list(synthetic_scores(params, dt.date(2024, 3, 4)))
    churn_list[s.REASONS[0]] = pd.Series((HOSTILE * 30)[: len(churn_list)], dtype=dtype)
    churn_list[s.CUSTOMER_ID] = churn_list[s.CUSTOMER_ID].astype(dtype)
    churn_list.loc[3, s.CLV_P05] = np.nan
    path = tmp_path / "list.csv"
    report.write_list_csv(churn_list, path)
    assert path.read_bytes() == _python_csv(churn_list)
    rows = list(csv.reader(io.StringIO(path.read_bytes().decode("utf-8-sig"), newline="")))
    assert len(rows) == 401 and "'" + HOSTILE_IDS[0] in {row[1] for row in rows}
    cells = {row[list(churn_list.columns).index(s.REASONS[0])] for row in rows[1:]}
    assert {"'-", "-12.50", "+3", "'=SUM(A1)", "'-12\n", "'-٣", 'a"b', ""} <= cells


def test_weekly_list_has_no_formula_cell(tmp_path: Path, params: dict[str, Any]) -> None:
    folder = write_week(tmp_path, params, dt.date(1998, 3, 2), seed=1)
    assert folder.name == "1998-W10"
    assert {p.name for p in folder.iterdir()} == {
        "churn_risk.csv",
        "churn_risk.parquet",
        "segments.csv",
        "summary.html",
        "week.json",
    }
    rows = _cells(folder / "churn_risk.csv")
    header, body = rows[0], rows[1:]
    columns = [s.RANK, *(c for c in s.LIST_COLUMNS if c != s.CLV_NET)]
    words = report.list_headers(90, 12, "USD")
    assert header == [words[c] for c in columns]
    assert header[:5] == ["rank", "customer id", "segment", "recommended action", "value at risk (USD)"]
    assert "churn probability, next 90 days" in header and "CLV, next 12 months (USD)" in header
    assert len(body) == 400
    offending = [c for row in rows for c in row if c[:1] in ("=", "+", "-", "@", "\t", "\r") and not PLAIN.match(c)]
    assert offending == []
    flat = [c for row in body for c in row]
    assert '\'=HYPERLINK("http://x")' in flat and "'\rCR" in flat and "'@SUM(A1:A9)" in flat
    assert "'=cmd|' /C calc'!A0" in flat
    assert "Zoë" in flat  # accents survive
    assert any(c.startswith("-") and PLAIN.match(c) for c in flat)  # a negative revenue, still a number
    # the Parquet twin keeps native values, unescaped
    parquet = pd.read_parquet(folder / "churn_risk.parquet")
    assert list(parquet.columns) == columns and len(parquet) == 400
    assert parquet[s.RANK].tolist() == list(range(1, 401))
    assert parquet[s.VALUE_AT_RISK].is_monotonic_decreasing
    assert '=HYPERLINK("http://x")' in set(parquet[s.CUSTOMER_ID])


def test_summary_and_change_since_the_previous_week(tmp_path: Path, params: dict[str, Any]) -> None:
    first = write_week(tmp_path, params, dt.date(1998, 2, 23), seed=1)
    page = (first / "summary.html").read_text(encoding="utf-8")
    assert "no earlier week&#x27;s folder exists yet" in page
    assert "Drift warning" not in page
    second = write_week(tmp_path, params, dt.date(1998, 3, 2), seed=2, shifted=True)
    page = (second / "summary.html").read_text(encoding="utf-8")
    assert "Change since 1998-W09" in page
    assert "Drift warning" in page and "p_churn" in page
    assert page.count("<svg") == 2
    # self-contained: nothing to fetch (XML namespace names in the SVG are identifiers, not requests)
    assert re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page) is None
    assert "<script" not in page and "<link" not in page and "@import" not in page
    kpis = pd.read_csv(second / "segments.csv")
    assert kpis[s.SEGMENT].iloc[-1] == seg.ALL and kpis["customers"].iloc[-1] == 400
    # a back-filled older week compares with nothing later than itself
    older = write_week(tmp_path, params, dt.date(1998, 2, 16), seed=3)
    assert "no earlier week&#x27;s folder exists yet" in (older / "summary.html").read_text(encoding="utf-8")


def test_a_week_of_another_log_is_never_compared(tmp_path: Path, params: dict[str, Any]) -> None:
    write_week(tmp_path, params, dt.date(1998, 2, 16), seed=1, source="cdnow")
    other = write_week(tmp_path, params, dt.date(1998, 2, 23), seed=2, source="online_retail.csv.gz")
    page = (other / "summary.html").read_text(encoding="utf-8")
    assert "no earlier week of this log (online_retail.csv.gz)" in page and "Change since 1998" not in page
    assert json.loads((other / report.WEEK_JSON).read_text())["source"] == "online_retail.csv.gz"
    # the next CDNOW week skips the Online Retail one and compares with the CDNOW week before it
    page = (write_week(tmp_path, params, dt.date(1998, 3, 2), seed=3) / "summary.html").read_text(encoding="utf-8")
    assert "Change since 1998-W08" in page


def test_segments_csv_reads_as_counts_and_rounded_rates(tmp_path: Path, params: dict[str, Any]) -> None:
    text = (write_week(tmp_path, params, dt.date(1998, 3, 2), seed=1) / report.SEGMENTS_CSV).read_text()
    last = text.strip().splitlines()[-1].split(",")
    header = text.splitlines()[0].split(",")
    cells = dict(zip(header, last, strict=True))
    assert cells["customers"] == "400" and "." not in cells["retention_base"]
    assert all(len(cells[c].split(".")[-1]) <= 4 for c in ("churn_rate", "retention_rate", "mean_p_churn"))


def test_unreadable_previous_week_is_reported_not_fatal(tmp_path: Path, params: dict[str, Any]) -> None:
    broken = tmp_path / "weekly" / "1998-W09"
    broken.mkdir(parents=True)
    (broken / "churn_risk.parquet").write_text("not parquet")
    (broken / report.WEEK_JSON).write_text('{"source": "cdnow"}')
    folder = write_week(tmp_path, params, dt.date(1998, 3, 2), seed=1)
    page = (folder / "summary.html").read_text(encoding="utf-8")
    assert "the previous week&#x27;s folder 1998-W09 could not be compared" in page


def test_pseudonymised_ids_leave_no_real_id_and_no_key_behind(
    tmp_path: Path, params: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    key = "a-long-secret-only-crm-holds-42"
    params["score"]["pseudonymise_ids"] = True
    monkeypatch.delenv(report.ID_KEY_ENV, raising=False)
    with pytest.raises(InputError, match=r"^score.pseudonymise_ids is true but CHURN_CLV_ID_KEY is not set"):
        write_week(tmp_path, params, dt.date(2021, 3, 1), seed=1)
    for weak, why in [
        ("short", r"key must have at least 16 characters, got 5"),
        (" " * 16, r"key starts or ends with whitespace"),
        ("a-long-secret-only-crm-holds-42\n", r"key starts or ends with whitespace"),
        ("ab" * 10, r"key has only 2 different character\(s\); use a random secret with at least 8"),
    ]:
        monkeypatch.setenv(report.ID_KEY_ENV, weak)
        with pytest.raises(InputError, match=why):
            write_week(tmp_path, params, dt.date(2021, 3, 1), seed=1)

    monkeypatch.setenv(report.ID_KEY_ENV, key)
    folder = write_week(tmp_path, params, dt.date(2021, 3, 1), seed=1)
    listed = pd.read_parquet(folder / report.LIST_PARQUET)
    real = synthetic_scores(params, dt.date(2021, 3, 1), seed=1)[s.CUSTOMER_ID]
    # whoever holds the key maps CRM ids to the list's: HMAC-SHA256, first 24 hex digits
    expected = {"p_" + hmac.new(key.encode(), i.encode(), hashlib.sha256).hexdigest()[:24] for i in real}
    assert set(listed[s.CUSTOMER_ID]) == expected and listed[s.CUSTOMER_ID].is_unique
    for path in folder.iterdir():
        text = path.read_bytes()
        assert key.encode() not in text
        assert not any(f"C{i:05d}".encode() in text for i in range(0, 390, 37)), path.name
    # the same key gives the same pseudonyms next week, so weeks compare
    later = write_week(tmp_path, params, dt.date(2021, 3, 8), seed=1)
    assert set(pd.read_parquet(later / report.LIST_PARQUET)[s.CUSTOMER_ID]) == expected
    assert "no customer id in common" not in (later / report.SUMMARY).read_text()
    # another key: no id in common, and the page says so instead of calling every customer new
    monkeypatch.setenv(report.ID_KEY_ENV, key + "-rotated")
    rotated = write_week(tmp_path, params, dt.date(2021, 3, 15), seed=1)
    assert "has no customer id in common with this one" in (rotated / report.SUMMARY).read_text()


def test_previous_week_kpis_are_read_against_their_schema(tmp_path: Path, params: dict[str, Any]) -> None:
    first = write_week(tmp_path, params, dt.date(1998, 2, 23), seed=1)
    kpis = pd.read_csv(first / report.SEGMENTS_CSV)
    kpis.assign(customers="many").to_csv(first / report.SEGMENTS_CSV, index=False)  # a hand-edited file
    page = (write_week(tmp_path, params, dt.date(1998, 3, 2), seed=2) / "summary.html").read_text(encoding="utf-8")
    assert "the previous week&#x27;s folder 1998-W09 could not be compared" in page
    assert "segments.csv: 21 schema violation(s); first: column &#x27;customers&#x27;" in page


def test_the_glossary_reads_psi_with_the_pages_own_threshold() -> None:
    text = report.glossary(90, 12, "GBP", warning_psi=0.2)
    assert "below 0.1 stable, above 0.2 a shift (score.drift_warning_psi)" in text
    assert "next 90 days" in text and "next 12 months" in text and "in GBP" in text
    assert "no warning signs" in text


def test_the_list_puts_the_target_arm_first_in_its_order_and_leaves_the_control_arm_off(
    params: dict[str, Any],
) -> None:
    scores = synthetic_scores(params, dt.date(2024, 3, 4), n=40)
    ids = scores[s.CUSTOMER_ID].tolist()
    targets, control = [ids[30], ids[2], ids[17]], [ids[0], ids[25]]  # the targets best net value first
    assignments = pd.DataFrame(
        {
            s.CUSTOMER_ID: [*targets, *control],
            s.ARM: [s.TARGET_ARM] * 3 + [s.CONTROL_ARM] * 2,
            s.NET_VALUE: [9.0, 8.0, 7.0, 6.0, 5.0],
            s.CONTACT_COST: [1.0, 1.5, 2.0, 1.0, 1.0],
        }
    )
    listed = report.churn_risk_list(scores, assignments)
    rest = [c for c in ids if c not in targets + control]
    assert listed[s.CUSTOMER_ID].tolist() == targets + rest
    assert listed[s.RANK].tolist() == list(range(1, 39))
    assert listed[s.GROUP].tolist() == [s.CONTACT] * 3 + [s.NO_CONTACT] * 35
    assert listed[s.NET_VALUE].tolist()[:3] == [9.0, 8.0, 7.0] and listed[s.NET_VALUE].iloc[3:].isna().all()
    assert listed.columns.get_loc(s.GROUP) == listed.columns.get_loc(s.CUSTOMER_ID) + 1
    stranger = assignments.assign(**{s.CUSTOMER_ID: [*targets[:2], "Z999", *control]})
    with pytest.raises(InputError, match=r"name 1 customer\(s\) the scores do not have \(e\.g\. 'Z999'\)"):
        report.churn_risk_list(scores, stranger)


def _assignments(scores: pd.DataFrame, week: str) -> pd.DataFrame:
    """A target arm and a control arm scattered over the list, the targets best net value first."""
    ids = scores[s.CUSTOMER_ID].tolist()
    targets, control = [ids[i] for i in (390, 5, 77, 201, 12, 399)], [ids[i] for i in (0, 150, 151)]
    n = len(targets) + len(control)
    return pd.DataFrame(
        {
            s.CUSTOMER_ID: [*targets, *control],
            s.ARM: [s.TARGET_ARM] * len(targets) + [s.CONTROL_ARM] * len(control),
            s.NET_VALUE: np.linspace(9.0, 1.0, n),
            s.CONTACT_COST: np.full(n, 1.5),
            s.WEEK: week,
        }
    )


@pytest.mark.parametrize("rows", [7, 64, 10_000])
def test_the_list_read_and_written_in_chunks_is_the_list_in_memory(
    tmp_path: Path, params: dict[str, Any], monkeypatch: pytest.MonkeyPatch, rows: int
) -> None:
    """Read a few rows at a time, the target arm spread over many chunks, the list has the rows, order and
    values of the list made in one frame; both files are the same and the tally counts what they hold."""
    scores = synthetic_scores(params, dt.date(2024, 3, 4))
    path = tmp_path / "scores.parquet"
    write_table(scores, path, s.scores_schema(False))
    assignments = _assignments(scores, "2024-W10")
    schema = s.scores_schema(False)
    whole = report.churn_risk_list(read_table(path, schema), assignments)
    chunked = report.list_chunks(lambda: report.read_chunks(path, schema, rows=rows), assignments)
    pd.testing.assert_frame_equal(pd.concat(list(chunked), ignore_index=True), whole)

    list_schema = s.churn_risk_list_schema(False, True)
    one, many = tmp_path / "one", tmp_path / "many"
    one.mkdir(), many.mkdir()
    headers = report.list_headers(90, 12, "GBP")
    tally = report.write_list([whole], one, headers=headers, schema=list_schema, top=25)
    monkeypatch.setattr(report, "WRITE_CHUNK_ROWS", max(rows, 3))
    monkeypatch.setattr(report, "CSV_CHUNK_ROWS", 5)
    chunks = report.list_chunks(lambda: report.read_chunks(path, schema, rows=rows), assignments)
    streamed = report.write_list(chunks, many, headers=headers, schema=list_schema, top=25)
    assert (many / report.LIST_CSV).read_bytes() == (one / report.LIST_CSV).read_bytes()
    assert pd.read_parquet(many / report.LIST_PARQUET).equals(pd.read_parquet(one / report.LIST_PARQUET))
    assert (streamed.customers, streamed.contacts) == (tally.customers, tally.contacts) == (397, 6)
    assert streamed.value_at_risk == pytest.approx(whole[s.VALUE_AT_RISK].sum(), rel=1e-12)
    assert streamed.expected_net_value == pytest.approx(whole[s.NET_VALUE].iloc[:6].sum(), rel=1e-12)
    pd.testing.assert_frame_equal(streamed.top, whole.head(25))


def test_a_customer_scored_twice_is_one_line(tmp_path: Path, params: dict[str, Any]) -> None:
    """The list is read in chunks, so the scores' ids are checked for repeats over the whole file."""
    scores = synthetic_scores(params, dt.date(1998, 3, 2))
    doubled = pd.concat([scores, scores.iloc[[7]]], ignore_index=True)
    path, drift = tmp_path / "scores.parquet", tmp_path / "drift.parquet"
    doubled.to_parquet(path, index=False)
    write_table(synthetic_drift(dt.date(1998, 3, 2), shifted=False), drift, s.drift_schema())
    repeated = re.escape(repr(scores[s.CUSTOMER_ID].iloc[7]))
    with pytest.raises(InputError, match=rf"scores\.parquet: customer {repeated} is scored on more than one row"):
        run_report(tmp_path, params, path, drift)
    assert not (tmp_path / "weekly").exists()


def test_the_change_since_the_previous_week_counts_what_the_two_lists_hold(
    tmp_path: Path, params: dict[str, Any]
) -> None:
    """DuckDB over the two list files counts what set operations on the two lists in memory count."""
    before = report.churn_risk_list(synthetic_scores(params, dt.date(1998, 2, 23), seed=1).iloc[40:])
    now = report.churn_risk_list(synthetic_scores(params, dt.date(1998, 3, 2), seed=2).iloc[:-25])
    paths = {}
    for name, frame in (("before", before), ("now", now)):
        paths[name] = tmp_path / f"{name}.parquet"
        write_table(frame, paths[name], s.churn_risk_list_schema(False))
    change = report.compare_lists(paths["now"], paths["before"], top=10, memory_limit_mb=256)

    b, n = before.set_index(s.CUSTOMER_ID), now.set_index(s.CUSTOMER_ID)
    common = n.index.intersection(b.index)
    into_high = common[(n.loc[common, s.RISK_TIER] == "high") & (b.loc[common, s.RISK_TIER] != "high")]
    counted = (len(n.index.difference(b.index)), len(b.index.difference(n.index)), len(common))
    assert (change.new, change.gone, change.common) == counted and min(counted) > 0
    assert change.moved == int((n.loc[common, s.SEGMENT] != b.loc[common, s.SEGMENT]).sum()) > 0
    assert change.into_high == len(into_high) > 10
    top = n.loc[into_high].sort_values([s.VALUE_AT_RISK, s.RANK], ascending=[False, True]).head(10)
    assert change.risers[s.CUSTOMER_ID].tolist() == top.index.tolist()
    np.testing.assert_array_equal(change.risers["p_churn before"], b.loc[top.index, s.P_CHURN])
    np.testing.assert_array_equal(change.risers[s.VALUE_AT_RISK], top[s.VALUE_AT_RISK])
