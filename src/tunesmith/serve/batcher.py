"""Dynamic batching: concurrent requests wait in one bounded queue; a single worker takes the
first, lets others with the same sampling settings join until `max_wait_ms` pass without a new
arrival (at most `max_window_ms` after it opened, at most `max_batch_size` requests), and generates
them together in a thread, one batch at a time. A full queue is
refused at once (the caller answers 429) instead of letting latency grow without bound."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

from tunesmith.models.generation import Engine, GenRequest, GenResult
from tunesmith.monitor.metrics import Metrics
from tunesmith.recipe import ServeConfig


class QueueFull(Exception):
    pass


@dataclass
class _Job:
    request: GenRequest
    use_base: bool
    future: asyncio.Future
    queued: float = field(default_factory=time.monotonic)


class Batcher:
    def __init__(self, engine: Engine, cfg: ServeConfig, metrics: Metrics | None = None) -> None:
        self.engine, self.max_batch_size, self.queue_size = engine, cfg.max_batch_size, cfg.queue_size
        self.metrics = metrics
        if metrics is not None:
            metrics.queue_depth.set_function(lambda: len(self._waiting))
        self.max_wait, self.max_window = cfg.max_wait_ms / 1000, cfg.max_window_ms / 1000
        self._waiting: list[_Job] = []
        self._last_arrival = 0.0
        self._arrived: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self.batches = 0
        self.sizes: list[int] = []
        """Requests per batch, the most recent last (bounded)."""
        self.busy = False
        self.in_flight = 0
        """Requests handed to an engine that batches by itself, not answered yet."""

    @property
    def depth(self) -> int:
        return len(self._waiting)

    def start(self) -> None:
        self._arrived = asyncio.Event()
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker

    async def submit(self, request: GenRequest, use_base: bool = False) -> GenResult:
        """The answer to `request`; QueueFull when the queue is full."""
        if len(self._waiting) + self.in_flight >= self.queue_size:
            raise QueueFull()
        job = _Job(request, use_base, asyncio.get_running_loop().create_future())
        self._waiting.append(job)
        self._last_arrival = job.queued
        self._arrived.set()
        try:
            return await job.future
        except asyncio.CancelledError:  # the caller timed out or the client went away
            request.cancelled = True
            if job in self._waiting:
                self._waiting.remove(job)
            raise

    def _take(self) -> list[_Job]:
        first = self._waiting[0]
        key = (first.request.sampling, first.use_base)
        batch = [j for j in self._waiting if (j.request.sampling, j.use_base) == key][: self.max_batch_size]
        for job in batch:
            self._waiting.remove(job)
        return [j for j in batch if not j.request.cancelled]

    async def _run(self) -> None:
        if getattr(self.engine, "continuous", False):
            return await self._hand_over()
        while True:
            while not self._waiting:
                self._arrived.clear()
                await self._arrived.wait()
            # the batch closes when it is full, or after max_wait with no new arrival (requests
            # answered together come back together, but each is parsed and rendered in turn),
            # and never later than max_window_ms after it opened
            cap = time.monotonic() + self.max_window
            while (len(self._waiting) < self.max_batch_size and time.monotonic() < cap
                   and time.monotonic() - self._last_arrival < self.max_wait):
                await asyncio.sleep(min(0.002, self.max_wait))
            batch = self._take()
            if batch:
                await self._generate(batch)

    async def _hand_over(self) -> None:
        """An engine that batches by itself (an upstream server): each request goes at once, up to
        `queue_size` in flight (more get 429), each answered as soon as it is done."""
        tasks: set[asyncio.Task] = set()
        while True:
            while not self._waiting:
                self._arrived.clear()
                await self._arrived.wait()
            job = self._waiting.pop(0)
            if job.request.cancelled:
                continue
            self.in_flight += 1
            task = asyncio.create_task(self._generate([job]))
            tasks.add(task)
            task.add_done_callback(lambda done: (tasks.discard(done), self._landed()))

    def _landed(self) -> None:
        self.in_flight -= 1

    async def _generate(self, batch: list[_Job]) -> None:
        self.busy, started = True, time.monotonic()
        try:
            requests = [j.request for j in batch]
            results = await asyncio.to_thread(self.engine.generate, requests, batch[0].use_base)
            if self.metrics is not None:
                self.metrics.observe_batch(len(batch), sum(r.completion_tokens for r in results),
                                           time.monotonic() - started, [started - j.queued for j in batch])
        except Exception as error:  # the model failed: every request of the batch hears why
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(error)
            return
        finally:
            self.busy = False
            self.batches += 1
            self.sizes = [*self.sizes[-999:], len(batch)]
        for job, result in zip(batch, results, strict=True):
            if not job.future.done():
                job.future.set_result(result)
