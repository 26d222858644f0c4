"""`opens2s eval`: benchmark loaders, the benchmarks' protocols (subset defaults, judge prompts byte for byte against
the published texts in `tests/eval_references/`, judge-score parsing, failure accounting, judge input), speech metrics,
the report, and whole runs of the tiny model against tiny local benchmarks (made here in VoiceBench's and URO-Bench's
schemas) scored by a local chat-completions judge (a test double on 127.0.0.1 that returns fixed scores). IFEval's
differential test against its reference implementation is in `test_evaluation_ifeval.py`."""

import io
import json
import os
import sys
import threading
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from opens2s.cli import main
from opens2s.evaluation.benchmarks import TABLE2_BENCHMARKS, get_benchmark, load_benchmark
from opens2s.evaluation.ifeval import check_ifeval_reference
from opens2s.evaluation.judges import (
    UNDEREMOTION_PROMPT,
    VOICEBENCH_OPEN_PROMPT,
    JudgeConfig,
    build_judge_messages,
    judge_row,
    parse_judge_score,
)
from opens2s.evaluation.report import PAPER_TABLE2, format_report, summarize_benchmark
from opens2s.evaluation.runner import EvalConfig, read_jsonl, run_evaluation, score_responses
from opens2s.evaluation.speech_metrics import (
    UroBenchASR,
    WhisperASR,
    corpus_error_rate,
    speech_rate,
    text_speech_consistency,
)
from opens2s.processing.audio_io import load_audio
from opens2s.processing.chat_completions import ChatCompletionsError


RATE = 16000
REFERENCES = Path(__file__).parent / "eval_references"


def _ifeval_reference_missing() -> str | None:
    try:
        check_ifeval_reference()
    except (ImportError, LookupError) as error:
        return str(error)
    return None


# Runs that score IFEval need lm-eval and NLTK's punkt_tab; they skip without them, except under CI (.ci/run installs
# both, so a missing one fails there).
IFEVAL_MISSING = _ifeval_reference_missing()
requires_ifeval_reference = pytest.mark.skipif(
    IFEVAL_MISSING is not None and not os.environ.get("CI"), reason=f"IFEval reference unavailable: {IFEVAL_MISSING}"
)
IFEVAL_KWARG_FIELDS = ("num_words", "relation", "keywords", "end_phrase")


def tone(seconds: float, frequency: float = 220.0, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def wav_bytes(waveform: np.ndarray, rate: int = RATE) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, waveform, rate, format="WAV")
    return buffer.getvalue()


# ------------------------------------------------------------------ tiny benchmarks in the benchmarks' schemas
def make_voicebench(root):
    """A VoiceBench mirror in the Hub layout: one parquet file per subset (`alpacaeval_full` 3 rows, `alpacaeval`
    1 row, `ifeval` 2 rows), audio as {bytes, path} (Audio feature);
    ifeval rows carry `key`, `instruction_id_list` and `kwargs` (one struct per instruction, every argument field
    present, `None` where unused, as Arrow stores the Hub's union of arguments)."""
    from datasets import Audio, Dataset, Features, Sequence, Value

    # Written as a plain struct, then cast: encoding through Audio() would need torchcodec.
    audio = {"bytes": Value("binary"), "path": Value("string")}

    alpaca = Dataset.from_dict(
        {
            "audio": [{"bytes": wav_bytes(tone(1.0 + 0.25 * i, 200 + 40 * i)), "path": f"{i}.wav"} for i in range(3)],
            "prompt": ["How do I bake bread?", "MALFORMED please: what is jazz?", "Name three colours."],
        },
        features=Features({"audio": audio, "prompt": Value("string")}),
    ).cast_column("audio", Audio())
    (root / "alpacaeval_full").mkdir(parents=True)
    alpaca.to_parquet(root / "alpacaeval_full" / "test-00000-of-00001.parquet")
    # The 199-row subset, here one row of its own.
    (root / "alpacaeval").mkdir()
    alpaca.select([2]).to_parquet(root / "alpacaeval" / "test-00000-of-00001.parquet")

    def kwargs(**values):
        return {name: values.get(name) for name in IFEVAL_KWARG_FIELDS}

    ifeval = Dataset.from_dict(
        {
            "audio": [{"bytes": wav_bytes(tone(1.2, 330, rate), rate), "path": None} for rate in (RATE, 22050)],
            "prompt": ["Answer in fewer than 300 words.", "Mention bread and end with 'Bye.'"],
            "key": [1001, 1002],
            "instruction_id_list": [
                ["length_constraints:number_words"],
                ["keywords:existence", "startend:end_checker"],
            ],
            "kwargs": [
                [kwargs(num_words=300, relation="less than")],
                [kwargs(keywords=["bread"]), kwargs(end_phrase="Bye.")],
            ],
        },
        features=Features(
            {
                "audio": audio,
                "prompt": Value("string"),
                "key": Value("int64"),
                "instruction_id_list": Sequence(Value("string")),
                "kwargs": [
                    {
                        "num_words": Value("int64"),
                        "relation": Value("string"),
                        "keywords": Sequence(Value("string")),
                        "end_phrase": Value("string"),
                    }
                ],
            }
        ),
    ).cast_column("audio", Audio())
    (root / "ifeval").mkdir()
    ifeval.to_parquet(root / "ifeval" / "test-00000-of-00001.parquet")
    return root


