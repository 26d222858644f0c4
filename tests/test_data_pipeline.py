"""The data-construction pipeline (paper section 3.2: instructions, voices, answers, units), end to end on CPU.

Seed clips are spoken by espeak-ng in the tests; the LLM is `StandInLLM`, a deterministic TEST DOUBLE (canned JSON
derived from a hash of the prompt, not a language model), used in process or behind a real HTTP server on 127.0.0.1
that speaks the OpenAI chat-completions protocol; speech units come from a tiny random speech tokenizer. The rows
are then read by the trainer's loaders (`load_original_jsonl`, `load_training_dataset`) and batched by its collator.
"""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

from opens2s.conversion.tiny import TINY_SPEECH_TOKENIZER_CONFIG, build_tiny_speech_tokenizer
from opens2s.dataset_scripts.backends import Backends, TransformersLLM, build_llm_backend, build_tts_backend
from opens2s.dataset_scripts.config import STAGES, PipelineConfig
from opens2s.dataset_scripts.labels import TONES, LabelError, normalize_age, normalize_emotion, normalize_gender
from opens2s.dataset_scripts.pipeline import load_stage, pipeline_status, run_pipeline
from opens2s.dataset_scripts.prompting import MalformedReply, load_prompt, parse_instructions, parse_response
from opens2s.dataset_scripts.runner import StageAborted
from opens2s.dataset_scripts.tts import COSYVOICE_INSTALL_HINT, CosyVoice2TTS, EspeakTTS, TTSError
from opens2s.modeling_opens2s.modeling_speech_tokenizer import OpenS2SSpeechTokenizer


needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="needs espeak-ng (apt-get install espeak-ng)"
)

NUM_CODES = TINY_SPEECH_TOKENIZER_CONFIG["quantize_vocab_size"]  # of the tiny random speech tokenizer

# (espeak-ng voice, transcript, emotion, age, gender): four seed speakers that differ in every label.
SEEDS = [
    ("en-us+f3", "I finally got the job I wanted!", "happy", "adult", "female"),
    ("en-us+m7", "Nobody calls me anymore.", "sad", "elderly", "male"),
    ("en-us+f4", "They cancelled the trip again!", "angry", "teenager", "female"),
    ("en-us+m3", "There is a noise under my bed.", "fearful", "child", "male"),
]
ROWS_PER_SEED = 2  # the stand-in writes 3 instructions, one a duplicate that dedup drops


class StandInLLM:
    """TEST DOUBLE of an LLM, not a model: canned JSON derived from a hash of the prompt, so every run agrees.

    Instructions prompts (they hold `"instructions"`) get three instructions in a code fence, the third a
    case/punctuation variant of the first (dedup must drop it); reply prompts get a reply and a tone from `TONES`.
    Trigger words make it misbehave: a seed transcript with `[malformed]` gets broken JSON, `[empty]` an empty text;
    `[bad reply]` / `[odd tone]` are carried into the instructions, whose replies are then broken JSON / tone "grumpy".
    `crash_after=n` raises `KeyboardInterrupt` on call n + 1 (a kill in the middle of a stage).
    """

    def __init__(self, crash_after: int | None = None):
        self.calls: list[str] = []
        self.crash_after = crash_after
        self._lock = threading.Lock()

    def complete(self, messages: list[dict], **params) -> str:
        prompt = messages[-1]["content"]
        with self._lock:
            self.calls.append(prompt)
            if self.crash_after is not None and len(self.calls) > self.crash_after:
                raise KeyboardInterrupt("simulated kill")
        return self.answer(prompt)

    def count(self, task: str) -> int:
        return sum(('"instructions"' in prompt) == (task == "instructions") for prompt in self.calls)

    @staticmethod
    def answer(prompt: str) -> str:
        digest = hashlib.sha1(prompt.encode()).hexdigest()[:6]
        if '"instructions"' in prompt:
            if "[malformed]" in prompt:
                return '{"instructions": ["an unterminated'
            if "[empty]" in prompt:
                return ""
            tags = " ".join(tag for tag in ("[bad reply]", "[odd tone]") if tag in prompt)
            items = [f"Could you help me with plan {digest}, step {step}? {tags}".strip() for step in (1, 2)]
            return "```json\n" + json.dumps({"instructions": [*items, items[0].upper() + "!"]}) + "\n```"
        if "[bad reply]" in prompt:
            return 'Sure! {"response": "oops'
        tone = "grumpy" if "[odd tone]" in prompt else TONES[int(digest, 16) % len(TONES)]
        reply = f"I hear you. Let us look at {digest} together, one small step at a time."
        return json.dumps({"response": reply, "tone": tone})


