"""The dynamic batcher: requests wait in one bounded queue; one worker thread, the only one that touches the
device, gathers compatible jobs into a batch (up to `max_batch` rows, or whatever came within `max_wait_s` of the
first) and runs it.

Why one thread: JAX programs on one device run one at a time anyway, and a single owner means no locks around the
model and no two batches fighting for memory. The asyncio handlers only wait on the jobs' futures. A job whose
future was cancelled (its client went away or timed out) before its batch started is dropped, so it costs nothing;
a full queue refuses new jobs at once (`QueueFull`, the route answers 429) instead of letting latency grow without
bound. `stop` lets the worker finish every queued job, then ends it (SIGTERM drains)."""

from __future__ import annotations

import collections
import concurrent.futures as cf
import dataclasses
import logging
import threading
import time
from typing import Any, Callable, Hashable

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The queue holds `max_queue` waiting jobs; the client should retry later."""


@dataclasses.dataclass
class Job:
    kind: str
    key: Hashable  # jobs batch together only with the same key (same program, same sampling)
    item: Any
    cost: int  # batch rows it takes
    future: cf.Future = dataclasses.field(default_factory=cf.Future)


class Engine:
    """Owns the worker thread. `run(kind, key, items) -> results` executes one batch (`serve.runner.Runner.run`)."""

    def __init__(self, run: Callable[[str, Hashable, list], list], *, max_batch: int, max_wait_s: float,
                 max_queue: int, metrics=None):
        self._run, self.max_batch, self.max_wait_s, self.max_queue = run, max_batch, max_wait_s, max_queue
        self.metrics = metrics
        self._queue: collections.deque[Job] = collections.deque()
        self._cv = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="omnirrm-engine", daemon=True)

    def start(self) -> "Engine":
        self._thread.start()
        return self

    @property
    def depth(self) -> int:
        return len(self._queue)

    def submit(self, kind: str, key: Hashable, item: Any, cost: int) -> cf.Future:
        """Queues one job; raises QueueFull when the queue is full, RuntimeError once stopping."""
        return self.submit_many([(kind, key, item, cost)])[0]

    def submit_many(self, jobs: list[tuple[str, Hashable, Any, int]]) -> list[cf.Future]:
        """Queues all the (kind, key, item, cost) jobs of one request, or none: QueueFull unless the queue has
        room for every one (a request larger than --max-queue can never fit; the route refuses it first)."""
        for _, _, _, cost in jobs:
            if cost > self.max_batch:
                raise ValueError(f"a job of {cost} rows cannot fit a batch of {self.max_batch}")
        new = [Job(*j) for j in jobs]
        with self._cv:
            if self._stopping:
                raise RuntimeError("the server is shutting down")
            self._drop_cancelled()
            if len(self._queue) + len(new) > self.max_queue:
                raise QueueFull(f"{len(self._queue)} requests are waiting, {len(new)} more do not fit "
                                f"(--max-queue {self.max_queue})")
            self._queue.extend(new)
            self._cv.notify()
        return [j.future for j in new]

    def stop(self, timeout: float | None = None) -> None:
        """Runs what is queued, then ends the worker."""
        with self._cv:
            self._stopping = True
            self._cv.notify()
        self._thread.join(timeout)

    def _drop_cancelled(self) -> None:
        if any(j.future.cancelled() for j in self._queue):
            self._queue = collections.deque(j for j in self._queue if not j.future.cancelled())

    def _fits(self, key) -> int:
        return sum(j.cost for j in self._queue if j.key == key and not j.future.cancelled())

    def _take(self) -> list[Job] | None:
        """The next batch: the oldest live job and the compatible ones behind it that fit; None to exit."""
        with self._cv:
            while True:
                self._drop_cancelled()
                if self._queue:
                    break
                if self._stopping:
                    return None
                self._cv.wait()
            key = self._queue[0].key
            deadline = time.monotonic() + self.max_wait_s
            while not self._stopping and self._fits(key) < self.max_batch:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cv.wait(left)
            batch, rows, rest = [], 0, collections.deque()
            for job in self._queue:
                if job.key == key and rows + job.cost <= self.max_batch and job.future.set_running_or_notify_cancel():
                    batch.append(job)
                    rows += job.cost
                elif not job.future.cancelled():
                    rest.append(job)
            self._queue = rest
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            if not batch:
                continue
            try:
                results = self._run(batch[0].kind, batch[0].key, [j.item for j in batch])
            except BaseException as e:  # noqa: BLE001 - one failed batch must not end the server
                log.exception("a %s batch of %d jobs failed", batch[0].kind, len(batch))
                if self.metrics:
                    self.metrics.error("batch_failed")
                for j in batch:
                    j.future.set_exception(e)
                continue
            for j, r in zip(batch, results):
                j.future.set_result(r)