def make_uro_bench(root):
    """A URO-Bench data folder: pro/UnderEmotion-en/test.jsonl with source_wav (relative), source_text, target_text
    (a string or a list) and emotion."""
    folder = root / "pro" / "UnderEmotion-en"
    (folder / "wav").mkdir(parents=True)
    rows = [
        ("I failed my exam today.", ["I'm sorry to hear that.", "That must hurt."], "sad"),
        ("I got the job!", "Congratulations!", "happy"),
    ]
    with (folder / "test.jsonl").open("w") as out:
        for index, (text, target, emotion) in enumerate(rows):
            sf.write(folder / "wav" / f"{index}.wav", tone(1.0, 180 + 60 * index), RATE)
            item = {"source_wav": f"wav/{index}.wav", "source_text": text, "target_text": target, "emotion": emotion}
            out.write(json.dumps(item) + "\n")
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("benchmarks")
    return make_voicebench(root / "voicebench"), make_uro_bench(root / "uro")


# ------------------------------------------------------------------ the judge double
class FixedScoreJudge(BaseHTTPRequestHandler):
    """Chat-completions double: "5" for UnderEmotion prompts, "4" for VoiceBench ones, and a sentence without a
    score when the instruction says MALFORMED. Records every request body."""

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(body)
        prompt = body["messages"][-1]["content"]
        text = "I would rather not say." if "MALFORMED" in prompt else "5" if "[Emotion]" in prompt else "4"
        payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def judge_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FixedScoreJudge)
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def judge_url(server) -> str:
    return f"http://127.0.0.1:{server.server_port}/v1"


# ------------------------------------------------------------------ loaders
def test_voicebench_mirror_loads_in_the_normalised_schema(data):
    voicebench, _ = data
    alpaca = load_benchmark("alpacaeval_full", voicebench)
    assert alpaca.column_names == ["id", "audio", "prompt", "reference", "emotion", "instruction_id_list", "kwargs"]
    assert alpaca["id"] == ["0000", "0001", "0002"] and alpaca[0]["prompt"] == "How do I bake bread?"
    ifeval = load_benchmark("ifeval", voicebench, limit=5)
    assert ifeval["id"] == ["1001", "1002"]
    # Arrow's None-filled argument fields are dropped, as VoiceBench's evaluator does.
    assert json.loads(ifeval[1]["kwargs"]) == [{"keywords": ["bread"]}, {"end_phrase": "Bye."}]
    waveform = load_audio(ifeval[1]["audio"], target_sampling_rate=RATE)  # stored at 22.05 kHz
    assert waveform.dtype == np.float32 and abs(len(waveform) - 1.2 * RATE) <= 2
    assert len(load_benchmark("alpacaeval_full", voicebench, limit=2)) == 2


def test_alpacaeval_is_voicebenchs_leaderboard_subset_by_default(data):
    """Table 2's AlpacaEval is VoiceBench's leaderboard subset `alpacaeval_full` (636 rows, where the paper's
    Kimi-Audio 4.46 comes from); the 199-row `alpacaeval` is a named option."""
    import argparse

    from opens2s.evaluation.command import add_eval_arguments

    voicebench, _ = data
    assert TABLE2_BENCHMARKS[0] == "alpacaeval_full" and "alpacaeval" not in TABLE2_BENCHMARKS
    spec = get_benchmark("alpacaeval_full")
    assert (spec.subset, spec.title, spec.split) == ("alpacaeval_full", "AlpacaEval", "test")
    assert get_benchmark("alpacaeval").subset == "alpacaeval"
    parser = argparse.ArgumentParser()
    add_eval_arguments(parser)
    assert parser.parse_args(["--out", "x"]).benchmarks[0] == "alpacaeval_full"
    assert len(load_benchmark("alpacaeval_full", voicebench)) == 3
    assert load_benchmark("alpacaeval", voicebench)["prompt"] == ["Name three colours."]
    assert "alpacaeval_full" in PAPER_TABLE2["Kimi-Audio (paper)"]


