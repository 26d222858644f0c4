"""`opens2s eval`: benchmark loaders, IFEval checks, judge-score parsing, speech metrics, the report, and whole runs of
the tiny model against tiny local benchmarks (made here in VoiceBench's and URO-Bench's schemas) scored by a local
chat-completions judge (a test double on 127.0.0.1 that returns fixed scores)."""

import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import soundfile as sf
import torch

from opens2s.cli import main
from opens2s.evaluation.benchmarks import get_benchmark, load_benchmark
from opens2s.evaluation.ifeval import (
    check_instruction,
    count_sentences,
    evaluate_ifeval_row,
    ifeval_accuracy,
    loose_variants,
)
from opens2s.evaluation.judges import JudgeConfig, build_judge_messages, judge_row, parse_judge_score
from opens2s.evaluation.report import PAPER_TABLE2, format_report, summarize_benchmark
from opens2s.evaluation.runner import EvalConfig, read_jsonl, run_evaluation
from opens2s.evaluation.speech_metrics import (
    WhisperASR,
    corpus_error_rate,
    speech_rate,
    text_speech_consistency,
)
from opens2s.processing.audio_io import load_audio
from opens2s.processing.chat_completions import ChatCompletionsError


RATE = 16000
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
    """A VoiceBench mirror in the Hub layout: one parquet file per subset, audio as {bytes, path} (Audio feature);
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
    (root / "alpacaeval").mkdir(parents=True)
    alpaca.to_parquet(root / "alpacaeval" / "test-00000-of-00001.parquet")

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
    alpaca = load_benchmark("alpacaeval", voicebench)
    assert alpaca.column_names == ["id", "audio", "prompt", "reference", "emotion", "instruction_id_list", "kwargs"]
    assert alpaca["id"] == ["0000", "0001", "0002"] and alpaca[0]["prompt"] == "How do I bake bread?"
    ifeval = load_benchmark("ifeval", voicebench, limit=5)
    assert ifeval["id"] == ["1001", "1002"]
    # Arrow's None-filled argument fields are dropped, as VoiceBench's evaluator does.
    assert json.loads(ifeval[1]["kwargs"]) == [{"keywords": ["bread"]}, {"end_phrase": "Bye."}]
    waveform = load_audio(ifeval[1]["audio"], target_sampling_rate=RATE)  # stored at 22.05 kHz
    assert waveform.dtype == np.float32 and abs(len(waveform) - 1.2 * RATE) <= 2
    assert len(load_benchmark("alpacaeval", voicebench, limit=2)) == 2


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


# ------------------------------------------------------------------ judge score parsing
@pytest.mark.parametrize(
    ("output", "score"),
    [
        pytest.param("4", 4.0, id="bare"),
        pytest.param(" 5.\n", 5.0, id="period-newline"),
        pytest.param("**3**", 3.0, id="markdown"),
        pytest.param("4/5", 4.0, id="fraction"),
        pytest.param("After thought: [[2]]", 2.0, id="voicebench-brackets"),
        pytest.param("Score: 4", 4.0, id="labelled"),
        pytest.param("The rating is 1", 1.0, id="sentence"),
    ],
)
def test_judge_scores_are_parsed(output, score):
    assert parse_judge_score(output).value == score


@pytest.mark.parametrize(
    ("output", "reason"),
    [
        pytest.param("", "empty judge output", id="empty"),
        pytest.param(None, "empty judge output", id="none"),
        pytest.param("I would rather not say.", "no score", id="prose"),
        pytest.param("4 or 5", "no score", id="ambiguous"),
        pytest.param("7", "outside 1-5", id="out-of-range"),
        pytest.param("0", "outside 1-5", id="zero"),
    ],
)
def test_malformed_judge_output_is_a_reason_not_a_crash(output, reason):
    parsed = parse_judge_score(output)
    assert parsed.value is None and reason in parsed.reason


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


def test_judge_row_averages_valid_samples_and_keeps_the_reasons():
    config = JudgeConfig("http://unused", samples=3)
    row = {"prompt": "How are you?", "emotion": "sad", "reference": "I'm here."}
    client = ScriptedClient(["4", "great answer", "5"])
    result = judge_row(client, config, "open", row, "Fine.")
    assert result["status"] == "ok" and result["score"] == 4.5 and "great answer" in result["reason"]
    assert result["judge_scores"] == [4.0, None, 5.0]
    messages, params = client.calls[0]
    assert params["temperature"] == 0.5 and params["top_p"] == 0.95 and params["max_tokens"] == 1024
    assert messages[0]["content"].startswith("You are a helpful assistant who tries")
    assert "### [Instruction]: How are you?\n### [Response]: Fine." in messages[1]["content"]

    failed = judge_row(ScriptedClient(["meh", ChatCompletionsError("HTTP 500"), ""]), config, "open", row, "Fine.")
    assert failed["status"] == "failed" and failed["score"] is None
    assert "no score" in failed["reason"] and "HTTP 500" in failed["reason"] and "empty" in failed["reason"]

    emotion = judge_row(ScriptedClient(["4", "4", "5"]), config, "underemotion", row, "I'm sorry.")
    assert emotion["score"] == pytest.approx(260 / 3)  # mean 13/3 on 1-5, x20
    assert judge_row(ScriptedClient([]), config, "underemotion", row, "  ")["score"] == 0.0  # URO-Bench: empty is 0


def test_underemotion_prompt_carries_emotion_and_reference():
    row = {"prompt": "I lost my keys {again}", "emotion": "angry", "reference": "That is annoying."}
    system, user = build_judge_messages("underemotion", row, "Oh no.")
    assert system["content"] == "You are a helpful assistant."
    assert "### [Emotion]\nangry" in user["content"] and "### [Reference]\nThat is annoying." in user["content"]
    assert "I lost my keys {again}" in user["content"]  # braces in texts are safe


# ------------------------------------------------------------------ IFEval checks
@pytest.mark.parametrize(
    ("instruction_id", "kwargs", "response", "followed"),
    [
        ("keywords:existence", {"keywords": ["bread", "oven"]}, "Put the Bread in the oven.", True),
        ("keywords:existence", {"keywords": ["bread", "oven"]}, "Put the bread in.", False),
        ("keywords:frequency", {"keyword": "tea", "frequency": 2, "relation": "at least"}, "Tea, tea!", True),
        ("keywords:frequency", {"keyword": "tea", "frequency": 2, "relation": "less than"}, "Tea, tea!", False),
        ("keywords:forbidden_words", {"forbidden_words": ["sad"]}, "I am so glad.", True),
        ("keywords:forbidden_words", {"forbidden_words": ["sad"]}, "It is Sad.", False),
        ("keywords:letter_frequency", {"letter": "z", "let_frequency": 2, "let_relation": "at least"}, "Zz top", True),
        ("length_constraints:number_words", {"num_words": 5, "relation": "less than"}, "One two three four.", True),
        ("length_constraints:number_words", {"num_words": 4, "relation": "at least"}, "One two three.", False),
        ("length_constraints:number_sentences", {"num_sentences": 2, "relation": "at least"}, "Hi. Bye!", True),
        ("length_constraints:number_sentences", {"num_sentences": 2, "relation": "less than"}, "Dr. Who. Ok.", False),
        ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "First.\n***\nSecond.", True),
        ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "First.\n***\n***\nSecond.", False),
        (
            "length_constraints:nth_paragraph_first_word",
            {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "then"},
            "First this.\n\nThen, that.",
            True,
        ),
        ("detectable_content:number_placeholders", {"num_placeholders": 2}, "At [address] on [date].", True),
        ("detectable_content:number_placeholders", {"num_placeholders": 2}, "At [address].", False),
        ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hello.\nP.S. See you.", True),
        ("detectable_content:postscript", {"postscript_marker": "P.P.S"}, "Hello.\nP.S. See you.", False),
        ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* one\n* two", True),
        ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* one\n- two\n- three", False),
        ("detectable_format:constrained_response", {}, "My answer is yes.", True),
        ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*one* and *two*", True),
        ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*one* and ** **", False),
        (
            "detectable_format:multiple_sections",
            {"section_spliter": "Section", "num_sections": 2},
            "Section 1\na\nSection 2\nb",
            True,
        ),  # noqa: E501
        ("detectable_format:json_format", {}, '```json\n{"a": 1}\n```', True),
        ("detectable_format:json_format", {}, "{'a': 1}", False),
        ("detectable_format:title", {}, "<<My Day>>\nIt was fine.", True),
        ("detectable_format:title", {}, "My Day\nIt was fine.", False),
        ("combination:two_responses", {}, "Yes.\n******\nNo.", True),
        ("combination:two_responses", {}, "Yes.\n******\nYes.", False),
        ("combination:repeat_prompt", {"prompt_to_repeat": "Say hi."}, "say hi. Hi!", True),
        ("startend:end_checker", {"end_phrase": "Any other questions?"}, "Done. Any other questions?", True),
        ("startend:quotation", {}, '"Wrapped."', True),
        (
            "change_case:capital_word_frequency",
            {"capital_frequency": 2, "capital_relation": "at least"},
            "NO WAY",
            True,
        ),
        ("punctuation:no_comma", {}, "No commas here.", True),
        ("punctuation:no_comma", {}, "Well, no.", False),
    ],
)
def test_ifeval_checks(instruction_id, kwargs, response, followed):
    assert check_instruction(instruction_id, response, kwargs) is followed


def test_ifeval_empty_answer_follows_nothing_and_unknown_ids_are_unsupported():
    assert check_instruction("punctuation:no_comma", "   ", {}) is False
    result = evaluate_ifeval_row("No comma", ["punctuation:no_comma", "future:thing"], [{}, {}])
    assert result.strict == [True, None] and "unknown instruction id" in result.unsupported["future:thing"]
    missing = evaluate_ifeval_row("text", ["length_constraints:number_words"], [{"relation": "at least"}])
    assert missing.strict == [None] and "num_words" in missing.unsupported["length_constraints:number_words"]


def test_ifeval_loose_forgives_a_preamble_a_postscript_and_asterisks():
    assert loose_variants("a\nb\nc")[:4] == ["a\nb\nc", "b\nc", "a\nb", "b"]
    answer = 'Sure, here it is:\n"All quoted."'
    result = evaluate_ifeval_row(answer, ["startend:quotation"], [{}])
    assert result.strict == [False] and result.loose == [True]
    bold = evaluate_ifeval_row("**Bye.**", ["startend:end_checker"], [{"end_phrase": "Bye."}])
    assert bold.strict == [False] and bold.loose == [True]


def test_ifeval_accuracy_is_the_mean_of_the_four_accuracies():
    results = [
        {"strict": [True, False], "loose": [True, True]},
        {"strict": [True], "loose": [True]},
        {"strict": [None], "loose": [None]},  # unsupported: left out
    ]
    accuracy = ifeval_accuracy(results)
    assert accuracy["prompt_strict"] == 0.5 and accuracy["instruction_strict"] == pytest.approx(2 / 3)
    assert accuracy["prompt_loose"] == 1.0 and accuracy["instruction_loose"] == 1.0
    assert accuracy["score"] == pytest.approx(100 * (0.5 + 2 / 3 + 1 + 1) / 4) and accuracy["unsupported"] == 1
    assert count_sentences("It costs 3.5 euros, e.g. today. Fine") == 2


def test_ifeval_language_check():
    pytest.importorskip("langdetect")
    french = "Bonjour, je suis très content de vous voir aujourd'hui. Comment allez-vous?"
    assert check_instruction("language:response_language", french, {"language": "fr"})
    assert not check_instruction("language:response_language", french, {"language": "en"})
    assert check_instruction("change_case:english_lowercase", "this is all lower case english text.", {})


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
    scores = [
        {"id": "0", "status": "ok", "score": 3.0},
        {"id": "1", "status": "ok", "score": 4.0},
        {"id": "2", "status": "failed", "score": None, "reason": "generation failed: audio: empty"},
    ]
    summary = summarize_benchmark(spec, responses, scores)
    assert (summary.value, summary.scored, summary.failed, summary.answered) == (3.5, 2, 1, 2)
    report = format_report([summary], "my-model")
    assert "| OpenS2S (paper) | 4.09 | 3.65 | 42.89 | 3.66 | 46.90 | 67.68 |" in report
    assert "| Kimi-Audio (paper) | 4.46 | 3.97 | 61.10 | 4.20 | 59.22 | 76.96 |" in report
    assert "| my-model (this run) | – | 3.50 | – | – | – | – |" in report
    assert "1 failed: generation failed: audio: empty" in report
    assert list(PAPER_TABLE2["OpenS2S (paper)"]) == [
        "alpacaeval",
        "commoneval",
        "ifeval",
        "wildvoice",
        "underemotion-en",
        "underemotion-zh",
    ]


# ------------------------------------------------------------------ whole runs
def eval_argv(out, tiny_model_dir, data, server, *extra):
    voicebench, uro = data
    return [
        "eval",
        "--out", str(out),
        "--model", str(tiny_model_dir),
        "--name", "tiny",
        "--benchmarks", "alpacaeval", "ifeval", "underemotion-en",
        "--voicebench", str(voicebench),
        "--uro-bench", str(uro),
        "--judge-base-url", judge_url(server),
        "--max-new-tokens", "8",
        "--batch-size", "2",
        *extra,
    ]  # fmt: skip


def judge_outputs(out, benchmark) -> int:
    return sum(
        len(record.get("judge_outputs", [])) for record in read_jsonl(out / benchmark / "scores.jsonl").values()
    )


def test_eval_end_to_end_and_resume(tmp_path, tiny_model_dir, data, judge_server, capsys, monkeypatch):
    monkeypatch.setenv("OPENS2S_JUDGE_API_KEY", "test-key")
    out = tmp_path / "run"
    # An interrupted run: only the first 2 rows of each benchmark were done.
    assert main(eval_argv(out, tiny_model_dir, data, judge_server, "--limit", "2")) == 0
    first_requests = len(judge_server.requests)
    assert first_requests == judge_outputs(out, "alpacaeval") + judge_outputs(out, "underemotion-en")
    assert judge_server.requests[0]["model"] == "gpt-4o-mini" and judge_server.requests[0]["temperature"] == 0.5
    answers_before = (out / "alpacaeval" / "responses.jsonl").read_text().splitlines()
    assert len(answers_before) == 2

    # The full run answers and scores only the missing row.
    assert main(eval_argv(out, tiny_model_dir, data, judge_server)) == 0
    answers = (out / "alpacaeval" / "responses.jsonl").read_text().splitlines()
    assert answers[:2] == answers_before and len(answers) == 3
    assert len(judge_server.requests) - first_requests == 3  # 1 new alpacaeval row x 3 samples
    report = (out / "report.md").read_text()
    printed = capsys.readouterr().out
    assert "| OpenS2S (paper) | 4.09 | 3.65 | 42.89 | 3.66 | 46.90 | 67.68 |" in report and report in printed

    summary = {item["name"]: item for item in json.loads((out / "summary.json").read_text())["benchmarks"]}
    alpaca = summary["alpacaeval"]
    assert (alpaca["rows"], alpaca["scored"], alpaca["failed"]) == (3, 2, 1)  # the MALFORMED row
    assert alpaca["value"] == 4.0 and "no score in judge output" in next(iter(alpaca["details"]["failure_reasons"]))
    assert summary["underemotion-en"]["value"] in (100.0, 50.0, 0.0)  # 5 x 20 per answered row (0 when empty)
    ifeval = summary["ifeval"]
    assert ifeval["rows"] == 2 and ifeval["scored"] == 2 and 0 <= ifeval["value"] <= 100
    rows = read_jsonl(out / "ifeval" / "scores.jsonl")
    assert rows["1002"]["ifeval"]["instruction_id_list"] == ["keywords:existence", "startend:end_checker"]
    csv_lines = (out / "report.csv").read_text().splitlines()
    assert csv_lines[0] == "model,AlpacaEval,CommonEval,IFEval,WildVoice,UnderEmotion-en,UnderEmotion-zh"
    assert csv_lines[-1].startswith("tiny (this run),4.00,,")

    # A run killed while writing: the last score line is torn. The re-run re-scores that row only.
    scores_file = out / "alpacaeval" / "scores.jsonl"
    lines = scores_file.read_text().splitlines(keepends=True)
    scores_file.write_text(lines[0] + lines[1] + lines[2][:25])
    before = len(judge_server.requests)
    assert main(eval_argv(out, tiny_model_dir, data, judge_server)) == 0
    assert len(judge_server.requests) - before == 3
    assert (out / "report.md").read_text() == report
    assert len(scores_file.read_text().splitlines()) == 3

    # --retry-failed asks the judge again for the failed row only.
    before = len(judge_server.requests)
    assert main(eval_argv(out, tiny_model_dir, data, judge_server, "--retry-failed")) == 0
    assert len(judge_server.requests) - before == 3
    assert "MALFORMED" in judge_server.requests[-1]["messages"][-1]["content"]

    # Settings that change answers cannot be mixed into the same folder.
    assert main(eval_argv(out, tiny_model_dir, data, judge_server, "--max-new-tokens", "9")) == 1
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


def test_speech_mode_transcribes_the_spoken_answer(tmp_path, tiny_model_dir, data, judge_server):
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
    asr = WhisperASR(str(build_tiny_whisper(tmp_path / "whisper")), batch_size=2)
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
