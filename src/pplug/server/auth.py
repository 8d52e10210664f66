"""API keys: random bearer tokens, stored only as sha256 hashes, each owned by one tenant."""

from __future__ import annotations

import hashlib
import secrets

KEY_PREFIX = "pplug-"


def new_key() -> str:
    """A fresh API key (256 random bits); shown once, never stored."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """sha256 hex of a key. A plain hash suffices: keys are random, not passwords."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()