def test_uro_bench_folder_loads_with_reference_and_emotion(data):
    _, uro = data
    rows = load_benchmark("underemotion-en", uro)
    assert rows["id"] == ["0000", "0001"]
    assert rows[0]["reference"] == "I'm sorry to hear that. / That must hurt." and rows[0]["emotion"] == "sad"
    assert len(load_audio(rows[1]["audio"], target_sampling_rate=RATE)) == RATE
    # The subset's own folder works too.
    assert len(load_benchmark("underemotion-en", uro / "pro" / "UnderEmotion-en")) == 2
    with pytest.raises(FileNotFoundError, match="UnderEmotion-zh/test.jsonl"):
        load_benchmark("underemotion-zh", uro)
    with pytest.raises(ValueError, match="unknown benchmark 'voicebench'.*alpacaeval"):
        get_benchmark("voicebench")


# ------------------------------------------------------------------ judge prompts, byte for byte
def test_judge_prompts_are_the_published_texts():
    """The prompts equal the benchmarks' published texts (copies in tests/eval_references/, see its README)."""
    voicebench = (REFERENCES / "voicebench_meta_prompt_open.txt").read_text(encoding="utf-8")
    uro = (REFERENCES / "uro_bench_prompt_ue.txt").read_text(encoding="utf-8")
    assert VOICEBENCH_OPEN_PROMPT == voicebench
    assert UNDEREMOTION_PROMPT == uro.strip()  # mark_gpt.py: prompt_ue = """...""".strip(), indentation kept
    assert len(UNDEREMOTION_PROMPT) == 2563 and UNDEREMOTION_PROMPT.count("\n    ") == 20
    row = {"prompt": "I lost my keys {again}", "emotion": "angry", "reference": "That is annoying."}
    system, user = build_judge_messages("underemotion", row, "Oh no.")
    expected = (
        uro.strip()
        .replace("{question}", row["prompt"])
        .replace("{answer}", "Oh no.")
        .replace("{reference}", row["reference"])
        .replace("{emotion}", row["emotion"])
    )
    assert system == {"role": "system", "content": "You are a helpful assistant."} and user["content"] == expected
    system, user = build_judge_messages("open", row, "Oh no.")
    assert system["content"] == "You are a helpful assistant who tries to help answer the user's question."
    assert user["content"] == voicebench.replace("{prompt}", row["prompt"]).replace("{response}", "Oh no.")


# ------------------------------------------------------------------ judge score parsing
@pytest.mark.parametrize(
    ("scorer", "output", "score"),
    [
        # VoiceBench src/evaluator/open.py: float(answer), else int of the first [[n]]; every value counts.
        pytest.param("open", "4", 4.0, id="vb-bare"),
        pytest.param("open", " 4.5\n", 4.5, id="vb-float"),
        pytest.param("open", "10", 10.0, id="vb-out-of-range-kept"),
        pytest.param("open", "0", 0.0, id="vb-zero-kept"),
        pytest.param("open", "Rating: [[3]]", 3.0, id="vb-brackets"),
        pytest.param("open", "**4**", None, id="vb-markdown-fails"),
        pytest.param("open", "4/5", None, id="vb-fraction-fails"),
        pytest.param("open", "[[3.5]]", None, id="vb-brackets-int-only"),
        pytest.param("open", "", None, id="vb-empty"),
        # URO-Bench metrics/mark_gpt.py: int(answer); every value counts.
        pytest.param("underemotion", "4", 4.0, id="uro-bare"),
        pytest.param("underemotion", " 5\n", 5.0, id="uro-whitespace"),
        pytest.param("underemotion", "6", 6.0, id="uro-out-of-range-kept"),
        pytest.param("underemotion", "4.0", None, id="uro-float-fails"),
        pytest.param("underemotion", "[[4]]", None, id="uro-brackets-fail"),
        pytest.param("underemotion", None, None, id="uro-no-content"),
    ],
)
def test_judge_answers_are_parsed_as_the_benchmarks_do(scorer, output, score):
    parsed = parse_judge_score(output, scorer)
    assert parsed.value == score and (parsed.reason is None) == (score is not None)


