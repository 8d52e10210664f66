"""Devices and precision: the one place that turns the config's ``device`` and ``*.dtype`` names into torch.

    device = resolve_device("auto")            # cuda if available, else mps, else cpu
    check_dtype(device, "bfloat16", "backbone.dtype")   # a clear one-line error where it cannot run
    with autocast(device, "bfloat16"):          # the trainable parts compute in bf16, weights stay float32
        soft = plug(query, hist, mask)

Precision policy (see docs/devices.md): the frozen backbone and history encoder are *stored and run* in
``backbone.dtype`` / ``encoder.dtype``; the trainable parts (persona plug, trainable input encoder) keep
float32 master weights (AdamW updates them in float32) and *compute* in ``plug.dtype`` under
``torch.autocast``. float16 is refused for the trainable parts: it would need loss scaling.
"""

from __future__ import annotations

import re
from contextlib import AbstractContextManager, nullcontext

import torch

from pplug.errors import PPlugError

DEVICE_KINDS = ("auto", "cpu", "cuda", "mps")  # plus an index: cuda:1
DTYPES = ("float32", "bfloat16", "float16", "float64")
TRAINABLE_DTYPES = ("float32", "bfloat16")  # plug.dtype: compute dtype of the trained parts (no loss scaling)
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda)(:\d+)?$")


class DeviceError(PPlugError):
    """The configured device or dtype cannot be used on this machine; the message names the field."""


def device_problem(name: str) -> str | None:
    """None when ``name`` is a device spelling pplug accepts (auto | cpu | cuda | cuda:N | mps), else why not.

    Only the spelling is checked here (a config written on a GPU machine stays loadable on a laptop);
    `resolve_device` checks that the device exists.
    """
    if _DEVICE.match(name) and not name.startswith(("auto:", "cpu:")):
        return None
    return f"{name!r} is not a device: use auto, cpu, cuda, cuda:N or mps"


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(name: str = "auto") -> torch.device:
    """The torch device for a config's ``device``.

    Args:
        name: ``auto`` (cuda if available, else mps, else cpu), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.

    Returns:
        a concrete device (``cuda`` becomes ``cuda:0``, so every tensor compares equal to it).

    Raises:
        DeviceError: a bad spelling, or a device this machine does not have.
    """
    if problem := device_problem(name):
        raise DeviceError(f"device: {problem}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device: '{name}' was asked for but this machine has no CUDA GPU usable by torch "
                              f"(torch {torch.__version__}); use --device cpu or auto")
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise DeviceError(f"device: '{name}' does not exist; this machine has {torch.cuda.device_count()} "
                              f"CUDA device(s): cuda:0..cuda:{torch.cuda.device_count() - 1}")
        return torch.device("cuda", index)
    if device.type == "mps" and not _mps_available():
        raise DeviceError("device: 'mps' was asked for but the Apple MPS backend is not available here; "
                          "use --device cpu or auto")
    return device


def torch_dtype(name: str) -> torch.dtype:
    """``"bfloat16"`` -> ``torch.bfloat16``; raises DeviceError for a name that is not a float dtype."""
    dtype = getattr(torch, name, None) if name in DTYPES else None
    if not isinstance(dtype, torch.dtype):
        raise DeviceError(f"unknown dtype {name!r}; use one of {', '.join(DTYPES)}")
    return dtype


def check_dtype(device: torch.device, name: str, field: str) -> torch.dtype:
    """The dtype ``name`` of config field ``field`` if ``device`` can compute in it, else a clear error.

    Rules: float16 needs a GPU (CPU kernels are missing or slow; use bfloat16 there); bfloat16 on CUDA needs
    a GPU that supports it (Ampere or newer); MPS has no float64.

    Raises:
        DeviceError: e.g. ``backbone.dtype: float16 is not supported on cpu; use bfloat16 or float32``.
    """
    dtype = torch_dtype(name)
    if dtype == torch.float16 and device.type == "cpu":
        raise DeviceError(f"{field}: float16 is not supported on cpu; use bfloat16 or float32 "
                          f"(or a GPU: --device cuda)")
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise DeviceError(f"{field}: bfloat16 is not supported by {torch.cuda.get_device_name(device)}; "
                          f"use float16 or float32")
    if dtype == torch.float64 and device.type == "mps":
        raise DeviceError(f"{field}: float64 is not supported on mps; use float32")
    return dtype


def autocast(device: torch.device, name: str) -> AbstractContextManager:
    """``torch.autocast`` to dtype ``name`` on ``device``; a no-op for float32 (or a wider dtype)."""
    dtype = torch_dtype(name)
    if dtype in (torch.float32, torch.float64):
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def dtype_fields(name: str) -> dict[str, str]:
    """What one ``--dtype`` sets: the frozen backbone and encoders store/compute in ``name``; the trained parts
    compute in it under autocast when they can (bfloat16), else in float32 (float16 would need loss scaling)."""
    torch_dtype(name)  # a clear error for an unknown name
    return {"backbone.dtype": name, "encoder.dtype": name,
            "plug.dtype": name if name in TRAINABLE_DTYPES else "float32"}


def check_run(config) -> torch.device:
    """Resolve ``config.device`` and check every dtype field of a RunConfig on it, before any model loads.

    Returns:
        the resolved device.

    Raises:
        DeviceError: the device does not exist here or cannot compute in one of the dtypes (field named).
    """
    device = resolve_device(config.device)
    for field, name in (("backbone.dtype", config.backbone.dtype), ("encoder.dtype", config.encoder.dtype),
                        ("plug.dtype", config.plug.dtype)):
        check_dtype(device, name, field)
    return device
