"""`/v1/realtime`: the core of the OpenAI Realtime WebSocket protocol on OpenS2S.

Client events: `session.update`, `input_audio_buffer.append` / `.commit` / `.clear`, `conversation.item.create`
(user text or audio), `response.create`, `response.cancel`. Server events: `session.created`, `session.updated`,
`input_audio_buffer.committed` / `.cleared` / `.speech_started` / `.speech_stopped`, `conversation.item.created`,
`response.created`, `response.audio_transcript.delta`, `response.audio.delta`, `response.audio.done`,
`response.audio_transcript.done`, `response.done` (`status` `completed` or `cancelled`), `error`.

Audio is base64 16-bit little-endian mono PCM at 24 kHz both ways (OpenAI's `pcm16`); the session field
`input_audio_sample_rate` (an extension) changes the input rate. Turn detection is off by default; with
`"turn_detection": {"type": "server_vad", "threshold", "silence_duration_ms", "prefix_padding_ms"}` (needs
`silero-vad`) the server commits the buffer and answers when the speaker stops, and speech starting while an answer
plays cancels it (barge-in), so a client can just stream its microphone. `response.cancel` stops the answer at once.
Earlier turns stay in the conversation (the answers as their text).
"""

import asyncio
import base64
import binascii
import hmac
import json
import logging
import time

import numpy as np
from fastapi import WebSocket, WebSocketDisconnect

from opens2s.serving.protocol import DEFAULT_VOICE, APIError, new_id, pcm16
from opens2s.serving.server import OpenS2SServer


__all__ = ["REALTIME_RATE", "RealtimeSession"]

logger = logging.getLogger(__name__)

REALTIME_RATE = 24000  # OpenAI Realtime's pcm16 rate
KEY_SUBPROTOCOL = "openai-insecure-api-key."  # browsers cannot set headers: the key rides in a subprotocol
DEFAULT_VAD = {"type": "server_vad", "threshold": 0.5, "silence_duration_ms": 500, "prefix_padding_ms": 300}


def _error(code: str, message: str, event_id: str | None = None) -> dict:
    body = {"type": "invalid_request_error", "code": code, "message": message, "param": None, "event_id": event_id}
    return {"type": "error", "event_id": new_id("event"), "error": body}