@pytest.mark.parametrize(
    ("output", "score"),
    [
        pytest.param("**3**", 3.0, id="markdown"),
        pytest.param("4/5", 4.0, id="fraction"),
        pytest.param("Score: 4", 4.0, id="labelled"),
        pytest.param("7", None, id="out-of-range-dropped"),
        pytest.param("0", None, id="zero-dropped"),
        pytest.param("4 or 5", None, id="ambiguous"),
    ],
)
def test_lenient_parsing_is_a_named_option(output, score):
    for scorer in ("open", "underemotion"):
        assert parse_judge_score(output, scorer, parsing="lenient").value == score


class ScriptedClient:
    """Stands in for ChatCompletionsClient: answers from a list; an exception in the list is raised."""

    def __init__(self, answers):
        self.answers, self.calls = list(answers), []

    def complete(self, messages, **params):
        self.calls.append((messages, params))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


ROW = {"prompt": "How are you?", "emotion": "sad", "reference": "I'm here."}


def test_judge_row_sampling_and_voicebench_failed_samples():
    config = JudgeConfig("http://unused", samples=3)
    client = ScriptedClient(["4", "great answer", "10"])
    result = judge_row(client, config, "open", ROW, "Fine.")
    # The unreadable answer is left out (VoiceBench's script would stop), the out-of-range 10 counts.
    assert result["judge_scores"] == [4.0, None, 10.0] and result["score"] == 7.0 and result["failed_samples"] == 1
    assert result["status"] == "ok" and result["counted_as"] == "left out" and "great answer" in result["reason"]
    messages, params = client.calls[0]
    assert params["temperature"] == 0.5 and params["top_p"] == 0.95 and params["max_tokens"] == 1024
    failed = judge_row(ScriptedClient(["meh", ChatCompletionsError("HTTP 500"), ""]), config, "open", ROW, "Fine.")
    assert failed["status"] == "failed" and failed["score"] is None and "HTTP 500" in failed["reason"]


def test_judge_row_uro_bench_counts_failed_samples_as_zero():
    config = JudgeConfig("http://unused", samples=3)
    answers = ["4", ChatCompletionsError("HTTP 500"), "five"]
    result = judge_row(ScriptedClient(answers), config, "underemotion", ROW, "I'm sorry.")
    # URO-Bench: a failed request scores 0, in the denominator: (4 + 0 + 0) / 3 x 20.
    assert result["status"] == "ok" and result["score"] == pytest.approx(80 / 3) and result["failed_samples"] == 2
    assert result["counted_as"] == "0 (URO-Bench)"
    excluded = judge_row(ScriptedClient(answers), config, "underemotion", ROW, "I'm sorry.", failed_rows="exclude")
    assert excluded["score"] == 80.0 and excluded["counted_as"] == "left out"
    assert judge_row(ScriptedClient(["6", "6", "6"]), config, "underemotion", ROW, "Hi.")["score"] == 120.0
    # URO-Bench scores the answers "" and " " [0, 0, 0] (no request here); any other answer is judged.
    for empty in ("", " "):
        client = ScriptedClient([])
        assert judge_row(client, config, "underemotion", ROW, empty)["score"] == 0.0 and not client.calls
    assert judge_row(ScriptedClient(["3"] * 3), config, "underemotion", ROW, "  ")["score"] == 60.0


def test_benchmark_means_follow_the_benchmarks():
    """VoiceBench: the mean of all judge answers of all rows (np.mean of the flattened scores), out-of-range values
    included; URO-Bench: the mean of the row scores over all rows, failed ones counted 0."""
    open_scores = [
        {"id": "0", "status": "ok", "score": 4.0, "judge_scores": [4.0, None, None]},
        {"id": "1", "status": "ok", "score": 2.0, "judge_scores": [2.0, 2.0, 2.0]},
        {"id": "2", "status": "ok", "score": 5.0, "judge_scores": [6.0, 4.0, 5.0]},
    ]
    responses = [{"id": str(i)} for i in range(3)]
    spec = get_benchmark("commoneval")
    assert summarize_benchmark(spec, responses, open_scores).value == pytest.approx(25 / 7)
    excluded = summarize_benchmark(spec, responses, open_scores, {"failed_rows": "exclude"})
    assert excluded.value == pytest.approx(11 / 3)
    uro_scores = [{"id": "0", "status": "ok", "score": 0.0}, {"id": "1", "status": "ok", "score": 90.0}]
    assert summarize_benchmark(get_benchmark("underemotion-en"), responses[:2], uro_scores).value == 45.0


class CannedJudge:
    """A judge client that answers "3" and records what it was asked."""

    def __init__(self):
        self.calls = []

    def complete(self, messages, **params):
        self.calls.append(messages[-1]["content"])
        return "3"