class ChatCompletionsEndpoint(BaseHTTPRequestHandler):
    """`POST /v1/chat/completions` in the OpenAI protocol, answered by `StandInLLM.answer`. Requests numbered in
    `server.fail` get a 503 (the client must retry); request `server.kill_at` first SIGKILLs `server.victim`."""

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server = self.server
        with server.lock:
            server.requests.append((time.monotonic(), body))
            number = len(server.requests)
        if number == server.kill_at:
            os.kill(server.victim, signal.SIGKILL)
        if self.path != "/v1/chat/completions" or number in server.fail:
            self._send(404 if self.path != "/v1/chat/completions" else 503, {"error": {"message": "try again"}})
            return
        content = StandInLLM.answer(body["messages"][-1]["content"])
        message = {"role": "assistant", "content": content}
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        payload = {"id": f"chatcmpl-{number}", "object": "chat.completion", "created": int(time.time())}
        self._send(200, payload | {"model": body["model"], "choices": [choice], "usage": usage})

    def _send(self, status: int, payload: dict) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(json.dumps(payload).encode())
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def endpoint():
    server = ThreadingHTTPServer(("127.0.0.1", 0), ChatCompletionsEndpoint)
    server.lock, server.requests, server.fail, server.kill_at, server.victim = threading.Lock(), [], set(), None, None
    server.url = f"http://127.0.0.1:{server.server_port}/v1"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def tokenizer() -> OpenS2SSpeechTokenizer:
    return build_tiny_speech_tokenizer()


