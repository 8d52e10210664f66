"""The Python API: a trained run of any method behind one class.

    from pplug import PPlug

    model = PPlug.from_pretrained("runs/topic")           # a run folder made by `pplug train`
    pred = model.generate("Which category ...: a note about a concert", history=[
        {"id": "h1", "date": "2024-01-02", "text": "a gig last night", "category": "music"}])
    pred.output, pred.explanation                          # the answer and which past items shaped it
    model.save_pretrained("exported/topic")                # config.json + weights, reloadable

Every registered method (``pplug``, ``pplug-rag``, ``oppu``, ``task-lora``, ``rag-bm25``, ``zero-shot``, ...)
works the same way: the run folder's ``config.json`` names the method, its weights sit beside it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pplug.config import RunConfig
from pplug.data.lamp import parse_item
from pplug.data.records import HistoryItem, Question
from pplug.errors import DataError
from pplug.methods import Method, Prediction
from pplug.resources import Resources
from pplug.runfiles import normalize_modes

__all__ = ["PPlug", "as_history", "as_question"]


def as_history(items: Sequence[HistoryItem | Mapping[str, Any]], where: str = "history") -> list[HistoryItem]:
    """History items from ``HistoryItem`` objects or plain dicts (``id``, optional ``date``, the task's fields).

    Raises:
        DataError: an item is not an object or has no ``id`` (the message names ``history[i]``).
    """
    out = []
    for i, item in enumerate(items):
        out.append(item if isinstance(item, HistoryItem) else parse_item(dict(item), Path(where), i, f"{where}[{i}]"))
    return out


def as_question(question: Question | Mapping[str, Any], index: int = 0) -> Question:
    """A ``Question`` from itself or a dict ``{"id"?, "input", "profile" | "history", "user_id"?}``."""
    if isinstance(question, Question):
        return question
    if not isinstance(question, Mapping) or not isinstance(question.get("input"), str):
        raise DataError("questions", "expected an object with a string 'input'", index, "input")
    history = question.get("profile", question.get("history", []))
    user = question.get("user_id")
    return Question(str(question.get("id", index)), question["input"], as_history(history, f"questions[{index}]"),
                    None if user is None else str(user))


class PPlug:
    """A trained personalization method (any registered kind) with its resolved config.

    Build it with `from_pretrained`; ``config`` is the run's ``RunConfig`` and ``method`` the underlying
    object implementing ``pplug.methods.Method``.
    """

    def __init__(self, config: RunConfig, method: Method, source: Path | None = None):
        self.config, self.method, self.source = config, method, source

    @classmethod
    def from_pretrained(cls, run_dir: str | Path, overrides: Sequence[str] | Mapping[str, Any] = (),
                        resources: Resources | None = None) -> PPlug:
        """Load a run folder (made by ``pplug train`` or `save_pretrained`); models load from local files only.

        Args:
            run_dir: the folder holding ``config.json`` and the method's weights.
            overrides: decoding/retrieval settings, the device and dtypes for this session, as
                ``["decode.num_beams=4"]`` or ``{"decode.classify": "rank", "device": "cuda"}`` (training
                settings cannot change after training).
            resources: share loaded backbones/encoders between several runs (default: a new one).

        Raises:
            PPlugError: the folder, its config or its weights are missing, or an override is not allowed.
        """
        from pplug.runner import load_run

        if isinstance(overrides, Mapping):
            overrides = [f"{k}={_json(v)}" for k, v in overrides.items()]
        config, method = load_run(run_dir, resources, overrides=list(overrides))
        return cls(config, method, Path(run_dir))

    @property
    def task(self) -> str:
        """The registered task this run was trained for."""
        return self.config.task

    @property
    def method_name(self) -> str:
        return self.config.method

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` and the method's weights into ``directory`` (reload with `from_pretrained`).

        Returns:
            the folder written.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.save(directory / "config.json")
        self.method.save(directory)
        normalize_modes(directory)
        return directory

    def predict(self, questions: Sequence[Question | Mapping[str, Any]]) -> list[Prediction]:
        """Predictions for many questions (``Question`` objects or dicts, see `as_question`), in order."""
        return self.method.predict([as_question(q, i) for i, q in enumerate(questions)])

    def generate(self, text: str, history: Sequence[HistoryItem | Mapping[str, Any]] = (),
                 user_id: str | None = None) -> Prediction:
        """One personalized output.

        Args:
            text: the task input as it appears in the task's data (LaMP inputs carry their instruction,
                e.g. ``"Generate a title for the following abstract of a paper: ..."``).
            history: the user's past items, oldest first: dicts with ``id``, optional ``date`` and the task's
                fields (``pplug tasks`` lists them), or ``HistoryItem`` objects.
            user_id: a stable user key (OPPU keeps one adapter per user); default: one anonymous user.

        Returns:
            a ``Prediction``: ``output`` (parsed answer), ``raw`` (model text), ``explanation`` (e.g. the
            history items with the largest aggregator weights).
        """
        return self.predict([Question("0", text, as_history(history), user_id)])[0]

    def __repr__(self) -> str:
        return f"PPlug(method={self.method_name!r}, task={self.task!r}, source={str(self.source)!r})"


def _json(value: Any) -> str:
    import json

    return json.dumps(value)

