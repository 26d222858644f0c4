"""The Gradio app's handler (`opens2s.spaces_app.app`): streaming updates, multi-turn history, voices, sampling,
readable errors for bad audio, Stop, concurrent answers on the one engine, memory and uploads per session, upload
limits, and the app's wiring (queue, ZeroGPU, command line).

Every answer uses the tiny model with 8 text tokens and 20 speech units (two token2wav chunks: 10 units, then the
rest), on one thread; the whole module takes about 20 s on 2 cores.
"""

import ctypes
import gc
import inspect
import io
import os
import socket
import threading
import types
import wave
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch


gr = pytest.importorskip("gradio", reason="the Space needs gradio: pip install -e '.[space]' (or '.[test]')")

from opens2s.cli import build_parser  # noqa: E402
from opens2s.modeling_opens2s.streaming_opens2s import speech_generation_config_of  # noqa: E402
from opens2s.processing.audio_io import load_audio  # noqa: E402
from opens2s.processing.chat import EXAMPLE_WAV, conversation_inputs, load_speech_model, stream_reply  # noqa: E402
from opens2s.spaces_app import app as space_app  # noqa: E402
from opens2s.spaces_app.app import DEFAULT_VOICE, OpenS2SSpace, build_demo, find_speakers, wav_bytes  # noqa: E402


pytestmark = pytest.mark.usefixtures("single_thread")

MAX_NEW_TOKENS, MAX_UNITS, SEED = 8, 20, 0


@pytest.fixture(scope="module")
def speech_model(tiny_model_dir):
    return load_speech_model(tiny_model_dir)


@pytest.fixture(scope="module")
def space(speech_model, tmp_path_factory):
    space = OpenS2SSpace(
        speech_model,
        max_new_tokens=MAX_NEW_TOKENS,
        max_units=MAX_UNITS,
        seed=SEED,
        upload_dir=tmp_path_factory.mktemp("uploads"),
    )
    yield space
    space.close()


@pytest.fixture(scope="module")
def first_answer(space):
    """Every update of one greedy answer to the example question."""
    return list(space.respond(str(EXAMPLE_WAV), [], DEFAULT_VOICE, 0.0, 1.0))


def _read_wav(data: bytes) -> tuple[int, np.ndarray]:
    with wave.open(io.BytesIO(data), "rb") as reader:
        assert (reader.getnchannels(), reader.getsampwidth()) == (1, 2)
        return reader.getframerate(), np.frombuffer(reader.readframes(reader.getnframes()), dtype="<i2")


class _Recorder:
    """Stands in for `OpenS2SSpace._submit`: records the stream arguments of each answer and streams nothing."""

    def __init__(self):
        self.calls = []

    def __call__(self, inputs, stream_kwargs):
        self.calls.append(stream_kwargs)
        return _NoEvents()


class _NoEvents(list):
    """A conversation that streams nothing."""

    def cancel(self) -> None:
        pass


class _Session:
    """What Gradio passes as `gr.Request`: only its session hash is used."""

    def __init__(self, session_hash: str):
        self.session_hash = session_hash


def _question(folder: Path, name: str, seconds: float = 1.0) -> str:
    """A spoken-question file (noise, 16 kHz, 16-bit) in `folder`, as an upload of Gradio would be."""
    folder.mkdir(parents=True, exist_ok=True)
    samples = np.random.default_rng(len(name)).uniform(-0.3, 0.3, int(16000 * seconds)).astype(np.float32)
    soundfile.write(folder / name, samples, 16000, subtype="PCM_16")
    return str(folder / name)


def test_an_answer_streams_growing_text_audio_chunks_and_latency(first_answer):
    messages, chunk, status, turns = first_answer[0]
    assert messages == [
        {"role": "user", "content": {"path": str(EXAMPLE_WAV)}},
        {"role": "assistant", "content": "…"},
    ]
    assert chunk is None and status == "Listening…" and len(turns) == 1

    replies = [update[0][-1]["content"] for update in first_answer[1:]]  # the answer as the chat shows it
    assert all(later.startswith(earlier) for earlier, later in zip(replies, replies[1:], strict=False))
    assert len(set(replies)) >= 3, "the text should arrive in several updates"

    chunks = [update[1] for update in first_answer if update[1] is not None]
    assert len(chunks) >= 2, "20 units make two token2wav chunks, each sent as it is produced"
    rates = {_read_wav(chunk)[0] for chunk in chunks}
    assert rates == {22050}
    statuses = [update[2] for update in first_answer[1:-1]]
    assert any("8 speech units" in status for status in statuses)
    assert any("s of audio" in status and not status.endswith(" 0.0 s of audio") for status in statuses)

    final_messages, _, final_status, final_turns = first_answer[-1]
    assert final_status.startswith("first text ") and "first audio" in final_status and "RTF" in final_status
    assert final_messages[-1]["content"] == f"{final_turns[0].reply}\n\n*{final_status}*"
    assert final_turns[0].latency == final_status and final_turns[0].reply