@pytest.fixture(scope="module")
def tokenizer_dir(tokenizer, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("speech-tokenizer")
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """The four seed clips, spoken by espeak-ng's CLI, and `seeds.csv` listing them with their labels."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("needs espeak-ng (apt-get install espeak-ng)")
    folder = tmp_path_factory.mktemp("seeds")
    lines = ["audio,transcript,emotion,age,gender,speaker"]
    for number, (voice, text, emotion, age, gender) in enumerate(SEEDS):
        subprocess.run(["espeak-ng", "-v", voice, "-w", str(folder / f"seed{number}.wav"), text], check=True)
        lines.append(f'seed{number}.wav,"{text}",{emotion},{age},{gender},speaker{number}')
    (folder / "seeds.csv").write_text("\n".join(lines) + "\n")
    return folder


def make_config(workdir: Path, seed_data: Path, **overrides) -> PipelineConfig:
    settings = {"tts": "espeak", "num_instructions": 3, "chunk_size": 3, "llm_workers": 2, "llm": "stand-in"}
    return PipelineConfig(workdir=workdir, seed_data=str(seed_data), **(settings | overrides))


def key_rows(dataset) -> list[tuple]:
    """What must not change between runs: ids, texts, tones and units, in order."""
    columns = ("id", "seed_id", "instruction", "response", "tone", "speech_units")
    return [tuple(row[name] for name in columns) for row in dataset.select_columns(list(columns)).to_list()]


@pytest.fixture(scope="module")
def reference(clips, tokenizer, tmp_path_factory) -> list[tuple]:
    """The rows of one uninterrupted in-process run on the four clean seeds."""
    config = make_config(tmp_path_factory.mktemp("reference"), clips / "seeds.csv")
    rows = key_rows(run_pipeline(config, STAGES[:-1], Backends(config, llm=StandInLLM(), speech_tokenizer=tokenizer)))
    assert len(rows) == len(SEEDS) * ROWS_PER_SEED
    return rows


# ------------------------------------------------------------------------------------------ end to end
@pytest.mark.slow  # runs the pipeline on seed clips spoken by espeak-ng
def test_pipeline_end_to_end_through_a_local_endpoint(
    clips, tokenizer_dir, reference, endpoint, tiny_model_dir, tmp_path, capsys
):
    """`opens2s data all` with the OpenAI-compatible backend against a real local server (first request refused
    with 503, rate limit on), espeak-ng speech and the tiny tokenizer; the trainer's loaders take every row."""
    from opens2s.cli import main

    endpoint.fail = {1}
    workdir = tmp_path / "work"
    argv = ["data", "all", "--workdir", str(workdir), "--seed-data", str(clips / "seeds.csv"), "--llm", "openai"]
    argv += ["--llm-base-url", endpoint.url, "--llm-model", "stand-in", "--llm-backoff", "0.01"]
    argv += ["--requests-per-second", "20", "--tts", "espeak", "--speech-tokenizer", str(tokenizer_dir)]
    argv += ["--num-instructions", "3", "--chunk-size", "3"]
    assert main(argv) == 0
    assert "units" in capsys.readouterr().out

    requests = endpoint.requests
    assert len(requests) == 1 + len(SEEDS) + len(reference)  # the refused one was retried
    assert all(body["model"] == "stand-in" and body["messages"][0]["role"] == "system" for _, body in requests)
    # The 8 replies are asked by 4 workers at once: the rate limit (20/s) spreads them over >= 7 / 20 s.
    replies = sorted(start for start, body in requests if '"response"' in body["messages"][-1]["content"])
    assert len(replies) == len(reference) and replies[-1] - replies[0] > 0.7 * 7 / 20
    assert key_rows(load_stage(workdir, "units")) == reference  # over HTTP as in process

    manifests = {stage: json.loads((workdir / stage / "manifest.json").read_text()) for stage in STAGES}
    assert [manifests[stage]["outputs"] for stage in STAGES] == [4, 8, 8, 8, 8, 8, 8]
    assert manifests["instructions"]["failure_reasons"] == {"duplicate instruction": len(SEEDS)}
    assert all(manifests[stage]["failed"] == 0 == manifests[stage]["pending"] for stage in STAGES[:-1])
    user_speech = load_stage(workdir, "user_speech")
    assert type(user_speech.features["audio"]).__name__ == "Audio"
    assert user_speech[0]["audio"]["bytes"][:4] == b"RIFF"  # embedded: the stage folder is self-contained
    card = (workdir / "push" / "README.md").read_text()
    assert "| `instructions` | 4 | 8 | 0 | duplicate instruction: 4 |" in card and "emotion: happy 2" in card
    check_trainer_reads(workdir, tiny_model_dir)


def check_trainer_reads(workdir: Path, model_dir: Path) -> None:
    """The original-format export and the datasets folders load without a skipped row, and batch for training."""
    from transformers import AutoProcessor

    from opens2s.training.collator import OpenS2SDataCollator
    from opens2s.training.data import load_original_jsonl, load_training_dataset

    rows = load_original_jsonl(workdir / "units" / "train.jsonl", num_units=NUM_CODES)
    assert len(rows) == 8 and rows[0]["messages"][1]["content"][0]["speech_units"].startswith("<|audio_")
    for folder in (workdir / "units" / "dataset", workdir / "push" / "dataset"):
        assert len(load_training_dataset(folder, num_units=NUM_CODES)) == 8
    processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=True)
    batch = OpenS2SDataCollator(processor)([rows[0], rows[1]])
    assert batch["input_features"].shape[0] == 2 and batch["speech_units"].shape[0] == 2
    assert (batch["labels"] != -100).any() and batch["speech_span_mask"].any()


# ------------------------------------------------------------------------------------------ resuming
def counting_backends(config: PipelineConfig, tokenizer, llm: StandInLLM) -> tuple[Backends, list]:
    calls = []

    class CountingEspeak(EspeakTTS):
        def speak(self, text, voice):
            calls.append(text)
            return super().speak(text, voice)

    tts = CountingEspeak()
    return Backends(config, llm=llm, user_tts=tts, response_tts=tts, speech_tokenizer=tokenizer), calls


@pytest.mark.slow  # runs the pipeline on seed clips spoken by espeak-ng
@pytest.mark.parametrize("stop_after", STAGES[:-1])
def test_resume_after_a_stage_redoes_nothing_and_loses_nothing(stop_after, clips, tokenizer, reference, tmp_path):
    """A run stopped after stage k, then run again: same rows as one uninterrupted run, no finished call redone."""
    config = make_config(tmp_path / "work", clips / "seeds.csv")
    done = STAGES[: STAGES.index(stop_after) + 1]
    run_pipeline(config, done, Backends(config, llm=StandInLLM(), speech_tokenizer=tokenizer))
    llm = StandInLLM()
    backends, speech_calls = counting_backends(config, tokenizer, llm)
    rows = key_rows(run_pipeline(config, STAGES[:-1], backends))
    assert rows == reference and len({row[0] for row in rows}) == len(rows)
    assert llm.count("instructions") == (0 if "instructions" in done else len(SEEDS))
    assert llm.count("responses") == (0 if "responses" in done else len(reference))
    expected_speech = sum(len(reference) for stage in ("user_speech", "response_speech") if stage not in done)
    assert len(speech_calls) == expected_speech


