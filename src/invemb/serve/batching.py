"""Dynamic micro-batching: concurrent requests share one encoder call run in a worker thread.

Each request hands its texts to :meth:`MicroBatcher.submit` and awaits its own rows. One loop task
collects waiting requests into a batch (up to ``max_batch`` texts; it waits at most ``max_wait_ms``
after the oldest request arrived for others to join), runs the encoder once on the concatenation in
a single worker thread, and gives each request its slice. While that call runs, the event loop keeps
accepting requests, so under load the next batch is already full when the thread comes free.

By default one worker thread: the encoder already uses every core through torch's intra-op threads,
so two concurrent calls of one model would only contend for them. With ``workers`` > 1 up to that
many batches are encoded at once, each in its own thread; the ``initializer`` (run once in each
thread) gives a thread its own model copy and its share of the cores (see the service's
``encode_workers``).
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
from typing import Any, Callable, Sequence


class QueueFull(RuntimeError):
    """More texts are waiting than the server accepts (the client should retry later)."""


@dataclasses.dataclass
class _Pending:
    texts: list[str]
    future: asyncio.Future
    arrived: float  # loop.time() at submit


@dataclasses.dataclass
class BatchStats:
    batches: int = 0
    texts: int = 0
    requests: int = 0
    max_batch_texts: int = 0
    recent: collections.deque = dataclasses.field(default_factory=lambda: collections.deque(maxlen=1000))  # texts per call

    def to_dict(self) -> dict:
        return {"batches": self.batches, "texts": self.texts, "requests": self.requests,
                "mean_batch_texts": round(self.texts / self.batches, 2) if self.batches else 0.0,
                "max_batch_texts": self.max_batch_texts}


class MicroBatcher:
    """Merge concurrent calls of ``fn(texts) -> tuple of per-text arrays`` into one call.

    ``fn`` returns a tuple of sequences, each with one row per text (e.g. vectors and token counts);
    a request gets back the same tuple restricted to its own rows. ``max_queued`` bounds the texts
    waiting (beyond it :meth:`submit` raises :class:`QueueFull`), so an overloaded server answers
    at once instead of letting latency grow without end.
    """

    def __init__(self, fn: Callable[[list[str]], Sequence[Any]], max_batch: int = 256, max_wait_ms: float = 5.0,
                 max_queued: int = 65536, executor: concurrent.futures.Executor | None = None, workers: int = 1,
                 initializer: Callable[[], None] | None = None):
        if max_batch < 1 or max_wait_ms < 0 or max_queued < 1 or workers < 1:
            raise ValueError("max_batch, max_queued and workers must be >= 1 and max_wait_ms >= 0")
        self.fn, self.max_batch, self.max_wait, self.max_queued = fn, max_batch, max_wait_ms / 1000.0, max_queued
        self.workers, self.initializer = workers, initializer
        self._own_executor = executor is None
        self.executor = executor  # created on first use when not given (and again after aclose)
        self.stats = BatchStats()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._pending: collections.deque[_Pending] = collections.deque()
        self._queued = 0
        self._inflight: list[_Pending] = []
        self._calls: set[asyncio.Task] = set()  # batches being encoded (at most ``workers``)
        self._wake: asyncio.Event | None = None

    @property
    def queued_texts(self) -> int:
        return self._queued

    def _ensure_running(self) -> None:
        # Started lazily in the loop that serves the request: test clients run a fresh loop per
        # session, and a task or event bound to a finished loop would never wake again.
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop, self._wake = loop, asyncio.Event()
            self._pending.clear()
            self._queued = 0
            self._task = None
        if self.executor is None:
            self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="invemb-encode",
                                                                  initializer=self.initializer)
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run(), name="invemb-micro-batcher")

    async def submit(self, texts: list[str]) -> tuple:
        """This request's rows of ``fn(batch)``; raises what ``fn`` raised on this request's texts."""
        if not texts:
            raise ValueError("no texts to encode")
        self._ensure_running()
        if self._queued + len(texts) > self.max_queued and self._queued:
            raise QueueFull(f"{self._queued} texts are already waiting (limit {self.max_queued}); retry later")
        fut = self._loop.create_future()
        self._pending.append(_Pending(list(texts), fut, self._loop.time()))
        self._queued += len(texts)
        self._wake.set()
        return await fut

    async def _collect(self) -> list[_Pending]:
        """Wait for requests, then take up to ``max_batch`` texts' worth of them (at least one)."""
        loop = asyncio.get_running_loop()
        while not self._pending:
            self._wake.clear()
            await self._wake.wait()
        # Give others max_wait (counted from the oldest arrival) to join, unless the batch is full;
        # a request that already waited out a previous call goes at once.
        deadline = self._pending[0].arrived + self.max_wait
        while self._queued < self.max_batch and (left := deadline - loop.time()) > 0:
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), left)
            except asyncio.TimeoutError:
                break
        batch: list[_Pending] = []
        n = 0
        while self._pending and (not batch or n + len(self._pending[0].texts) <= self.max_batch):
            item = self._pending.popleft()
            self._queued -= len(item.texts)
            if item.future.done():  # the client went away: spend nothing on it
                continue
            batch.append(item)
            n += len(item.texts)
        return batch

    async def _call(self, texts: list[str]) -> Sequence[Any]:
        return await asyncio.get_running_loop().run_in_executor(self.executor, self.fn, texts)

    async def _run(self) -> None:
        # A batch is collected only when a worker is free, so under load the requests that arrive
        # meanwhile wait together and the next batch is full.
        slots = asyncio.Semaphore(self.workers)
        while True:
            await slots.acquire()
            try:
                batch = await self._collect()
            except BaseException:
                slots.release()
                raise
            if not batch:
                slots.release()
                continue
            task = asyncio.get_running_loop().create_task(self._process(batch))
            self._calls.add(task)
            task.add_done_callback(lambda t: (self._calls.discard(t), slots.release()))

    async def _process(self, batch: list[_Pending]) -> None:
        texts = [t for item in batch for t in item.texts]
        self._inflight += batch
        try:
            out = await self._call(texts)
        except Exception as err:
            if len(batch) == 1:
                _resolve(batch[0].future, error=err)
            else:  # one request's failure must not fail the others that shared its call
                await self._one_by_one(batch)
            return
        finally:
            done = {id(item) for item in batch}
            self._inflight = [item for item in self._inflight if id(item) not in done]
        self._record(batch, len(texts))
        start = 0
        for item in batch:
            end = start + len(item.texts)
            _resolve(item.future, tuple(part[start:end] for part in out))
            start = end

    async def _one_by_one(self, batch: list[_Pending]) -> None:
        for item in batch:
            try:
                out = await self._call(item.texts)
            except Exception as err:
                _resolve(item.future, error=err)
                continue
            self._record([item], len(item.texts))
            _resolve(item.future, tuple(out))

    def _record(self, batch: list[_Pending], n: int) -> None:
        s = self.stats
        s.batches += 1
        s.texts += n
        s.requests += len(batch)
        s.max_batch_texts = max(s.max_batch_texts, n)
        s.recent.append(n)

    async def aclose(self) -> None:
        """Stop the loop task, fail what still waits, and release the worker thread."""
        stranded = [*self._inflight, *self._pending]  # taken first: cancelling the tasks clears _inflight
        for task in [self._task, *self._calls]:
            if task is not None and not task.done():
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, Exception):
                    pass
        self._calls.clear()
        for item in stranded:
            _resolve(item.future, error=RuntimeError("server shutting down"))
        self._pending.clear()
        self._inflight, self._queued = [], 0
        if self._own_executor and self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
            self.executor = None


def _resolve(fut: asyncio.Future, result: Any = None, error: BaseException | None = None) -> None:
    if fut.done():  # cancelled by a client that disconnected
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)

