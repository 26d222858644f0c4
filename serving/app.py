"""The FastAPI app of `opens2s serve`: OpenAI-compatible Chat Completions with speech in and out, the realtime
WebSocket, models, health and Prometheus metrics.

Routes:
- `POST /v1/chat/completions`: user messages with `text` and `input_audio` parts; `stream: true` answers with
  server-sent events (text, audio chunks as token2wav produces them, then a usage chunk and `[DONE]`);
- `GET /v1/models`, `GET /health`, `GET /metrics`;
- `WS /v1/realtime`: the OpenAI Realtime protocol's core (see `opens2s.serving.realtime`).

Errors use OpenAI's JSON shape `{"error": {"message", "type", "param", "code"}}`. Every response carries
`X-OpenS2S-Replica` (host and process id), which tells replicas behind one endpoint apart.
"""

import asyncio
import base64
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator

import numpy as np
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from opens2s.serving import protocol
from opens2s.serving.protocol import APIError
from opens2s.serving.server import OpenS2SServer


__all__ = ["build_app"]

logger = logging.getLogger(__name__)

CHAT_ENDPOINT = "/v1/chat/completions"
# How often a non-streaming request checks whether its client is still connected, seconds.
DISCONNECT_POLL_SECONDS = 0.2


class ReplicaHeader:
    """ASGI middleware adding `X-OpenS2S-Replica` to every HTTP response (a plain ASGI wrapper: Starlette's
    `BaseHTTPMiddleware` would buffer streams and hide client disconnects)."""

    def __init__(self, app, replica: str):
        self.app, self.header = app, (b"x-opens2s-replica", replica.encode())

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_header(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), self.header]
            await send(message)

        return await self.app(scope, receive, send_with_header)


def error_response(server: OpenS2SServer, endpoint: str, error: APIError) -> JSONResponse:
    server.metrics.error(error.code)
    server.metrics.request(endpoint, error.status)
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def check_key(server: OpenS2SServer, authorization: str | None) -> None:
    """Raise 401 `invalid_api_key` unless the server has no key or `authorization` is `Bearer <key>`."""
    if server.api_key is None:
        return
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), server.api_key.encode()):
        raise APIError(401, "invalid or missing API key", "authentication_error", "invalid_api_key")