@pytest.mark.slow  # runs the pipeline on seed clips spoken by espeak-ng
def test_kill_in_the_middle_of_a_stage_keeps_whole_parts_only(clips, tokenizer, reference, tmp_path):
    """A kill while stage `responses` runs leaves its committed parts and no `responses/` folder; the re-run asks the
    LLM only for the rows of the lost chunk and the ones after it."""
    config = make_config(tmp_path / "work", clips / "seeds.csv", llm_workers=1)
    # 4 instruction calls, then replies in chunks of 3: chunk 1 commits, call 4 of the replies (chunk 2) is killed.
    crashing = StandInLLM(crash_after=len(SEEDS) + 3)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(config, STAGES[:-1], Backends(config, llm=crashing, speech_tokenizer=tokenizer))
    assert (tmp_path / "work" / "user_speech" / "manifest.json").is_file()
    assert not (tmp_path / "work" / "responses").exists()
    assert len(list((tmp_path / "work" / "parts" / "responses").glob("part-*"))) == 1
    assert pipeline_status(tmp_path / "work")["responses"]["state"] == "in progress (1 parts committed)"
    llm = StandInLLM()
    rows = key_rows(run_pipeline(config, STAGES[:-1], Backends(config, llm=llm, speech_tokenizer=tokenizer)))
    assert rows == reference
    assert llm.count("instructions") == 0 and llm.count("responses") == len(reference) - 3
    # Once everything is finished, a re-run builds no backend at all ("stand-in" is not even a registered name).
    assert key_rows(run_pipeline(config, STAGES[:-1], Backends(config))) == reference


