"""Speaking the answer: token2wav attached to the model, `AudioChunk` events, `generate()`'s output and `opens2s chat`,
on the tiny default model (its `token2wav/` subfolder)."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile
import torch
from transformers import AutoModel, GenerationConfig

from opens2s import EXAMPLE_WAV
from opens2s.cli import main
from opens2s.processing.chat import conversation_inputs, load_speech_model


pytestmark = pytest.mark.usefixtures("single_thread")

TEXT_BUDGET, UNIT_BUDGET = 6, 45


@pytest.fixture(scope="module")
def speech_model(tiny_model_dir):
    return load_speech_model(tiny_model_dir)


def budgets(model) -> dict:
    from opens2s.modeling_opens2s.streaming_opens2s import speech_generation_config_of

    text = GenerationConfig(**model.generation_config.to_dict())
    speech = GenerationConfig(**speech_generation_config_of(model).to_dict())
    text.max_new_tokens, speech.max_new_tokens = TEXT_BUDGET, UNIT_BUDGET
    # No EOS, so the unit count is the budget and the audio length is known.
    text.eos_token_id = speech.eos_token_id = None
    return {"generation_config": text, "speech_generation_config": speech}


def collect(events) -> dict:
    out = {"text": [], "units": [], "audio": [], "order": []}
    for event in events:
        out["order"].append(event.kind)
        if event.kind == "text":
            out["text"] += event.token_ids
        elif event.kind == "units":
            out["units"] += event.units
        elif event.kind == "audio":
            out["audio"].append(event.pcm)
            out["sample_rate"] = event.sample_rate
        else:
            out["stats"] = event.stats
    return out


def test_stream_speaks_every_unit(speech_model):
    model, processor = speech_model.model, speech_model.processor
    assert speech_model.speaks
    inputs = conversation_inputs(processor, EXAMPLE_WAV)
    out = collect(
        model.stream(
            **inputs, processor=processor, token2wav_generator=torch.Generator().manual_seed(0), **budgets(model)
        )
    )
    token2wav = model.token2wav
    assert len(out["units"]) == UNIT_BUDGET
    samples = sum(chunk.shape[0] for chunk in out["audio"])
    assert samples == token2wav.flow.num_frames(UNIT_BUDGET) * token2wav.config.hop_length
    assert len(out["audio"]) > 1, "audio must arrive in chunks while units are generated"
    assert out["order"].index("audio") < len(out["order"]) - 2, "the first chunk must come before the stream ends"
    assert out["order"][-1] == "done"
    stats = out["stats"]
    assert out["sample_rate"] == token2wav.config.sampling_rate
    assert stats.time_to_first_units <= stats.time_to_first_audio <= stats.total_seconds
    assert stats.audio_seconds == pytest.approx(samples / token2wav.config.sampling_rate)
    assert "token2wav" in stats.stage_seconds
    assert all(np.abs(chunk).max() <= 1.0 and chunk.dtype == np.float32 for chunk in out["audio"])


def test_token2wav_false_streams_units_only(speech_model):
    model, processor = speech_model.model, speech_model.processor
    inputs = conversation_inputs(processor, EXAMPLE_WAV)
    out = collect(model.stream(**inputs, processor=processor, token2wav=False, **budgets(model)))
    assert "audio" not in out["order"] and len(out["units"]) == UNIT_BUDGET
    assert out["stats"].time_to_first_audio is None


def test_generate_returns_the_whole_answer(speech_model):
    model, processor = speech_model.model, speech_model.processor
    inputs = conversation_inputs(processor, EXAMPLE_WAV)
    streamed = collect(
        model.stream(
            **inputs, processor=processor, token2wav_generator=torch.Generator().manual_seed(1), **budgets(model)
        )
    )
    output = model.generate(
        **inputs, processor=processor, token2wav_generator=torch.Generator().manual_seed(1), **budgets(model)
    )
    prompt_length = inputs["input_ids"].shape[1]
    assert output.sequences[0, :prompt_length].tolist() == inputs["input_ids"][0].tolist()
    assert output.sequences[0, prompt_length:].tolist() == streamed["text"]
    assert output.unit_sequences[0].tolist() == streamed["units"]
    assert output.sampling_rate == model.token2wav.config.sampling_rate
    np.testing.assert_array_equal(output.audio_values[0].numpy(), np.concatenate(streamed["audio"]))


def test_generate_budget_overrides(speech_model):
    model, processor = speech_model.model, speech_model.processor
    inputs = conversation_inputs(processor, EXAMPLE_WAV)
    configs = budgets(model)
    output = model.generate(
        **inputs, processor=processor, token2wav=False, max_new_tokens=3, speech_max_new_tokens=11, **configs
    )
    assert output.sequences.shape[1] == inputs["input_ids"].shape[1] + 3
    assert output.unit_sequences.shape == (1, 11)
    assert output.audio_values is None and output.sampling_rate is None
    assert configs["generation_config"].max_new_tokens == TEXT_BUDGET, "the caller's config must not be modified"


@pytest.mark.parametrize("mode", ["blocks", "original"])
def test_chat_cli_writes_the_reply_and_reports_latency(tiny_model_dir, tmp_path, capsys, mode):
    out = tmp_path / "reply.wav"
    argv = ["chat", "--model", str(tiny_model_dir), "--out", str(out), "--max-new-tokens", "5", "--max-units", "30"]
    status = main(argv + ["--mode", mode])
    assert status == 0
    printed = capsys.readouterr().out
    assert "Reply:" in printed and "first audio:" in printed and "real-time factor" in printed
    assert "RANDOM" not in printed  # only said for the default tiny model
    waveform, rate = soundfile.read(out)
    assert rate == 22050 and waveform.ndim == 1 and len(waveform) > 0


def test_chat_cli_says_when_it_runs_the_tiny_model(tiny_model_dir, tmp_path, capsys, monkeypatch):
    import opens2s.conversion.tiny

    monkeypatch.setattr(opens2s.conversion.tiny, "tiny_model_path", lambda: tiny_model_dir)
    assert main(["chat", "--out", str(tmp_path / "reply.wav"), "--max-new-tokens", "2", "--max-units", "12"]) == 0
    assert "tiny RANDOM default model" in capsys.readouterr().out


def test_chat_cli_missing_audio_is_a_clear_error(tiny_model_dir, tmp_path, capsys):
    status = main(["chat", "--model", str(tiny_model_dir), "--audio", str(tmp_path / "nope.wav")])
    assert status == 1
    assert "audio file not found" in capsys.readouterr().err


REMOTE_SPEECH = textwrap.dedent(
    """
    import sys, torch
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name == "opens2s" or name.startswith("opens2s."):
                raise ImportError("opens2s is hidden in this test")
    sys.meta_path.insert(0, Block())
    from transformers import AutoModel
    torch.set_num_threads(1)  # as the test process (single_thread), so the two waveforms are bitwise comparable
    model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True)
    token2wav = model.attach_token2wav()
    assert "opens2s" not in sys.modules
    with torch.inference_mode():
        waveform = token2wav.synthesize([1, 2, 3, 4, 5, 6], generator=torch.Generator().manual_seed(0)).waveform
    torch.save(waveform, sys.argv[2])
    """
)


@pytest.mark.slow  # a fresh Python process loads the folder with opens2s hidden
def test_remote_code_attaches_the_token2wav_subfolder(tiny_model_dir, tmp_path):
    """`trust_remote_code=True` alone (no opens2s installed) finds and runs the `token2wav/` decoder."""
    script = tmp_path / "speak.py"
    script.write_text(REMOTE_SPEECH)
    result = subprocess.run(
        [sys.executable, str(script), str(tiny_model_dir), str(tmp_path / "wav.pt")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    model = AutoModel.from_pretrained(tiny_model_dir, trust_remote_code=True)
    with torch.inference_mode():
        expected = model.attach_token2wav().synthesize([1, 2, 3, 4, 5, 6], generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(torch.load(tmp_path / "wav.pt"), expected.waveform, atol=0, rtol=0)