async def read_body(request: Request, limit: int) -> dict:
    """The JSON body, refused with 413 `body_too_large` as soon as it passes `limit` bytes (a declared
    `Content-Length` is checked before anything is read)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"request body over {limit} bytes", code="body_too_large")
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise APIError(413, f"request body over {limit} bytes", code="body_too_large")
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise APIError(400, f"the body is not JSON: {error}", code="invalid_json") from None


def _sse(payload: dict | str) -> bytes:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n".encode()


class Answer:
    """One Chat Completions answer being produced: ids, timing and the collected text."""

    def __init__(self, server: OpenS2SServer, request: protocol.ChatRequest, arrived: float):
        self.server, self.request, self.arrived = server, request, arrived
        self.id, self.audio_id = protocol.new_id("chatcmpl"), protocol.new_id("audio")
        self.text, self.first_audio = "", None
        self.expires_at = int(time.time()) + 3600

    def saw_audio(self) -> None:
        if self.first_audio is None:
            self.first_audio = time.monotonic() - self.arrived
            self.server.metrics.first_audio(self.first_audio)

    def delta(self, event) -> dict | None:
        """The stream delta of one event (`None` for events a client does not see)."""
        if event.kind == "text" and event.text:
            self.text += event.text
            if self.request.speak:
                return {"audio": {"id": self.audio_id, "transcript": event.text}}
            return {"content": event.text}
        if event.kind == "audio":
            self.saw_audio()
            data = protocol.audio_bytes(event.pcm, event.sample_rate, self.request.audio_format)
            encoded = base64.b64encode(data).decode()
            return {"audio": {"id": self.audio_id, "data": encoded, "expires_at": self.expires_at}}
        return None


async def _stream_answer(server: OpenS2SServer, answer: Answer, conversation, prompt_tokens: int) -> AsyncIterator:
    model = server.model_id
    yield _sse(
        protocol.chunk(answer.id, model, {"role": "assistant", "content": None if answer.request.speak else ""})
    )
    status = 200
    try:
        async for event in server.events(conversation):
            if event.kind == "done":
                stats = event.stats
                server.remember(answer.audio_id, answer.text)
                yield _sse(protocol.chunk(answer.id, model, {}, protocol.finish_reason(stats)))
                if answer.request.include_usage:
                    yield _sse(protocol.chunk(answer.id, model, None, usage=protocol.usage(prompt_tokens, stats)))
                yield _sse("[DONE]")
            elif (delta := answer.delta(event)) is not None:
                yield _sse(protocol.chunk(answer.id, model, delta))
    except APIError as error:  # headers are sent already: the error is the stream's last event
        status = error.status
        server.metrics.error(error.code)
        yield _sse(error.body())
    except asyncio.CancelledError:
        status = 499  # the client went away; `events` cancelled the conversation
        server.metrics.error("client_disconnected")
        raise
    finally:
        server.metrics.request(CHAT_ENDPOINT, status)


async def _collect_answer(server: OpenS2SServer, answer: Answer, conversation, prompt_tokens: int) -> dict:
    audio, stats = [], None
    async for event in server.events(conversation):
        if event.kind == "text":
            answer.delta(event)
        elif event.kind == "audio":
            answer.saw_audio()
            audio.append(event.pcm)
        elif event.kind == "done":
            stats = event.stats
    message_audio = None
    if answer.request.speak and audio:
        data = protocol.audio_bytes(np.concatenate(audio), server.output_rate, answer.request.audio_format)
        message_audio = {
            "id": answer.audio_id,
            "data": base64.b64encode(data).decode(),
            "transcript": answer.text,
            "expires_at": answer.expires_at,
        }
        server.remember(answer.audio_id, answer.text)
    return protocol.completion(answer.id, server.model_id, answer.text, message_audio, stats, prompt_tokens)


async def _until_disconnect(request: Request, task: asyncio.Task) -> None:
    while not task.done():
        if await request.is_disconnected():
            task.cancel()  # cancels the conversation through `OpenS2SServer.events`
            return
        await asyncio.sleep(DISCONNECT_POLL_SECONDS)


def build_app(server: OpenS2SServer) -> FastAPI:
    """The FastAPI app serving `server` (wrapped in the replica-header middleware)."""
    app = FastAPI(title="OpenS2S", description="OpenAI-compatible speech-to-speech API", docs_url=None)
    app.state.server = server

    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError) -> JSONResponse:
        return error_response(server, request.url.path, error)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": server.model_id, "replica": server.replica, **server.backend.stats()}

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(server.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        check_key(server, request.headers.get("authorization"))
        entry = {"id": server.model_id, "object": "model", "created": 0, "owned_by": "opens2s"}
        return {"object": "list", "data": [entry]}

    @app.post(CHAT_ENDPOINT)
    async def chat_completions(request: Request) -> Response:
        arrived = time.monotonic()
        check_key(server, request.headers.get("authorization"))
        body = await read_body(request, server.limits.max_body_bytes)
        if isinstance(body, dict) and body.get("model") not in (None, server.model_id):
            raise APIError(
                404, f"model {body.get('model')!r} is not served here", code="model_not_found", param="model"
            )
        parsed = await asyncio.to_thread(
            protocol.parse_chat_request,
            body,
            server.voices,
            server.limits.max_audio_seconds,
            server.input_rate,
            server.transcripts(),
        )
        conversation, prompt_tokens = server.submit_chat(parsed)
        answer = Answer(server, parsed, arrived)
        if parsed.stream:
            return StreamingResponse(
                _stream_answer(server, answer, conversation, prompt_tokens),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        task = asyncio.ensure_future(_collect_answer(server, answer, conversation, prompt_tokens))
        watcher = asyncio.ensure_future(_until_disconnect(request, task))
        try:
            result = await task
        except asyncio.CancelledError:
            server.metrics.error("client_disconnected")
            server.metrics.request(CHAT_ENDPOINT, 499)
            raise
        finally:
            watcher.cancel()
        server.metrics.request(CHAT_ENDPOINT, 200)
        return JSONResponse(result)

    @app.websocket("/v1/realtime")
    async def realtime(websocket: WebSocket) -> None:
        from opens2s.serving.realtime import RealtimeSession

        await RealtimeSession(server, websocket).run()

    return app


def build_asgi(server: OpenS2SServer):
    """[`build_app`] wrapped in [`ReplicaHeader`]: what uvicorn and Ray Serve run."""
    return ReplicaHeader(build_app(server), server.replica)
