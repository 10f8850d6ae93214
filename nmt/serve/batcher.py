"""Dynamic batching: requests that arrive together are translated as one batch, by one worker
thread that alone touches the model.

A request is a job: its sentences, its decoding options (a `DecodeKey`) and a future. The
worker takes the oldest job, waits until `max_wait_s` after it arrived for others with the
same options (or until they hold `max_batch` sentences), and translates them in one call.
Jobs with other options wait for a batch of their own. A job whose future was cancelled (its
client went away) or whose deadline passed is dropped before it costs any work, and only live
jobs count towards the queue's limit and a batch's size.

Under load the wait counts from when the worker became free, not from the oldest arrival:
the clients just answered send their next requests within milliseconds, and waiting for them
makes one batch of what would otherwise alternate as two half batches.

    requests ──> queue (FIFO) ──> worker: [job a][job c] same key ──> translate ──> futures
                       └── job b (another key) waits for the next batch
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecodeKey:
    """Decoding options: only jobs with equal keys share a batch."""

    beam: int
    n_best: int
    length_penalty: float
    attention: bool


class Busy(Exception):
    """The queue is full: the client should try again later."""


class ShuttingDown(Exception):
    """The server is stopping and takes no more work."""


class TimedOut(Exception):
    """The job's deadline passed before its turn came."""


@dataclass
class _Job:
    sentences: list[str]
    key: DecodeKey
    deadline: float = float("inf")  # time.monotonic() after which nobody awaits the answer
    future: Future = field(default_factory=Future)
    arrived: float = field(default_factory=time.monotonic)

    def expired(self, now: float) -> bool:
        """True, and the future failed with TimedOut, if the deadline has passed and the job
        is still to run."""
        if now < self.deadline or not self.future.set_running_or_notify_cancel():
            return False
        self.future.set_exception(TimedOut("the request's deadline passed before its turn"))
        return True


@dataclass
class BatchStats:
    """Counters since startup, for /health."""

    batches: int = 0
    requests: int = 0
    sentences: int = 0
    cancelled: int = 0
    timed_out: int = 0
    failed: int = 0


# (sentences, options) -> one answer per sentence, in order
TranslateFn = Callable[[list[str], DecodeKey], list[Any]]


