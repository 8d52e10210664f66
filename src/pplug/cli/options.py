"""Shared CLI option helpers: defaults shown in ``--help`` from the config dataclasses, the quiet switch."""

from __future__ import annotations

from dataclasses import MISSING, fields
from typing import Annotated, Any

import typer

QuietOpt = Annotated[bool, typer.Option("--quiet/--progress", "-q", metavar="",
                                        help="Hide progress bars (they go to stderr; JSON results go to stdout).")]


def default_of(section: type, name: str) -> str:
    """The config default of ``section.name`` as ``--help`` shows it (e.g. ``2``, ``smollm2-135m``)."""
    f = next(f for f in fields(section) if f.name == name)
    value: Any = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
    if value is None:
        return "none"
    return str(value).lower() if isinstance(value, bool) else str(value)


def apply_quiet(quiet: bool) -> None:
    """Switch progress bars off for this command when ``--quiet`` was given (the global flag also counts)."""
    if quiet:
        from pplug.progress import set_quiet

        set_quiet(True)


DeviceOpt = Annotated[str | None, typer.Option(help="Where models run: auto (cuda, else mps, else cpu), cpu, cuda, "
                                                    "cuda:N or mps (sets the config's `device`).",
                                               show_default="the run's config: auto")]
DtypeOpt = Annotated[str | None, typer.Option(help="Precision: float32, bfloat16 or float16 (GPU) for the backbone "
                                                   "and encoder weights; the trained plug keeps float32 weights and "
                                                   "computes in bfloat16 under autocast (float32 with float16). "
                                                   "Fine-grained: --set backbone.dtype=... (docs/devices.md).",
                                              show_default="the run's config: float32")]


def device_overrides(device: str | None, dtype: str | None) -> list[str]:
    """``--device``/``--dtype`` as ``--set`` assignments (applied before the user's own ``--set``)."""
    from pplug.devices import dtype_fields

    out = [f"device={device}"] if device is not None else []
    return out + ([f"{k}={v}" for k, v in dtype_fields(dtype).items()] if dtype is not None else [])
