"""Rate limits (per tenant, and per client address for failed key checks) on the ``limits`` library.

A limit is a string like ``"600/minute"`` or ``"10/second;600/hour"``; ``""`` turns it off. Counts live in a
``limits`` storage: ``memory://`` (this process) by default, or a shared one (``redis://...``) so that
replicas enforce one budget together. A refused hit carries the seconds until the window frees a slot
(the ``Retry-After`` header of the 429).
"""

from __future__ import annotations

import math
import time

from limits import RateLimitItem, parse_many
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter


def parse_limit(spec: str, name: str = "rate limit") -> list[RateLimitItem]:
    """The limits of ``spec`` (``[]`` for ``""``); a ValueError naming ``name`` when it does not parse."""
    if not spec.strip():
        return []
    try:
        return parse_many(spec)
    except ValueError:
        raise ValueError(f"{name}: cannot parse '{spec}' (write e.g. '600/minute' or '10/second;600/hour')") from None


class RateLimiter:
    """A moving-window limiter for one kind of key (tenant ids, client addresses).

    Args:
        spec: the limit string (``""`` = never refuse).
        storage: a ``limits`` storage URI.
        scope: a namespace, so two limiters can share one storage.
    """

    def __init__(self, spec: str, storage: str = "memory://", scope: str = "pplug"):
        self.items = parse_limit(spec)
        self.scope = scope
        self._limiter = MovingWindowRateLimiter(storage_from_string(storage)) if self.items else None

    def hit(self, key: str) -> int | None:
        """Count one request for ``key``; returns None when allowed, else the seconds to wait (>= 1)."""
        if self._limiter is None:
            return None
        for item in self.items:
            if not self._limiter.hit(item, self.scope, key):
                reset = self._limiter.get_window_stats(item, self.scope, key).reset_time
                return max(1, math.ceil(reset - time.time()))
        return None
