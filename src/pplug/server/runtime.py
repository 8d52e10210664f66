"""The model side of the server: one loaded PPlug run per task on shared frozen resources.

Every function here is blocking and touches torch/tokenizers, so the app calls them only on its single
model thread.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pplug.config import RunConfig
from pplug.data.records import HistoryItem, Question
from pplug.errors import PPlugError
from pplug.methods import Prediction
from pplug.resources import Resources
from pplug.server.cost import Cost, TokenCounter
from pplug.server.store import Store
from pplug.tasks import Task

log = logging.getLogger("pplug.server")


def task_key(name: str) -> str:
    """Task names match case- and ``_``/``-``-insensitively (like the task registry)."""
    return name.replace("_", "-").lower()


@dataclass
class TaskModel:
    """One served task.

    Attributes:
        task: the task (item rendering, kind).
        method: the loaded PPlug method (``item_vectors``, ``predict(questions, vectors)``).
        config: the run's resolved config.
        space: embedding-space id = task + item template + encoder fingerprint; stored embeddings are
            only reused by a model with the same space.
        run: the run folder.
    """

    task: Task
    method: Any
    config: RunConfig
    space: str
    run: str
    count_tokens: TokenCounter | None = None  # input tokens, for the cost model (None: ~4 characters a token)

    def cost(self, text: str, max_new_tokens: int | None, num_beams: int | None) -> Cost:
        """The cost of generating for ``text`` with these options (the run's where None); blocking."""
        dec = self.config.decode
        tokens = self.count_tokens(text) if self.count_tokens is not None else max(1, -(-len(text) // 4))
        return Cost(tokens, num_beams or dec.num_beams, max_new_tokens or dec.new_tokens(self.task.kind))

    @property
    def max_history(self) -> int | None:
        """How many of the newest items the plug reads (``plug.max_history``; None = all)."""
        return self.config.plug.max_history or None

    def missing_fields(self, fields: dict[str, Any]) -> list[str]:
        return [f for f in self.task.item_fields if f not in fields]


def load_models(runs: list[str], resources: Resources, overrides: list[str] | None = None) -> dict[str, TaskModel]:
    """Load each run folder (one per task) on shared resources, keyed by ``task_key(task name)``.

    Args:
        overrides: runtime settings for every run (``device=cuda``, ``backbone.dtype=bfloat16``, ``decode.*``).
    """
    from pplug.runner import load_run

    models: dict[str, TaskModel] = {}
    for run in runs:
        config, method = load_run(run, resources, overrides=overrides)
        if not (hasattr(method, "item_vectors") and hasattr(method, "history_encoder")):
            raise PPlugError(f"{run}: method '{config.method}' cannot be served; serve pplug or pplug-rag runs")
        config.decode.swap_history = False
        task = method.task
        if task_key(task.name) in models:
            raise PPlugError(f"{run}: task '{task.name}' is already served by {models[task_key(task.name)].run}")
        digest = hashlib.sha256(f"{task.item_text}\n{method.history_encoder.name}".encode()).hexdigest()[:16]
        counter = TokenCounter(getattr(getattr(method, "backbone", None), "tokenizer", None))
        models[task_key(task.name)] = TaskModel(task, method, config, f"{task.name}@{digest}"[-128:], str(Path(run)),
                                                counter)
    if not models:
        raise PPlugError("no run to serve: pass --run RUN (a run folder made by `pplug train`)")
    return models


def encode_items(models: dict[str, TaskModel], items: list[HistoryItem]) -> list[dict[str, np.ndarray]]:
    """Each item's embedding in every served space ([d] float32; [0] where it lacks the task's fields)."""
    out: list[dict[str, np.ndarray]] = [{} for _ in items]
    for m in models.values():
        fit = [i for i, it in enumerate(items) if not m.missing_fields(it.fields)]
        vecs = m.method.item_vectors([items[i] for i in fit]).numpy() if fit else None  # [n_fit, d]
        for j, i in enumerate(fit):
            out[i][m.space] = np.array(vecs[j], dtype=np.float32)
        for i in set(range(len(items))) - set(fit):
            out[i][m.space] = np.zeros(0, dtype=np.float32)
    return out


def backfill(store: Store, models: dict[str, TaskModel], chunk: int = 256) -> int:
    """Embed stored items that have no embedding in a served space yet (a task added later); returns how many."""
    done = 0
    for m in models.values():
        while rows := store.items_missing(m.space, chunk):
            fit = [(pk, it) for pk, it in rows if not m.missing_fields(it.fields)]
            vecs = m.method.item_vectors([it for _, it in fit]).numpy() if fit else []
            by_pk = {pk: v for (pk, _), v in zip(fit, vecs, strict=True)}
            store.put_embeddings(m.space, [pk for pk, _ in rows], [by_pk.get(pk) for pk, _ in rows])
            done += len(rows)
    if done:
        log.info("backfilled %d item embeddings", done)
    return done


@dataclass(frozen=True)
class BatchKey:
    """What a batch shares: the task and the decoding options."""

    task: str
    max_new_tokens: int | None
    num_beams: int | None


def run_batch(models: dict[str, TaskModel], key: BatchKey,
              payloads: list[tuple[Question, torch.Tensor]]) -> list[tuple[Prediction, int]]:
    """One backbone call for a group of requests; each payload is (question, its profile's [n, d] vectors).

    Returns:
        per request: its prediction and the number of generated tokens.
    """
    m = models[key.task]
    method, old = m.method, m.method.config.decode
    dec = replace(old, batch_size=max(1, len(payloads)), swap_history=False,
                  max_new_tokens=key.max_new_tokens if key.max_new_tokens is not None else old.max_new_tokens,
                  num_beams=key.num_beams if key.num_beams is not None else old.num_beams)
    method.config.decode = dec  # safe: only the model thread runs this
    try:
        preds = method.predict([q for q, _ in payloads], [v for _, v in payloads])
    finally:
        method.config.decode = old
    tok = getattr(getattr(method, "backbone", None), "tokenizer", None)
    counts = [len(tok(p.raw, add_special_tokens=False)["input_ids"]) if tok is not None else 0 for p in preds]
    return list(zip(preds, counts, strict=True))


def profile_tensor(m: TaskModel, vecs: np.ndarray) -> torch.Tensor:
    """Stored profile embeddings as the [n, d] tensor ``predict`` takes ([0, d] for an empty history)."""
    if vecs.size == 0:
        return torch.zeros(0, m.method.history_encoder.dim)
    return torch.from_numpy(np.ascontiguousarray(vecs, dtype=np.float32))
