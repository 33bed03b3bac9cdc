"""The exporting sink: a bounded queue in front of a background sender.

``Exporter.add(span)`` is what the capture path calls. It never blocks on the network and
never waits for room: it takes a lock for a list append and returns. When the queue holds
``max_queue`` spans, the new span is dropped and counted (``spans_dropped{reason="queue_full"}``)
— losing spans is better than stalling packet capture, which would lose packets (and so
every span behind them) in the kernel ring instead.

One background thread takes batches (``batch_size`` spans, or whatever has waited
``batch_delay`` seconds) and hands each to a ``Transport``. A transport raises
``RetryableError`` for what the OTLP specification calls retryable (HTTP 429/502/503/504,
gRPC UNAVAILABLE/RESOURCE_EXHAUSTED/…, a refused or broken connection), with the server's
``Retry-After`` when it gave one, and ``ExportError`` for a permanent rejection. Retries use
exponential backoff with full jitter (``backoff_base · 2^attempt``, capped at
``backoff_max``; a ``Retry-After`` is honoured up to ``retry_after_max``), at most
``max_retries`` times; then the batch is dropped (``reason="retries_exhausted"``), or
``"rejected"`` for a permanent error. ``close(timeout)`` flushes what is queued until the
deadline, then drops the rest (``reason="shutdown"``), so a dead collector cannot hold a
replay or an agent's SIGTERM hostage. Counters: ``spans_exported``, ``spans_dropped`` by
reason, ``export_errors`` (failed send attempts, retried or not).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any, Protocol

from .spans import SpanRecord

log = logging.getLogger("wirespan.exporter")


class ExportError(Exception):
    """The receiver refused the batch for good (bad request, auth): do not retry."""


class RetryableError(ExportError):
    """A transient failure: retry later, after ``retry_after`` seconds if the server said."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Transport(Protocol):
    def send(self, spans: Sequence[SpanRecord]) -> int:
        """Deliver one batch; return how many spans the receiver rejected (partial success)."""
        ...

    def close(self) -> None: ...


def parse_retry_after(value: str | None) -> float | None:
    """HTTP ``Retry-After``: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime

    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


class Exporter:
    """Batching, bounded, non-blocking span export through one ``Transport``."""

    def __init__(self, transport: Transport, *, max_queue: int = 10_000,
                 batch_size: int = 512, batch_delay: float = 1.0, max_retries: int = 6,
                 backoff_base: float = 0.1, backoff_max: float = 5.0,
                 retry_after_max: float = 30.0, name: str = "exporter") -> None:
        if max_queue < 1 or batch_size < 1:
            raise ValueError("max_queue and batch_size must be at least 1")
        self.transport = transport
        self.max_queue = max_queue
        self.batch_size = batch_size
        self.batch_delay = batch_delay
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.retry_after_max = retry_after_max
        self.spans_exported = 0
        self.spans_dropped: Counter[str] = Counter()
        self.export_errors = 0
        self.last_error = ""
        self._queue: list[SpanRecord] = []
        self._inflight = 0
        self._flush_wanted = False
        self._closing = False
        self._deadline: float | None = None  # while closing: give up on retries after this
        self._cond = threading.Condition()
        self._stop = threading.Event()  # wakes a backoff sleep when the close deadline passes
        self._thread = threading.Thread(target=self._run, name=f"wirespan-{name}", daemon=True)
        self._thread.start()

    # ---- capture side: never blocks on I/O ----

    def add(self, span: SpanRecord) -> None:
        with self._cond:
            if self._closing or len(self._queue) >= self.max_queue:
                self.spans_dropped["queue_full" if not self._closing else "shutdown"] += 1
                return
            self._queue.append(span)
            if len(self._queue) == self.batch_size:
                self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued so far is sent (or dropped); False on timeout."""
        end = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._flush_wanted = True
            self._cond.notify_all()
            while self._queue or self._inflight:
                left = None if end is None else end - time.monotonic()
                if (left is not None and left <= 0) or not self._thread.is_alive():
                    return False
                self._cond.wait(0.5 if left is None else min(left, 0.5))
            self._flush_wanted = False
            return True

    def close(self, timeout: float = 10.0) -> None:
        """Flush with a deadline, then stop; what is still queued is dropped (``shutdown``)."""
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self._deadline = time.monotonic() + timeout
            self._cond.notify_all()
        self._thread.join(max(0.0, timeout))
        if self._thread.is_alive():  # stuck in a send: stop retrying and give it a moment
            self._stop.set()
            self._thread.join(1.0)
        with self._cond:
            if self._queue:
                self.spans_dropped["shutdown"] += len(self._queue)
                self._queue.clear()
        try:
            self.transport.close()
        except Exception:  # noqa: BLE001 - closing a connection must not fail a replay
            pass

    @property
    def stats(self) -> dict[str, Any]:
        with self._cond:
            return {"spans_exported": self.spans_exported,
                    "spans_dropped": dict(self.spans_dropped),
                    "export_errors": self.export_errors,
                    "queued": len(self._queue) + self._inflight}

    # ---- the sender thread ----

    def _past_deadline(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline

    def _run(self) -> None:
        while True:
            with self._cond:
                wait_until = time.monotonic() + self.batch_delay
                while True:
                    now = time.monotonic()
                    q = self._queue
                    if q and (len(q) >= self.batch_size or self._closing or self._flush_wanted
                              or now >= wait_until):
                        break
                    if not q:
                        if self._closing:
                            return
                        if now >= wait_until:
                            wait_until = now + self.batch_delay
                    self._cond.wait(wait_until - now)
                if self._closing and self._past_deadline():
                    return  # close() counts what is left as dropped
                batch = self._queue[:self.batch_size]
                del self._queue[:self.batch_size]
                self._inflight = len(batch)
            try:
                self._send(batch)
            except Exception as e:  # noqa: BLE001 - a bug in a transport must not kill export
                log.exception("exporter: unexpected error")
                self._drop(batch, "error", e)
            with self._cond:
                self._inflight = 0
                self._cond.notify_all()

    def _drop(self, batch: Sequence[SpanRecord], reason: str, err: Exception) -> None:
        with self._cond:
            self.spans_dropped[reason] += len(batch)
            self.last_error = str(err)
        log.warning("exporter: dropped %d spans (%s): %s", len(batch), reason, err)

    def _send(self, batch: list[SpanRecord]) -> None:
        attempt = 0
        while True:
            try:
                rejected = self.transport.send(batch)
            except RetryableError as e:
                with self._cond:
                    self.export_errors += 1
                if attempt >= self.max_retries:
                    self._drop(batch, "retries_exhausted", e)
                    return
                delay = random.uniform(0, min(self.backoff_max, self.backoff_base * 2 ** attempt))
                if e.retry_after is not None:
                    delay = max(delay, min(e.retry_after, self.retry_after_max))
                attempt += 1
                if self._deadline is not None:
                    delay = min(delay, self._deadline - time.monotonic())
                    if delay < 0:
                        self._drop(batch, "shutdown", e)
                        return
                if self._stop.wait(delay) or (self._closing and self._past_deadline()):
                    self._drop(batch, "shutdown", e)
                    return
                continue
            except ExportError as e:
                with self._cond:
                    self.export_errors += 1
                self._drop(batch, "rejected", e)
                return
            with self._cond:
                rejected = max(0, min(int(rejected or 0), len(batch)))
                self.spans_exported += len(batch) - rejected
                if rejected:
                    self.spans_dropped["rejected"] += rejected
            return


__all__ = ["ExportError", "Exporter", "RetryableError", "Transport", "parse_retry_after"]
