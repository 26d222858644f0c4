"""The tiny default model, the bundled example wav and the `opens2s` command line."""

import json
import subprocess
import sys

import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoProcessor, GenerationConfig

import opens2s.conversion.tiny
from fixture_sets import reference_sets
from opens2s.cli import main, parse_size
from opens2s.conversion.tiny import build_tiny_model, tiny_model_path
from opens2s.processing.chat import EXAMPLE_WAV


def audio_prompt(processor) -> dict:
    conversation = [{"role": "user", "content": [{"type": "audio", "path": str(EXAMPLE_WAV)}]}]
    return processor.apply_chat_template(
        conversation, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )


# ------------------------------------------------------------------ tiny model
def test_tiny_build_is_deterministic(tmp_path):
    first, second = build_tiny_model(tmp_path / "a", seed=0), build_tiny_model(tmp_path / "b", seed=0)
    weights_a, weights_b = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    assert weights_a.keys() == weights_b.keys()
    for name, tensor in weights_a.items():
        torch.testing.assert_close(tensor, weights_b[name], rtol=0, atol=0, msg=name)
    for name in ("config.json", "tokenizer.json", "unit_tokenizer/tokenizer.json", "processor_config.json"):
        assert (first / name).read_text() == (second / name).read_text(), name

    other = load_file(build_tiny_model(tmp_path / "c", seed=1) / "model.safetensors")
    name = "language_model.model.embed_tokens.weight"
    assert not torch.equal(weights_a[name], other[name])