class RealtimeSession:
    """One WebSocket connection: its session settings, input buffer, conversation and at most one answer."""

    def __init__(self, server: OpenS2SServer, websocket: WebSocket):
        self.server, self.websocket = server, websocket
        self.session = {
            "id": new_id("sess"),
            "object": "realtime.session",
            "model": server.model_id,
            "modalities": ["text", "audio"],
            "voice": DEFAULT_VOICE,
            "input_audio_format": "pcm16",
            "output_audio_format": "pcm16",
            "input_audio_sample_rate": REALTIME_RATE,
            "turn_detection": None,
            "instructions": None,
            "temperature": None,
            "max_response_output_tokens": "inf",
            "seed": None,  # an extension: reproducible answers
        }
        self.buffer: list[np.ndarray] = []  # 16 kHz
        self.items: list[dict] = []  # template messages of the conversation
        self.response: asyncio.Task | None = None
        self.detector = None
        self._send_lock = asyncio.Lock()

    # ------------------------------------------------------------------ plumbing
    async def send(self, event: dict) -> None:
        event.setdefault("event_id", new_id("event"))
        async with self._send_lock:
            await self.websocket.send_text(json.dumps(event))

    def _authorised(self) -> bool:
        if self.server.api_key is None:
            return True
        key = self.server.api_key.encode()
        scheme, _, token = (self.websocket.headers.get("authorization") or "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key):
            return True
        offered = self.websocket.scope.get("subprotocols") or []
        return any(
            p.startswith(KEY_SUBPROTOCOL) and hmac.compare_digest(p[len(KEY_SUBPROTOCOL) :].encode(), key)
            for p in offered
        )

    async def run(self) -> None:
        """Serve the connection until the client closes it; an answer in progress is cancelled then."""
        if not self._authorised():
            self.server.metrics.error("invalid_api_key")
            await self.websocket.close(code=1008, reason="invalid or missing API key")  # handshake refused (403)
            return
        offered = self.websocket.scope.get("subprotocols") or []
        await self.websocket.accept(subprotocol="realtime" if "realtime" in offered else None)
        await self.send({"type": "session.created", "session": self.session})
        try:
            while True:
                message = await self.websocket.receive_text()
                await self.handle(message)
        except WebSocketDisconnect:
            pass
        finally:
            await self.cancel_response()

    async def handle(self, message: str) -> None:
        try:
            event = json.loads(message)
            kind = event["type"]
        except (json.JSONDecodeError, KeyError, TypeError):
            await self.send(_error("invalid_event", "events are JSON objects with a `type`"))
            return
        handler = getattr(self, "on_" + kind.replace(".", "_"), None)
        if handler is None:
            await self.send(_error("unknown_event", f"unsupported event type {kind!r}", event.get("event_id")))
            return
        try:
            await handler(event)
        except APIError as error:
            self.server.metrics.error(error.code)
            await self.send(_error(error.code, error.message, event.get("event_id")))

    def _decode_pcm(self, data: str) -> np.ndarray:
        """Base64 pcm16 at the session's input rate as float32 at the model's input rate (16 kHz)."""
        from opens2s.processing.audio_io import resample

        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise APIError(400, "audio is not valid base64", code="invalid_audio") from None
        samples = np.frombuffer(raw[: len(raw) // 2 * 2], dtype="<i2").astype(np.float32) / 32768.0
        rate = int(self.session["input_audio_sample_rate"])
        return resample(samples, rate, self.server.input_rate) if samples.size else samples

    # ------------------------------------------------------------------ client events
    async def on_session_update(self, event: dict) -> None:
        update = event.get("session") or {}
        if "voice" in update and update["voice"] not in self.server.voices:
            raise APIError(400, f"unknown voice {update['voice']!r}", code="invalid_voice")
        for name in ("input_audio_format", "output_audio_format"):
            if update.get(name, "pcm16") != "pcm16":
                raise APIError(400, f"{name} must be pcm16", code="invalid_audio_format")
        detection = update.get("turn_detection", self.session["turn_detection"])
        if detection is not None:
            from opens2s.serving.vad import SpeechDetector, vad_available

            if not vad_available():
                raise APIError(400, "server_vad needs the silero-vad package on the server", code="vad_unavailable")
            detection = {**DEFAULT_VAD, **detection}
            self.detector = await asyncio.to_thread(
                SpeechDetector,
                detection["threshold"],
                detection["silence_duration_ms"],
                detection["prefix_padding_ms"],
            )
        else:
            self.detector = None
        known = {
            name: value for name, value in update.items() if name in self.session and name not in ("id", "object")
        }
        self.session.update(known, turn_detection=detection)
        await self.send({"type": "session.updated", "session": self.session})

    async def on_input_audio_buffer_append(self, event: dict) -> None:
        samples = self._decode_pcm(event.get("audio", ""))
        buffered = sum(chunk.shape[0] for chunk in self.buffer) + samples.shape[0]
        if buffered > self.server.limits.max_audio_seconds * self.server.input_rate:
            raise APIError(400, "the input audio buffer is over the server's audio limit", code="audio_too_long")
        self.buffer.append(samples)
        if self.detector is not None:
            for turn_event in await asyncio.to_thread(self.detector.push, samples):
                await self.on_turn_event(turn_event)

    async def on_turn_event(self, turn_event: str) -> None:
        if turn_event == "start":
            await self.send({"type": "input_audio_buffer.speech_started"})
            await self.cancel_response()  # barge-in
        else:
            await self.send({"type": "input_audio_buffer.speech_stopped"})
            await self.on_input_audio_buffer_commit({})
            await self.on_response_create({})

    async def on_input_audio_buffer_commit(self, event: dict) -> None:
        if not self.buffer:
            raise APIError(400, "the input audio buffer is empty", code="input_audio_buffer_commit_empty")
        waveform = np.concatenate(self.buffer)
        self.buffer = []
        item_id = new_id("item")
        self.items.append({"role": "user", "content": [{"type": "audio", "audio": waveform}]})
        await self.send({"type": "input_audio_buffer.committed", "item_id": item_id})
        await self.send(
            {"type": "conversation.item.created", "item": {"id": item_id, "type": "message", "role": "user"}}
        )

    async def on_input_audio_buffer_clear(self, event: dict) -> None:
        self.buffer = []
        if self.detector is not None:
            self.detector.reset()
        await self.send({"type": "input_audio_buffer.cleared"})

    async def on_conversation_item_create(self, event: dict) -> None:
        item = event.get("item") or {}
        if item.get("type") != "message" or item.get("role") not in ("user", "assistant", "system"):
            raise APIError(400, "only message items (user, assistant, system) are supported", code="invalid_item")
        content = []
        for part in item.get("content") or []:
            if part.get("type") in ("input_text", "text"):
                content.append({"type": "text", "text": str(part.get("text", ""))})
            elif part.get("type") == "input_audio":
                content.append({"type": "audio", "audio": self._decode_pcm(part.get("audio", ""))})
        self.items.append({"role": item["role"], "content": content})
        item_id = item.get("id") or new_id("item")
        await self.send({"type": "conversation.item.created", "item": {**item, "id": item_id}})

    async def on_response_create(self, event: dict) -> None:
        if self.response is not None and not self.response.done():
            raise APIError(400, "a response is in progress", code="conversation_already_has_active_response")
        if not self.items or self.items[-1]["role"] != "user":
            raise APIError(400, "nothing to answer: commit audio or create a user item first", code="no_input")
        self.response = asyncio.ensure_future(self.respond(event.get("response") or {}))

    async def on_response_cancel(self, event: dict) -> None:
        await self.cancel_response()

    async def cancel_response(self) -> None:
        """Stop the answer in progress (its generation stops at the next token) and wait for its `response.done`."""
        if self.response is not None and not self.response.done():
            self.response.cancel()
            try:
                await self.response
            except asyncio.CancelledError:
                pass

    # ------------------------------------------------------------------ answering
    def _messages(self) -> list[dict]:
        instructions = self.session.get("instructions")
        system = [{"role": "system", "content": [{"type": "text", "text": instructions}]}] if instructions else []
        return system + self.items

    async def respond(self, options: dict) -> None:
        """One answer: audio and transcript deltas as they are produced, then `response.done`."""
        import soxr

        server, settings = self.server, {**self.session, **options}
        budget = settings.get("max_response_output_tokens")
        kwargs = server.stream_kwargs(
            settings.get("voice", DEFAULT_VOICE),
            "audio" in settings.get("modalities", ["text", "audio"]),
            None if budget in (None, "inf") else int(budget),
            settings.get("temperature"),
            seed=settings.get("seed"),
        )
        response_id, item_id = new_id("resp"), new_id("item")
        ids = {"response_id": response_id, "item_id": item_id, "output_index": 0, "content_index": 0}
        status, text, stats = "cancelled", "", None
        await self.send({"type": "response.created", "response": {"id": response_id, "status": "in_progress"}})
        resampler, started = None, time.monotonic()
        try:
            conversation, prompt_tokens = server.submit(self._messages(), kwargs)
            async for event in server.events(conversation):
                if event.kind == "text" and event.text:
                    text += event.text
                    await self.send({"type": "response.audio_transcript.delta", **ids, "delta": event.text})
                elif event.kind == "audio":
                    if started is not None:
                        server.metrics.first_audio(time.monotonic() - started)
                        started = None
                    if resampler is None and event.sample_rate != REALTIME_RATE:
                        resampler = soxr.ResampleStream(event.sample_rate, REALTIME_RATE, 1, dtype="float32")
                    pcm = resampler.resample_chunk(event.pcm) if resampler is not None else event.pcm
                    delta = base64.b64encode(pcm16(pcm)).decode()
                    await self.send({"type": "response.audio.delta", **ids, "delta": delta})
                elif event.kind == "done":
                    stats, status = event.stats, "completed"
            if resampler is not None:
                tail = resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
                await self.send(
                    {"type": "response.audio.delta", **ids, "delta": base64.b64encode(pcm16(tail)).decode()}
                )
            await self.send({"type": "response.audio.done", **ids})
            await self.send({"type": "response.audio_transcript.done", **ids, "transcript": text})
        except APIError as error:
            status = "failed"
            server.metrics.error(error.code)
            await self.send(_error(error.code, error.message))
        finally:
            self.items.append({"role": "assistant", "content": [{"type": "text", "text": text}]})
            server.metrics.request("/v1/realtime", status)
            usage = None
            if stats is not None:
                usage = {"output_tokens": stats.num_text_tokens, "output_audio_units": stats.num_units or 0}
            done = {
                "id": response_id,
                "status": status,
                "output": [{"id": item_id, "transcript": text}],
                "usage": usage,
            }
            try:
                await asyncio.shield(self.send({"type": "response.done", "response": done}))
            except (WebSocketDisconnect, RuntimeError):  # the client is gone: nobody to tell
                pass
