"""Pseudonymous customer ids for exports: a keyed hash that only the key's holder can link back to a customer."""

from __future__ import annotations

import hashlib
import hmac

import pandas as pd

from features.errors import InputError

MIN_KEY_CHARS = 16
PREFIX = "p_"
HEX_CHARS = 24  # 96 bits: among 100 million ids the chance of any two colliding is below 1e-12


def pseudonym(customer_id: str, key: str) -> str:
    """``p_`` and the first 24 hex digits of HMAC-SHA256(key, customer id): stable per key, not reversible."""
    digest = hmac.new(key.encode("utf-8"), customer_id.encode("utf-8"), hashlib.sha256).hexdigest()
    return PREFIX + digest[:HEX_CHARS]


def pseudonymise(ids: pd.Series, key: str) -> pd.Series:
    """Every id replaced by its pseudonym; an error if the key is too short or two ids would collide."""
    if len(key) < MIN_KEY_CHARS:
        raise InputError(
            f"the pseudonymisation key must have at least {MIN_KEY_CHARS} characters, got {len(key)}; "
            "use a long random secret"
        )
    out = ids.astype(str).map(lambda v: pseudonym(v, key))
    if out.nunique() != ids.nunique():  # pragma: no cover - 96 bits; checked, not expected
        raise InputError("two customer ids hash to the same pseudonym; use another key")
    return out
