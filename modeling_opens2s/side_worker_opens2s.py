"""Side work: one thread beside the engine loops for the compute-bound work of single conversations.

A prompt's encoding, the LLM's forward over a prompt and token2wav chunks need no other conversation's rows and are
bound by arithmetic, where the LM steps are bound by memory bandwidth on a CPU. With a side worker ([`SideWorker`], on
the cores torch's intra-op pool leaves free) they run beside the loop while it decodes the others: a newcomer waits for
its encoding and its prompt's forward, a conversation whose chunk renders goes on generating. Jobs queue on the worker
(prompt forwards, then encodings first) when the wait is short against the job itself (a newcomer's work: a quarter
of it; token2wav: as long as it), else the loop runs them; a loop with nothing to decode runs its own queued jobs.
When a prompt's encoding or forward or a chunk ends then depends on timing; ids never do.
"""

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

import torch


__all__ = ["SideJob", "SideWorker", "side_threads_of"]


class SideJob:
    """One piece of side work: `function` (its result or exception go to `future`), of `kind` (`"audio_encoder"`,
    `"text_prefill"`, `"token2wav"`) and `items` (prompts, positions, chunks: its cost is about `items` times the
    kind's cost per item), queued by `owner` (an engine). `beside` tells whether the side worker ran it (else an idle
    loop did, see [`SideWorker.take`])."""

    def __init__(self, function: Callable[[], object], kind: str, items: int, owner: object):
        self.function, self.kind, self.items, self.owner = function, kind, items, owner
        self.future: Future = Future()
        self.beside = False
        self.seconds = 0.0  # how long `function` ran

    def run(self, beside: bool, record: Callable[["SideJob"], None] | None = None) -> None:
        """Run the function here (once: the caller took the job out of the queue), then `record(job)` (the worker's
        bookkeeping, done before the owner can see the outcome), then hand the outcome to `future`."""
        self.beside = beside
        self.future.set_running_or_notify_cancel()
        begin = time.perf_counter()
        result, error = None, None
        try:
            result = self.function()
        except Exception as caught:  # noqa: BLE001 - the owner's take-back hands it on
            error = caught
        self.seconds = time.perf_counter() - begin
        if record is not None:
            record(self)
        if error is not None:
            self.future.set_exception(error)
        else:
            self.future.set_result(result)


