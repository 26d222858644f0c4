"""The speech tokenizer (GLM-4-Voice WhisperVQ encoder): parity with the original on every `token2wav_*` fixture set,
the tiny random tokenizer's behaviour, bad input, save/load, the original folder layout, the CLI and `datasets.map`.

Parity tolerances (fixture README): features, layer outputs, pooled and final states atol = rtol = 1e-5; unit ids exact
except frames whose recorded `top2_margin` (gap between the two nearest codes' squared distances) is below 1e-3.

The features are computed in a subprocess with `MKL_CBWR=COMPATIBLE` (unless the caller set `MKL_CBWR`): MKL's FFT
rounds differently per CPU code path, and on low-energy mel bins, where a float32 STFT has a large relative error,
log10 turns that into ~2e-5 feature differences on an AVX-512 machine. The fixtures match MKL's reproducible path to
1 ulp. The encoder runs in-process on those features; `encode` (units) runs fully in-process. The encoder is also
checked from the recorded features, where no FFT is involved.
"""

import copy
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file, save_file

from fixture_sets import FIXTURE_ROOTS, fixture_folders, load_manifest
from opens2s.cli import main
from opens2s.conversion.tiny import TINY_SPEECH_TOKENIZER_CONFIG as TINY_CONFIG
from opens2s.conversion.tiny import build_tiny_speech_tokenizer
from opens2s.modeling_opens2s.configuration_speech_tokenizer import (
    OpenS2SSpeechTokenizerConfig,
    convert_whisper_vq_config,
)
from opens2s.modeling_opens2s.feature_extraction_speech_tokenizer import split_segments
from opens2s.modeling_opens2s.modeling_speech_tokenizer import OpenS2SSpeechTokenizer, block_causal_attention_bias
from opens2s.processing.audio_io import load_audio, resample
from opens2s.processing.chat import EXAMPLE_WAV
from opens2s.processing.speech_units import add_speech_units


ATOL = RTOL = 1e-5
MIN_MARGIN = 1e-3
SAMPLES_PER_UNIT = 1280  # 2 (stride-2 conv) x 4 (pooling) x 160 (hop): 80 ms at 16 kHz
SEGMENT_SAMPLES = 480000  # the original cuts audio into 30 s segments at 16 kHz
AUDIO_NAMES = ("speech", "speech_short", "speech_long")  # the batch call's order


def tokenizer_sets() -> list:
    """One `pytest.param` per `token2wav_*` folder holding `tokenizer/` and a manifest."""
    folders = fixture_folders("token2wav_")
    return [
        pytest.param(folder, id=folder.name)
        for folder in folders
        if (folder / "tokenizer").is_dir() and (folder / "manifest.json").is_file()
    ]


