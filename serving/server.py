"""The server's model side, shared by the HTTP routes, the realtime WebSocket and the Ray Serve replicas: one loaded
model, its voices, the backend that admits answers, the limits, and the metrics.

Requests become processor inputs with `opens2s.processing.chat.chat_inputs` (the chat template) and run as one
backend conversation each; the web layer consumes the conversation's events asynchronously through
[`OpenS2SServer.events`], which cancels the conversation when the consumer stops (client gone, timeout, barge-in).
"""

import asyncio
import copy
import logging
import os
import socket
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from opens2s.processing.chat import SpeechModel, chat_inputs, seeded_stream_kwargs
from opens2s.processing.voices import find_speakers, load_voice
from opens2s.serving.backend import EngineFull, make_backend
from opens2s.serving.metrics import Metrics
from opens2s.serving.protocol import DEFAULT_VOICE, APIError, ChatRequest


__all__ = ["LogitBias", "OpenS2SServer", "ServerLimits", "load_voices"]

logger = logging.getLogger(__name__)

_END = object()
# Answers whose transcript the server remembers, so that a later request may refer to them by `audio.id`.
TRANSCRIPTS_KEPT = 1024


class LogitBias(LogitsProcessor):
    """OpenAI's `logit_bias`: a fixed number added to the text logits of some token ids (-100 bans a token)."""

    def __init__(self, bias: dict[int, float]):
        self.token_ids = torch.tensor(list(bias), dtype=torch.long)
        self.values = torch.tensor(list(bias.values()), dtype=torch.float32)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        token_ids = self.token_ids.to(scores.device)
        scores = scores.clone()
        scores[:, token_ids] += self.values.to(scores.device, scores.dtype)
        return scores


@dataclass
class ServerLimits:
    """What one server accepts (the `opens2s serve` options of the same names).

    Args:
        max_body_mb (`float`, *optional*, defaults to 25): largest request body, MB (2**20 bytes); else 413.
        max_audio_seconds (`float`, *optional*, defaults to 120): input audio per request (all parts together), read
            from the files' headers before decoding; else 400 `audio_too_long`.
        max_active (`int`, *optional*, defaults to 8): answers generated at the same time.
        max_queued (`int`, *optional*, defaults to 32): admitted answers waiting for a slot; more get 429 with
            `Retry-After`.
        timeout (`float`, *optional*, defaults to 300): seconds one answer may take; the answer is then stopped and
            504 `timeout` is returned (or sent as the stream's last event).
        retry_after (`int`, *optional*, defaults to 1): the `Retry-After` seconds of a 429.
    """

    max_body_mb: float = 25.0
    max_audio_seconds: float = 120.0
    max_active: int = 8
    max_queued: int = 32
    timeout: float = 300.0
    retry_after: int = 1

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 2**20)


def load_voices(name_or_path, speaker_embedding_dim: int) -> dict[str, dict]:
    """`{"default": {}}` (the all-zero speaker embedding) plus every voice file found with the model, by name."""
    voices = {DEFAULT_VOICE: {}}
    for name, path in find_speakers(name_or_path).items():
        if (voice := load_voice(path, speaker_embedding_dim)) is not None:
            voices[name] = voice
    return voices