class SideWorker:
    """One thread beside the engine loops of the process, for compute-bound work of single conversations: prompt
    encoding, the LLM's forward over a prompt and token2wav chunks. The loop's LM steps are bound by memory bandwidth
    on CPU (a second intra-op thread barely speeds them up), that work by arithmetic, so a core that torch's intra-op
    pool leaves free does it while the loop decodes. Its thread sets its own intra-op thread count
    (thread-local in torch).

    Jobs wait in a queue, a newcomer's work first: its prompt's forward (its encoding is done already), then
    encodings (token2wav work holds up only audio). An engine queues a job only when the wait it can expect (the
    running job's rest and the jobs ahead, from the seconds per item measured on this worker) is at most the job's
    `_PATIENCE` times what the job would take; else it runs the job in its loop, stalling the loop's other
    conversations for that long. A loop with nothing to decode runs its own queued jobs itself ([`take`])."""

    _by_threads: dict[int, "SideWorker"] = {}
    _guard = threading.Lock()
    _PRIORITY = {"text_prefill": 0, "audio_encoder": 1, "token2wav": 2}
    # The longest wait a job of each kind queues for, as a fraction of its own expected seconds. A newcomer's wait
    # adds to its first unit, while a stall of the loop delays the next tokens of answers that already stream, so a
    # newcomer's work waits little. Measured at the mid preset, 8 conversations, A/B over 5 rounds: a fraction of 1
    # gave a first-unit p95 of 3.03 s, 1/4 gave 2.52 s at the same units/s; 1/2 was no better than 1, and 0 (only an
    # idle worker) left the worker idle while loops ran jobs it was about to take (units/s -12%). token2wav work
    # waits as long as it lasts: its wait holds up only audio, the answer goes on generating.
    _PATIENCE = {"text_prefill": 0.25, "audio_encoder": 0.25, "token2wav": 1.0}

    def __init__(self, threads: int):
        self.threads = threads
        self.lock = threading.Condition()
        self.queue: list[SideJob] = []  # waiting, in the order they run
        self.running: SideJob | None = None
        self.running_since = 0.0
        self.seconds_per_item: dict[str, float] = {}  # measured on this worker (the last job of each kind)
        threading.Thread(target=self._work, name="opens2s-side", daemon=True).start()

    @classmethod
    def shared(cls, threads: int) -> "SideWorker":
        """The process's side worker with `threads` intra-op threads (made on first use)."""
        with cls._guard:
            worker = cls._by_threads.get(threads)
            if worker is None:
                worker = cls._by_threads[threads] = cls(threads)
            return worker

    def _cost(self, kind: str, items: int) -> float | None:
        """Expected seconds of a job of `kind` and `items` (`None`: that kind was never measured)."""
        per_item = self.seconds_per_item.get(kind)
        return None if per_item is None else per_item * items

    def _expected_wait(self) -> float | None:
        """Seconds until a job queued now would start (`None`: unknown, a job ahead is of a kind never measured)."""
        wait = 0.0
        if self.running is not None:
            cost = self._cost(self.running.kind, self.running.items)
            if cost is None:
                return None
            # A job that runs late is expected to run as late again (one stuck compiling repels new work).
            elapsed = time.perf_counter() - self.running_since
            wait += abs(cost - elapsed)
        for job in self.queue:
            cost = self._cost(job.kind, job.items)
            if cost is None:
                return None
            wait += cost
        return wait

    def accepts(self, kind: str, items: int) -> bool:
        """Whether a job of `kind` and `items` would queue now: the wait it can expect is at most its kind's
        `_PATIENCE` times its own cost, or the worker is idle (the only case for a kind not measured yet)."""
        with self.lock:
            if self.running is None and not self.queue:
                return True
            wait, cost = self._expected_wait(), self._cost(kind, items)
            return wait is not None and cost is not None and wait <= self._PATIENCE[kind] * cost

    def put(self, function: Callable[[], object], kind: str, items: int, owner: object) -> SideJob:
        """Queue `function` (see [`accepts`]) behind the jobs of its priority and before those of lower ones."""
        job = SideJob(function, kind, items, owner)
        with self.lock:
            position = len(self.queue)
            while position and self._PRIORITY[self.queue[position - 1].kind] > self._PRIORITY[kind]:
                position -= 1
            self.queue.insert(position, job)
            self.lock.notify()
        return job

    def offer(self, function: Callable[[], object], kind: str, items: int, owner: object) -> SideJob | None:
        """Queue `function` when the worker [`accepts`] it; `None`: not queued, the caller runs it."""
        with self.lock:
            return self.put(function, kind, items, owner) if self.accepts(kind, items) else None

    def take(self, owner: object) -> SideJob | None:
        """The first queued job of `owner`, taken out of the queue for the caller to run (an idle loop)."""
        with self.lock:
            for job in self.queue:
                if job.owner is owner:
                    self.queue.remove(job)
                    return job
        return None

    def withdraw(self, job: SideJob) -> bool:
        """Take `job` out of the queue (its conversation was cancelled); False when it has started already."""
        with self.lock:
            if job in self.queue:
                self.queue.remove(job)
                return True
        return False

    def _work(self) -> None:
        torch.set_num_threads(self.threads)
        while True:
            with self.lock:
                while not self.queue:
                    self.lock.wait()
                job = self.running = self.queue.pop(0)
                self.running_since = time.perf_counter()
            job.run(beside=True, record=self.measured)

    def measured(self, job: SideJob) -> None:
        """Count a job that has run (here, or in a loop with as many threads) in the seconds per item of its kind;
        called before its owner sees the outcome, as the owner's next offer reads them."""
        with self.lock:
            if job.beside:
                self.running = None
            if job.beside or torch.get_num_threads() == self.threads:
                self.seconds_per_item[job.kind] = job.seconds / job.items


def side_threads_of(model, requested: int | None = None) -> int:
    """Intra-op threads of the side worker for `model` (0: none, the engine loop does everything). Unless
    `requested`: on CPU, the cores that torch's intra-op pool leaves free (at most as many as it uses); on CUDA none
    (a side stream would serve there; not measured yet)."""
    if requested is not None:
        if requested < 0:
            raise ValueError(f"side_threads must be >= 0, got {requested}")
        return requested
    if model.device.type != "cpu":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(0, min(cores - torch.get_num_threads(), torch.get_num_threads()))