@pytest.mark.parametrize("failed_rows", ["reference", "exclude"])
def test_failed_generations_count_as_the_benchmarks_count_them(tmp_path, data, failed_rows):
    """VoiceBench: a failed generation is an empty answer (judged; for IFEval it follows no instruction).
    URO-Bench: a failed generation (no audio file, transcript " ") scores 0, in the denominator. `exclude` leaves
    them out."""
    voicebench, uro = data
    judge = JudgeConfig("http://unused", samples=3)
    config = EvalConfig(output_dir=tmp_path, judge=judge, failed_rows=failed_rows)
    values = {}
    for name, source, answer in [
        ("alpacaeval_full", voicebench, "A fine answer."),
        ("ifeval", voicebench, "Bread is good. Bye."),
        ("underemotion-en", uro, "I am sorry."),
    ]:
        spec = get_benchmark(name)
        if spec.scorer == "ifeval" and IFEVAL_MISSING:
            continue
        dataset = load_benchmark(spec, source)
        ids = dataset["id"]
        responses = {ids[0]: {"id": ids[0], "error": "audio: empty"}}
        responses |= {row_id: {"id": row_id, "response": answer, "asr": answer} for row_id in ids[1:]}
        client = CannedJudge()
        scores = score_responses(dataset, spec, tmp_path / name, responses, config, client)
        summary = summarize_benchmark(
            spec, list(responses.values()), [scores[i] for i in ids], {"failed_rows": failed_rows}
        )
        values[name] = (scores[ids[0]], summary, client)
    failed, summary, client = values["alpacaeval_full"]
    if failed_rows == "reference":
        assert failed["status"] == "ok" and failed["counted_as"] == "judged as an empty answer (VoiceBench)"
        assert any("### [Response]: \n" in prompt for prompt in client.calls) and summary.scored == 3
    else:
        assert failed["status"] == "failed" and summary.scored == 2 and len(client.calls) == 6
    assert "generation failed: audio: empty" in failed["failure"] and summary.protocol["failures"]
    failed, summary, client = values["underemotion-en"]
    assert summary.rows == 2 and len(client.calls) == 3  # the failed row is never judged
    assert summary.value == (30.0 if failed_rows == "reference" else 60.0)  # (0 + 60) / 2: in the denominator
    if "ifeval" in values:
        failed, summary, _ = values["ifeval"]
        if failed_rows == "reference":
            assert failed["ifeval"]["strict"] == [False] and summary.scored == 2
        else:
            assert summary.scored == 1


# ------------------------------------------------------------------ judge input
def test_underemotion_judges_the_asr_of_the_spoken_answer_by_default(tmp_path):
    config = EvalConfig(output_dir=tmp_path)
    assert config.judge_input == "reference" and config.mode == "text"
    for name, judge_input in [("alpacaeval_full", "text"), ("ifeval", "text"), ("underemotion-zh", "asr")]:
        spec = get_benchmark(name)
        assert config.judge_input_of(spec) == judge_input
        assert config.speech_output(spec) == (judge_input == "asr")  # answered in speech, whatever the mode
    forced = EvalConfig(output_dir=tmp_path, judge_input="text")
    assert not forced.speech_output(get_benchmark("underemotion-en"))


class RecordingPipeline:
    """Stands in for the transformers ASR pipeline of WhisperASR: records its generate_kwargs."""

    def __init__(self):
        self.calls = []
        self.feature_extractor = types.SimpleNamespace(sampling_rate=RATE)
        self.model = types.SimpleNamespace(generation_config=types.SimpleNamespace(lang_to_id={"<|en|>": 1}))

    def __call__(self, inputs, batch_size, generate_kwargs):
        self.calls.append(generate_kwargs)
        return [{"text": " words "} for _ in inputs]


def test_uro_bench_asr_english_is_not_forced_and_chinese_falls_back_loudly(monkeypatch, caplog):
    """URO-Bench asr_for_eval.py: Whisper-large-v3 without a language for English, paraformer-zh for Chinese; where
    paraformer cannot be loaded, Whisper with language zh, and the report says so."""
    asr = UroBenchASR("openai/whisper-large-v3")
    asr.whisper._pipeline = RecordingPipeline()
    monkeypatch.setitem(sys.modules, "funasr", None)  # FunASR not installed
    assert asr([tone(0.5)], RATE, "en") == ["words"] and asr.whisper._pipeline.calls[-1] == {}
    assert asr.system("en") == "openai/whisper-large-v3, language detected by Whisper (URO-Bench)"
    assert asr([tone(0.5)], RATE, "zh") == ["words"]
    assert asr.whisper._pipeline.calls[-1] == {"language": "zh", "task": "transcribe"}
    assert "NOT URO-Bench's paraformer-zh" in asr.system("zh") and "funasr" in asr.system("zh")
    assert "paraformer-zh, which cannot be loaded" in caplog.text