# ------------------------------------------------------------------ the original's recipe on one fixture set
def fixture_audios(folder: Path) -> dict[str, np.ndarray]:
    """`speech`, `speech_short` and `speech_long`, the last built as the set's README states (tile, then cut)."""
    speech, _ = sf.read(folder / "inputs" / "speech.wav", dtype="float32")
    short, _ = sf.read(folder / "inputs" / "speech_short.wav", dtype="float32")
    recipe = re.search(
        r"tile `\[speech, ([\d.]+) s zeros, speech_short, ([\d.]+) s zeros\]` and cut at (\d+) samples",
        (folder / "README.md").read_text(),
    )
    if recipe is None:
        pytest.fail(f"{folder / 'README.md'} does not state how speech_long is built")
    gap_1, gap_2 = (np.zeros(round(float(seconds) * 16000), np.float32) for seconds in recipe.group(1, 2))
    period = np.concatenate([speech, gap_1, short, gap_2])
    length = int(recipe.group(3))
    return {
        "speech": speech,
        "speech_short": short,
        "speech_long": np.tile(period, -(-length // len(period)))[:length],
    }


# MKL's FFT rounds per CPU code path; the fixtures match its reproducible ("compatible") path. Only the features
# involve an FFT, so only they are computed in a fresh process where MKL_CBWR can still take effect.
FEATURES_SCRIPT = """
import sys
from safetensors.numpy import load_file
from safetensors.torch import save_file
from transformers import WhisperFeatureExtractor
from opens2s.modeling_opens2s.feature_extraction_speech_tokenizer import segment_features
folder, samples_per_unit, segments_file, out_file = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
extractor = WhisperFeatureExtractor.from_pretrained(folder)
segments = load_file(segments_file)
out = {}
for call in ("speech", "batch"):
    batch = [segments[f"{call}/{index}"] for index in range(sum(key.startswith(call) for key in segments))]
    features = segment_features(extractor, batch, samples_per_unit)
    out |= {f"{call}/{key}": value.contiguous() for key, value in features.items()}
save_file(out, out_file)
"""


def start_feature_process(folder: Path, calls: dict[str, list[np.ndarray]], samples_per_unit: int, tmp: Path):
    """Start computing `segment_features` of each call's segments in a fresh process with `MKL_CBWR=COMPATIBLE`
    (unless the caller set it); returns the process and the file it writes."""
    from safetensors.numpy import save_file as save_arrays

    segments = {f"{call}/{index}": segment for call, batch in calls.items() for index, segment in enumerate(batch)}
    save_arrays(segments, tmp / "segments.safetensors")
    env = {**os.environ, "MKL_CBWR": os.environ.get("MKL_CBWR", "COMPATIBLE")}
    command = [sys.executable, "-c", FEATURES_SCRIPT, str(folder / "tokenizer"), str(samples_per_unit)]
    command += [str(tmp / "segments.safetensors"), str(tmp / "features.safetensors")]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return process, tmp / "features.safetensors"


@pytest.fixture(scope="module", params=tokenizer_sets())
def parity(request, tmp_path_factory):
    """Our outputs for the calls the fixture recorded: `speech` alone, then every segment of the three audios in
    one batch (the original's `extract_speech_token`), next to the recorded tensors. The feature process runs while
    `encode` computes the units in-process."""
    folder = request.param
    tokenizer = OpenS2SSpeechTokenizer.from_pretrained(folder / "tokenizer").eval()
    audios = fixture_audios(folder)
    pieces = {name: split_segments(audio, tokenizer.feature_extractor.n_samples) for name, audio in audios.items()}
    calls = {"speech": [audios["speech"]], "batch": [piece for name in AUDIO_NAMES for piece in pieces[name]]}
    process, features_file = start_feature_process(
        folder, calls, tokenizer.samples_per_unit, tmp_path_factory.mktemp(folder.name)
    )
    ours = {f"segments/{name}": len(pieces[name]) for name in AUDIO_NAMES}
    ours["units/speech_alone"] = torch.tensor(tokenizer.encode([audios["speech"]])[0])
    all_units = tokenizer.encode([audios[name] for name in AUDIO_NAMES], batch_size=len(calls["batch"]))
    ours |= {f"units/{name}": torch.tensor(units) for name, units in zip(AUDIO_NAMES, all_units, strict=True)}
    _, stderr = process.communicate()
    assert process.returncode == 0, stderr[-3000:]
    ours |= load_file(features_file)
    with torch.no_grad():
        for call in calls:
            inputs = {key: ours[f"{call}/{key}"] for key in ("input_features", "attention_mask")}
            output = tokenizer(**inputs, output_hidden_states=True)
            ours |= {f"{call}/layer{index}_out": state for index, state in enumerate(output.hidden_states[1:])}
            ours |= {f"{call}/{key}": value for key, value in output.items() if key != "hidden_states"}
    reference = {
        key.removeprefix("tokenizer/"): value
        for key, value in load_file(folder / "reference_outputs.safetensors").items()
        if key.startswith("tokenizer/")
    }
    return {"folder": folder, "ours": ours, "ref": reference, "manifest": load_manifest(folder)}


def assert_ids_match(ours: torch.Tensor, ref: torch.Tensor, margin: torch.Tensor, what: str) -> None:
    """Equal ids, except at frames whose two nearest codes are closer than `MIN_MARGIN` (recorded margin)."""
    assert ours.shape == ref.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(ref.shape)}"
    differ = ours != ref
    assert (margin[differ] < MIN_MARGIN).all(), (
        f"{what}: ids differ at {differ.nonzero().tolist()} with margins {margin[differ].tolist()}"
    )


def first_row(parity, name: str) -> int:
    """Row of the first segment of audio `name` in the batch call."""
    return sum(parity["ours"][f"segments/{other}"] for other in AUDIO_NAMES[: AUDIO_NAMES.index(name)])


def reference_unit_margins(parity, name: str) -> torch.Tensor:
    """Recorded margins of the kept units of audio `name` in the batch call (its segment rows, in order)."""
    ours, ref = parity["ours"], parity["ref"]
    rows = range(first_row(parity, name), first_row(parity, name) + ours[f"segments/{name}"])
    return torch.cat([ref["batch/top2_margin"][row][ours["batch/unit_mask"][row]] for row in rows])


# ------------------------------------------------------------------ parity
requires_tokenizer_sets = pytest.mark.skipif(
    not tokenizer_sets(), reason=f"no token2wav_* sets with tokenizer/ in {FIXTURE_ROOTS}"
)


@requires_tokenizer_sets
def test_single_utterance_matches_original(parity):
    ours, ref = parity["ours"], parity["ref"]
    assert ours["speech/input_features"].shape[-1] == parity["manifest"]["tokenizer"]["speech"]["frames"]
    assert torch.equal(
        ours["speech/attention_mask"], ref["speech/attention_mask"].to(ours["speech/attention_mask"].dtype)
    )
    torch.testing.assert_close(ours["speech/input_features"], ref["speech/input_features"], atol=ATOL, rtol=RTOL)
    layer_names = sorted(key for key in ref if re.fullmatch(r"speech/layer\d+_out", key))
    assert layer_names, "the set records no layer outputs"
    for name in layer_names:
        torch.testing.assert_close(ours[name], ref[name], atol=ATOL, rtol=RTOL, msg=name)
    torch.testing.assert_close(ours["speech/pooled_hidden_states"], ref["speech/pooled"], atol=ATOL, rtol=RTOL)
    margin = ref["speech/top2_margin"][None]
    assert_ids_match(ours["speech/unit_ids"], ref["speech/quantized_token_ids"], margin, "speech ids")
    same = ours["speech/unit_ids"] == ref["speech/quantized_token_ids"]
    torch.testing.assert_close(
        ours["speech/last_hidden_state"][same], ref["speech/last_hidden_state"][same], atol=ATOL, rtol=RTOL
    )
    units = ours["units/speech_alone"]
    assert len(units) == parity["manifest"]["tokenizer"]["speech"]["n_units"]
    assert_ids_match(units, ref["speech/units"], ref["speech/top2_margin"][ours["speech/unit_mask"][0]], "units")


@requires_tokenizer_sets
def test_batch_of_segments_matches_original(parity):
    """[speech, speech_short, speech_long (> 30 s: two segments)] in one batch, padded to 30 s."""
    ours, ref, stats = parity["ours"], parity["ref"], parity["manifest"]["tokenizer"]["batch"]
    assert ours["batch/input_features"].shape[::2] == (stats["segments"], stats["frames"])
    assert torch.equal(
        ours["batch/attention_mask"], ref["batch/attention_mask"].to(ours["batch/attention_mask"].dtype)
    )
    short_row = ref["batch/short_input_features_row"]
    short_index = first_row(parity, "speech_short")
    torch.testing.assert_close(
        ours["batch/input_features"][short_index, :, : short_row.shape[1]], short_row, atol=ATOL, rtol=RTOL
    )
    pooled = ref["batch/pooled_row1_valid"]
    torch.testing.assert_close(
        ours["batch/pooled_hidden_states"][short_index, : len(pooled)], pooled, atol=ATOL, rtol=RTOL
    )
    assert_ids_match(ours["batch/unit_ids"], ref["batch/quantized_token_ids"], ref["batch/top2_margin"], "batch ids")


@requires_tokenizer_sets
def test_units_of_every_audio_match_original(parity):
    """Long audio gives the concatenation of its 30 s segments' units, as the original segments it."""
    ours, ref = parity["ours"], parity["ref"]
    lengths = parity["manifest"]["tokenizer"]["batch"]["n_units"]
    for name, length in zip(AUDIO_NAMES, lengths, strict=True):
        assert len(ours[f"units/{name}"]) == length, name
        assert_ids_match(ours[f"units/{name}"], ref[f"batch/units_{name}"], reference_unit_margins(parity, name), name)
    long_samples = len(fixture_audios(parity["folder"])["speech_long"])
    assert ours["segments/speech_long"] == math.ceil(long_samples / SEGMENT_SAMPLES) > 1
    expected = [min(SEGMENT_SAMPLES, long_samples - start) for start in range(0, long_samples, SEGMENT_SAMPLES)]
    assert lengths[2] == sum(math.ceil(samples / SAMPLES_PER_UNIT) for samples in expected)


@pytest.mark.parametrize("folder", tokenizer_sets())
def test_model_matches_original_from_recorded_features(folder):
    """The encoder alone, fed the recorded features (no FFT involved, so no MKL code-path dependence)."""
    ref = load_file(folder / "reference_outputs.safetensors")
    tokenizer = OpenS2SSpeechTokenizer.from_pretrained(folder / "tokenizer").eval()
    with torch.no_grad():
        output = tokenizer(
            ref["tokenizer/speech/input_features"], ref["tokenizer/speech/attention_mask"], output_hidden_states=True
        )
    for index, state in enumerate(output.hidden_states[1:]):
        torch.testing.assert_close(state, ref[f"tokenizer/speech/layer{index}_out"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(output.pooled_hidden_states, ref["tokenizer/speech/pooled"], atol=ATOL, rtol=RTOL)
    margin = ref["tokenizer/speech/top2_margin"][None]
    assert_ids_match(output.unit_ids, ref["tokenizer/speech/quantized_token_ids"], margin, "ids")


# ------------------------------------------------------------------ the tiny random tokenizer


@pytest.fixture(scope="module")
def tiny() -> OpenS2SSpeechTokenizer:
    return build_tiny_speech_tokenizer()


@pytest.fixture(scope="module")
def tiny_dir(tiny, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-speech-tokenizer")
    tiny.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def example() -> np.ndarray:
    return load_audio(EXAMPLE_WAV)


def test_units_are_at_12_5_hz(tiny, example):
    (units,) = tiny.encode([example])
    assert len(units) == math.ceil(len(example) / SAMPLES_PER_UNIT)
    assert all(0 <= unit < TINY_CONFIG["quantize_vocab_size"] for unit in units)
    assert len(set(units)) > 1


def test_block_causal_mask_is_the_originals():
    """Causal-or-same-block, AND valid key (the original ORs `tril` with block-diagonal squares)."""
    frame_mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0, 0, 0]])
    bias = block_causal_attention_bias(frame_mask, block_size=3, causal=False, dtype=torch.float32)
    squares = torch.block_diag(torch.ones(3, 3), torch.ones(3, 3), torch.ones(2, 2)).bool()
    allowed = (torch.ones(8, 8).tril().bool() | squares)[None] & frame_mask[:, None, :].bool()
    assert torch.equal(bias[:, 0] == 0, allowed)
    assert (bias[:, 0][~allowed] == torch.finfo(torch.float32).min).all()
    causal = block_causal_attention_bias(frame_mask, block_size=3, causal=True, dtype=torch.float32)
    assert torch.equal(causal[:, 0] == 0, torch.ones(2, 8, 8).tril().bool())


def test_units_of_whole_blocks_do_not_change_when_audio_follows(tiny):
    """Causal convolutions + block-causal attention: the first blocks' units depend on nothing later."""
    features = torch.randn(1, 80, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full, prefix = tiny(features), tiny(features[:, :, :32])  # 32 frames = 2 attention blocks = 4 units
    assert torch.equal(full.unit_ids[:, :4], prefix.unit_ids)
    torch.testing.assert_close(full.pooled_hidden_states[:, :4], prefix.pooled_hidden_states, atol=1e-6, rtol=1e-6)


def test_long_audio_is_the_concatenation_of_its_segments(tiny, example):
    long = np.tile(example, 8)[: 31 * 16000]
    (units,) = tiny.encode([long])
    first, rest = tiny.encode([long[:SEGMENT_SAMPLES], long[SEGMENT_SAMPLES:]])
    assert units == first + rest
    assert (len(first), len(rest)) == (SEGMENT_SAMPLES // SAMPLES_PER_UNIT, math.ceil(16000 / SAMPLES_PER_UNIT))


@pytest.mark.parametrize(
    ("audio", "error", "match"),
    [
        pytest.param(np.zeros(0, np.float32), ValueError, "audio 1: audio is empty", id="empty"),
        pytest.param(np.full(4000, np.nan, np.float32), ValueError, "audio 1: .*NaN", id="nan"),
        pytest.param(np.ones(100, np.float32), ValueError, "audio 1: audio is too short", id="too-short"),
        pytest.param(np.ones((2, 2, 4000), np.float32), ValueError, "audio 1: audio must be 1-D", id="3-d"),
        pytest.param("missing.wav", FileNotFoundError, "audio 1: audio file not found", id="missing-file"),
    ],
)
def test_bad_input_is_named(tiny, example, audio, error, match):
    with pytest.raises(error, match=match):
        tiny.encode([example, audio])


def test_stereo_is_averaged_and_other_rates_are_resampled(tiny, example):
    stereo = np.stack([example, 0.5 * example])
    assert tiny.encode([stereo]) == tiny.encode([stereo.mean(axis=0)])
    fast = resample(example, 16000, 44100)
    expected = tiny.encode([resample(fast, 44100, 16000)])
    assert tiny.encode([(fast, 44100)]) == expected
    assert tiny.encode([fast], sampling_rate=44100) == expected
    assert tiny.encode([{"array": fast, "sampling_rate": 44100}]) == expected


def test_silence_gives_units_and_a_warning(tiny, caplog):
    with caplog.at_level("WARNING", logger="opens2s"):
        (units,) = tiny.encode([np.zeros(16000, np.float32)])
    assert len(units) == math.ceil(16000 / SAMPLES_PER_UNIT)
    assert "audio 0 is digital silence" in caplog.text


def test_dtype_and_batch_size_choices(tiny, example):
    reference = tiny.encode([example, example[:20000], example[:5000]], batch_size=1)
    assert tiny.encode([example, example[:20000], example[:5000]], batch_size=3)[1:] == reference[1:]
    half = copy.deepcopy(tiny).to(torch.bfloat16)
    units = half.encode([example])
    assert len(units[0]) == len(reference[0])
    with pytest.raises(ValueError, match="batch_size"):
        tiny.encode([example], batch_size=0)


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        pytest.param({"d_model": 15}, "divisible by encoder_attention_heads", id="heads"),
        pytest.param({"pooling_type": "mean"}, "pooling_type 'avg' or 'max'", id="pooling-type"),
        pytest.param({"pooling_position": 3}, "pooling_position", id="pooling-above-codebook"),
        pytest.param({"quantize_causal_block_size": 2}, "must be >= pooling_kernel_size", id="block-under-kernel"),
    ],
)
def test_config_rejects_inconsistent_fields(fields, match):
    from huggingface_hub.errors import StrictDataclassClassValidationError

    with pytest.raises(StrictDataclassClassValidationError, match=match):
        OpenS2SSpeechTokenizerConfig(**(TINY_CONFIG | fields))


# ------------------------------------------------------------------ folders
def test_save_and_load_round_trip(tiny, tiny_dir, example):
    from transformers import AutoModel

    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= {p.name for p in tiny_dir.iterdir()}
    auto_map = json.loads((tiny_dir / "config.json").read_text())["auto_map"]
    assert auto_map == {
        "AutoConfig": "configuration_speech_tokenizer.OpenS2SSpeechTokenizerConfig",
        "AutoModel": "modeling_speech_tokenizer.OpenS2SSpeechTokenizer",
    }
    for code in tiny_dir.glob("*.py"):  # flat remote code: torch, numpy, transformers and siblings only
        assert not re.search(r"^\s*(from|import) opens2s", code.read_text(), re.MULTILINE), code.name
    reloaded = OpenS2SSpeechTokenizer.from_pretrained(tiny_dir)
    for name, tensor in tiny.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[name], tensor, atol=0, rtol=0, msg=name)
    assert reloaded.feature_extractor.feature_size == TINY_CONFIG["num_mel_bins"]
    remote = AutoModel.from_pretrained(tiny_dir, trust_remote_code=True)
    assert type(remote).__name__ == "OpenS2SSpeechTokenizer"
    assert remote.encode([example]) == tiny.encode([example])