def test_the_app_consumes_the_same_event_iterator_as_the_cli(space, speech_model, first_answer):
    events = list(stream_reply(speech_model, EXAMPLE_WAV, seed=SEED, **space.stream_options(0.0, 1.0)))
    text = "".join(event.text for event in events if event.kind == "text")
    pcm = np.concatenate([event.pcm for event in events if event.kind == "audio"])
    assert first_answer[-1][3][0].reply == text
    app_pcm = np.concatenate([_read_wav(update[1])[1] for update in first_answer if update[1] is not None])
    np.testing.assert_array_equal(app_pcm, (np.clip(pcm, -1, 1) * 32767).round().astype(np.int16))


def test_a_second_question_feeds_the_conversation_back(space, first_answer, monkeypatch):
    histories = []

    def recording_inputs(processor, audio, history):
        histories.append(history)
        return conversation_inputs(processor, audio, history)

    monkeypatch.setattr(space_app, "conversation_inputs", recording_inputs)
    turns = first_answer[-1][3]
    updates = list(space.respond(str(EXAMPLE_WAV), turns, DEFAULT_VOICE, 0.0, 1.0))

    (history,) = histories
    assert history == [(turns[0].question_path, turns[0].reply)], "earlier questions are fed back from their files"
    messages, _, status, new_turns = updates[-1]
    assert [message["role"] for message in messages] == ["user", "assistant", "user", "assistant"]
    assert len(new_turns) == 2 and new_turns[0] is turns[0] and len(turns) == 1, "the session state is not mutated"
    assert "first audio" in status


def test_conversation_inputs_hold_every_question_and_earlier_reply(speech_model):
    processor = speech_model.processor
    single = conversation_inputs(processor, EXAMPLE_WAV)
    question = single["input_features"][0]
    waveform = np.zeros(16000, dtype=np.float32)
    inputs = conversation_inputs(processor, EXAMPLE_WAV, history=[(waveform, "I hear you.")])
    assert inputs["input_features"].shape[0] == 2
    torch.testing.assert_close(inputs["input_features"][1], question)
    prompt = processor.tokenizer.decode(inputs["input_ids"][0])
    # Qwen3's rule (enable_thinking=False): only the assistant turn after the last user turn has the think block.
    assert prompt.count("<|im_start|>user") == 2 and prompt.count("<think>") == 1
    assert "<|im_start|>assistant\nI hear you.<|im_end|>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n<|im_tts_start|>")
    # The file's samples given as an array with their rate give the file's features.
    resampled = conversation_inputs(processor, load_audio(EXAMPLE_WAV), sampling_rate=16000)
    torch.testing.assert_close(resampled["input_features"], single["input_features"], atol=0, rtol=0)


def test_conversation_inputs_batch_left_pads(speech_model):
    processor = speech_model.processor
    short = np.random.default_rng(0).uniform(-0.1, 0.1, 8000).astype(np.float32)
    batch = conversation_inputs(processor, [EXAMPLE_WAV, short], speech_output=False)
    alone = conversation_inputs(processor, short, speech_output=False)
    assert batch["input_ids"].shape[0] == 2 and batch["attention_mask"][1, 0] == 0  # left padding
    length = alone["input_ids"].shape[1]
    torch.testing.assert_close(batch["input_ids"][1, -length:], alone["input_ids"][0])
    assert not processor.tokenizer.decode(alone["input_ids"][0]).endswith("<|im_tts_start|>")
    with pytest.raises(ValueError, match="no history"):
        conversation_inputs(processor, [short], history=[(short, "Hi.")])


