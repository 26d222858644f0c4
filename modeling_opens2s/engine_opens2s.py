"""Many conversations at once: a continuous-batching engine over one OpenS2S model.

One loop serves every active conversation. Each conversation runs its own schedule (`_Interleaver.run` in
`streaming_opens2s.py`: its M:N interleave, budgets, stop reasons, sampling settings, generator, speaker slot and
token2wav session), written as a generator that yields events for its caller and forward requests for the engine.
One [`OpenS2SEngine.step`] resumes every active conversation until it asks for its next forward, then runs those
forwards together, one forward per LM, and hands each conversation its own hidden states and logits back.
Conversations join and leave between steps; rows in different phases (prefill, text chunk, speech chunk, flush) simply
ask different LMs, or the same LM for a different number of positions: the feeds of one LM are packed into one
sequence whatever their lengths. A step need not run every feed: an LM's step costs about the same for 1 feed as for 8,
so LLM feeds wait (a bounded number of steps) until the conversations meet at the start of a text chunk, and from then
on each LM forward holds them all; newcomers never wait (see [`OpenS2SEngine._choose`]). Waiting changes when a row
runs, never what it computes.

Each conversation's greedy ids are exactly those of a solo run: a packed forward gives every conversation bitwise the
arithmetic of a forward of it alone (`packed_forward_opens2s.py`), and sampling uses each conversation's own
generator, so seeded answers do not depend on the neighbours either.

token2wav: each conversation's block-streaming session only buffers its units while the schedule runs; after the
forwards of a step, the engine renders every ready chunk, the chunks of one shape (the schedule's fixed block sizes
make that common) as one batch through the flow and the vocoder (`render_chunks` in
`modeling_token2wav_streaming.py`; randomness stays per conversation, so a chunk's audio is that of the conversation
alone up to float32 rounding); the answers that complete in one step render their last chunks as one batch
(`finish_streams`). The original OpenS2S schedule (`token2wav_mode="original"`) renders inside its own `push`, one
conversation at a time.

Side work (`side_worker_opens2s.py`): a prompt's encoding, the LLM's forward over a prompt and token2wav chunks run
beside the loop on a side worker when there are cores to spare; token2wav batches go as two halves so the loop and
the worker can each finish one.

`model.stream` and `model.generate` are this engine with one conversation. Several engines may share one model from
several threads (two `model.stream` calls at once, say): their forwards take turns under the model's
[`forward_lock`]; between forwards, every engine advances its own conversations (sampling, token2wav) concurrently.
With `compile=True` the engine decodes through static caches and a compiled step (`fast_path_opens2s.py`).
"""

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, wait
from functools import partial

import torch

from .audio_lengths_opens2s import audio_embedding_lengths
from .fast_path_opens2s import FastPath
from .modeling_token2wav_streaming import finish_streams, render_chunks
from .packed_forward_opens2s import MIN_GEMM_ROWS, forward_groups, forward_lock, forward_packed
from .side_worker_opens2s import SideJob, SideWorker, side_threads_of
from .streaming_opens2s import _Feed, _FinishAudio, _Interleaver, _SideWork, new_conversation


__all__ = ["Conversation", "EngineFull", "OpenS2SEngine", "split_batch", "stream"]

logger = logging.getLogger(__name__)

_END = object()  # the last item of a conversation's event queue
# Most engine steps a single-position forward waits for a larger group of its LM to fall in step with (a bound: in
# practice a conversation meets the others' phase within one text/speech cycle).
_MAX_WAIT_STEPS = 16
# Most engine steps a ready token2wav chunk (not a conversation's first: first audio does not wait) waits for chunks
# of other conversations of the same shape: in step, conversations that arrived close together reach the same chunk
# of the schedule within a few units of each other. The conversation keeps generating meanwhile.
_MAX_AUDIO_WAIT_STEPS = 4
# token2wav chunk shapes (`BlockStream.batch_key()`) whose compiled estimator has run once (compiled) in this process.
_compiled_chunk_shapes: set = set()


class EngineFull(RuntimeError):
    """Raised by [`OpenS2SEngine.submit`] when `max_active` conversations run and `max_queued` wait already."""