def test_original_folder_layout_loads(tiny, tmp_path):
    """The `glm-4-voice-tokenizer` layout: a WhisperVQConfig (`model_type="whisper"` with Whisper's decoder and
    VQ-training fields) and un-prefixed `WhisperVQEncoder` weights with the training-only EMA buffers."""
    original = {
        "model_type": "whisper",
        "architectures": ["WhisperVQEncoder"],
        "vocab_size": 51866,
        "decoder_layers": 2,
        "encoder_layers": 32,
        "num_hidden_layers": 32,  # Whisper's alias of encoder_layers; the tokenizer keeps quantize_position layers
        "quantize_encoder_only": True,
        "quantize_ema_decay": 0.99,
        "pooling_type": "avg",
        **TINY_CONFIG,
    }
    (tmp_path / "config.json").write_text(json.dumps(original))
    weights = {name: tensor.contiguous() for name, tensor in tiny.state_dict().items()}
    weights |= {"ema_count": torch.ones(32), "ema_weight": weights["codebook.weight"].clone()}
    save_file(weights, tmp_path / "model.safetensors")
    tiny.feature_extractor.save_pretrained(tmp_path)
    loaded, info = OpenS2SSpeechTokenizer.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == info["unexpected_keys"] == set()
    assert loaded.config.model_type == "opens2s_speech_tokenizer"
    assert loaded.config.num_hidden_layers == len(loaded.layers) == 2
    for name, tensor in tiny.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor, atol=0, rtol=0, msg=name)
    with pytest.raises(ValueError, match="not a GLM-4-Voice tokenizer config"):
        convert_whisper_vq_config({"model_type": "whisper", "d_model": 16})


