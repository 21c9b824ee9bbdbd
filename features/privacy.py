"""Pseudonymous customer ids for exports: a keyed hash that only the key's holder can link back to a customer."""

from __future__ import annotations

import hashlib
import hmac

import pandas as pd

from features.errors import InputError

MIN_KEY_CHARS = 16
MIN_DISTINCT_KEY_CHARS = 8  # "aaaaaaaaaaaaaaaa" is 16 characters and no secret
PREFIX = "p_"
HEX_CHARS = 24  # 96 bits: among 100 million ids the chance of any two colliding is below 1e-12


def pseudonym(customer_id: str, key: str) -> str:
    """``p_`` and the first 24 hex digits of HMAC-SHA256(key, customer id): stable per key, not reversible."""
    digest = hmac.new(key.encode("utf-8"), customer_id.encode("utf-8"), hashlib.sha256).hexdigest()
    return PREFIX + digest[:HEX_CHARS]


def check_key(key: str) -> None:
    """An error unless ``key`` looks like a secret: 16+ characters, 8+ different ones, no blank at either end.

    Whitespace at an end is nearly always a copying slip, and the CRM's hashes would then not match the list's.
    """
    if len(key) < MIN_KEY_CHARS:
        raise InputError(
            f"the pseudonymisation key must have at least {MIN_KEY_CHARS} characters, got {len(key)}; "
            "use a long random secret"
        )
    if key != key.strip():
        raise InputError(
            "the pseudonymisation key starts or ends with whitespace (a copying slip?); remove it, or use another "
            "secret"
        )
    if len(set(key)) < MIN_DISTINCT_KEY_CHARS:
        raise InputError(
            f"the pseudonymisation key has only {len(set(key))} different character(s); use a random secret with at "
            f"least {MIN_DISTINCT_KEY_CHARS} (e.g. `openssl rand -hex 16`)"
        )


def pseudonymise(ids: pd.Series, key: str) -> pd.Series:
    """Every id replaced by its pseudonym; an error if the key is too short or two ids would collide."""
    check_key(key)
    out = ids.astype(str).map(lambda v: pseudonym(v, key))
    if out.nunique() != ids.nunique():  # pragma: no cover - 96 bits; checked, not expected
        raise InputError("two customer ids hash to the same pseudonym; use another key")
    return out