# ---------------------------------------------------------------------------------------------------------- batches
def split_batch(model, inputs: Mapping) -> list[dict]:
    """One conversation's inputs per row of a batched processor output, as the processor gives them for that row
    alone: padding positions dropped (left or right), and that row's audios, trimmed to the 30 s windows they use.

    Args:
        inputs (`Mapping`): `input_ids` `(batch_size, length)`, `attention_mask`, and optionally `input_features`
            `(num_audios, num_mel_bins, 3000 * k)` / `feature_attention_mask` holding every row's audios in order.
    """
    input_ids = inputs["input_ids"]
    attention_mask = inputs.get("attention_mask")
    features, feature_mask = inputs.get("input_features"), inputs.get("feature_attention_mask")
    placeholders = model.config.audio_token_id
    if features is not None:
        window = model.config.audio_config.max_source_positions * 2
        positions = audio_embedding_lengths(
            feature_mask.sum(-1).cpu(), len(model.config.adapter_conv_kernel_sizes), window=window
        ).tolist()
    rows, next_audio = [], 0
    for row in range(input_ids.shape[0]):
        keep = attention_mask[row].bool() if attention_mask is not None else torch.ones_like(input_ids[row]).bool()
        row_ids = input_ids[row][keep][None]
        entry = {"input_ids": row_ids}
        if features is not None:
            wanted, first = int((row_ids == placeholders).sum()), next_audio
            while wanted > 0:
                wanted -= positions[next_audio]
                next_audio += 1
            if wanted != 0:
                raise ValueError(f"row {row}: its audio placeholders do not match whole audios of input_features")
            if next_audio > first:
                row_mask = feature_mask[first:next_audio]
                windows = -(-int(row_mask.sum(-1).max()) // window)
                entry["input_features"] = features[first:next_audio, :, : windows * window]
                entry["feature_attention_mask"] = row_mask[:, : windows * window]
        rows.append(entry)
    return rows


# ---------------------------------------------------------------------------------------------------------- engine
class Conversation:
    """One conversation of an [`OpenS2SEngine`]: iterate it for its events (`for event in conversation`), the same
    typed events as `model.stream` ([`TextDelta`], [`SpeechUnits`], [`AudioChunk`], last [`Done`]).

    Without a background thread (`engine.start()`), iterating drives `engine.step()` from the caller's thread (every
    other conversation advances too, its events wait in its own queue); with one, iterating blocks on this
    conversation's queue. `cancel()` stops it at once and frees its memory; its stream then ends with a [`Done`]
    whose unset stop reasons read `"cancelled"`.
    """

    def __init__(self, engine: "OpenS2SEngine", conversation_id: int, schedule: Iterator, interleaver: _Interleaver):
        self.id = conversation_id
        self.engine = engine
        self.schedule = schedule
        self.interleaver: _Interleaver | None = interleaver
        self.events: queue.Queue = queue.Queue()
        self.request: _Feed | None = None  # the forward it waits for
        self.waited = 0  # engine steps that request has waited (see `OpenS2SEngine._choose`)
        self.last_lm = None  # the LM of its last forward, and how many forwards of that LM ran in a row
        self.run_length = 0
        self.audio_waited = 0  # engine steps its ready token2wav chunk has waited (see `OpenS2SEngine._render_audio`)
        # Side work beside the loop (see `OpenS2SEngine._side`): a request the schedule waits for (`job`), its last
        # token2wav chunk waiting to render with the others' (`parked`), and a chunk it is rendering (`rendering`:
        # the schedule goes on meanwhile, no other token2wav work of its stream may start).
        self.job: SideJob | None = None
        self.parked: _SideWork | None = None
        self.rendering: SideJob | None = None
        self.done = False  # generation is over (finished, cancelled or failed); events may still be queued
        self.events_put = 0  # events its schedule has queued (see `OpenS2SEngine.step`)
        self.drained = False

    def __iter__(self) -> "Conversation":
        return self

    def __next__(self):
        if self.drained:
            raise StopIteration
        while True:
            try:
                item = self.events.get_nowait()
                break
            except queue.Empty:
                if self.engine.running:
                    item = self.events.get()
                    break
                self.engine.step()
        if item is _END:
            self.drained = True
            raise StopIteration
        if isinstance(item, BaseException):
            self.drained = True
            raise item
        return item

    @property
    def beside_loop(self) -> bool:
        """Whether some of its work runs (or waits to run) beside the loop."""
        return self.job is not None or self.parked is not None or self.rendering is not None

    def answered(self, feed: _Feed, seconds: float, stage: str) -> None:
        """Its forward request `feed` has run (`seconds`, counted in its clock's `stage`): clear the request and count
        the forward of that LM (see [`run_of`])."""
        self.interleaver.clock.add(stage, seconds)
        self.request, self.waited = None, 0
        causal_lm = feed.state.causal_lm
        self.run_length = self.run_length + 1 if causal_lm is self.last_lm else 1
        self.last_lm = causal_lm

    def run_of(self, causal_lm) -> int:
        """Forwards of `causal_lm` run since the conversation last used the other LM: how far it is into its current
        text chunk (for the LLM) or speech chunk (for the decoder); 0 before the chunk's first forward."""
        return self.run_length if causal_lm is self.last_lm else 0

    def cancel(self) -> None:
        """Stop this conversation now (between two engine steps) and free its caches and token2wav state; the other
        conversations go on undisturbed. Does nothing once it is done."""
        self.engine._cancel(self)

    # ---- engine side (called under the engine's lock)
    def advance(self) -> _Feed | None:
        """Resume the schedule until it asks for a forward (returned), hands side work to the worker (`None`, with
        `job` set) or ends (`None`); events go to the queue. Side work that stays in the loop runs here."""
        try:
            for item in self.schedule:
                if isinstance(item, _Feed):
                    self.request = item
                    return item
                if isinstance(item, _SideWork):
                    if self.engine._side(self, item):
                        return None
                    continue
                self.events.put(item)
                self.events_put += 1
        except Exception as error:  # noqa: BLE001 - the error belongs to this conversation's caller
            self.finish(error)
            return None
        self.finish()
        return None

    def finish(self, error: BaseException | None = None, stop_reason: str | None = None) -> None:
        """End the conversation: free its memory, queue the error or (when cancelled) a last [`Done`], then the end."""
        if self.done:
            return
        self.done = True
        if stop_reason is not None and self.interleaver is not None:
            self.events.put(self.interleaver.done(stop_reason))
        if self.interleaver is not None:
            self.interleaver.release()
        self.schedule.close()
        self.interleaver = self.schedule = self.request = None
        if error is not None:
            self.events.put(error)
        self.events.put(_END)


class OpenS2SEngine:
    r"""
    A continuous-batching streaming engine: one model (LLM, speech decoder and attached token2wav) and one loop for
    every active conversation.

    Args:
        model ([`OpenS2SForConditionalGeneration`]): the model; its attached token2wav (if any) speaks every answer.
        processor ([`OpenS2SProcessor`], *optional*): default `processor=` of every conversation (text and units).
        max_active (`int`, *optional*, defaults to 8): conversations decoded together at most.
        max_queued (`int`, *optional*, defaults to 32): conversations waiting for a free slot at most; `submit`
            raises [`EngineFull`] beyond.
        compile (`bool`, *optional*, defaults to `False`): the fast path: preallocated key/value caches of fixed
            shape for both LMs and single-position steps compiled with `torch.compile` (CUDA graphs on CUDA). The
            first step of each shape compiles (its time is counted in the `"compile"` stage of `Done.stats`);
            later steps, conversations and engines of the same model reuse it. Greedy ids equal the eager path's.
            Also the default of every conversation's `token2wav_compile` (block streaming's compiled estimator).
        side_threads (`int`, *optional*): intra-op threads of the side worker that encodes prompts and renders
            token2wav chunks beside the loop ([`SideWorker`]); `0`: none, the loop does that work itself. Defaults
            to the CPU cores torch's intra-op pool leaves free (at most as many as it uses), none on CUDA.

    Example:

    ```python
    engine = OpenS2SEngine(model, processor)
    conversations = [engine.submit(inputs, max_new_tokens=64, seed=i) for i, inputs in enumerate(requests)]
    for event in conversations[0]:  # drives the loop; the others' events wait in their own queues
        ...
    ```
    Or `engine.start()` to run the loop in a background thread (then `submit`/`cancel` from any thread, and iterate
    each conversation from its own thread), and `engine.stop()` at the end.
    """

    def __init__(
        self,
        model,
        processor=None,
        *,
        max_active: int = 8,
        max_queued: int = 32,
        compile: bool = False,
        side_threads: int | None = None,
    ):
        if max_active < 1 or max_queued < 0:
            raise ValueError(f"need max_active >= 1 and max_queued >= 0, got {max_active} and {max_queued}")
        threads = side_threads_of(model, side_threads)
        self.side = SideWorker.shared(threads) if threads else None
        self.side_jobs: list[tuple[SideJob, Callable[[SideJob], None]]] = []  # in flight, and how to take each back
        self.fast = FastPath(model, max_active) if compile else None
        self.model = model
        self.forward_lock = forward_lock(model)
        self.processor = processor
        self.max_active, self.max_queued = max_active, max_queued
        self.active: list[Conversation] = []
        self.queued: deque[Conversation] = deque()
        self.lock = threading.RLock()
        self.wakeup = threading.Condition(self.lock)
        self.thread: threading.Thread | None = None
        self.running = False
        self.next_id = 0
        self.steps = 0
        # Work done so far, for benchmarks and monitoring: LM forwards, token2wav batches (and the chunks in them),
        # seconds of each kind of work, and of the part that ran beside the loop (prompts, token2wav).
        self.work = dict.fromkeys(("forwards", "token2wav_batches", "token2wav_chunks"), 0)
        seconds = ("forward_seconds", "token2wav_seconds", "audio_encoder_seconds", "side_seconds")
        self.work |= dict.fromkeys(seconds, 0.0)

    def submit(self, inputs: Mapping, **stream_kwargs) -> Conversation:
        """Queue one conversation.

        Args:
            inputs (`Mapping`): one conversation's processor output (`input_ids` `(1, length)`, `attention_mask`,
                `input_features`, `feature_attention_mask`).
            stream_kwargs: what `model.stream` takes (`max_new_tokens`, `speech_max_new_tokens`, `do_sample`,
                `temperature`, `top_p`, `top_k`, `repetition_penalty`, `generator` or `seed`, `speaker_embedding`,
                `token2wav_*`, ...); `processor` defaults to the engine's.

        Raises:
            [`EngineFull`]: `max_active` conversations run and `max_queued` wait. Bad arguments raise here too.
        """
        stream_kwargs.setdefault("processor", self.processor)
        stream_kwargs.setdefault("token2wav_compile", self.fast is not None)
        with self.lock:
            if len(self.active) + len(self.queued) >= self.max_active + self.max_queued:
                raise EngineFull(
                    f"engine full: {len(self.active)} conversations active (max_active={self.max_active}) and "
                    f"{len(self.queued)} queued (max_queued={self.max_queued}); retry once one has finished"
                )
            schedule, interleaver = new_conversation(self.model, **dict(inputs), **stream_kwargs)
            conversation = Conversation(self, self.next_id, schedule, interleaver)
            self.next_id += 1
            self.queued.append(conversation)
            self.wakeup.notify_all()
        return conversation

    def stats(self) -> dict:
        """`{"active", "queued", "max_active", "max_queued", "steps", "running"}` and the work done so far:
        `"forwards"` (LM forwards run) and their `"forward_seconds"`, `"token2wav_batches"` (flow + vocoder calls
        of the engine's batches), `"token2wav_chunks"` (chunks rendered in them), `"token2wav_seconds"` (those
        batches and each answer's last chunk), `"audio_encoder_seconds"` (prompt encoding) and `"side_seconds"`
        (the part of those and of the prompt forwards that ran beside the loop, on the side worker)."""
        with self.lock:
            return {
                "active": len(self.active),
                "queued": len(self.queued),
                "max_active": self.max_active,
                "max_queued": self.max_queued,
                "steps": self.steps,
                "running": self.running,
                **self.work,
            }

    @torch.no_grad()
    def step(self) -> bool:
        """Advance every active conversation by one forward (admitting queued ones first); returns whether any
        conversation is still active or queued."""
        with self.lock:
            while self.queued and len(self.active) < self.max_active:
                conversation = self.queued.popleft()
                self.active.append(conversation)
                if self.fast is not None:
                    self.fast.admit(conversation.id, (conversation.interleaver.text, conversation.interleaver.speech))
            self._take_back_side_jobs()
            feeds, progressed = self._advance_all()
            # Every conversation waits for side work: work on it, unless some caller has new events to read first.
            if not feeds and not progressed and self.side_jobs:
                self._await_side_work()
                feeds, _ = self._advance_all()
            owners = {id(conversation.request): conversation for conversation in self.active if conversation.request}
            feeds = self._prompts_beside(feeds, owners)
            groups = forward_groups(self._choose(feeds, owners), pack=self.fast is None)
            for conversation in owners.values():
                conversation.waited += 1
            self._run(groups, owners)
            self._render_audio()
            self.steps += 1
            return bool(self.active or self.queued)

    def _advance_all(self) -> tuple[list[_Feed], bool]:
        """Resume every active conversation that waits for nothing beside the loop; returns their forward requests,
        and whether any conversation queued events or ended (conversations that ended leave)."""
        feeds, progressed = [], False
        for conversation in list(self.active):
            if conversation.job is not None or conversation.parked is not None:
                continue
            events_put = conversation.events_put
            feed = conversation.request or conversation.advance()
            progressed |= conversation.events_put > events_put or conversation.done
            if feed is not None:
                feeds.append(feed)
            elif conversation.done:
                self._leave(conversation)
        return feeds, progressed

    # ---- side work
    def _side(self, conversation: Conversation, request: _SideWork) -> bool:
        """Run a conversation's side work (its prompt's encoding, the original schedule's last token2wav call): beside
        the loop when the side worker takes the job (returns True: the conversation waits for it), else here in the
        loop (False). A block-streaming session's last chunk waits instead (True), to render with the last chunks of
        the other conversations that finish in this step ([`_render_audio`])."""
        if isinstance(request, _FinishAudio) and conversation.interleaver.renders_apart:
            conversation.parked = request
            return True

        def take_back(job: SideJob) -> None:
            conversation.job = None
            self._count_seconds(request.stage, request.seconds, job.beside)
            if job.future.exception() is not None:
                self._fail([conversation], job.future.exception(), "side work")

        job = self.side.offer(request.run, request.stage, 1, self) if self.side is not None else None
        if job is None:
            request.run()  # an error ends this conversation through `advance`
            self._count_seconds(request.stage, request.seconds, beside=False)
            return False
        conversation.job = job
        self.side_jobs.append((job, take_back))
        return True

    def _prompts_beside(self, feeds: list[_Feed], owners: dict) -> list[_Feed]:
        """Hand the prompt forwards among `feeds` to the side worker when it takes them and other feeds run this
        step; returns the feeds left for the loop. Like its encoding, a prompt's forward is one conversation's many
        positions, bound by arithmetic (at the mid preset it costs ~2 LLM steps of eight rows): beside the loop, the
        others go on decoding meanwhile. Alone it stays in the loop, with the loop's threads. Only when the worker has
        as many intra-op threads as the loop, so the forward's arithmetic (and so every id) is the same on either
        thread; and on the eager path only: the fast path's prompt forwards write the pools every compiled step
        reads."""
        if self.side is None or self.fast is not None or len(feeds) < 2:
            return feeds
        if self.side.threads != torch.get_num_threads():
            return feeds
        kept = []
        for feed in feeds:
            positions = feed.inputs_embeds.shape[1]
            prompt = feed.stage == "text_prefill" and positions >= MIN_GEMM_ROWS
            forward = partial(forward_packed, feed.state.causal_lm, [feed])
            job = self.side.offer(forward, feed.stage, positions, self) if prompt else None
            if job is None:
                kept.append(feed)
                continue
            conversation = owners[id(feed)]
            conversation.request = None
            conversation.job = job
            self.side_jobs.append((job, partial(self._prompt_taken_back, conversation, feed)))
        return kept

    def _prompt_taken_back(self, conversation: Conversation, feed: _Feed, job: SideJob) -> None:
        """A prompt's forward beside the loop has ended: count it; the conversation resumes with its results."""
        conversation.job = None
        self.work["forwards"] += 1
        self._count_seconds("forward", job.seconds, job.beside)
        if conversation.done:  # cancelled meanwhile (a forward on its released cache may have failed)
            return
        if job.future.exception() is not None:
            self._fail([conversation], job.future.exception(), "forward")
        else:
            conversation.answered(feed, job.seconds, feed.stage)

    def _take_back_side_jobs(self, block: bool = False) -> None:
        """Take back the side work that has ended (results, audio events, errors), in the loop's thread; with
        `block`, wait for the first to end."""
        if block and self.side_jobs:
            wait([job.future for job, _ in self.side_jobs], return_when=FIRST_COMPLETED)
        running = []
        for job, take_back in self.side_jobs:
            if job.future.done():
                take_back(job)
            else:
                running.append((job, take_back))
        self.side_jobs = running

    def _await_side_work(self) -> None:
        """Nothing to decode (every conversation waits for side work): run one of this engine's queued side jobs
        here, else wait for the first running one to end; take back what has ended."""
        job = self.side.take(self)
        if job is None:
            self._take_back_side_jobs(block=True)
            return
        job.run(beside=False, record=self.side.measured)
        self._take_back_side_jobs()

    def _count_seconds(self, kind: str, seconds: float, beside: bool) -> None:
        """Count `seconds` of `kind` work (`"forward"`, `"token2wav"`, `"audio_encoder"`) in `work`, and in its
        `side_seconds` when they ran beside the loop."""
        self.work[f"{kind}_seconds"] += seconds
        self.work["side_seconds"] += seconds if beside else 0.0

    def _fail(self, conversations: list[Conversation], error: BaseException, what: str) -> None:
        """End `conversations` with `error` (their callers get it); the others go on."""
        logger.error("engine %s failed for %d conversation(s)", what, len(conversations), exc_info=error)
        for conversation in conversations:
            if not conversation.done:
                conversation.finish(error)
            if conversation in self.active:
                self._leave(conversation)

    def _choose(self, feeds: list[_Feed], owners: dict) -> list[_Feed]:
        """The feeds that run this step; the others wait (never more than `_MAX_WAIT_STEPS` steps).

        An LM's step costs about the same for 1 feed as for 8, so the schedule brings conversations into step: all of
        them in the same point of their text/speech cycle, each LM forward holding every conversation. The meeting
        point is the start of a text chunk, because the LLM is the larger (and slower) model: its steps should hold
        the most rows. So, with `owners` mapping `id(feed)` to its conversation:

        - speech decoder feeds always run;
        - a conversation before its first speech token (a newcomer: its prompt and first text chunk; or one that
          writes text only) never waits, for first-unit latency, nor does one that has waited `_MAX_WAIT_STEPS`;
        - the other LLM feeds wait while a conversation that comes back to the LLM is in its speech chunk (cheap
          decoder steps: it joins them at the start of the next text chunk), and otherwise only those least far
          into their text chunk run, so that those ahead wait for them (a newcomer's first chunk may have started
          while the others were halfway through theirs).
        """
        text_lm = self.model.language_model
        text = [feed for feed in feeds if feed.state.causal_lm is text_lm]
        if not text:
            return feeds

        def urgent(feed: _Feed) -> bool:
            conversation = owners[id(feed)]
            return conversation.waited >= _MAX_WAIT_STEPS or conversation.interleaver.stats.num_speech_tokens == 0

        chosen = {id(feed) for feed in text if urgent(feed)}
        coming_back = any(
            feed.state.causal_lm is not text_lm and not owners[id(feed)].interleaver.text_finished for feed in feeds
        )
        others = [feed for feed in text if id(feed) not in chosen]
        if others and not coming_back:
            position = {id(feed): owners[id(feed)].run_of(text_lm) for feed in others}
            least = min(position.values())
            chosen |= {id(feed) for feed in others if position[id(feed)] == least}
        return [feed for feed in feeds if feed.state.causal_lm is not text_lm or id(feed) in chosen]

    def _run(self, groups: list[list[_Feed]], owners: dict) -> None:
        """Run the forwards of `groups`; each of their conversations' requests is answered (or the conversation
        fails) and cleared. `owners` maps `id(feed)` to its conversation."""
        for group in groups:
            begin = time.perf_counter()
            compiling = False
            try:
                with self.forward_lock:
                    if self.fast is None:
                        forward_packed(group[0].state.causal_lm, group)
                    elif group[0].inputs_embeds.shape[1] == 1:
                        compiling = self.fast.decode(group[0].state.causal_lm, group)
                    else:
                        self.fast.prefill(group)
            except Exception as error:  # noqa: BLE001 - handed to the callers of the rows of this forward
                self._fail([owners[id(feed)] for feed in group], error, "forward")
                continue
            seconds = time.perf_counter() - begin
            self.work["forwards"] += 1
            self._count_seconds("forward", seconds, beside=False)
            for feed in group:
                owners[id(feed)].answered(feed, seconds, "compile" if compiling else feed.stage)

    def _render_audio(self) -> None:
        """Render the ready token2wav chunks of the active conversations (block streaming), the chunks of one shape
        as one batch through the flow and the vocoder ([`render_chunks`]; in two halves with a side worker, see
        [`_side_parts`]), beside the loop when the side worker takes the job (the conversations go on generating
        meanwhile); each conversation's audio events go to its queue. A batch renders when it holds a conversation's
        first chunk (first audio never waits), a chunk that has waited `_MAX_AUDIO_WAIT_STEPS` steps, or every
        conversation that speaks; otherwise it waits a step for others to reach the same chunk shape. Then the last
        chunks of the conversations whose answers are complete render, those of one shape as one batch
        ([`_finish_audio`]). A conversation whose rendering fails ends with that error."""
        while True:
            speaking = [
                conversation
                for conversation in self.active
                if conversation.interleaver is not None
                and conversation.interleaver.renders_apart
                and not conversation.beside_loop
            ]
            batches: dict[tuple, list[Conversation]] = {}  # the chunks' batch key -> conversations
            for conversation in speaking:
                stream = conversation.interleaver.audio_stream
                if stream is not None and stream.ready:
                    # (A compiled estimator's graph serves batches of any size.)
                    batches.setdefault(stream.batch_key(), []).append(conversation)
            due = [(key, members) for key, members in batches.items() if self._audio_due(members, len(speaking))]
            if not due:  # what is left waits this step
                for members in batches.values():
                    for member in members:
                        member.audio_waited += 1
                break
            for key, members in due:
                for part in self._side_parts(members):
                    self._render_batch(key, part)
        finishing = [
            conversation
            for conversation in self.active
            if conversation.parked is not None and conversation.job is None and conversation.rendering is None
        ]
        if finishing:
            for part in self._side_parts(finishing):
                self._finish_audio(part)

    def _side_parts(self, members: list[Conversation]) -> list[list[Conversation]]:
        """`members` as one token2wav batch, or, with a side worker, two halves: the worker renders one while the
        other waits in its queue, where a loop left with nothing to decode takes it (the two lanes finish together
        instead of the loop waiting for the whole batch)."""
        if self.side is None or len(members) < 2:
            return [members]
        half = (len(members) + 1) // 2
        return [members[:half], members[half:]]

    @staticmethod
    def _audio_due(members: list[Conversation], speaking: int) -> bool:
        return (
            len(members) == speaking
            or any(member.interleaver.audio_stream.rendered_units == 0 for member in members)
            or any(member.audio_waited >= _MAX_AUDIO_WAIT_STEPS for member in members)
        )

    def _render_batch(self, key, members: list[Conversation]) -> None:
        """Render the ready chunks of `members` (one `batch_key()`: `key`) as one batch, beside the loop when the
        side worker takes the job, else now; their audio events are queued when it has ended."""
        # The first chunk of a shape through a compiled estimator compiles it: counted as "compile", not token2wav.
        # (Ids, not the objects: the set must not keep a model alive.)
        key = key._replace(model=id(key.model), estimator=id(key.estimator) if key.estimator is not None else None)
        compiling = key.estimator is not None and key not in _compiled_chunk_shapes
        render = partial(render_chunks, [member.interleaver.audio_stream for member in members])

        def take_back(job: SideJob) -> None:
            for member in members:
                member.rendering = None
            if job.future.exception() is not None:
                self._fail(members, job.future.exception(), "token2wav")
                return
            waveforms, seconds = job.future.result(), job.seconds
            _compiled_chunk_shapes.add(key)
            self.work["token2wav_batches"] += 1
            self.work["token2wav_chunks"] += len(members)
            self._count_seconds("token2wav", seconds, job.beside)
            for member, waveform in zip(members, waveforms, strict=True):
                member.audio_waited = 0
                if member.done:  # cancelled meanwhile
                    continue
                stage = "compile" if compiling else "token2wav"
                for event in member.interleaver.audio_events(waveform, seconds, stage):
                    member.events.put(event)

        job = self._dispatch(render, take_back, len(members))
        for member in members:
            member.rendering = job  # None: it has run already

    def _finish_audio(self, members: list[Conversation]) -> None:
        """Render the last token2wav chunks of `members` (answers complete, waiting on their `_FinishAudio`), those of
        one shape as one batch ([`finish_streams`]), beside the loop when the side worker takes the job, else now; each
        conversation resumes with its waveform at its next step."""
        requests = [member.parked for member in members]
        render = partial(finish_streams, [request.audio_stream for request in requests])

        def take_back(job: SideJob) -> None:
            for member in members:
                member.job = member.parked = None
            if job.future.exception() is not None:
                self._fail(members, job.future.exception(), "token2wav")
                return
            waveforms, seconds = job.future.result(), job.seconds
            self._count_seconds("token2wav", seconds, job.beside)
            for request, waveform in zip(requests, waveforms, strict=True):
                request.waveform, request.seconds = waveform, seconds

        job = self._dispatch(render, take_back, len(members))
        for member in members:
            member.job = job  # None: it has run already

    def _dispatch(
        self, function: Callable[[], object], take_back: Callable[[SideJob], None], chunks: int
    ) -> SideJob | None:
        """Render `chunks` token2wav chunks (`function`) beside the loop when the side worker takes the job (returns
        it; `take_back(job)` runs in the loop once it has ended), else now (`take_back(job)` at once; returns
        `None`)."""
        job = self.side.offer(function, "token2wav", chunks, self) if self.side is not None else None
        if job is None:
            job = SideJob(function, "token2wav", chunks, self)
            job.run(beside=False)
            take_back(job)
            return None
        self.side_jobs.append((job, take_back))
        return job

    def _leave(self, conversation: Conversation) -> None:
        """Take `conversation` out of the active ones (its slot of the fast path's caches is free again)."""
        self.active.remove(conversation)
        if self.fast is not None:
            with self.forward_lock:
                self.fast.leave(conversation.id)

    def _cancel(self, conversation: Conversation) -> None:
        with self.lock:
            if conversation.done:
                return
            job = conversation.job
            # Its own prompt's work, queued and not started, leaves the queue (token2wav jobs may hold others too).
            if job is not None and job.kind != "token2wav" and self.side.withdraw(job):
                self.side_jobs = [(queued, take_back) for queued, take_back in self.side_jobs if queued is not job]
            if conversation in self.active:
                self._leave(conversation)
            elif conversation in self.queued:
                self.queued.remove(conversation)
            conversation.finish(stop_reason="cancelled")

    # ---- background loop
    def start(self) -> "OpenS2SEngine":
        """Run the loop in a background thread (idle while no conversation is active or queued)."""
        with self.lock:
            if self.running:
                return self
            self.running = True
            self.thread = threading.Thread(target=self._loop, name="opens2s-engine", daemon=True)
            self.thread.start()
        return self

    def stop(self) -> None:
        """Stop the background loop (conversations keep their state; iterating them drives the loop again)."""
        with self.lock:
            self.running = False
            self.wakeup.notify_all()
        if self.thread is not None:
            self.thread.join()
            self.thread = None

    def _loop(self) -> None:
        while True:
            with self.lock:
                while self.running and not (self.active or self.queued):
                    self.wakeup.wait()
                if not self.running:
                    return
            self.step()

    def __enter__(self) -> "OpenS2SEngine":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def stream(model, input_ids: torch.LongTensor, compile: bool = False, **kwargs):
    r"""
    Generate the spoken answer to a prompt as a stream of events: [`TextDelta`] per text token, [`SpeechUnits`] per
    speech decoder token, ([`AudioChunk`] once a vocoder is attached,) and a final [`Done`].

    Args:
        model ([`OpenS2SForConditionalGeneration`]): the model.
        input_ids (`torch.LongTensor` of shape `(1, prompt_length)`):
            The prompt from `processor.apply_chat_template(..., add_generation_prompt=True)`; it should end in
            `<|im_tts_start|>`, whose hidden state is the decoder's first row. Batch size 1 only (many conversations
            at once: `OpenS2SEngine` in `engine_opens2s.py`, or `generate` on a batch).
        input_features (`torch.FloatTensor` of shape `(num_audios, num_mel_bins, 3000 * k)`, *optional*):
            Log-mel features of the prompt's audios.
        feature_attention_mask (`torch.LongTensor` of shape `(num_audios, 3000 * k)`, *optional*): valid mel frames.
        attention_mask (`torch.LongTensor` of shape `(1, prompt_length)`, *optional*): 0 on left padding.
        generation_config ([`GenerationConfig`], *optional*):
            The LLM's: `max_new_tokens` (text budget, 512 when unset), `eos_token_id` (int or list), `do_sample`,
            `temperature`, `top_k`, `top_p`, `min_p`, `repetition_penalty`, `suppress_tokens`. Defaults to
            `model.generation_config`.
        speech_generation_config ([`GenerationConfig`], *optional*):
            The speech decoder's, same fields (`max_new_tokens` = speech budget). Defaults to
            `model.speech_generation_config`, else the model folder's `speech_generation_config.json`.
        max_new_tokens (`int`, *optional*): the text budget, instead of `generation_config.max_new_tokens`.
        speech_max_new_tokens (`int`, *optional*): the speech budget, instead of
            `speech_generation_config.max_new_tokens`.
        speaker_embedding (`torch.FloatTensor` of shape `(speaker_embedding_dim,)`, *optional*):
            Voice of the answer, projected into the decoder's first position; `None` means zeros (what the original
            always used).
        processor ([`OpenS2SProcessor`], *optional*): gives the tokenizer (for `TextDelta.text`) and the unit
            vocabulary (for `SpeechUnits.units`). `tokenizer` / `unit_tokenizer` override either part.
        generator (`torch.Generator`, *optional*): random source for sampling, on the model's device.
        text_logits_processor / speech_logits_processor ([`LogitsProcessorList`], *optional*):
            Extra processors, applied after those built from the generation configs and before the sampling warpers.
        skip_special_tokens (`bool`, *optional*, defaults to `True`): leave special tokens out of `TextDelta.text`.
        output_conditioning (`bool`, *optional*, defaults to `False`): put the decoder's conditioning rows in
            `Done.stats.conditioning`.
        token2wav ([`OpenS2SToken2Wav`] or `False`, *optional*):
            The unit-to-speech decoder that turns units into [`AudioChunk`]s; defaults to the one attached with
            `model.attach_token2wav()`. `False` (or none attached) streams units only. Needs the unit vocabulary
            (`processor` or `unit_tokenizer`).
        token2wav_mode (`str`, *optional*, defaults to `"blocks"`): its streaming schedule (see
            `OpenS2SToken2Wav.start_stream`); `"original"` reproduces OpenS2S's 24-unit loop.
        token2wav_speaker_embedding (`torch.FloatTensor` of shape `(1, 192)`, *optional*): its x-vector voice.
        token2wav_generator (`torch.Generator`, *optional*): its random source (`"blocks"` mode).
        token2wav_compile (`bool`, *optional*, defaults to `compile`): `"blocks"` mode: its flow estimator compiled
            for the schedule's fixed chunk shapes (see `OpenS2SToken2Wav.start_stream`; the first chunk of each
            shape compiles, which takes minutes on CPU at full size).
        seed (`int`, *optional*): seeds `generator` (on the model's device) and `token2wav_generator` when they are
            not given, so a sampled answer is reproducible whatever runs beside it.
        compile (`bool`, *optional*, defaults to `False`): the fast path: static key/value caches and compiled
            single-position steps (see `OpenS2SEngine`); the first call of a shape compiles (counted in
            `Done.stats.stage_seconds["compile"]`), later calls reuse it. Same greedy ids as the eager path.
        kwargs: standard generation arguments (`do_sample`, `temperature`, `top_k`, `top_p`, `min_p`,
            `repetition_penalty`, `suppress_tokens`, `eos_token_id`, any [`GenerationConfig`] field) update a copy of
            `generation_config` for the LLM; the same names prefixed `speech_` (`speech_do_sample`, ...) update a copy
            of `speech_generation_config`. What the speech path cannot do (`num_beams > 1`, `assistant_model`,
            contrastive search, ...) raises a `ValueError` that points at `generate(return_speech=False)`.

    Repetition penalties look at the ids this stream generated (per LM), not at the prompt.

    Yields:
        [`TextDelta`], [`SpeechUnits`], [`AudioChunk`] and, last, [`Done`].
    """
    # One engine with one conversation: the same loop that serves many conversations at once.
    engine = OpenS2SEngine(model, max_active=1, max_queued=0, compile=compile)
    conversation = engine.submit({"input_ids": input_ids}, **kwargs)
    try:
        yield from conversation
    finally:
        conversation.cancel()  # a consumer that stops early frees the caches at once
