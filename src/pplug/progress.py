"""Progress bars with ETA for every long step (encode, train, predict, bench stages), off with ``--quiet``.

One process-wide switch, set by the CLI's ``--quiet`` (or ``PPLUG_QUIET=1`` for child processes); bars go to
stderr so JSON on stdout stays clean.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Collection, Iterator
from typing import Any

_QUIET = False


def set_quiet(quiet: bool) -> None:
    """Turn every pplug progress bar off (True) or on (False) in this process and its pplug children."""
    global _QUIET
    _QUIET = quiet
    if quiet:
        os.environ["PPLUG_QUIET"] = "1"
        try:  # the model loaders' "Loading weights" bars too (asked for by --quiet, never on import)
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        except ImportError:
            pass
    else:
        os.environ.pop("PPLUG_QUIET", None)
        if "transformers" in sys.modules:
            from transformers.utils import logging as hf_logging

            hf_logging.enable_progress_bar()


def enabled() -> bool:
    """Whether progress bars are shown."""
    return not (_QUIET or os.environ.get("PPLUG_QUIET") == "1")


def bar(total: int | None = None, desc: str = "", unit: str = "it", **kwargs: Any):
    """A tqdm bar (rate and ETA) on stderr, disabled when quiet."""
    from tqdm.auto import tqdm

    kwargs.setdefault("disable", not enabled())
    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, **kwargs)


def batches(n: int, size: int, desc: str) -> Iterator[int]:
    """Start indices ``0, size, 2*size, ... < n`` while a bar counts the ``n`` items (left off screen when done)."""
    size = max(1, size)
    quiet = not enabled() or n <= size  # one batch (e.g. a single request): no bar, no overhead
    with bar(total=n, desc=desc, unit="q", leave=False, disable=quiet) as progress:
        for start in range(0, n, size):
            yield start
            progress.update(min(size, n - start))


def bar_items(items: Collection[Any], desc: str) -> Iterator[Any]:
    """Iterate ``items`` under a bar (left off screen when done)."""
    with bar(total=len(items), desc=desc, leave=False, disable=not enabled() or len(items) <= 1) as progress:
        for item in items:
            yield item
            progress.update(1)
