"""The dev questions that choose a trained run's "auto" decoding weights (label prior/shift, vocabulary prior).

One frame for every "auto" weight: the first ``decode.tune_limit`` dev questions (None = all), each answered
with its user's own history. ``decode.swap_history`` is a prediction-time diagnostic of a trained run, never
part of its training or tuning, so it is off while the weights are chosen and restored afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pplug.data.records import Split


@contextmanager
def tuning_dev(decode: Any, dev: Split) -> Iterator[Split]:
    """Yield ``dev`` limited to ``decode.tune_limit`` with ``decode.swap_history`` off; restore it on exit."""
    swap, decode.swap_history = decode.swap_history, False
    try:
        yield dev.limit(decode.tune_limit)
    finally:
        decode.swap_history = swap