@pytest.mark.parametrize("max_history_turns, expected", [(0, 0), (2, 2), (4, 3)])
def test_history_keeps_the_latest_turns(speech_model, monkeypatch, max_history_turns, expected):
    histories = []
    monkeypatch.setattr(space_app, "conversation_inputs", lambda processor, audio, history: histories.append(history))
    space = OpenS2SSpace(speech_model, max_history_turns=max_history_turns)
    monkeypatch.setattr(space, "_submit", _Recorder())
    turns = [space_app.Turn(f"q{i}.wav", f"reply {i}") for i in range(3)]
    list(space.respond(str(EXAMPLE_WAV), turns, DEFAULT_VOICE, 0.0, 1.0))
    space.close()
    assert histories[0] == [(f"q{i}.wav", f"reply {i}") for i in range(3 - expected, 3)]


def _bad_audio(tmp_path, kind: str) -> str | None:
    path = tmp_path / f"{kind}.wav"
    if kind == "missing":
        return None
    if kind == "not_audio":
        path.write_text("this is not a wav file")
    elif kind == "empty":
        soundfile.write(path, np.zeros(0, dtype=np.float32), 16000)
    elif kind == "too_short":
        soundfile.write(path, np.zeros(10, dtype=np.float32), 16000)
    elif kind == "nan":
        soundfile.write(path, np.full(16000, np.nan, dtype=np.float32), 16000, subtype="FLOAT")
    return str(path)


@pytest.mark.parametrize(
    "kind, message",
    [
        pytest.param("missing", "Record or upload a spoken question first", id="no-audio"),
        pytest.param("not_audio", "Could not read this audio: cannot read audio file", id="not-audio"),
        pytest.param("empty", "Could not read this audio: audio file .* is empty", id="empty"),
        pytest.param("too_short", "Could not read this audio: audio file .* is too short", id="too-short"),
        pytest.param("nan", "Could not read this audio: audio contains NaN or Inf samples", id="nan"),
    ],
)
def test_bad_audio_gives_a_message_in_the_ui(space, tmp_path, kind, message):
    updates = space.respond(_bad_audio(tmp_path, kind), [], DEFAULT_VOICE, 0.0, 1.0)
    with pytest.raises(gr.Error, match=message) as error:
        list(updates)
    assert "Traceback" not in error.value.message and error.value.print_exception is False
    assert str(tmp_path) not in error.value.message and "/" not in error.value.message, "no server path is shown"
    assert error.value.__cause__ is None, "the UI shows the message, not a chained stack"


def test_stop_cancels_the_conversation_and_keeps_the_partial_answer(space):
    # The answer drives the engine itself while the background loop is stopped (as on ZeroGPU): with the loop
    # running, the tiny model's short answer could finish before the test looks at the engine.
    space.engine.stop()
    try:
        updates = space.respond(str(EXAMPLE_WAV), [], DEFAULT_VOICE, 0.0, 1.0)
        next(updates)
        _, _, _, turns = next(updates)
        stats = space.engine.stats()
        assert turns[0].reply and stats["active"] + stats["queued"] == 1
        updates.close()  # what Gradio does to a generator when Stop cancels its event (or the visitor leaves)
        stats = space.engine.stats()
        assert stats["active"] == stats["queued"] == 0, "the engine's row is freed at once"
        assert turns[0].reply and not turns[0].latency
    finally:
        space.engine.start()


