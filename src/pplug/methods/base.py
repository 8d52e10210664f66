"""The one interface every method implements, and the method registry.

A method is fitted on a train split (selecting on dev), predicts questions, and saves/loads its own
state under a run folder. The CLI and the benchmark use only this interface.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pplug.data.records import Question, Split
from pplug.errors import PPlugError


@dataclass
class Prediction:
    id: str  # question id
    output: str  # parsed prediction (label / rating / text)
    raw: str = ""  # the raw model output
    explanation: list[dict[str, Any]] = field(default_factory=list)  # e.g. top history items with weights
    prompt_tokens: int = 0  # tokens the backbone saw (soft tokens included)
    label_scores: dict[str, float] | None = None  # rank decoding: label -> LLM-only log-prob (before any prior)


class Method(Protocol):
    name: str

    def fit(self, train: Split, dev: Split | None, run_dir: Path) -> dict[str, Any]:
        """Train (if the method trains) and save the state into ``run_dir``; returns a training report."""
        ...

    def predict(self, questions: Sequence[Question]) -> list[Prediction]:
        """Predictions for questions, in order."""
        ...

    def load(self, run_dir: Path) -> None:
        """Load the state saved by ``fit`` from ``run_dir``."""
        ...

    def save(self, run_dir: Path) -> None:
        """Write the method's weights (never the backbone) into ``run_dir`` so ``load`` can read them back."""
        ...


MethodBuilder = Callable[..., Method]
_METHODS: dict[str, MethodBuilder] = {}


def register_method(name: str) -> Callable[[MethodBuilder], MethodBuilder]:
    """Decorator registering a method builder ``(config, resources) -> Method``; refuses duplicates."""

    def deco(builder: MethodBuilder) -> MethodBuilder:
        if name in _METHODS:
            raise ValueError(f"method '{name}' is already registered")
        _METHODS[name] = builder
        return builder

    return deco


def method_builder(name: str) -> MethodBuilder:
    if name not in _METHODS:
        raise PPlugError(f"unknown method '{name}'; registered: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def method_names() -> list[str]:
    return sorted(_METHODS)
