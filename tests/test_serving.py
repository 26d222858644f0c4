"""`opens2s serve`: the OpenAI-compatible server on the tiny model, driven with the official `openai` client, raw HTTP
and the `websockets` client; a Ray Serve deployment with 2 replicas (slow).

The server runs in-process (uvicorn in a thread on 127.0.0.1, a free port), so answers can be compared with
`model.stream` on the same loaded model: same input and seed give the same text and the same 16-bit audio.
"""

import base64
import io
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch


pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from opens2s.processing.chat import EXAMPLE_WAV, load_speech_model, stream_reply  # noqa: E402
from opens2s.serving.app import build_asgi  # noqa: E402
from opens2s.serving.protocol import pcm16  # noqa: E402
from opens2s.serving.server import OpenS2SServer, ServerLimits, load_voices  # noqa: E402


KEY = "test-key"
MODEL_ID = "opens2s-tiny"
MAX_UNITS = 24  # speech budget per answer: keeps every answer of the random tiny model around a second on CPU
SHORT = 8  # max_completion_tokens of most requests
EOS_IDS = (384, 386)  # the tiny model's text EOS ids (its generation_config.json)
LONG = 1500  # an answer of ~30 s on CPU: one that ends within seconds was cancelled


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _audio_b64(path: Path = EXAMPLE_WAV) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode()


def _question(text: str | None = None) -> dict:
    parts = [{"type": "input_audio", "input_audio": {"data": _audio_b64(), "format": "wav"}}]
    if text:
        parts.insert(0, {"type": "text", "text": text})
    return {"role": "user", "content": parts}