def test_uro_bench_asr_uses_paraformer_where_funasr_loads(monkeypatch):
    built, inputs = [], []

    class AutoModel:
        def __init__(self, **kwargs):
            built.append(kwargs)

        def generate(self, input):
            inputs.append(input)
            return [{"text": " 你好 "}]

    monkeypatch.setitem(sys.modules, "funasr", types.SimpleNamespace(AutoModel=AutoModel))
    asr = UroBenchASR("openai/whisper-large-v3")
    assert asr([tone(0.5, rate=22050)], 22050, "zh") == ["你好"]
    assert built[0]["model"] == "paraformer-zh" and built[0]["model_revision"] == "v2.0.4"
    assert built[0]["vad_model"] == "fsmn-vad" and built[0]["punc_model"] == "ct-punc-c" and built[0]["hub"] == "ms"
    assert len(inputs[0]) == RATE // 2 and asr.system("zh") == "paraformer-zh v2.0.4 (URO-Bench)"


# ------------------------------------------------------------------ speech metrics
def test_text_speech_consistency_and_speech_rate():
    wer = text_speech_consistency("Hello, World! How are you?", "hello word how are you", "en")
    assert wer == {"metric": "wer", "errors": 1, "reference_length": 5, "value": 0.2}
    cer = text_speech_consistency("你好，世界。", "你好是界", "zh")
    assert cer["metric"] == "cer" and cer["errors"] == 1 and cer["reference_length"] == 4
    assert text_speech_consistency("", "noise", "en")["value"] is None
    assert text_speech_consistency("Two words", "", "en")["value"] == 1.0
    assert corpus_error_rate([wer, cer]) == pytest.approx(2 / 9)
    assert speech_rate("one two three", 1.5, "en") == 2.0 and speech_rate("你好", 0.5, "zh") == 4.0
    assert speech_rate("anything", 0.0) is None


# ------------------------------------------------------------------ report
def test_report_has_the_paper_rows_and_dashes_for_benchmarks_not_run():
    spec = get_benchmark("commoneval")
    responses = [{"id": "0"}, {"id": "1"}, {"id": "2", "error": "audio: empty"}]
    failure = "generation failed: audio: empty"
    scores = [
        {"id": "0", "status": "ok", "score": 3.0, "judge_scores": [3.0, 3.0, 3.0]},
        {"id": "1", "status": "ok", "score": 4.0, "judge_scores": [4.0, 4.0, 4.0]},
        {"id": "2", "status": "failed", "score": None, "failure": failure, "counted_as": "left out"},
    ]
    protocol = {
        "subset": "hlt-lab/voicebench commoneval (test, 3 rows)",
        "judge_input": "the text answer",
        "judge": "gpt-4o-mini, 3 samples",
        "failed_rows": "exclude",
    }
    summary = summarize_benchmark(spec, responses, scores, protocol)
    assert (summary.value, summary.scored, summary.failed, summary.answered) == (3.5, 2, 1, 2)
    report = format_report([summary], "my-model")
    # Per column: subset, judge input, judge, and how many rows failed and how they were counted.
    assert (
        "| CommonEval | hlt-lab/voicebench commoneval (test, 3 rows) | the text answer | gpt-4o-mini, 3 samples | "
        "1: left out |" in report
    )
    assert "| OpenS2S (paper) | 4.09 | 3.65 | 42.89 | 3.66 | 46.90 | 67.68 |" in report
    assert "| Kimi-Audio (paper) | 4.46 | 3.97 | 61.10 | 4.20 | 59.22 | 76.96 |" in report
    assert "| my-model (this run) | – | 3.50 | – | – | – | – |" in report
    assert "1 failed: generation failed: audio: empty" in report
    assert list(PAPER_TABLE2["OpenS2S (paper)"]) == [
        "alpacaeval_full",
        "commoneval",
        "ifeval",
        "wildvoice",
        "underemotion-en",
        "underemotion-zh",
    ]


# ------------------------------------------------------------------ whole runs
@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory):
    return build_tiny_whisper(tmp_path_factory.mktemp("whisper"))


