"""Cooperative cancellation of a long model call: the caller says when to stop, ``generate`` listens.

The server runs a batch with ``stop_when(check)`` around it (in the model thread); the backbones pass
``stopping_criteria()`` to ``transformers`` ``generate``, which then ends after the current decoding step
once ``check()`` is true (every request of the batch timed out or its client went away). Outside
``stop_when`` nothing changes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

_local = threading.local()


@contextmanager
def stop_when(check: Callable[[], bool]) -> Iterator[None]:
    """Within this block (this thread only), model calls stop early once ``check()`` returns True."""
    old = getattr(_local, "check", None)
    _local.check = check
    try:
        yield
    finally:
        _local.check = old


def should_stop() -> bool:
    check = getattr(_local, "check", None)
    return bool(check is not None and check())


def stopping_criteria() -> Any:
    """A ``transformers`` StoppingCriteriaList that ends generation once ``should_stop()`` (None outside
    ``stop_when``)."""
    if getattr(_local, "check", None) is None:
        return None
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _Stop(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
            return torch.full((input_ids.shape[0],), should_stop(), dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([_Stop()])