@pytest.fixture(scope="module")
def served(tiny_model_dir, tmp_path_factory, single_thread):
    """`(server, base_url)`: the tiny model behind uvicorn, with a `calm` voice, an API key and small limits."""
    import uvicorn
    from safetensors.torch import save_file

    speech_model = load_speech_model(tiny_model_dir)
    voices_dir = tmp_path_factory.mktemp("voices")
    (voices_dir / "speakers").mkdir()
    dim = speech_model.model.config.speaker_embedding_dim
    save_file({"speaker_embedding": torch.linspace(-1, 1, dim)}, str(voices_dir / "speakers" / "calm.safetensors"))
    limits = ServerLimits(max_body_mb=1.0, max_audio_seconds=10.0, max_active=1, max_queued=1, timeout=60.0)
    server = OpenS2SServer(
        speech_model, MODEL_ID, load_voices(voices_dir, dim), limits, api_key=KEY, max_units=MAX_UNITS
    )
    port = _free_port()
    uvicorn_server = uvicorn.Server(uvicorn.Config(build_asgi(server), host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=uvicorn_server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uvicorn_server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield server, f"http://127.0.0.1:{port}"
    uvicorn_server.should_exit = True
    thread.join(timeout=10)
    server.close()


@pytest.fixture
def client(served):
    return openai.OpenAI(base_url=served[1] + "/v1", api_key=KEY, max_retries=0, timeout=60)


def _reference(server: OpenS2SServer, history=(), voice: str = "default", max_new_tokens: int = SHORT):
    """Text and 16-bit audio that `model.stream` gives for the example question with seed 0."""
    events = stream_reply(
        server.speech_model,
        EXAMPLE_WAV,
        seed=0,
        history=history,
        max_new_tokens=max_new_tokens,
        speech_max_new_tokens=MAX_UNITS,
        **server.voices[voice],
    )
    text, audio = "", []
    for event in events:
        if event.kind == "text":
            text += event.text
        elif event.kind == "audio":
            audio.append(event.pcm)
    return text, np.frombuffer(pcm16(np.concatenate(audio)), dtype="<i2")


def _wait_idle(server: OpenS2SServer, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while (stats := server.backend.stats())["active"] or stats["queued"]:
        assert time.monotonic() < deadline, f"conversations not freed: {stats}"
        time.sleep(0.05)


def _metric(base_url: str, line_start: str) -> float:
    text = httpx.get(base_url + "/metrics").text
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start)]
    return values[0] if values else 0.0


# ---------------------------------------------------------------------------------------------------------- answers
def test_non_streaming_answer_equals_model_stream(served, client):
    server, _ = served
    text, audio = _reference(server, voice="calm")
    response = client.chat.completions.create(
        model=MODEL_ID,
        messages=[_question()],
        modalities=["text", "audio"],
        audio={"voice": "calm", "format": "wav"},
        max_completion_tokens=SHORT,
        seed=0,
    )
    message = response.choices[0].message
    assert message.audio.transcript == text
    waveform, rate = soundfile.read(io.BytesIO(base64.b64decode(message.audio.data)), dtype="int16")
    assert rate == server.output_rate
    np.testing.assert_array_equal(waveform, audio)
    assert response.usage.completion_tokens == SHORT and response.usage.prompt_tokens > 0


def test_streaming_answer_equals_model_stream(served, client):
    server, base_url = served
    text, audio = _reference(server)
    before = _metric(base_url, "opens2s_first_audio_seconds_count")
    stream = client.chat.completions.create(
        model=MODEL_ID,
        messages=[_question()],
        modalities=["text", "audio"],
        audio={"voice": "default", "format": "pcm16"},
        max_completion_tokens=SHORT,
        seed=0,
        stream=True,
    )
    transcript, chunks, usage, audio_chunks = "", [], None, 0
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            delta_audio = getattr(choice.delta, "audio", None)
            if delta_audio is not None:
                transcript += delta_audio.transcript or ""
                if delta_audio.data:
                    chunks.append(base64.b64decode(delta_audio.data))
                    audio_chunks += 1
    assert transcript == text
    np.testing.assert_array_equal(np.frombuffer(b"".join(chunks), dtype="<i2"), audio)
    assert audio_chunks > 1, "audio is streamed in chunks as token2wav produces them"
    assert usage is not None and usage.completion_tokens == SHORT
    assert _metric(base_url, "opens2s_first_audio_seconds_count") == before + 1
    # The engine's work counters are exported: this answer's forwards and rendered chunks are in them.
    assert _metric(base_url, "opens2s_engine_forwards_total") >= SHORT
    assert _metric(base_url, "opens2s_engine_token2wav_chunks_total") >= 1


def test_multi_turn_feeds_earlier_answers_back_as_text(served, client):
    server, _ = served
    earlier = "I hear you. Tell me more."
    text, _ = _reference(server, history=[(EXAMPLE_WAV, earlier)])
    response = client.chat.completions.create(
        model=MODEL_ID,
        messages=[_question(), {"role": "assistant", "content": earlier}, _question()],
        max_completion_tokens=SHORT,
        seed=0,
    )
    assert response.choices[0].message.content == text, "text-only modality: the answer is in `content`"
    assert getattr(response.choices[0].message, "audio", None) is None


def test_models_health_and_text_parts(served, client):
    assert [model.id for model in client.models.list()] == [MODEL_ID]
    health = httpx.get(served[1] + "/health").json()
    assert health["status"] == "ok" and health["model"] == MODEL_ID
    response = client.chat.completions.create(
        model=MODEL_ID, messages=[_question("Please answer briefly.")], max_completion_tokens=2
    )
    assert response.choices[0].finish_reason in ("stop", "length")


# ---------------------------------------------------------------------------------------------------------- errors
def _error_of(call) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as caught:
        call()
    return caught.value


def test_documented_errors(served, client):
    _, base_url = served
    ask = client.chat.completions.create

    error = _error_of(lambda: ask(model=MODEL_ID, messages=[{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": base64.b64encode(b"not audio" * 50).decode(), "format": "wav"}}
    ]}]))  # fmt: skip
    assert error.status_code == 400 and error.code == "invalid_audio"

    long_wav = io.BytesIO()
    soundfile.write(long_wav, np.zeros(16000 * 12, dtype=np.float32), 16000, format="WAV", subtype="PCM_16")
    long_part = {"type": "input_audio", "input_audio": {"data": base64.b64encode(long_wav.getvalue()).decode()}}
    error = _error_of(lambda: ask(model=MODEL_ID, messages=[{"role": "user", "content": [long_part]}]))
    assert error.status_code == 400 and error.code == "audio_too_long"

    error = _error_of(lambda: ask(model=MODEL_ID, messages=[{"role": "user", "content": "x" * (2 * 2**20)}]))
    assert error.status_code == 413 and error.code == "body_too_large"

    error = _error_of(lambda: ask(model=MODEL_ID, messages=[_question()], audio={"voice": "alloy", "format": "wav"}))
    assert error.status_code == 400 and error.code == "invalid_voice" and error.param == "audio.voice"

    wrong = openai.OpenAI(base_url=base_url + "/v1", api_key="wrong", max_retries=0)
    error = _error_of(lambda: wrong.chat.completions.create(model=MODEL_ID, messages=[_question()]))
    assert isinstance(error, openai.AuthenticationError) and error.code == "invalid_api_key"
    assert httpx.get(base_url + "/v1/models").status_code == 401, "no key at all"
    assert _metric(base_url, 'opens2s_errors_total{reason="invalid_voice"}') >= 1