def test_build_leaves_the_callers_random_state_alone(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_model(tmp_path)
    torch.testing.assert_close(torch.rand(3), expected, rtol=0, atol=0)


def test_tiny_model_loads_as_remote_code_and_runs_on_the_example(tiny_model_dir):
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert set(config["auto_map"]) >= {"AutoConfig", "AutoModel"}
    model = AutoModel.from_pretrained(tiny_model_dir, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(tiny_model_dir, trust_remote_code=True)
    assert type(model).__name__ == "OpenS2SForConditionalGeneration"
    assert type(processor).__name__ == "OpenS2SProcessor"

    inputs = audio_prompt(processor)
    # 3.97 s -> 398 mel frames (100/s) -> 99 encoder frames (25/s) -> 25 adapter frames (6.25/s) = placeholders.
    assert int((inputs["input_ids"] == model.config.audio_token_id).sum()) == 25
    with torch.no_grad():
        outputs = model(**inputs)
    assert outputs.logits.shape == (1, inputs["input_ids"].shape[1], len(processor.tokenizer))
    assert torch.isfinite(outputs.logits).all()


def test_tiny_tokenizers_follow_the_opens2s_layout(tiny_model_dir):
    processor = AutoProcessor.from_pretrained(tiny_model_dir, trust_remote_code=True)
    tokenizer, unit_tokenizer = processor.tokenizer, processor.unit_tokenizer
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["audio_token_id"] == tokenizer.convert_tokens_to_ids("<|im_audio|>") < len(tokenizer)
    assert config["text_config"]["vocab_size"] == len(tokenizer)
    assert config["speech_decoder_config"]["vocab_size"] == len(unit_tokenizer)
    for marker in ("<|im_audio_start|>", "<|im_audio_end|>", "<|im_tts_start|>", "<|im_tts_end|>", "<think>"):
        assert len(tokenizer(marker)["input_ids"]) == 1, marker
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("<|im_end|>", "<|endoftext|>")
    assert processor.num_units == 64
    assert processor.units_to_ids([0, 63]) == unit_tokenizer.convert_tokens_to_ids(["<|audio_0|>", "<|audio_63|>"])
    text = "I feel really sad today."
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_tiny_generation_configs(tiny_model_dir):
    processor = AutoProcessor.from_pretrained(tiny_model_dir, trust_remote_code=True)
    tokenizer, unit_tokenizer = processor.tokenizer, processor.unit_tokenizer
    text = GenerationConfig.from_pretrained(tiny_model_dir)
    assert not text.do_sample
    assert text.eos_token_id == tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    speech = GenerationConfig.from_pretrained(tiny_model_dir, config_file_name="speech_generation_config.json")
    assert not speech.do_sample
    assert speech.eos_token_id == unit_tokenizer.convert_tokens_to_ids("<|im_end|>")
    allowed = set(range(len(unit_tokenizer))) - set(speech.suppress_tokens)
    assert allowed == set(processor.units_to_ids(range(64))) | {speech.eos_token_id}


def test_tiny_model_path_builds_once(tmp_path, monkeypatch):
    monkeypatch.setattr(opens2s.conversion.tiny, "TINY_MODEL_DIR", tmp_path / "cache" / "tiny-v3")
    path = tiny_model_path()
    assert path == tmp_path / "cache" / "tiny-v3"
    built = (path / "model.safetensors").stat().st_mtime_ns
    assert tiny_model_path() == path
    assert (path / "model.safetensors").stat().st_mtime_ns == built
    assert [p.name for p in path.parent.iterdir()] == ["tiny-v3"]  # no staging folder left behind


def test_example_wav_is_a_short_16khz_mono_question():
    info = sf.info(EXAMPLE_WAV)
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    assert 2.0 <= info.duration <= 4.0
    assert EXAMPLE_WAV.stat().st_size < 150_000


# ------------------------------------------------------------------ command line
@pytest.mark.parametrize("original", reference_sets())
def test_cli_convert_writes_a_loadable_folder(original, tmp_path, capsys):
    dst = tmp_path / "converted"
    assert main(["convert", str(original), str(dst), "--max-shard-size", "500KB"]) == 0
    assert capsys.readouterr().out.strip() == str(dst)
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1  # 500KB shards of a ~1.3 MB model
    model = AutoModel.from_pretrained(dst, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(dst, trust_remote_code=True)
    assert model.config.audio_token_id == processor.tokenizer.convert_tokens_to_ids("<|im_audio|>")


@pytest.mark.parametrize(
    "make_src",
    [
        pytest.param(lambda root: root / "missing", id="missing"),
        pytest.param(lambda root: root, id="not-a-checkpoint"),
    ],
)
def test_cli_convert_refuses_a_folder_that_is_not_a_checkpoint(tmp_path, capsys, make_src):
    (tmp_path / "notes.txt").write_text("hello")
    assert main(["convert", str(make_src(tmp_path)), str(tmp_path / "out")]) == 1
    assert "not an OpenS2S checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["convert", "a", "b", "--max-shard-size", "5.5GB"], id="bad-size"),
        pytest.param(["convert", "a"], id="missing-dst"),
        pytest.param([], id="no-command"),
    ],
)
def test_cli_usage_errors_exit_with_status_2(argv, capsys):
    with pytest.raises(SystemExit) as error:
        main(argv)
    assert error.value.code == 2
    assert "usage: opens2s" in capsys.readouterr().err


@pytest.mark.parametrize(
    "text, expected",
    [("5GB", 5 * 10**9), ("500mb", 500 * 10**6), ("2GiB", 2 * 2**30), ("1048576", 2**20)],
)
def test_shard_sizes(text, expected):
    assert parse_size(text) == expected


def test_cli_tiny_builds_into_dst(tmp_path, capsys):
    assert main(["tiny", str(tmp_path / "tiny"), "--seed", "1"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "tiny")
    assert (tmp_path / "tiny" / "config.json").is_file()


def test_python_dash_m_runs_the_cli():
    result = subprocess.run([sys.executable, "-m", "opens2s", "--help"], capture_output=True, text=True, check=True)
    assert "convert" in result.stdout and "tiny" in result.stdout


# ------------------------------------------------------------------ torch threads of `opens2s chat`
@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("cores, expected", [(1, 1), (2, 1), (3, 1), (4, 2), (8, 4), (64, 4)])
def test_default_threads_leave_half_the_cores_free(monkeypatch, cores, expected):
    from opens2s.processing.threads import default_num_threads

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: cores)
    assert default_num_threads() == expected


@pytest.mark.parametrize(
    "argv, threads", [pytest.param([], 3, id="default"), pytest.param(["--threads", "1"], 1, id="explicit")]
)
def test_chat_sets_and_reports_its_threads(
    tiny_model_dir, tmp_path, capsys, monkeypatch, restore_threads, argv, threads
):
    monkeypatch.setattr("opens2s.processing.threads.default_num_threads", lambda: 3)
    chat = ["chat", "--model", str(tiny_model_dir), "--out", str(tmp_path / "reply.wav"), "--max-new-tokens", "2"]
    assert main(chat + ["--max-units", "12"] + argv) == 0
    assert torch.get_num_threads() == threads
    assert f"cpu, float32, {threads} torch CPU thread(s)" in capsys.readouterr().out


def test_chat_refuses_zero_threads(capsys):
    assert main(["chat", "--threads", "0"]) == 1
    assert "--threads must be >= 1, got 0" in capsys.readouterr().err
