"""What the server runs answers on: the continuous-batching engine when the model package has it, else
`model.stream` in worker threads with the same admission rules.

Both sides speak one tiny interface, so the server never knows which one it has:

- `backend.submit(inputs, **stream_kwargs) -> conversation`: admits one answer or raises [`EngineFull`] at once
  (`max_active` answers generate at the same time, `max_queued` more wait);
- `conversation` iterates over the stream's events (`event.kind` in `"text"`, `"units"`, `"audio"`, `"done"`) and
  `conversation.cancel()` stops it at the next token and frees its caches;
- `backend.start()`, `backend.stop()`, `backend.stats()` (a dict with at least `active` and `queued`).
"""

import logging
import queue
import threading
from collections.abc import Iterator


try:  # the continuous-batching engine (one decode loop for all conversations), when this model package has it
    from opens2s.modeling_opens2s.engine_opens2s import EngineFull, OpenS2SEngine
except ImportError:
    OpenS2SEngine = None

    class EngineFull(RuntimeError):
        """Raised by `submit` when `max_active` answers run and `max_queued` wait already."""


__all__ = ["EngineFull", "StreamBackend", "StreamConversation", "make_backend"]

logger = logging.getLogger(__name__)

_END = object()


class StreamConversation:
    """One answer of a [`StreamBackend`]: iterate over its events (blocking); `cancel()` ends it at the next token.

    An error raised by the model is raised again by the iteration.
    """

    def __init__(self):
        self._events: queue.Queue = queue.Queue()
        self.cancelled = threading.Event()
        self.finished = threading.Event()

    def cancel(self) -> None:
        """Stop generating (at the next token, or before the answer starts when it still waits)."""
        self.cancelled.set()

    def __iter__(self) -> Iterator:
        while True:
            item = self._events.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item


class StreamBackend:
    """`model.stream` run in one worker thread per answer: at most `max_active` generate at the same time (the others
    wait for a slot), and at most `max_active + max_queued` are admitted (more raise [`EngineFull`]).

    Args:
        model ([`OpenS2SForConditionalGeneration`]): the model (with its token2wav decoder attached, to speak).
        processor ([`OpenS2SProcessor`]): passed to every stream (text deltas and the unit vocabulary).
        max_active (`int`, *optional*, defaults to 8): answers generated at the same time.
        max_queued (`int`, *optional*, defaults to 32): admitted answers that may wait for a slot.
    """

    def __init__(self, model, processor=None, *, max_active: int = 8, max_queued: int = 32):
        if max_active < 1 or max_queued < 0:
            raise ValueError(f"max_active must be >= 1 and max_queued >= 0, got {max_active} and {max_queued}")
        self.model, self.processor = model, processor
        self.max_active, self.max_queued = max_active, max_queued
        self._slots = threading.Semaphore(max_active)
        self._lock = threading.Lock()
        self._admitted = 0
        self._active = 0

    def start(self) -> None:
        """Nothing to start: workers are started per answer (the engine's interface)."""

    def stop(self) -> None:
        """Nothing to stop: every worker ends with its answer (the engine's interface)."""

    def stats(self) -> dict[str, int]:
        """`active` (generating), `queued` (admitted, waiting for a slot), `max_active`, `max_queued`."""
        with self._lock:
            return {
                "active": self._active,
                "queued": self._admitted - self._active,
                "max_active": self.max_active,
                "max_queued": self.max_queued,
            }

    def submit(self, inputs: dict, **stream_kwargs) -> StreamConversation:
        """Admit one answer: `model.stream(**inputs, processor=..., **stream_kwargs)` in a worker thread.

        Raises:
            [`EngineFull`]: `max_active` answers run and `max_queued` wait already.
        """
        with self._lock:
            if self._admitted >= self.max_active + self.max_queued:
                raise EngineFull(f"{self._admitted} answers admitted (max_active + max_queued)")
            self._admitted += 1
        conversation = StreamConversation()
        worker = threading.Thread(
            target=self._run, args=(conversation, inputs, stream_kwargs), name="opens2s-answer", daemon=True
        )
        worker.start()
        return conversation

    def _run(self, conversation: StreamConversation, inputs: dict, stream_kwargs: dict) -> None:
        events = None
        try:
            with self._slots:
                if conversation.cancelled.is_set():
                    return
                with self._lock:
                    self._active += 1
                try:
                    events = self.model.stream(**inputs, processor=self.processor, **stream_kwargs)
                    for event in events:
                        conversation._events.put(event)
                        if conversation.cancelled.is_set():
                            break
                finally:
                    if events is not None:
                        events.close()  # frees the stream's caches now, not when the generator is collected
                    with self._lock:
                        self._active -= 1
        except Exception as error:  # noqa: BLE001 - handed to the consumer, which reports it
            logger.exception("answer failed")
            conversation._events.put(error)
        finally:
            with self._lock:
                self._admitted -= 1
            conversation.finished.set()
            conversation._events.put(_END)


def make_backend(model, processor=None, *, max_active: int = 8, max_queued: int = 32, compile: bool = False):
    """The continuous-batching `OpenS2SEngine` when `opens2s.modeling_opens2s` has it (its fast path with
    `compile`), else a [`StreamBackend`]."""
    if OpenS2SEngine is not None:
        return OpenS2SEngine(model, processor, max_active=max_active, max_queued=max_queued, compile=compile)
    if compile:
        raise ValueError("compile=True needs the continuous-batching engine (opens2s.modeling_opens2s.engine_opens2s)")
    return StreamBackend(model, processor, max_active=max_active, max_queued=max_queued)