def _open_stream(base_url: str, max_tokens: int = LONG) -> tuple:
    """A streaming request held open after its first chunk (the conversation is admitted and running or queued)."""
    eos = {str(token): -100 for token in EOS_IDS}  # no early end: the answer lasts its whole budget
    body = {"model": MODEL_ID, "messages": [_question()], "max_completion_tokens": max_tokens, "stream": True}
    body["logit_bias"] = eos
    http = httpx.Client(timeout=60)
    request = http.build_request(
        "POST", base_url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}
    )
    response = http.send(request, stream=True)
    assert response.status_code == 200
    lines = response.iter_lines()  # kept: a collected line iterator would close the response
    next(lines)
    return http, response, lines


def test_queue_full_gives_429_and_disconnect_frees_conversations(served, client):
    server, base_url = served
    _wait_idle(server)
    disconnects = _metric(base_url, 'opens2s_errors_total{reason="client_disconnected"}')
    held = [_open_stream(base_url), _open_stream(base_url)]  # max_active=1 runs one, max_queued=1 holds the other
    try:
        assert server.backend.stats()["active"] + server.backend.stats()["queued"] == 2
        error = _error_of(lambda: client.chat.completions.create(model=MODEL_ID, messages=[_question()]))
        assert isinstance(error, openai.RateLimitError) and error.code == "queue_full"
        assert int(error.response.headers["retry-after"]) >= 1
        assert _metric(base_url, "opens2s_active_conversations") == 1
    finally:
        for http, response, _ in held:  # the clients go away mid-answer
            response.close()
            http.close()
    _wait_idle(server, seconds=5.0)  # LONG answers would take much longer than this: they were cancelled
    assert _metric(base_url, "opens2s_active_conversations") == 0
    assert _metric(base_url, "opens2s_queued_conversations") == 0
    deadline = time.monotonic() + 5
    while _metric(base_url, 'opens2s_errors_total{reason="client_disconnected"}') < disconnects + 2:
        assert time.monotonic() < deadline, "the server did not see both clients go away"
        time.sleep(0.05)


# ---------------------------------------------------------------------------------------------------------- realtime
def _pcm24k_b64(seconds_of_silence: float = 0.0) -> str:
    import soxr

    waveform, rate = soundfile.read(str(EXAMPLE_WAV), dtype="float32")
    waveform = soxr.resample(waveform, rate, 24000)
    silence = np.zeros(int(24000 * seconds_of_silence), dtype=np.float32)
    return base64.b64encode(pcm16(np.concatenate([silence, waveform, silence, silence]))).decode()


def _until(ws, kind: str, seen: list[dict]) -> dict:
    while True:
        event = json.loads(ws.recv(timeout=60))
        seen.append(event)
        assert event["type"] != "error", event
        if event["type"] == kind:
            return event


def test_realtime_answer_and_barge_in(served, monkeypatch):
    from websockets.sync.client import connect

    server, base_url = served
    _wait_idle(server)
    url = base_url.replace("http", "ws") + "/v1/realtime"
    with connect(url, additional_headers={"Authorization": f"Bearer {KEY}"}) as ws:
        assert json.loads(ws.recv(timeout=30))["type"] == "session.created"
        ws.send(json.dumps({"type": "session.update", "session": {"max_response_output_tokens": SHORT, "seed": 0}}))
        seen = []
        _until(ws, "session.updated", seen)
        ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": _pcm24k_b64()}))
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        _until(ws, "input_audio_buffer.committed", seen)
        ws.send(json.dumps({"type": "response.create"}))
        done = _until(ws, "response.done", seen)
        assert done["response"]["status"] == "completed"
        transcript = "".join(e["delta"] for e in seen if e["type"] == "response.audio_transcript.delta")
        audio = b"".join(base64.b64decode(e["delta"]) for e in seen if e["type"] == "response.audio.delta")
        assert transcript and transcript == done["response"]["output"][0]["transcript"]
        assert len(audio) > 2 * 2400, "more than 0.1 s of 24 kHz pcm16"

        # Barge-in: a long answer is cancelled after its first audio. The realtime protocol has no logit_bias, so the
        # text EOS is banned on the server side: the random tiny model would otherwise often end within the budget
        # before the cancel arrives. The speech budget is long too: the answer cannot complete before all its audio
        # is rendered, however soon its text is written (token2wav may render beside the engine's loop).
        monkeypatch.setattr(server, "max_units", LONG)
        stream_kwargs = server.stream_kwargs
        no_eos = {token: -100.0 for token in EOS_IDS}
        monkeypatch.setattr(
            server, "stream_kwargs", lambda *args, **kwargs: stream_kwargs(*args, **{**kwargs, "logit_bias": no_eos})
        )
        ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": _pcm24k_b64()}))
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        ws.send(json.dumps({"type": "response.create", "response": {"max_response_output_tokens": LONG}}))
        seen = []
        _until(ws, "response.audio.delta", seen)
        ws.send(json.dumps({"type": "response.cancel"}))
        done = _until(ws, "response.done", seen)
        assert done["response"]["status"] == "cancelled"
    _wait_idle(server, seconds=5.0)