@pytest.mark.slow  # runs the pipeline on seed clips spoken by espeak-ng
def test_sigkill_of_the_cli_then_rerun(clips, tokenizer, tokenizer_dir, reference, endpoint, tmp_path):
    """`python -m opens2s.dataset_scripts all` (settings from `WORKDIR/config.json`) SIGKILLed by the server while it
    waits for an instruction; running again finishes the work with every row exactly once."""
    workdir = tmp_path / "work"
    config = make_config(workdir, clips / "seeds.csv", llm="openai", llm_base_url=endpoint.url, llm_model="stand-in")
    config.llm_workers, config.chunk_size, config.speech_tokenizer = 1, 2, str(tokenizer_dir)
    run_pipeline(config, ["seed"], Backends(config))  # in process: the child then needs no audio libraries
    endpoint.kill_at = 3  # instructions in chunks of 2 seeds: chunk 1 commits, the first request of chunk 2 kills
    command = [sys.executable, "-m", "opens2s.dataset_scripts", "all", "--until", "units", "--workdir", str(workdir)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    endpoint.victim = process.pid
    output = process.communicate(timeout=240)[0].decode(errors="replace")
    assert process.returncode == -signal.SIGKILL, output[-2000:]
    assert not (workdir / "instructions").exists()
    assert [path.name for path in (workdir / "parts" / "instructions").iterdir()] == ["part-00000"]
    rows = key_rows(run_pipeline(config, STAGES[:-1], Backends(config, speech_tokenizer=tokenizer)))
    assert rows == reference
    # After the 3 requests of the killed run: the other 2 seeds' instructions, then every reply, each asked once.
    assert len(endpoint.requests) == 3 + 2 + len(reference)


# ------------------------------------------------------------------------------------------ bad inputs
def write_bad_seeds(clips: Path, folder: Path) -> Path:
    """Five usable seeds (four carry stand-in triggers) and six bad ones, as jsonl."""
    (folder / "unreadable.wav").write_bytes(b"RIFF but not really a wave file")
    good = [(0, "Tell me something nice."), (1, "Please [malformed] this."), (2, "Say [empty] things.")]
    good += [(3, "Reply [bad reply] now."), (0, "Choose an [odd tone] now.")]
    rows = [{"id": f"good{i}", "audio": str(clips / f"seed{n}.wav"), "transcript": t} for i, (n, t) in enumerate(good)]
    rows = [row | {"emotion": "Happy", "age": 34, "gender": "F"} for row in rows]
    labels = {"emotion": "sad", "age": "adult", "gender": "male"}
    rows += [
        {"id": "unreadable", "audio": "unreadable.wav", "transcript": "Hello there."} | labels,
        {"id": "missing", "audio": "missing.wav", "transcript": "Hello there."} | labels,
        {"id": "no-words", "audio": str(clips / "seed1.wav"), "transcript": "  "} | labels,
        {"id": "bored", "audio": str(clips / "seed1.wav"), "transcript": "Hello."} | labels | {"emotion": "bored"},
        {"id": "ancient", "audio": str(clips / "seed1.wav"), "transcript": "Hello."} | labels | {"age": "ancient"},
    ]
    lines = [json.dumps(row) for row in rows] + ['{"id": "broken", "audio": ']
    (folder / "seeds.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "seeds.jsonl"


@pytest.mark.slow  # runs the pipeline on seed clips spoken by espeak-ng
def test_bad_inputs_are_counted_logged_and_the_pipeline_continues(clips, tokenizer, tmp_path, caplog):
    seeds = write_bad_seeds(clips, tmp_path)
    config = make_config(tmp_path / "work", seeds)
    with caplog.at_level("WARNING", logger="opens2s"):
        rows = run_pipeline(config, STAGES[:-1], Backends(config, llm=StandInLLM(), speech_tokenizer=tokenizer))
    manifests = pipeline_status(tmp_path / "work")
    assert manifests["seed"]["failure_reasons"] == {
        "unreadable audio": 1,
        "missing audio file": 1,
        "empty transcript": 1,
        "unknown emotion label": 1,
        "unknown age label": 1,
        "invalid seed row": 1,
    }
    assert (manifests["seed"]["inputs"], manifests["seed"]["outputs"], manifests["seed"]["failed"]) == (11, 5, 6)
    reasons = manifests["instructions"]["failure_reasons"]
    assert reasons == {"malformed JSON from LLM": 1, "empty LLM output": 1, "duplicate instruction": 3}
    assert manifests["responses"]["failure_reasons"] == {"malformed JSON from LLM": 2, "unknown tone label": 2}
    assert [manifests[stage]["outputs"] for stage in STAGES[1:-1]] == [6, 6, 2, 2, 2]
    assert len(rows) == 2 and set(rows["seed_id"]) == {"good0"}
    failures = [json.loads(line) for line in (tmp_path / "work" / "seed" / "failures.jsonl").read_text().splitlines()]
    by_id = {failure["id"]: failure for failure in failures}
    assert by_id["bored"]["reason"] == "unknown emotion label" and "'bored'" in by_id["bored"]["detail"]
    assert by_id["missing"]["detail"].endswith("missing.wav") and "line 11" in by_id["line-11"]["detail"]
    assert "seed: failures by reason" in caplog.text and "responses: failures by reason" in caplog.text
    # A re-run retries the failed rows (the LLM is asked again only for them) and counts nothing twice.
    llm = StandInLLM()
    run_pipeline(config, STAGES[:-1], Backends(config, llm=llm, speech_tokenizer=tokenizer))
    assert (llm.count("instructions"), llm.count("responses")) == (2, 4)
    again = pipeline_status(tmp_path / "work")
    assert all(again[stage]["failure_reasons"] == manifests[stage]["failure_reasons"] for stage in STAGES[:-1])


@pytest.mark.slow  # runs the pipeline on seed clips spoken by espeak-ng
def test_seed_stage_reads_a_datasets_folder_with_an_audio_column(clips, tmp_path):
    """A `save_to_disk` folder (as a Hub dataset loads) with an `Audio` column and other column names."""
    import datasets

    table = datasets.Dataset.from_dict(
        {
            "audio": [str(clips / f"seed{number}.wav") for number in range(len(SEEDS))],
            "text": [seed[1] for seed in SEEDS],
            "emotion_label": [seed[2].upper() for seed in SEEDS],
            "age": [30, 70, 15, 8],
            "sex": ["f", "m", "f", "m"],
        }
    ).cast_column("audio", datasets.Audio(sampling_rate=16000))
    table.save_to_disk(tmp_path / "hub-like")
    config = make_config(tmp_path / "work", tmp_path / "hub-like")
    seeds = run_pipeline(config, ["seed"], Backends(config))
    assert seeds["transcript"] == [seed[1] for seed in SEEDS] and seeds["age"] == [
        "adult",
        "elderly",
        "teenager",
        "child",
    ]
    assert seeds["emotion"] == [seed[2] for seed in SEEDS] and seeds["gender"] == ["female", "male", "female", "male"]
    assert all(row["bytes"][:4] == b"RIFF" for row in seeds["audio"]) and len(set(seeds["id"])) == len(SEEDS)


class FlakySpeech:
    """TEST DOUBLE of a speech backend. Voice cloning: a 0.5 s tone, but the first instruction of every seed ("step 1")
    fails. Instruct-TTS, called in order: two empty results, then clips of 3 ms (too short for the tokenizer)."""

    def __init__(self):
        self.replies = 0

    def clone(self, text, **labels):
        if "step 1" in text:
            raise TTSError("voice server said no")
        return np.sin(np.arange(8000) / 10).astype(np.float32) * 0.1, 16000

    def instruct(self, text, *, tone, language):
        self.replies += 1
        return np.full(0 if self.replies <= 2 else 48, 0.1, dtype=np.float32), 16000


@pytest.mark.slow  # runs the pipeline on seed clips spoken by espeak-ng
def test_speech_failures_and_a_dead_llm_are_recorded(clips, tokenizer, tmp_path):
    config = make_config(tmp_path / "work", clips / "seeds.csv", tts_workers=1)
    speech = FlakySpeech()
    backends = Backends(config, llm=StandInLLM(), user_tts=speech, response_tts=speech, speech_tokenizer=tokenizer)
    run_pipeline(config, STAGES[:-1], backends)
    status = pipeline_status(tmp_path / "work")
    assert status["user_speech"]["failure_reasons"] == {"tts error": 4} and status["user_speech"]["outputs"] == 4
    assert status["response_speech"]["failure_reasons"] == {"empty audio": 2}
    assert status["units"]["failure_reasons"] == {"speech tokenizer error": 2}
    assert status["units"]["outputs"] == 0 and not (tmp_path / "work" / "units" / "train.jsonl").read_text()

    class DeadLLM:
        def complete(self, messages, **params):
            from opens2s.processing.chat_completions import ChatCompletionsError

            raise ChatCompletionsError("http://127.0.0.1:9/v1: connection refused")

    config = make_config(tmp_path / "dead", clips / "seeds.csv", chunk_size=1, max_consecutive_failures=2)
    with pytest.raises(StageAborted, match="connection refused"):
        run_pipeline(config, STAGES[:-1], Backends(config, llm=DeadLLM(), speech_tokenizer=tokenizer))
    assert len(list((tmp_path / "dead" / "parts" / "instructions").glob("part-*"))) == 2


# ------------------------------------------------------------------------------------------ parts
def test_labels_are_normalised_and_unknown_ones_rejected():
    assert [normalize_emotion(label) for label in ("ANG", "Happiness", "伤心", " neutral ")] == [
        "angry",
        "happy",
        "sad",
        "neutral",
    ]
    assert [normalize_age(label) for label in (8, "15", 34.0, "old", "", None)] == [
        "child",
        "teenager",
        "adult",
        "elderly",
        "unknown",
        "unknown",
    ]
    assert [normalize_gender(label) for label in ("F", "男", "unknown")] == ["female", "male", "unknown"]
    for function, label in ((normalize_emotion, "bored"), (normalize_emotion, ""), (normalize_age, "ancient")):
        with pytest.raises(LabelError):
            function(label)


def test_llm_answers_are_parsed_or_rejected_with_a_reason():
    fenced = '<think>hmm</think>Here:\n```json\n{"instructions": ["1. How are you?", {"instruction": "Help?"}]}\n```'
    assert parse_instructions(fenced, limit=5) == ["How are you?", "Help?"]
    assert parse_instructions('["a", "b", "c"]', limit=2) == ["a", "b"]
    assert parse_response('{"response": "I am here.", "tone": "gentle"} trailing words') == ("I am here.", "gentle")
    for text, reason in (
        ("", "empty LLM output"),
        ("   ", "empty LLM output"),
        ('{"instructions": ["x"', "malformed JSON from LLM"),
        ('{"instructions": ["", " "]}', "empty LLM output"),
        ('{"questions": ["x"]}', "malformed JSON from LLM"),
    ):
        with pytest.raises(MalformedReply) as error:
            parse_instructions(text, limit=3)
        assert error.value.reason == reason
    with pytest.raises(MalformedReply, match="no 'response' field"):
        parse_response('{"reply": "hi"}')


@pytest.mark.parametrize("language", ["en", "zh"])
def test_prompt_templates_fill_every_placeholder(language):
    labels = {"emotion": "sad", "age": "elderly", "gender": "female"}
    from opens2s.dataset_scripts.prompting import label_values

    values = label_values(labels, language)
    instructions = load_prompt("instructions", language).render(
        **values, transcript="I lost my keys.", num_instructions=3
    )
    responses = load_prompt("responses", language).render(
        **values, instruction="Where are they?", tones=", ".join(TONES)
    )
    for messages in (instructions, responses):
        assert [message["role"] for message in messages] == ["system", "user"]
        assert "$" not in messages[1]["content"]
    assert ("伤心" if language == "zh" else "sad") in instructions[1]["content"]
    assert '{"instructions"' in instructions[1]["content"] and "gentle" in responses[1]["content"]


@needs_espeak
def test_espeak_mapping_follows_the_labels():
    tts = EspeakTTS()
    child = tts.clone_voice(language="en", emotion="happy", age="child", gender="female", speaker="a")
    elder = tts.clone_voice(language="en", emotion="sad", age="elderly", gender="male", speaker="a")
    assert child.voice == "en-us+f5" and elder.voice == "en-us+grandpa"
    assert child.pitch > elder.pitch and child.rate > elder.rate
    assert tts.clone_voice(language="zh", emotion="neutral", age="adult", gender="male", speaker="a").voice == "cmn+m1"
    soothing, excited = (tts.tone_voice(tone=tone, language="en") for tone in ("soothing", "excited"))
    assert soothing.voice == excited.voice == "en-us+f3" and soothing.rate < excited.rate


@needs_espeak
def test_espeak_speaks_16_khz_audio():
    waveform, rate = EspeakTTS().instruct("Take a deep breath.", tone="calm", language="en")
    assert (
        rate == 16000
        and waveform.dtype == np.float32
        and 0.5 < waveform.size / rate < 5
        and np.abs(waveform).max() > 0
    )


def test_cosyvoice2_without_its_package_says_how_to_install(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "cosyvoice", None)  # not importable, even where it is installed
    with pytest.raises(ImportError, match="github.com/FunAudioLLM/CosyVoice") as error:
        CosyVoice2TTS("pretrained_models/CosyVoice2-0.5B")
    assert str(error.value) == COSYVOICE_INSTALL_HINT
    config = PipelineConfig(workdir="unused", tts="cosyvoice2")
    with pytest.raises(ImportError, match="--tts espeak"):
        build_tts_backend(config, "user")
    if shutil.which("espeak-ng"):
        with caplog.at_level("WARNING", logger="opens2s"):
            fallback = build_tts_backend(PipelineConfig(workdir="unused", response_voice="me.wav"), "response")
        assert isinstance(fallback, EspeakTTS) and fallback.response_voice == "f3"
        assert "cosyvoice is not installed: the response speech uses espeak-ng" in caplog.text


def test_cosyvoice2_adapter_calls_the_cosyvoice_api(monkeypatch):
    """Our adapter against a STAND-IN of the `cosyvoice` package's API (CosyVoice2 `inference_zero_shot` /
    `inference_instruct2` taking the prompt wav's path, generators of `{"tts_speech": (1, samples)}` at 24 kHz)."""
    import types

    calls = []

    class CosyVoice2StandIn:
        sample_rate = 24000

        def __init__(self, model_dir, **options):
            calls.append(("load", model_dir))

        def inference_zero_shot(self, tts_text, prompt_text, prompt_wav, zero_shot_spk_id="", stream=False):
            calls.append(("clone", tts_text, prompt_text, prompt_wav))
            yield from ({"tts_speech": torch.full((1, 240), 0.1)} for _ in range(2))

        def inference_instruct2(self, tts_text, instruct_text, prompt_wav, zero_shot_spk_id="", stream=False):
            calls.append(("instruct", tts_text, instruct_text, prompt_wav))
            yield {"tts_speech": torch.full((1, 480), 0.2)}

    module = types.ModuleType("cosyvoice.cli.cosyvoice")
    module.CosyVoice2 = CosyVoice2StandIn
    for name in ("cosyvoice", "cosyvoice.cli"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "cosyvoice.cli.cosyvoice", module)
    tts = CosyVoice2TTS("models/CosyVoice2-0.5B", response_voice="voice.wav")
    waveform, rate = tts.clone("How are you?", reference_audio="seed.wav", reference_text="Hi.", emotion="sad")
    assert rate == 24000 and waveform.shape == (480,)
    waveform, rate = tts.instruct("I am here.", tone="gentle", language="zh")
    assert waveform.shape == (480,) and np.allclose(waveform, 0.2)
    assert calls == [
        ("load", "models/CosyVoice2-0.5B"),
        ("clone", "How are you?", "Hi.", "seed.wav"),
        ("instruct", "I am here.", "用温柔的语气说", "voice.wav"),
    ]


def test_unknown_backend_names_are_errors():
    with pytest.raises(ValueError, match="unknown LLM backend 'nope'"):
        build_llm_backend(PipelineConfig(workdir="unused", llm="nope"))
    with pytest.raises(ValueError, match="needs --llm-model"):
        build_llm_backend(PipelineConfig(workdir="unused", llm="openai"))
    with pytest.raises(ValueError, match="unknown TTS backend"):
        build_tts_backend(PipelineConfig(workdir="unused", tts="nope"), "user")


def test_transformers_backend_on_a_tiny_qwen3():
    """The local-model backend: chat template, generate, new tokens decoded; seeded sampling repeats itself."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from opens2s.conversion.tiny import build_llm_tokenizer

    tokenizer = build_llm_tokenizer()
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    llm = TransformersLLM(Qwen3ForCausalLM(config), tokenizer)
    messages = [{"role": "system", "content": "Reply with JSON."}, {"role": "user", "content": "I feel sad."}]
    greedy = llm.complete(messages, temperature=0, max_tokens=8)
    assert isinstance(greedy, str) and greedy == llm.complete(messages, temperature=0, max_tokens=8)
    sampled = [llm.complete(messages, temperature=1.0, max_tokens=8, seed=3) for _ in range(2)]
    assert sampled[0] == sampled[1]


def test_settings_are_saved_without_secrets_and_reused(tmp_path, capsys):
    from opens2s.cli import main

    config = PipelineConfig(workdir=tmp_path, seed_data="seeds.csv", llm_api_key="secret", num_instructions=5)
    config.save()
    saved = json.loads((tmp_path / "config.json").read_text())
    assert "llm_api_key" not in saved and saved["num_instructions"] == 5
    assert PipelineConfig.load(tmp_path, num_instructions=2).seed_data == "seeds.csv"
    assert main(["data", "status", "--workdir", str(tmp_path)]) == 0
    assert "seed             not started" in capsys.readouterr().out
    assert main(["data", "instructions", "--workdir", str(tmp_path), "--llm", "stand-in"]) == 1
    assert "run `opens2s data seed` first" in capsys.readouterr().err


def test_chunks_and_audio_files_are_written_atomically(tmp_path):
    from opens2s.dataset_scripts.runner import Failure, StageRunner

    config = PipelineConfig(workdir=tmp_path, chunk_size=2)
    runner = StageRunner("demo", config)
    runner.commit([{"id": "a"}], ["a"], [Failure("b", "b", "llm error", "boom")])
    (tmp_path / "parts" / "demo" / ".part-00001-123").mkdir()  # a part a kill interrupted
    (tmp_path / ".demo.tmp").mkdir()  # a merge a kill interrupted
    runner = StageRunner("demo", config)
    assert not (tmp_path / "parts" / "demo" / ".part-00001-123").exists() and not (tmp_path / ".demo.tmp").exists()
    assert runner.pending(["a", "b", "c"]) == [1, 2]
    runner.commit([{"id": "b"}], ["b"], [])
    from datasets import Features, Value

    dataset = runner.finish(["c", "b", "a"], Features({"id": Value("string")}))
    assert dataset["id"] == ["b", "a"] and runner.manifest()["failure_reasons"] == {}
    assert runner.manifest()["pending"] == 1
