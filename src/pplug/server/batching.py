"""Micro-batching: concurrent generate requests from different users share one backbone call.

One asyncio worker takes the first waiting request, gathers more (round-robin over tenants) for up to
``window_ms`` (counted from when that first request arrived) or until ``max_batch_size``, groups them by
key (task + decoding options, since a backbone call shares one decode config), runs each group in the
model thread and resolves the requests' futures. ``max_batch_size=1`` turns batching off.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from pplug.cancel import stop_when
from pplug.server.metrics import Metrics

log = logging.getLogger("pplug.server")
RunBatch = Callable[[Hashable, list[Any]], list[Any]]  # (key, payloads) -> one result per payload; blocking


class QueueFull(RuntimeError):
    """More requests are waiting than the server accepts (answer 503)."""


class TenantQueueFull(QueueFull):
    """More of one tenant's requests are waiting than one tenant may queue (answer 429)."""


@dataclass(eq=False)  # jobs compare by identity (payloads hold tensors)
class Job:
    key: Hashable  # jobs with equal keys may share a backbone call
    payload: Any
    future: asyncio.Future
    tenant: Hashable = None  # whose job: the unit of fairness
    enqueued: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    """Collects jobs into batches and runs them one batch at a time on ``executor``, fairly across tenants.

    Waiting jobs sit in one FIFO queue per tenant; a batch takes one job from each waiting tenant in
    turn (round-robin, the turn carried over to the next batch), so a tenant with many queued requests
    cannot push another tenant's request back by more than one job per tenant per batch. A job whose
    caller gave up (timeout, client gone: its future is done) is dropped before it runs, and a running
    batch is told to stop (``pplug.cancel``) once all its callers gave up.

    Args:
        run_batch: blocking function run in ``executor`` with (key, payloads of one group).
        executor: where model work runs (a single thread: torch and tokenizers are not async).
        window_ms: how long to wait for more jobs after the first one arrived (0 = take only what waits).
        max_batch_size: jobs per batch (1 = batching off).
        max_queue: waiting jobs beyond this are refused with ``QueueFull``.
        metrics: records batch sizes, backbone seconds and queue waits.
        max_per_tenant: one tenant's waiting jobs beyond this are refused with ``TenantQueueFull``.
    """

    def __init__(self, run_batch: RunBatch, executor: Executor, window_ms: float, max_batch_size: int,
                 max_queue: int = 256, metrics: Metrics | None = None, max_per_tenant: int | None = None):
        self.run_batch, self.executor, self.metrics = run_batch, executor, metrics
        self.window, self.max_batch_size, self.max_queue = window_ms / 1000, max_batch_size, max_queue
        self.max_per_tenant = max_per_tenant or max_queue
        self._waiting: dict[Hashable, deque[Job]] = {}  # tenant -> its jobs, oldest first; key order = turn order
        self._size = 0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._worker(), name="pplug-batcher")

    async def stop(self) -> None:
        """Stop the worker; jobs still waiting fail with RuntimeError."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        for job in (j for q in self._waiting.values() for j in q):
            if not job.future.done():
                job.future.set_exception(RuntimeError("the server is shutting down"))
        self._waiting.clear()
        self._size = 0

    async def submit(self, key: Hashable, payload: Any, tenant: Hashable = None,
                     timeout: float | None = None) -> tuple[Any, int]:
        """Queue one job and wait for it (at most ``timeout`` seconds; cancelling the caller cancels the job).

        Returns:
            (its result, the size of the batch it ran in).

        Raises:
            QueueFull / TenantQueueFull: too many jobs are waiting (in all / of this tenant).
            TimeoutError: no result within ``timeout`` (the job is dropped, or its batch told to stop).
            Exception: whatever ``run_batch`` raised for its batch.
        """
        if self._wake is None or self._task is None or self._task.done():
            raise RuntimeError("the batcher is not running")
        if self._size >= self.max_queue:
            raise QueueFull(f"{self._size} requests are waiting (max_queue={self.max_queue}); retry later")
        queue = self._waiting.get(tenant)
        if queue is not None and len(queue) >= self.max_per_tenant:
            raise TenantQueueFull(f"{len(queue)} of your requests are waiting (max_queue_per_tenant="
                                  f"{self.max_per_tenant}); retry later")
        job = Job(key, payload, asyncio.get_running_loop().create_future(), tenant)
        self._waiting.setdefault(tenant, deque()).append(job)
        self._size += 1
        self._wake.set()
        try:
            return await asyncio.wait_for(job.future, timeout)  # on timeout or cancel, the future is cancelled
        finally:
            self._forget(job)

    def _forget(self, job: Job) -> None:
        queue = self._waiting.get(job.tenant)
        if queue is not None and job in queue:
            queue.remove(job)
            self._size -= 1
            if not queue:
                del self._waiting[job.tenant]

    def _take(self, n: int) -> list[Job]:
        """Up to ``n`` live jobs, one per tenant in turn; a served tenant moves to the back of the turn order."""
        out: list[Job] = []
        while len(out) < n and self._waiting:
            for tenant in list(self._waiting):
                if len(out) >= n:
                    break
                queue = self._waiting.pop(tenant)
                job = queue.popleft()
                self._size -= 1
                if queue:
                    self._waiting[tenant] = queue  # back of the turn order
                if not job.future.done():
                    out.append(job)
        return out

    async def _wait_for_jobs(self, timeout: float | None) -> bool:
        assert self._wake is not None
        if self._waiting:
            return True
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def _collect(self) -> list[Job]:
        loop = asyncio.get_running_loop()
        batch: list[Job] = []
        while not batch:
            await self._wait_for_jobs(None)
            batch = self._take(self.max_batch_size)
        deadline = loop.time() + self.window - (time.perf_counter() - min(j.enqueued for j in batch))
        while len(batch) < self.max_batch_size:
            remaining = deadline - loop.time()
            if not self._waiting and (remaining <= 0 or not await self._wait_for_jobs(remaining)):
                break
            batch += self._take(self.max_batch_size - len(batch))
        return batch

    async def _run(self, key: Hashable, jobs: list[Job]) -> None:
        jobs = [j for j in jobs if not j.future.done()]  # callers that gave up
        if not jobs:
            return
        t0 = time.perf_counter()
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self.executor, _run_stoppable, self.run_batch, key, [j.payload for j in jobs],
                lambda: all(j.future.done() for j in jobs))
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


def _run_stoppable(run_batch: RunBatch, key: Hashable, payloads: list[Any], gave_up: Callable[[], bool]) -> list[Any]:
    """``run_batch`` in the model thread, stopping early (``pplug.cancel``) once every caller gave up; not at
    all if they gave up while it waited for the thread (the results are then never read)."""
    if gave_up():
        return [None] * len(payloads)
    with stop_when(gave_up):
        return run_batch(key, payloads)