class Batcher:
    """Owns the worker thread; `submit` may be called from any thread."""

    def __init__(self, translate: TranslateFn, max_batch: int, max_wait_s: float,
                 max_queue: int) -> None:
        self._translate = translate
        self.max_batch, self.max_wait_s, self.max_queue = max_batch, max_wait_s, max_queue
        self._queue: deque[_Job] = deque()
        self._queued = 0  # sentences in the queue
        self._cond = threading.Condition()
        self._closing = False
        self._deadline = float("inf")  # after close(): queued jobs fail from then on
        self._free_since = 0.0  # when the worker finished its last batch
        self.stats = BatchStats()
        self._thread = threading.Thread(target=self._run, name="nmt-serve-model", daemon=True)
        self._thread.start()

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def queued(self) -> int:
        """Sentences of live jobs waiting for the model."""
        with self._cond:
            self._drop_dead()
            return self._queued

    def submit(self, sentences: list[str], key: DecodeKey,
               deadline: float | None = None) -> Future:
        """Queues a job; the future's result is the list of answers, in order. Past `deadline`
        (a time.monotonic() value) a job not yet translated fails with TimedOut."""
        job = _Job(list(sentences), key, float("inf") if deadline is None else deadline)
        with self._cond:
            if self._closing:
                raise ShuttingDown("the server is shutting down")
            self._drop_dead()
            if self._queued and self._queued + len(job.sentences) > self.max_queue:
                raise Busy(f"{self._queued} sentences are waiting (at most {self.max_queue})")
            self._queue.append(job)
            self._queued += len(job.sentences)
            self._cond.notify()
        return job.future

    def close(self, grace_s: float = 0.0) -> None:
        """Takes no new jobs; queued ones are still translated for `grace_s` seconds, then fail
        with ShuttingDown. The batch being translated always finishes."""
        with self._cond:
            self._closing = True
            self._deadline = min(self._deadline, time.monotonic() + grace_s)
            self._cond.notify()

    def join(self, timeout: float | None = None) -> bool:
        """Waits for the worker to end (after close); True if it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while (jobs := self._next_batch()) is not None:
            if jobs:
                self._answer(jobs)
                self._free_since = time.monotonic()
        log.debug("batch worker stopped")

    def _next_batch(self) -> list[_Job] | None:
        """The next jobs to translate together; [] when all candidates were cancelled; None
        once closed and the queue is empty."""
        with self._cond:
            while True:
                if self._closing and time.monotonic() >= self._deadline:
                    self._fail_queued()
                self._drop_dead()
                if not self._queue:
                    if self._closing:
                        return None
                    self._cond.wait()
                    continue
                first = self._queue[0]
                waiting = sum(len(j.sentences) for j in self._queue if j.key == first.key)
                start = max(first.arrived, self._free_since)
                wait = start + self.max_wait_s - time.monotonic()
                if self._closing or waiting >= self.max_batch or wait <= 0:
                    return self._take(first.key)
                self._cond.wait(wait)

    def _drop_dead(self) -> None:
        """Removes the jobs that nobody awaits any more: cancelled, or past their deadline."""
        now, live = time.monotonic(), deque()
        for job in self._queue:
            if job.future.cancelled():
                self.stats.cancelled += 1
            elif job.expired(now):
                self.stats.timed_out += 1
            else:
                live.append(job)
                continue
            self._queued -= len(job.sentences)
        self._queue = live

    def _take(self, key: DecodeKey) -> list[_Job]:
        """Removes from the queue, oldest first, the jobs of `key` that fit in one batch (the
        first always does) and the dead ones met on the way."""
        taken, size, kept = [], 0, deque()
        full, now = False, time.monotonic()
        for job in self._queue:
            if job.key != key or full:
                kept.append(job)
                continue
            if taken and size + len(job.sentences) > self.max_batch:
                full = True  # later jobs keep their place: first come, first served
                kept.append(job)
                continue
            self._queued -= len(job.sentences)
            if job.expired(now):
                self.stats.timed_out += 1
                continue
            if not job.future.set_running_or_notify_cancel():
                self.stats.cancelled += 1
                continue
            taken.append(job)
            size += len(job.sentences)
        self._queue = kept
        return taken

    def _fail_queued(self) -> None:
        for job in self._queue:
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(ShuttingDown("the server stopped before this "
                                                      "request's turn"))
        self._queue.clear()
        self._queued = 0

    def _answer(self, jobs: list[_Job]) -> None:
        """Translates the jobs' sentences in one call and hands each job its answers. If the
        call fails, each job is retried alone, so one bad request fails only itself; a job
        whose deadline has passed meanwhile is not retried."""
        sentences = [s for job in jobs for s in job.sentences]
        start = time.perf_counter()
        try:
            answers = self._translate(sentences, jobs[0].key)
        except Exception as err:  # the worker must outlive any request
            if len(jobs) > 1:
                log.warning("a batch of %d requests failed (%s); retrying them one at a time",
                            len(jobs), type(err).__name__)
                for job in jobs:
                    if time.monotonic() < job.deadline:
                        self._answer([job])
                    else:
                        self.stats.timed_out += 1
                        job.future.set_exception(TimedOut("the request's deadline passed "
                                                          "while its batch was retried"))
                return
            log.exception("translating a request of %d sentences failed", len(sentences))
            self.stats.failed += 1
            jobs[0].future.set_exception(err)
            return
        self.stats.batches += 1
        self.stats.requests += len(jobs)
        self.stats.sentences += len(sentences)
        log.debug("batch: %d sentences from %d requests in %.1f ms", len(sentences), len(jobs),
                  1000 * (time.perf_counter() - start))
        for job in jobs:
            job.future.set_result(answers[:len(job.sentences)])
            answers = answers[len(job.sentences):]