def test_realtime_server_vad_answers_when_the_speaker_stops(served):
    pytest.importorskip("silero_vad")
    from websockets.sync.client import connect

    server, base_url = served
    _wait_idle(server)
    url = base_url.replace("http", "ws") + "/v1/realtime"
    threads = torch.get_num_threads()
    with connect(url, additional_headers={"Authorization": f"Bearer {KEY}"}) as ws:
        json.loads(ws.recv(timeout=30))
        session = {
            "turn_detection": {"type": "server_vad", "silence_duration_ms": 300},
            "max_response_output_tokens": 2,
        }
        ws.send(json.dumps({"type": "session.update", "session": session}))
        seen = []
        _until(ws, "session.updated", seen)
        assert torch.get_num_threads() == threads, "loading silero-vad leaves torch's thread count alone"
        audio = base64.b64decode(_pcm24k_b64(seconds_of_silence=0.5))
        step = 2 * 2400  # 0.1 s messages, as a microphone would send
        for start in range(0, len(audio), step):
            chunk = base64.b64encode(audio[start : start + step]).decode()
            ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))
        for kind in ("input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped", "response.done"):
            _until(ws, kind, seen)
    _wait_idle(server)


def test_realtime_refuses_a_wrong_key(served):
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    url = served[1].replace("http", "ws") + "/v1/realtime"
    with pytest.raises(InvalidStatus) as caught:
        connect(url, additional_headers={"Authorization": "Bearer wrong"})
    assert caught.value.response.status_code == 403


# ---------------------------------------------------------------------------------------------------------- ray
@pytest.mark.slow
def test_serve_compile_option_runs_the_engines_fast_path(tiny_model_dir, monkeypatch):
    import argparse

    from opens2s.serving import backend
    from opens2s.serving.command import add_arguments, build_server, server_options

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    options = server_options(parser.parse_args(["--model", str(tiny_model_dir), "--device", "cpu", "--compile"]))
    assert options["compile"] is True
    server = build_server(**options)
    try:
        assert server.backend.fast is not None  # static caches and compiled steps
    finally:
        server.close()
    plain = server_options(parser.parse_args(["--model", str(tiny_model_dir)]))
    assert plain["compile"] is False
    monkeypatch.setattr(backend, "OpenS2SEngine", None)  # a model package without the engine
    with pytest.raises(ValueError, match="needs the continuous-batching engine"):
        backend.make_backend(server.speech_model.model, compile=True)


def test_ray_serve_two_replicas_answer(tiny_model_dir):
    pytest.importorskip("ray.serve", reason="the `ray` extra (ray[serve]) is not installed")
    import ray
    from ray import serve

    from opens2s.serving.ray_app import build_app

    port = _free_port()
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", ignore_reinit_error=True)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        options = {
            "model": str(tiny_model_dir),
            "model_id": MODEL_ID,
            "device": "cpu",
            "dtype": "float32",
            "threads": 1,
        }
        serve.run(build_app(options, replicas=2), name="opens2s", route_prefix="/")
        body = {"model": MODEL_ID, "messages": [_question()], "max_completion_tokens": 2}
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        replicas, answers = set(), 0
        deadline = time.monotonic() + 120
        with httpx.Client(timeout=60) as http:
            while len(replicas) < 2:
                assert time.monotonic() < deadline, f"only replicas {replicas} answered"
                with ThreadPoolExecutor(4) as pool:  # concurrent requests: one replica alone would queue them
                    results = list(pool.map(lambda _: http.post(url, json=body), range(4)))
                for response in results:
                    assert response.status_code == 200, response.text
                    assert response.json()["choices"][0]["message"]["content"] is not None
                    replicas.add(response.headers["x-opens2s-replica"])
                    answers += 1
        assert len(replicas) == 2
    finally:
        serve.shutdown()
        ray.shutdown()