class OpenS2SServer:
    """One model served: voices, admission, sampling settings, metrics.

    Args:
        speech_model ([`SpeechModel`]): from `opens2s.processing.chat.load_speech_model`.
        model_id (`str`): the name `/v1/models` lists and requests give as `model`.
        voices (`dict[str, dict]`): `model.stream` voice arguments by name (see [`load_voices`]).
        limits ([`ServerLimits`], *optional*): the defaults when absent.
        api_key (`str`, *optional*): when set, every `/v1` request needs `Authorization: Bearer <api_key>`.
        max_units (`int`, *optional*): speech unit budget per answer (12.5 units per second of speech); default the
            model's speech generation config.
        compile (`bool`, *optional*, defaults to `False`): the engine's fast path (static caches and compiled decode
            steps, CUDA graphs on a GPU); the first answers of each shape pay the compilation.
    """

    def __init__(
        self,
        speech_model: SpeechModel,
        model_id: str,
        voices: dict[str, dict] | None = None,
        limits: ServerLimits | None = None,
        api_key: str | None = None,
        max_units: int | None = None,
        compile: bool = False,
    ):
        self.speech_model, self.model_id = speech_model, model_id
        self.voices = voices if voices is not None else {DEFAULT_VOICE: {}}
        self.limits = limits or ServerLimits()
        self.api_key, self.max_units = api_key or None, max_units
        self.replica = f"{socket.gethostname()}-{os.getpid()}"
        model = speech_model.model
        self.backend = make_backend(
            model,
            speech_model.processor,
            max_active=self.limits.max_active,
            max_queued=self.limits.max_queued,
            compile=compile,
        )
        self.backend.start()
        self.metrics = Metrics(self.backend.stats)
        self._transcripts: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def input_rate(self) -> int:
        """The rate questions are read at (the feature extractor's, 16 kHz)."""
        return self.speech_model.processor.feature_extractor.sampling_rate

    @property
    def output_rate(self) -> int | None:
        """The spoken answer's sample rate (22.05 kHz for the released decoder); `None` without token2wav."""
        token2wav = self.speech_model.model.token2wav
        return token2wav.sampling_rate if token2wav is not None else None

    def close(self) -> None:
        self.backend.stop()

    # ------------------------------------------------------------------ transcripts
    def remember(self, audio_id: str, transcript: str) -> None:
        with self._lock:
            self._transcripts[audio_id] = transcript
            while len(self._transcripts) > TRANSCRIPTS_KEPT:
                self._transcripts.popitem(last=False)

    def transcripts(self) -> dict[str, str]:
        with self._lock:
            return dict(self._transcripts)

    # ------------------------------------------------------------------ answers
    def stream_kwargs(
        self,
        voice: str,
        speak: bool,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        logit_bias: dict[int, float] | None = None,
    ) -> dict:
        """`model.stream` arguments of one answer: the voice, the budget, the text sampling on top of the model's
        generation config (which stays untouched; temperature 0 decodes greedily) and the seed."""
        model = self.speech_model.model
        kwargs = dict(self.voices[voice])
        if max_new_tokens is not None:
            kwargs["max_new_tokens"] = max_new_tokens
        if self.max_units is not None:
            kwargs["speech_max_new_tokens"] = self.max_units
        if temperature is not None or top_p is not None:
            config = copy.deepcopy(model.generation_config)
            if temperature is not None:
                config.do_sample = temperature > 0
                if config.do_sample:
                    config.temperature = temperature
            if top_p is not None:
                config.top_p = top_p
            kwargs["generation_config"] = config
        if logit_bias:
            kwargs["text_logits_processor"] = LogitsProcessorList([LogitBias(logit_bias)])
        if not speak or model.token2wav is None:
            kwargs["token2wav"] = False
        return seeded_stream_kwargs(model, seed, kwargs)

    def submit(self, messages: list[dict], stream_kwargs: dict):
        """Admit one answer to template `messages`: `(conversation, prompt_tokens)`.

        Raises:
            [`APIError`] 400 when the processor refuses the input (audio too short, ...), 429 when the backend is
            full.
        """
        try:
            inputs = chat_inputs(self.speech_model.processor, messages)
        except ValueError as error:
            raise APIError(400, f"cannot build the prompt: {error}", code="invalid_input", param="messages") from None
        try:
            conversation = self.backend.submit(dict(inputs), **stream_kwargs)
        except EngineFull:
            raise APIError(
                429,
                "the server is at its limit of active and queued conversations; retry later",
                type="rate_limit_error",
                code="queue_full",
                headers={"Retry-After": str(self.limits.retry_after)},
            ) from None
        return conversation, int(inputs["input_ids"].shape[-1])

    def submit_chat(self, request: ChatRequest):
        """[`submit`] for a parsed Chat Completions request."""
        kwargs = self.stream_kwargs(
            request.voice,
            request.speak,
            request.max_new_tokens,
            request.temperature,
            request.top_p,
            request.seed,
            request.logit_bias,
        )
        return self.submit(request.messages, kwargs)

    async def events(self, conversation, timeout: float | None = None) -> AsyncIterator:
        """The conversation's events, awaited without blocking the event loop (a thread iterates it).

        Whenever this iterator ends (the last event, an error, a timeout, or the consumer leaving: a client
        disconnect cancels the task awaiting it), the conversation is cancelled, so its caches are freed.

        Raises:
            [`APIError`] 504 `timeout` after `timeout` seconds (default: the server's limit), 500 `generation_failed`
            when the model raised.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def put(item) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the event loop is gone (server shutting down): nobody is listening
                pass

        def pump() -> None:
            try:
                for event in conversation:
                    put(event)
            except Exception as error:  # noqa: BLE001 - reported to the client as generation_failed
                put(error)
            finally:
                put(_END)

        threading.Thread(target=pump, name="opens2s-events", daemon=True).start()
        deadline = loop.time() + (self.limits.timeout if timeout is None else timeout)
        try:
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), max(deadline - loop.time(), 0.0))
                except TimeoutError:
                    raise APIError(
                        504, "the answer took longer than the server's timeout", "server_error", "timeout"
                    ) from None
                if item is _END:
                    return
                if isinstance(item, Exception):
                    raise APIError(500, f"generation failed: {item}", "server_error", "generation_failed")
                yield item
        finally:
            conversation.cancel()