def eval_argv(out, tiny_model_dir, data, server, whisper, *extra):
    voicebench, uro = data
    return [
        "eval",
        "--out", str(out),
        "--model", str(tiny_model_dir),
        "--name", "tiny",
        "--benchmarks", "alpacaeval_full", "ifeval", "underemotion-en",
        "--voicebench", str(voicebench),
        "--uro-bench", str(uro),
        "--judge-base-url", judge_url(server),
        "--max-new-tokens", "8",
        "--max-units", "16",
        "--batch-size", "2",
        "--asr-model", str(whisper),
        *extra,
    ]  # fmt: skip


def judge_outputs(out, benchmark) -> int:
    return sum(
        len(record.get("judge_outputs", [])) for record in read_jsonl(out / benchmark / "scores.jsonl").values()
    )


@requires_ifeval_reference
def test_eval_end_to_end_and_resume(tmp_path, tiny_model_dir, data, judge_server, tiny_whisper, capsys, monkeypatch):
    """Defaults: AlpacaEval is alpacaeval_full; UnderEmotion is answered in speech (the mode is text) and judged on
    the tiny Whisper's transcript; IFEval by the reference checker; failures counted as the benchmarks count them."""
    monkeypatch.setenv("OPENS2S_JUDGE_API_KEY", "test-key")
    out = tmp_path / "run"
    # An interrupted run: only the first 2 rows of each benchmark were done.
    assert main(eval_argv(out, tiny_model_dir, data, judge_server, tiny_whisper, "--limit", "2")) == 0
    first_requests = len(judge_server.requests)
    assert first_requests == judge_outputs(out, "alpacaeval_full") + judge_outputs(out, "underemotion-en")
    assert judge_server.requests[0]["model"] == "gpt-4o-mini" and judge_server.requests[0]["temperature"] == 0.5
    answers_before = (out / "alpacaeval_full" / "responses.jsonl").read_text().splitlines()
    assert len(answers_before) == 2

    # The full run answers and scores only the missing row.
    assert main(eval_argv(out, tiny_model_dir, data, judge_server, tiny_whisper)) == 0
    answers = (out / "alpacaeval_full" / "responses.jsonl").read_text().splitlines()
    assert answers[:2] == answers_before and len(answers) == 3
    assert len(judge_server.requests) - first_requests == 3  # 1 new alpacaeval row x 3 samples
    report = (out / "report.md").read_text()
    printed = capsys.readouterr().out
    assert "| OpenS2S (paper) | 4.09 | 3.65 | 42.89 | 3.66 | 46.90 | 67.68 |" in report and report in printed

    summary = {item["name"]: item for item in json.loads((out / "summary.json").read_text())["benchmarks"]}
    alpaca = summary["alpacaeval_full"]
    assert (alpaca["rows"], alpaca["scored"], alpaca["failed"]) == (3, 2, 1)  # the MALFORMED row: no sample counts
    assert alpaca["value"] == 4.0 and "neither a number nor [[n]]" in next(iter(alpaca["details"]["failure_reasons"]))
    assert alpaca["protocol"]["failures"] == {"left out": 1}
    emotion = summary["underemotion-en"]
    assert emotion["value"] in (100.0, 50.0, 0.0)  # 5 x 20 per row with a transcript (0 when it is empty)
    assert emotion["protocol"]["asr"] == [f"{tiny_whisper}, language detected by Whisper (URO-Bench)"]
    spoken = read_jsonl(out / "underemotion-en" / "responses.jsonl")
    assert all(record["num_units"] > 0 and "asr" in record for record in spoken.values())
    assert "| UnderEmotion-en | " in report and "the ASR transcript of the spoken answer" in report
    ifeval = summary["ifeval"]
    assert ifeval["rows"] == 2 and ifeval["scored"] == 2 and 0 <= ifeval["value"] <= 100
    rows = read_jsonl(out / "ifeval" / "scores.jsonl")
    assert rows["1002"]["ifeval"]["instruction_id_list"] == ["keywords:existence", "startend:end_checker"]
    csv_lines = (out / "report.csv").read_text().splitlines()
    assert csv_lines[0] == "model,AlpacaEval,CommonEval,IFEval,WildVoice,UnderEmotion-en,UnderEmotion-zh"
    assert csv_lines[-1].startswith("tiny (this run),4.00,,")

    # A run killed while writing: the last score line is torn. The re-run re-scores that row only.
    scores_file = out / "alpacaeval_full" / "scores.jsonl"
    lines = scores_file.read_text().splitlines(keepends=True)
    scores_file.write_text(lines[0] + lines[1] + lines[2][:25])
    before = len(judge_server.requests)
    assert main(eval_argv(out, tiny_model_dir, data, judge_server, tiny_whisper)) == 0
    assert len(judge_server.requests) - before == 3
    assert (out / "report.md").read_text() == report
    assert len(scores_file.read_text().splitlines()) == 3

    # --retry-failed asks the judge again for the failed row only.
    before = len(judge_server.requests)
    assert main(eval_argv(out, tiny_model_dir, data, judge_server, tiny_whisper, "--retry-failed")) == 0
    assert len(judge_server.requests) - before == 3
    assert "MALFORMED" in judge_server.requests[-1]["messages"][-1]["content"]

    # Settings that change answers cannot be mixed into the same folder.
    assert main(eval_argv(out, tiny_model_dir, data, judge_server, tiny_whisper, "--max-new-tokens", "9")) == 1
    assert "holds a run with other settings (max_new_tokens: 8 -> 9)" in capsys.readouterr().err