def test_two_concurrent_requests_both_complete(space):
    results, barrier = [None, None], threading.Barrier(2)

    def answer(index: int) -> None:
        barrier.wait()
        results[index] = list(space.respond(str(EXAMPLE_WAV), [], DEFAULT_VOICE, 0.0, 1.0))

    threads = [threading.Thread(target=answer, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert all(result is not None for result in results), "both requests must finish"
    for updates in results:
        assert "first audio" in updates[-1][2]
        assert any(update[1] for update in updates)
    # Same seed, same question: decoded together by the one engine, the two answers must not mix.
    assert results[0][-1][3][0].reply == results[1][-1][3][0].reply
    assert [u[1] for u in results[0] if u[1]] == [u[1] for u in results[1] if u[1]]
    alone = list(space.respond(str(EXAMPLE_WAV), [], DEFAULT_VOICE, 0.0, 1.0))
    assert alone[-1][3][0].reply == results[0][-1][3][0].reply, "together equals alone"


def test_a_full_engine_says_busy(speech_model):
    space = OpenS2SSpace(speech_model, max_new_tokens=MAX_NEW_TOKENS, max_units=MAX_UNITS, max_active=1, max_queued=0)
    # Without the background loop (as on ZeroGPU) each answer drives the engine itself, so the first answer cannot
    # finish behind the test's back and free its row before the second question arrives.
    space.engine.stop()
    try:
        first = space.respond(str(EXAMPLE_WAV), [], DEFAULT_VOICE, 0.0, 1.0)
        next(first)  # its conversation holds the engine's only row
        with pytest.raises(gr.Error, match="busy") as error:
            list(space.respond(str(EXAMPLE_WAV), [], DEFAULT_VOICE, 0.0, 1.0))
        assert error.value.message == space_app.BUSY_MESSAGE and error.value.print_exception is False
        first.close()
        assert list(space.respond(str(EXAMPLE_WAV), [], DEFAULT_VOICE, 0.0, 1.0))[-1][2].startswith("first text")
    finally:
        space.close()


def _rss_bytes() -> int:
    """Resident memory of this process (Linux `/proc/self/statm`: pages) once garbage is collected and glibc has
    handed its freed pages back: what is still held, not what malloc's per-thread arenas (the engine's loop and side
    worker threads each have one) keep cached after earlier tests."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: resident memory as it is
        pass
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# Ten live sessions, each with one 60 s question answered: their states together may add at most this much resident
# memory. A waveform kept in the state would be 60 s * 16 kHz * 4 B = 3.84 MB a session, 38 MB for ten.
SESSION_MEMORY_MARGIN = 16 * 2**20


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads resident memory from /proc (Linux)")
def test_ten_sessions_keep_no_audio_in_memory_and_their_uploads_are_deleted(space):
    questions = [_question(space.upload_dir / f"session{i}", "question.wav", seconds=60) for i in range(11)]
    list(space.respond(questions[0], [], DEFAULT_VOICE, 0.0, 1.0))  # warm-up: first use of 60 s prompts
    states, before = [], _rss_bytes()
    for index, question in enumerate(questions[1:], start=1):
        session = _Session(f"session{index}")
        space.track_upload(question, session)  # the question component's change event
        states.append(list(space.respond(question, [], DEFAULT_VOICE, 0.0, 1.0, session))[-1][3])
    growth = _rss_bytes() - before
    assert all(state[0].latency for state in states), "every session's answer completed"
    assert growth < SESSION_MEMORY_MARGIN, f"10 live sessions grew resident memory by {growth / 2**20:.1f} MB"
    assert space.engine.stats()["active"] == 0

    for index, question in enumerate(questions[1:], start=1):
        assert Path(question).exists(), "a live session's question stays (the chat shows it, history reads it)"
        space.end_session(_Session(f"session{index}"))  # Gradio's unload event: the tab was closed
        assert not Path(question).exists() and not Path(question).parent.exists()
    assert Path(questions[0]).exists(), "a file no session received is left alone"


def test_new_conversation_deletes_the_earlier_questions_only_inside_the_upload_folder(space, tmp_path):
    session = _Session("clearing")
    upload = _question(space.upload_dir / "clearing", "question.wav")
    outside = _question(tmp_path, "mine.wav")
    turns = []
    for question in (upload, outside, str(EXAMPLE_WAV)):
        space.track_upload(question, session)
        turns = list(space.respond(question, turns, DEFAULT_VOICE, 0.0, 1.0, session))[-1][3]
    assert space.new_conversation(turns, session) == ([], None, "", [])
    assert not Path(upload).exists()
    assert Path(outside).exists() and EXAMPLE_WAV.exists(), "files the app did not receive are never deleted"


def test_an_oversize_or_overlong_question_is_refused_without_a_server_path(speech_model, tmp_path):
    space = OpenS2SSpace(speech_model, max_file_size=64 * 1024, max_audio_seconds=2.0, upload_dir=tmp_path)
    try:
        big = _question(tmp_path / "a", "big.wav", seconds=2.5)  # 80 KB, 2.5 s
        with pytest.raises(gr.Error, match=r"the file is 0\.1 MB; the limit is 0\.1 MB") as error:
            list(space.respond(big, [], DEFAULT_VOICE, 0.0, 1.0))
        long = _question(tmp_path / "b", "long.wav", seconds=3.0)
        space.max_file_size = None
        with pytest.raises(gr.Error, match=r"long\.wav is too long: 3\.0 s; the limit is 2 s") as error:
            list(space.respond(long, [], DEFAULT_VOICE, 0.0, 1.0))
        assert str(tmp_path) not in error.value.message
    finally:
        space.close()
    assert OpenS2SSpace.__init__.__defaults__ is not None and space_app.DEFAULT_MAX_FILE_SIZE == 20 * 2**20


def test_the_served_app_refuses_an_oversize_upload(speech_model, tmp_path):
    import httpx

    space = OpenS2SSpace(speech_model, max_file_size=64 * 1024)
    demo = build_demo(space)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    try:
        space_app.serve(demo, space, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
        url = f"http://127.0.0.1:{port}/gradio_api/upload"
        small, big = _question(tmp_path, "small.wav", 1.0), _question(tmp_path, "big.wav", 2.5)
        with open(big, "rb") as file:
            refused = httpx.post(url, files={"files": ("big.wav", file, "audio/wav")}, timeout=30)
        with open(small, "rb") as file:
            accepted = httpx.post(url, files={"files": ("small.wav", file, "audio/wav")}, timeout=30)
    finally:
        demo.close()
        space.close()
    assert refused.status_code == 413 and "maximum allowed size" in refused.text
    assert accepted.status_code == 200 and Path(accepted.json()[0]).is_file()
    Path(accepted.json()[0]).unlink()


def test_voices_are_found_and_passed_to_the_model(speech_model, tmp_path, monkeypatch):
    from safetensors.torch import save_file

    dim = speech_model.model.config.speaker_embedding_dim
    speakers = tmp_path / "model" / "speakers"
    speakers.mkdir(parents=True)
    save_file({"speaker_embedding": torch.ones(dim)}, str(speakers / "calm.safetensors"))
    save_file(
        {"speaker_embedding": torch.ones(1, dim), "token2wav_speaker_embedding": torch.ones(192)},
        str(speakers / "warm.safetensors"),
    )
    save_file({"speaker_embedding": torch.ones(dim + 1)}, str(tmp_path / "wrong.safetensors"))
    found = find_speakers(tmp_path / "model", extra_dir=tmp_path)
    assert sorted(found) == ["calm", "warm", "wrong"]
    assert find_speakers(None) == {}

    def snapshot_download(repo_id, allow_patterns):
        if repo_id == "offline/repo":
            raise OSError("no network")
        assert allow_patterns == ["speakers/*.safetensors"], "only the voice files are fetched"
        return str(tmp_path / "model")

    monkeypatch.setattr("huggingface_hub.snapshot_download", snapshot_download)
    assert sorted(find_speakers("user/opens2s")) == ["calm", "warm"]
    assert find_speakers("offline/repo") == {}, "a Hub failure leaves the default voice only"

    space = OpenS2SSpace(speech_model, speakers=found)
    assert list(space.voices) == [DEFAULT_VOICE, "calm", "warm"], "a voice of the wrong size is left out"
    recorder = _Recorder()
    monkeypatch.setattr(space, "_submit", recorder)
    for voice in (DEFAULT_VOICE, "warm"):
        list(space.respond(str(EXAMPLE_WAV), [], voice, 0.0, 1.0))
    default, warm = recorder.calls
    assert "speaker_embedding" not in default, "the default voice is the model's zeros"
    assert warm["speaker_embedding"].shape == (dim,)
    assert warm["token2wav_speaker_embedding"].shape == (1, 192)
    space.close()


def test_sampling_controls_and_budgets_leave_the_models_configs_alone(space, speech_model):
    model = speech_model.model
    before = (model.generation_config.to_dict(), speech_generation_config_of(model).to_dict())
    greedy = space.stream_options(0.0, 0.5)
    assert not greedy["generation_config"].do_sample
    # The budgets go to `model.stream` as they are, not through copied generation configs.
    assert (greedy["max_new_tokens"], greedy["speech_max_new_tokens"]) == (MAX_NEW_TOKENS, MAX_UNITS)
    assert "speech_generation_config" not in greedy
    sampled = space.stream_options(0.7, 0.9)["generation_config"]
    assert sampled.do_sample and (sampled.temperature, sampled.top_p) == (0.7, 0.9)
    assert (model.generation_config.to_dict(), speech_generation_config_of(model).to_dict()) == before


def test_wav_chunks_keep_levels_and_clip():
    rate, samples = _read_wav(wav_bytes(np.array([0.0, 0.25, -0.5, 2.0], dtype=np.float32), 22050))
    assert rate == 22050
    np.testing.assert_array_equal(samples, [0, 8192, -16384, 32767])  # no peak normalisation per chunk


def test_the_demo_queues_answers_with_a_concurrency_limit(space):
    demo = build_demo(space, concurrency_limit=3, max_queue_size=5)
    answers = [fn for fn in demo.fns.values() if fn.concurrency_id == "answer"]
    assert len(answers) == 2, "Ask and the end of a microphone recording both answer"
    assert {fn.concurrency_limit for fn in answers} == {3}
    assert demo._queue.max_size == 5 and demo._queue.default_concurrency_limit == 3


def test_gpu_decorator_uses_spaces_only_when_present(monkeypatch):
    def answer():
        yield 1

    monkeypatch.setattr(space_app, "spaces", None)
    assert space_app.gpu(answer) is answer
    calls = []
    fake_spaces = types.SimpleNamespace(GPU=lambda duration: lambda fn: calls.append(duration) or fn)
    monkeypatch.setattr(space_app, "spaces", fake_spaces)
    assert space_app.gpu(answer) is answer and calls == [space_app.GPU_SECONDS]
    assert inspect.isgeneratorfunction(OpenS2SSpace.respond), "ZeroGPU wraps generator functions, not async ones"


@pytest.mark.parametrize("cuda, expected", [(True, ("cuda", "bfloat16")), (False, ("cpu", "float32"))])
def test_auto_device_is_bf16_on_cuda(monkeypatch, cuda, expected):
    """The Space and the server resolve `auto` with the one shared helper."""
    from opens2s.processing.chat import resolve_device_and_dtype

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert resolve_device_and_dtype("auto", "auto") == expected
    assert resolve_device_and_dtype("cpu", "auto") == ("cpu", "float32")
    assert resolve_device_and_dtype("cuda:1", "float16") == ("cuda:1", "float16")


def test_the_space_command_line(capsys):
    args = build_parser().parse_args(["space", "--max-units", "40", "--port", "7999", "--concurrency-limit", "1"])
    assert (args.max_units, args.port, args.concurrency_limit, args.device, args.model) == (40, 7999, 1, "auto", None)
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["space", "--help"])
    assert exit_info.value.code == 0 and "--max-history-turns" in capsys.readouterr().out


def test_the_compile_option_gives_the_space_the_engines_fast_path(speech_model, monkeypatch):
    assert build_parser().parse_args(["space"]).compile is False
    assert build_parser().parse_args(["space", "--compile"]).compile is True
    monkeypatch.setenv("OPENS2S_COMPILE", "true")  # a Space's "Variables" setting
    assert build_parser().parse_args(["space"]).compile is True
    space = OpenS2SSpace(speech_model, max_active=1, max_queued=0, compile=True)
    try:
        assert space.engine.fast is not None
    finally:
        space.close()


def test_the_space_folder_is_ready_to_deploy():
    import re

    import yaml

    folder = Path(space_app.__file__).parent
    front_matter = yaml.safe_load((folder / "README.md").read_text().split("---")[1])
    assert front_matter["sdk"] == "gradio" and (folder / front_matter["app_file"]).is_file()
    assert front_matter["suggested_hardware"] and front_matter["sdk_version"].startswith("6.")
    requirements = (folder / "requirements.txt").read_text().splitlines()
    names = {re.split(r"[<>=\[ ]", line)[0] for line in requirements if line and not line.startswith("#")}
    setup = (Path(__file__).parents[1] / "setup.py").read_text()
    install_requires = re.search(r"install_requires=\[(.*?)\]", setup, re.S).group(1)
    assert set(re.findall(r'"([A-Za-z0-9_.-]+)[<>=]', install_requires)) | {"gradio", "spaces"} <= names
    assert "ffmpeg" in (folder / "packages.txt").read_text().split(), "Gradio's streamed audio needs ffmpeg"
