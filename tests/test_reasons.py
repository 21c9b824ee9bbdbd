"""Churn reasons as a marketer reads them on the weekly list: each one a risk, compared with a typical value that
says something, with its unit.

``list_faults`` counts what a reader of ``churn_risk.csv`` would object to. The end-to-end test
(``tests/test_end_to_end.py``) applies it to the list the real stages write on the CDNOW sample; here it is
checked on texts whose faults are known, among them the ones a new user found on CDNOW.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd
import pytest

from features import schemas as s
from features.errors import InputError
from models import churn as cm

TYPICAL = re.compile(r"^(?P<head>.*) \(typical(?: of those who stayed)?: (?P<typical>[^()]*)\)$")
# "recency in the bottom 40% of customers: ..." (an RFM rule's part): a rank, not the customer's value
RULE_PREFIX = re.compile(r"^\w+ in the bottom \d+% of customers: ")
# a window's length is part of the sentence, not a value of the customer
WINDOW = re.compile(r"\bthe (?:last|next) \d+(?: days)?")
UNIT = r"(?:%| days a year| days?\b| times\b| purchases\b)"
NUMBER = r"[-+]?\d[\d,]*(?:\.\d+)?"


def quantities(text: str, currency: str) -> list[str]:
    """The values a text prints, each with its unit (or bare, where it has none)."""
    money = rf"{re.escape(currency)} {NUMBER}"
    return re.findall(rf"{money}|{NUMBER}{UNIT}?", text)


def unitless(text: str, currency: str) -> list[str]:
    """The numbers of ``text`` printed with no unit."""
    money = rf"{re.escape(currency)} {NUMBER}"
    return [q for q in re.findall(rf"{money}|{NUMBER}{UNIT}?", text) if re.fullmatch(NUMBER, q)]


def list_faults(listed: pd.DataFrame, medium_risk: float, currency: str, no_unit: Sequence[str] = ()) -> dict[str, int]:
    """Counts of the reasons on a weekly list (``churn_risk.csv`` read as text) that a reader would object to.

    ``equal_to_typical``: the customer's value prints as the typical value ("USD 0.00 (typical: USD 0.00)").
    ``below_medium_risk``: a risk reason for a customer below the medium risk tier (``NO_WARNING`` is not one).
    ``without_unit``: a value or typical value printed as a bare number, but in the reasons of a feature with no
    unit (an attribute: names starting with ``no_unit``).
    """
    counts = {"equal_to_typical": 0, "below_medium_risk": 0, "without_unit": 0}
    p = listed[s.P_CHURN].astype("float64").to_numpy()
    for column in s.REASONS:
        texts = listed[column]
        given = texts.notna().to_numpy()
        risk = given & (texts.fillna("") != cm.NO_WARNING).to_numpy()
        counts["below_medium_risk"] += int((risk & (p < medium_risk)).sum())
        for text in texts[risk]:
            parsed = TYPICAL.match(text)
            head = WINDOW.sub("", RULE_PREFIX.sub("", parsed["head"] if parsed else text))
            if parsed and parsed["typical"] in quantities(head, currency):
                counts["equal_to_typical"] += 1
            typical = parsed["typical"] if parsed else ""
            if not text.startswith(tuple(no_unit)) and unitless(f"{head} {typical}", currency):
                counts["without_unit"] += 1
    return counts


def reason_counts(listed: pd.DataFrame) -> dict[int, int]:
    """How many customers have 0, 1, 2 and 3 risk reasons (``NO_WARNING`` and ``NO_SINGLE_SIGN`` count as none)."""
    risk = [(listed[c].notna() & ~listed[c].isin([cm.NO_WARNING, cm.NO_SINGLE_SIGN])).to_numpy() for c in s.REASONS]
    per_customer = np.sum(risk, axis=0)
    return {k: int((per_customer == k).sum()) for k in range(len(s.REASONS) + 1)}


def test_the_faults_a_new_user_found_are_counted() -> None:
    listed = pd.DataFrame(
        {
            s.P_CHURN: ["0.91", "0.85", "0.04", "0.20", "0.55"],
            "reason_1": [
                "spent 0.00 in the last 180 days (typical: 0.00)",  # equal, and no currency
                "last purchase at customer age 47.3 (typical: 0.0)",  # no unit
                "buys every 4 days on average (typical: 70)",  # below the medium tier; no unit
                cm.NO_WARNING,
                "no purchase for 200 days (typical of those who stayed: 40 days)",
            ],
            "reason_2": [
                "spent USD 0.00 in the last 180 days (typical of those who stayed: USD 0.00)",  # equal
                None,
                "average repeat order 201.81 (typical: 0.00)",  # below the medium tier; no unit
                None,
                "recency in the bottom 40% of customers: no purchase for 200 days (typical of those who stayed: "
                "40 days)",
            ],
            "reason_3": [
                "only 20% of their spend in the last 180 days came in the last 90 (typical of those who stayed: 20%)",
                None,
                None,
                None,
                "survey nps latest 3 (typical of those who stayed: 8)",  # an attribute: no unit applies
            ],
        }
    )
    assert list_faults(listed, 0.4, "USD", no_unit=["survey "]) == {
        "equal_to_typical": 3,
        "below_medium_risk": 2,
        "without_unit": 4,
    }
    assert reason_counts(listed) == {0: 1, 1: 1, 2: 1, 3: 2}


def guide(typical: dict[str, float], medium_risk: float = 0.4) -> cm.ReasonGuide:
    return cm.ReasonGuide(typical, typical, medium_risk=medium_risk, currency="USD", horizon_days=90)


def test_a_concept_pushing_up_gives_the_text_of_its_feature_that_reads_as_a_risk() -> None:
    # Four customers, TreeSHAP contributions by hand. Silence: days since the last purchase and its rank add up.
    names = [
        s.DAYS_SINCE_LAST_PURCHASE,
        s.DAYS_SINCE_LAST_PURCHASE + cm.RANK_SUFFIX,
        s.GAP_STD_DAYS,
        "spend_180d",
        s.TOTAL_SPEND,
    ]
    X = pd.DataFrame(
        [
            [200.0, 0.9, 21.0, 0.0, 80.0],  # silent long; steadier than typical; spent nothing lately
            [30.0, 0.2, 60.0, 10.0, 500.0],  # silent less than typical: the silence push gives no text
            [200.0, 0.9, 60.0, 40.0, 80.0],
            [200.0, 0.9, 60.0, 0.0, 80.0],  # below the medium tier
        ],
        columns=names,
    )
    contrib = pd.DataFrame(
        [
            [0.1, 0.5, 0.4, 0.3, -0.2],
            [0.3, 0.3, -0.1, 0.2, -0.1],
            [-0.2, 0.1, 0.5, 0.0, 0.2],  # silence sums to -0.1: no silence reason despite the long silence
            [0.1, 0.5, 0.4, 0.3, 0.1],
        ],
        columns=names,
    ).assign(bias=-1.0)
    typical = {s.DAYS_SINCE_LAST_PURCHASE: 40.0, s.GAP_STD_DAYS: 49.0, "spend_180d": 35.0, s.TOTAL_SPEND: 250.0}
    out = cm.top_reasons(contrib, X, guide(typical), p_churn=[0.9, 0.8, 0.7, 0.2]).fillna("-")
    assert out.values.tolist() == [
        [
            "no purchase for 200 days (typical of those who stayed: 40 days)",  # silence: 0.6
            "spent USD 0.00 in the last 180 days (typical of those who stayed: USD 35.00)",  # 0.3 (spread: no)
            "-",  # spend pushes down
        ],
        [
            "spent USD 10.00 in the last 180 days (typical of those who stayed: USD 35.00)",  # silence 0.6: no text
            "-",
            "-",
        ],
        [
            "irregular buyer: gaps between purchases vary by 60 days (typical of those who stayed: 49 days)",
            "total spend USD 80.00 (typical of those who stayed: USD 250.00)",
            "-",
        ],
        [cm.NO_WARNING, "-", "-"],
    ]
    assert list_faults(out.replace("-", None).assign(p_churn=[0.9, 0.8, 0.7, 0.2]), 0.4, "USD") == {
        "equal_to_typical": 0,
        "below_medium_risk": 0,
        "without_unit": 0,
    }


def test_typical_values_are_of_those_who_stayed() -> None:
    frame = pd.DataFrame(
        {
            s.DAYS_SINCE_LAST_PURCHASE: [10, 20, 30, 300, 400],
            s.GAP_MEAN_DAYS: [15.0, np.nan, 25.0, np.nan, np.nan],  # nobody who churned bought twice
            s.CUSTOMER_ID: list("abcde"),
        }
    )
    medians = cm.typical_values(frame, [False, False, False, True, True])
    assert medians["stayed"] == {s.DAYS_SINCE_LAST_PURCHASE: 20.0, s.GAP_MEAN_DAYS: 20.0}
    assert medians["churned"][s.DAYS_SINCE_LAST_PURCHASE] == 350.0 and np.isnan(medians["churned"][s.GAP_MEAN_DAYS])
    with pytest.raises(ValueError, match="4 labels for 5 rows"):
        cm.typical_values(frame, [False, False, True, True])
    with pytest.raises(InputError, match="both customers who stayed and customers who churned"):
        cm.typical_values(frame, [False] * 5)
    with pytest.raises(InputError, match=r"x\.json: no typical value of feature\(s\) \['tenure_days'\]"):
        guide(medians["stayed"]).check([s.DAYS_SINCE_LAST_PURCHASE, s.TENURE_DAYS], "x.json")
