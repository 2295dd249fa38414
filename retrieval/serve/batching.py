"""Request batching: sketches that arrive within a few milliseconds share one encoder forward pass.

A forward pass of the RN101 trunk costs nearly the same for 1 image as for several on a CPU
(the work is dominated by weight traffic and thread start-up), so under concurrent load
grouping requests raises throughput. The queue is bounded: when it is full, `embed` raises
`QueueFull` at once (the server answers 503 with Retry-After) instead of letting memory grow.
The encoder runs on one dedicated thread, so the event loop is never blocked by it.
"""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np


class QueueFull(Exception):
    """The batching queue holds `max_queue` waiting requests already."""


class Stopped(Exception):
    """The batcher was stopped (server shutting down) before this request was encoded."""


class EncodeBatcher:
    """Groups `embed(image)` calls into `encode(list_of_images) -> (B, D)` calls of at most `max_batch`.

    After the first request of a batch arrives, the worker waits `window_ms` for more (only when
    nothing else is queued), then takes up to `max_batch` queued requests. Requests whose caller
    gave up (timeout, disconnect) are dropped before encoding.
    """

    def __init__(self, encode: Callable[[list], np.ndarray], max_batch: int = 8, window_ms: float = 5.0,
                 max_queue: int = 64):
        if max_batch < 1 or max_queue < 1 or window_ms < 0:
            raise ValueError("max_batch and max_queue must be at least 1, window_ms at least 0")
        self._encode = encode
        self.max_batch = max_batch
        self.window_s = window_ms / 1000.0
        self.max_queue = max_queue
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self.batches = 0  # forward passes run
        self.encoded = 0  # images encoded
        self.largest_batch = 0

    async def start(self):
        """Start the worker on the running event loop."""
        self._queue = asyncio.Queue(self.max_queue)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="cvret-encoder")
        self._task = asyncio.create_task(self._run(), name="cvret-batcher")

    async def stop(self):
        """Stop taking work, fail what is still queued with `Stopped`, wait for the running pass."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._queue is not None:
            while not self._queue.empty():
                _, fut = self._queue.get_nowait()
                if not fut.done():
                    fut.set_exception(Stopped("server is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def qsize(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    async def embed(self, image) -> np.ndarray:
        """The (D,) feature of one image, computed in a shared forward pass."""
        if self._queue is None or self._task is None:
            raise Stopped("the encoder queue is not running")
        fut = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((image, fut))
        except asyncio.QueueFull:
            raise QueueFull(f"{self.max_queue} requests are already waiting for the encoder") from None
        return await fut

    async def _run(self):
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            if self._queue.empty() and self.window_s > 0:
                await asyncio.sleep(self.window_s)  # let requests arriving just after this one join it
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            batch = [(im, fut) for im, fut in batch if not fut.done()]
            if not batch:
                continue
            try:
                feats = await loop.run_in_executor(self._executor, self._encode, [im for im, _ in batch])
            except asyncio.CancelledError:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(Stopped("server is shutting down"))
                raise
            except Exception as e:  # the encoder failed: every request of this batch gets the error
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            self.batches += 1
            self.encoded += len(batch)
            self.largest_batch = max(self.largest_batch, len(batch))
            for (_, fut), feat in zip(batch, feats):
                if not fut.done():
                    fut.set_result(feat)
