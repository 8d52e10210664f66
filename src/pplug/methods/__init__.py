"""Methods on one interface: ``pplug``, ``pplug-rag`` and the baselines. Importing this registers them all."""

from __future__ import annotations

import importlib

from pplug.methods.base import Method, Prediction, method_builder, method_names, register_method

_MODULES = ("pplug.methods.pplug", "pplug.methods.baselines", "pplug.methods.lora")

for _m in _MODULES:
    try:
        importlib.import_module(_m)
    except ModuleNotFoundError as e:  # a method module not written yet must not break the others
        if e.name != _m:
            raise

__all__ = ["Method", "Prediction", "build_method", "method_names", "register_method"]


def build_method(config, resources=None) -> Method:
    """Instantiate the method named by ``config.method`` on shared resources (per-kind defaults filled first)."""
    from pplug.kind_defaults import resolve_per_kind

    if config.task:
        resolve_per_kind(config)
    return method_builder(config.method)(config, resources)