# ------------------------------------------------------------------ CLI and datasets.map
def test_cli_writes_units_jsonl(tiny, tiny_dir, tmp_path, example, capsys):
    stereo_44k = tmp_path / "stereo_44k.wav"
    sf.write(stereo_44k, np.stack([example, example], axis=1)[:30000], 44100)
    out = tmp_path / "units.jsonl"
    assert main(["units", str(EXAMPLE_WAV), str(stereo_44k), "--out", str(out), "--model", str(tiny_dir)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["audio"] for row in rows] == [str(EXAMPLE_WAV), str(stereo_44k)]
    assert [row["units"] for row in rows] == tiny.encode([example, load_audio(stereo_44k)])
    assert main(["units", str(EXAMPLE_WAV), "--out", str(out), "--model", str(tiny_dir)]) == 1
    assert "exists" in capsys.readouterr().err


def test_datasets_map_adds_units(tiny, example):
    from datasets import Dataset

    dataset = Dataset.from_dict(
        {"path": [str(EXAMPLE_WAV), str(EXAMPLE_WAV)], "audio": [{"array": example, "sampling_rate": 16000}] * 2}
    )
    by_path = dataset.map(add_speech_units, batched=True, fn_kwargs={"tokenizer": tiny, "audio_column": "path"})
    by_array = dataset.map(
        add_speech_units, batched=True, fn_kwargs={"tokenizer": tiny, "units_column": "speech_units"}
    )
    expected = tiny.encode([example])[0]
    assert by_path["units"] == [expected, expected]
    assert by_array["speech_units"] == [expected, expected]


def test_round_trip_through_token2wav(tiny):
    """units -> token2wav (22.05 kHz) -> tokenizer (resampled to 16 kHz) -> units: rates and lengths line up. Both
    models are random, so only shapes and rates are asserted, not the ids."""
    from opens2s.conversion.tiny import build_tiny_token2wav_config
    from opens2s.modeling_opens2s.modeling_token2wav import OpenS2SToken2Wav

    config = build_tiny_token2wav_config(num_units=TINY_CONFIG["quantize_vocab_size"])
    config.num_timesteps = 2
    with torch.random.fork_rng():
        torch.manual_seed(0)
        token2wav = OpenS2SToken2Wav(config).eval()
    units = list(range(25))  # 2 s at 12.5 units/s
    with torch.inference_mode():
        waveform = token2wav.synthesize(units, generator=torch.Generator().manual_seed(0)).waveform[0].numpy()
    assert len(waveform) == token2wav.flow.num_frames(len(units)) * config.hop_length
    (again,) = tiny.encode([(waveform, config.sampling_rate)])
    seconds = len(waveform) / config.sampling_rate
    assert abs(len(again) - seconds * 12.5) <= 1
    assert all(0 <= unit < TINY_CONFIG["quantize_vocab_size"] for unit in again)
