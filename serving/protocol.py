"""The OpenAI wire formats the server speaks: errors, Chat Completions requests with `input_audio` parts, responses
and stream chunks, base64 audio in and out.

Only the standard library, numpy and `opens2s.processing`'s audio reader: no web framework here.
"""

import base64
import binascii
import io
import time
import uuid
import wave
from dataclasses import dataclass

import numpy as np

from opens2s.processing.audio_io import AudioError, load_audio


__all__ = [
    "AUDIO_FORMATS",
    "APIError",
    "ChatRequest",
    "audio_bytes",
    "chunk",
    "completion",
    "decode_audio",
    "error_body",
    "finish_reason",
    "new_id",
    "parse_chat_request",
    "pcm16",
    "usage",
]

# Output formats: `wav` (16-bit mono wav; in a stream every chunk is a whole small wav file) and `pcm16` (raw 16-bit
# little-endian mono samples at the model's rate, what OpenAI streams).
AUDIO_FORMATS = ("wav", "pcm16")
INPUT_FORMATS = ("wav", "mp3", "flac")
DEFAULT_VOICE = "default"


class APIError(Exception):
    """An error answered in OpenAI's JSON shape: `{"error": {"message", "type", "param", "code"}}`.

    Args:
        status (`int`): the HTTP status.
        message (`str`): what is wrong, for a person.
        type (`str`): OpenAI's error type (`invalid_request_error`, `authentication_error`, `rate_limit_error`,
            `server_error`, ...).
        code (`str`): a stable machine-readable reason; also the `reason` label of the errors metric.
        param (`str`, *optional*): the request field at fault.
        headers (`dict`, *optional*): extra response headers (`Retry-After` for 429).
    """

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        code: str = "invalid_request",
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param
        self.headers = headers or {}

    def body(self) -> dict:
        return error_body(self.message, self.type, self.code, self.param)


