"""Micro-batching: concurrent generate requests from different users share one backbone call.

One asyncio worker takes the first waiting request, gathers more for up to ``window_ms`` (counted from
when that first request arrived) or until ``max_batch_size``, groups them by key (task + decoding
options, since a backbone call shares one decode config), runs each group in the model thread and
resolves the requests' futures. ``max_batch_size=1`` turns batching off.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from pplug.server.metrics import Metrics

log = logging.getLogger("pplug.server")
RunBatch = Callable[[Hashable, list[Any]], list[Any]]  # (key, payloads) -> one result per payload; blocking


class QueueFull(RuntimeError):
    """More requests are waiting than the server accepts (answer 503)."""


@dataclass
class Job:
    key: Hashable  # jobs with equal keys may share a backbone call
    payload: Any
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    """Collects jobs into batches and runs them one batch at a time on ``executor``.

    Args:
        run_batch: blocking function run in ``executor`` with (key, payloads of one group).
        executor: where model work runs (a single thread: torch and tokenizers are not async).
        window_ms: how long to wait for more jobs after the first one arrived (0 = take only what waits).
        max_batch_size: jobs per batch (1 = batching off).
        max_queue: waiting jobs beyond this are refused with ``QueueFull``.
        metrics: records batch sizes, backbone seconds and queue waits.
    """

    def __init__(self, run_batch: RunBatch, executor: Executor, window_ms: float, max_batch_size: int,
                 max_queue: int = 256, metrics: Metrics | None = None):
        self.run_batch, self.executor, self.metrics = run_batch, executor, metrics
        self.window, self.max_batch_size, self.max_queue = window_ms / 1000, max_batch_size, max_queue
        self._queue: asyncio.Queue[Job] | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._worker(), name="pplug-batcher")

    async def stop(self) -> None:
        """Stop the worker; jobs still waiting fail with RuntimeError."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        while self._queue is not None and not self._queue.empty():
            job = self._queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(RuntimeError("the server is shutting down"))

    async def submit(self, key: Hashable, payload: Any) -> tuple[Any, int]:
        """Queue one job and wait for it.

        Returns:
            (its result, the size of the batch it ran in).

        Raises:
            QueueFull: too many jobs are waiting.
            Exception: whatever ``run_batch`` raised for its batch.
        """
        if self._queue is None or self._task is None or self._task.done():
            raise RuntimeError("the batcher is not running")
        if self._queue.qsize() >= self.max_queue:
            raise QueueFull(f"{self._queue.qsize()} requests are waiting (max_queue={self.max_queue}); retry later")
        job = Job(key, payload, asyncio.get_running_loop().create_future())
        self._queue.put_nowait(job)
        return await job.future

    async def _collect(self) -> list[Job]:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        first = await self._queue.get()
        batch = [first]
        deadline = loop.time() + self.window - (time.perf_counter() - first.enqueued)
        while len(batch) < self.max_batch_size:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return batch

    async def _run(self, key: Hashable, jobs: list[Job]) -> None:
        jobs = [j for j in jobs if not j.future.done()]  # clients that went away
        if not jobs:
            return
        t0 = time.perf_counter()
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self.executor, self.run_batch, key, [j.payload for j in jobs])
            if len(results) != len(jobs):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(jobs)} requests")
        except Exception as e:  # the batch fails, the server does not
            for j in jobs:
                if not j.future.done():
                    j.future.set_exception(e)
            return
        if self.metrics is not None:
            self.metrics.observe_batch(len(jobs), time.perf_counter() - t0, [t0 - j.enqueued for j in jobs])
        for j, r in zip(jobs, results, strict=True):  # lengths checked above
            if not j.future.done():
                j.future.set_result((r, len(jobs)))

    async def _worker(self) -> None:
        while True:
            batch = await self._collect()
            groups: dict[Hashable, list[Job]] = {}
            for job in batch:
                groups.setdefault(job.key, []).append(job)
            for key, jobs in groups.items():
                try:
                    await self._run(key, jobs)
                except Exception as e:  # never let the worker die; fail only this group
                    log.exception("batch failed")
                    for j in jobs:
                        if not j.future.done():
                            j.future.set_exception(e)