def test_eval_needs_a_judge_for_judged_benchmarks(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("OPENS2S_JUDGE_BASE_URL", raising=False)
    assert main(["eval", "--out", str(tmp_path / "x"), "--benchmarks", "commoneval"]) == 1
    assert "need an LLM judge" in capsys.readouterr().err


def build_tiny_whisper(dst):
    """A random 1-layer Whisper with a byte-level vocabulary, saved as a folder that
    `pipeline("automatic-speech-recognition", model=dst)` loads (no download). It transcribes noise."""
    from tokenizers import pre_tokenizers
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperTokenizer,
    )

    vocab = {symbol: index for index, symbol in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    specials = ["<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"]
    tokenizer = WhisperTokenizer(vocab=vocab, merges=[], pad_token="<|endoftext|>", additional_special_tokens=specials)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in ["<|endoftext|>", *specials]}
    eos, start = ids["<|endoftext|>"], ids["<|startoftranscript|>"]
    sizes = {"encoder_layers": 1, "decoder_layers": 1, "encoder_attention_heads": 2, "decoder_attention_heads": 2}
    config = WhisperConfig(
        vocab_size=len(tokenizer),
        num_mel_bins=80,
        d_model=16,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_target_positions=32,
        decoder_start_token_id=start,
        eos_token_id=eos,
        pad_token_id=eos,
        bos_token_id=eos,
        **sizes,
    )
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        decoder_start_token_id=start,
        eos_token_id=eos,
        pad_token_id=eos,
        no_timestamps_token_id=ids["<|notimestamps|>"],
        max_new_tokens=6,
    )
    for part in (model, tokenizer, WhisperFeatureExtractor(feature_size=80)):
        part.save_pretrained(dst)
    return dst


def test_speech_mode_transcribes_the_spoken_answer(tmp_path, tiny_model_dir, data, judge_server, tiny_whisper):
    """Speech in -> speech out on one UnderEmotion row: units, token2wav audio, Whisper ASR through the real
    transformers pipeline (a tiny random Whisper), WER against the text answer, speech rate; judged on the ASR."""
    _, uro = data
    config = EvalConfig(
        output_dir=tmp_path / "speech",
        benchmarks=("underemotion-en",),
        model=str(tiny_model_dir),
        mode="speech",
        limit=1,
        max_new_tokens=8,
        speech_max_new_tokens=16,
        sources={"uro-bench": str(uro)},
        judge=JudgeConfig(judge_url(judge_server), samples=1),
        judge_input="asr",
        save_audio=True,
    )
    asr = WhisperASR(str(tiny_whisper), batch_size=2)
    (summary,) = run_evaluation(config, asr=asr)
    record = read_jsonl(config.output_dir / "underemotion-en" / "responses.jsonl")["0000"]
    assert record["num_units"] > 0 and record["audio_seconds"] > 0
    assert isinstance(record["asr"], str) and record["consistency"]["metric"] == "wer"
    assert sf.info(record["audio_path"]).duration == pytest.approx(record["audio_seconds"], abs=1e-3)
    assert summary.speech["rows_transcribed"] == 1 and summary.speech["mean_audio_seconds"] > 0
    assert "## Spoken answers" in (config.output_dir / "report.md").read_text()
    score = read_jsonl(config.output_dir / "underemotion-en" / "scores.jsonl")["0000"]
    if record["asr"].strip():  # the judge saw the transcript
        assert record["asr"] in judge_server.requests[0]["messages"][-1]["content"]
    else:  # URO-Bench: an empty answer is 0 without a judge call
        assert score["score"] == 0.0 and not judge_server.requests