def error_body(message: str, type: str, code: str, param: str | None = None) -> dict:
    """OpenAI's error JSON."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


@dataclass
class ChatRequest:
    """A parsed Chat Completions request.

    Args:
        messages (`list[dict]`): chat messages for the processor's template: contents are lists of `text` items and
            `audio` items (mono float32 waveforms at 16 kHz).
        stream (`bool`): answer as server-sent events.
        speak (`bool`): `"audio"` in `modalities`: synthesise the answer's speech.
        voice (`str`): a voice name of the server.
        audio_format (`str`): one of `AUDIO_FORMATS`.
        max_new_tokens (`int`, *optional*): `max_completion_tokens` (or the older `max_tokens`).
        temperature, top_p (`float`, *optional*): text sampling; temperature 0 decodes greedily.
        include_usage (`bool`): `stream_options.include_usage` (default true): end a stream with a usage chunk.
        seed (`int`, *optional*): seeds sampling and the voice's noise (reproducible answers).
        logit_bias (`dict[int, float]`, *optional*): added to the text logits of those token ids (-100 bans one).
    """

    messages: list[dict]
    stream: bool = False
    speak: bool = True
    voice: str = DEFAULT_VOICE
    audio_format: str = "wav"
    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    logit_bias: dict[int, float] | None = None
    include_usage: bool = True
    audio_seconds: float = 0.0


def decode_audio(data: str, audio_format: str | None, max_seconds: float, sampling_rate: int) -> np.ndarray:
    """A base64 audio file as mono float32 at `sampling_rate` Hz, after checking its length from its header.

    Raises:
        [`APIError`] 400: not base64, an unsupported format, a file soundfile cannot read, longer than
            `max_seconds`, empty, or holding NaN/Inf samples.
    """
    if audio_format is not None and audio_format not in INPUT_FORMATS:
        raise APIError(400, f"input_audio format must be one of {INPUT_FORMATS}", code="invalid_audio_format")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise APIError(400, "input_audio.data is not valid base64", code="invalid_audio", param="messages") from None
    try:  # load_audio reads the length from the header and refuses a long file before decoding its samples
        return load_audio(raw, target_sampling_rate=sampling_rate, max_seconds=max_seconds)
    except AudioError as error:
        code = "audio_too_long" if error.reason == "audio too long" else "invalid_audio"
        raise APIError(400, f"input_audio: {error}", code=code, param="messages") from None
    except ValueError as error:
        raise APIError(400, f"input_audio: {error}", code="invalid_audio", param="messages") from None


def _text_of(content, role: str) -> str:
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    texts = []
    for part in content:
        if not isinstance(part, dict) or part.get("type") != "text":
            raise APIError(400, f"{role} messages may hold text parts only", param="messages")
        texts.append(str(part.get("text", "")))
    return "".join(texts)


def _user_content(content, max_seconds: float, sampling_rate: int, budget: list[float]) -> list[dict]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list) or not content:
        raise APIError(400, "user message content must be a string or a non-empty list of parts", param="messages")
    items = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            items.append({"type": "text", "text": str(part.get("text", ""))})
        elif kind == "input_audio":
            audio = part.get("input_audio") or {}
            waveform = decode_audio(audio.get("data", ""), audio.get("format"), budget[0], sampling_rate)
            budget[0] -= waveform.shape[0] / sampling_rate
            items.append({"type": "audio", "audio": waveform})
        else:
            raise APIError(400, f"unsupported content part type {kind!r} (text, input_audio)", param="messages")
    return items


def _messages(raw, max_seconds: float, sampling_rate: int, transcripts: dict[str, str]) -> tuple[list[dict], float]:
    """Template messages from OpenAI messages; earlier assistant turns become their text (an `audio: {id}` reference
    is replaced by that answer's transcript, while the server remembers it)."""
    if not isinstance(raw, list) or not raw:
        raise APIError(400, "messages must be a non-empty list", param="messages")
    budget = [max_seconds]  # all audio of the request together
    messages = []
    for message in raw:
        role = message.get("role") if isinstance(message, dict) else None
        if role in ("system", "developer"):
            messages.append(
                {"role": "system", "content": [{"type": "text", "text": _text_of(message["content"], role)}]}
            )
        elif role == "user":
            messages.append(
                {"role": "user", "content": _user_content(message.get("content"), max_seconds, sampling_rate, budget)}
            )
        elif role == "assistant":
            text = _text_of(message.get("content"), role)
            if not text and isinstance(message.get("audio"), dict):
                text = transcripts.get(message["audio"].get("id"), "")
            messages.append({"role": "assistant", "content": [{"type": "text", "text": text}]})
        else:
            raise APIError(
                400, f"unsupported message role {role!r} (system, developer, user, assistant)", param="messages"
            )
    if messages[-1]["role"] != "user":
        raise APIError(400, "the last message must be the user's", param="messages")
    return messages, max_seconds - budget[0]


def _number(body: dict, name: str, kind: type, low: float, high: float | None = None):
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise APIError(400, f"{name} must be a {kind.__name__}", param=name)
    if value < low or (high is not None and value > high):
        raise APIError(400, f"{name} must be in [{low}, {high if high is not None else 'inf'}]", param=name)
    return kind(value)


def parse_chat_request(
    body: dict, voices, max_seconds: float, sampling_rate: int, transcripts: dict[str, str]
) -> ChatRequest:
    """Check a Chat Completions body and read its audio (see [`ChatRequest`]).

    Raises:
        [`APIError`] 400 for anything the server cannot answer as asked (unknown voice, unsupported format, `n > 1`,
        bad audio, ...).
    """
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    if body.get("n", 1) != 1:
        raise APIError(400, "only n=1 is supported", param="n")
    modalities = body.get("modalities") or (["text", "audio"] if body.get("audio") else ["text"])
    if not set(modalities) <= {"text", "audio"} or "text" not in modalities:
        raise APIError(400, "modalities must be ['text'] or ['text', 'audio']", param="modalities")
    audio = body.get("audio") or {}
    voice = audio.get("voice", DEFAULT_VOICE)
    if voice not in voices:
        raise APIError(
            400, f"unknown voice {voice!r}; this model has {sorted(voices)}", code="invalid_voice", param="audio.voice"
        )
    stream = bool(body.get("stream", False))
    audio_format = audio.get("format", "pcm16" if stream else "wav")
    if audio_format not in AUDIO_FORMATS:
        raise APIError(
            400, f"audio.format must be one of {AUDIO_FORMATS}", code="invalid_audio_format", param="audio.format"
        )
    max_new_tokens = _number(body, "max_completion_tokens", int, 1)
    if max_new_tokens is None:
        max_new_tokens = _number(body, "max_tokens", int, 1)
    logit_bias = body.get("logit_bias")
    if logit_bias is not None:
        try:
            logit_bias = {int(token): float(bias) for token, bias in logit_bias.items()}
        except (AttributeError, TypeError, ValueError):
            raise APIError(400, "logit_bias maps token ids to numbers", param="logit_bias") from None
        if any(not -100 <= bias <= 100 for bias in logit_bias.values()):
            raise APIError(400, "logit_bias values must be in [-100, 100]", param="logit_bias")
    messages, audio_seconds = _messages(body.get("messages"), max_seconds, sampling_rate, transcripts)
    return ChatRequest(
        messages=messages,
        stream=stream,
        speak="audio" in modalities,
        voice=voice,
        audio_format=audio_format,
        max_new_tokens=max_new_tokens,
        temperature=_number(body, "temperature", float, 0.0, 2.0),
        top_p=_number(body, "top_p", float, 0.0, 1.0),
        seed=_number(body, "seed", int, -(2**63)),
        logit_bias=logit_bias or None,
        audio_seconds=audio_seconds,
        include_usage=bool((body.get("stream_options") or {}).get("include_usage", True)),
    )


def pcm16(pcm: np.ndarray) -> bytes:
    """Float samples in [-1, 1] (clipped) of shape `(num_samples,)` as 16-bit little-endian PCM."""
    return (np.clip(pcm, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


def audio_bytes(pcm: np.ndarray, sample_rate: int, audio_format: str) -> bytes:
    """`pcm` as `audio_format`: raw 16-bit PCM, or a whole mono 16-bit wav file."""
    samples = pcm16(pcm)
    if audio_format == "pcm16":
        return samples
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(sample_rate)
        writer.writeframes(samples)
    return buffer.getvalue()


def usage(prompt_tokens: int, stats) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": stats.num_text_tokens,
        "total_tokens": prompt_tokens + stats.num_text_tokens,
        "completion_tokens_details": {"audio_tokens": stats.num_units or 0},
    }


def finish_reason(stats) -> str:
    return "stop" if stats.text_stop_reason == "eos" else "length"


def chunk(
    completion_id: str, model: str, delta: dict | None, finish: str | None = None, usage: dict | None = None
) -> dict:
    """One `chat.completion.chunk`; `delta=None` gives the final usage chunk (no choices)."""
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    body = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
    }
    if usage is not None:
        body["usage"] = usage
    return body


def completion(
    completion_id: str,
    model: str,
    text: str,
    audio: dict | None,
    stats,
    prompt_tokens: int,
) -> dict:
    """A whole `chat.completion`: with audio, the text is `message.audio.transcript` (and `content` is null), as
    OpenAI answers."""
    message = {"role": "assistant", "content": None if audio else text, "refusal": None}
    if audio:
        message["audio"] = audio
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(stats), "logprobs": None}],
        "usage": usage(prompt_tokens, stats),
    }
