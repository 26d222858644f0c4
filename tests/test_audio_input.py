"""Every audio entry point checks its input: clear errors, downmixing, resampling, 30 s windows."""

import numpy as np
import pytest
import soundfile

from opens2s.modeling_opens2s.feature_extraction_opens2s import OpenS2SFeatureExtractor, prepare_waveform, resample
from opens2s.processing import load_audio


def tone(seconds: float, rate: int = 16000, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture(scope="module")
def extractor():
    return OpenS2SFeatureExtractor()


@pytest.mark.parametrize(
    "audio, message",
    [
        pytest.param(None, "missing", id="missing"),
        pytest.param(np.zeros(0, np.float32), "empty", id="empty"),
        pytest.param(np.full(16000, np.nan, np.float32), "NaN or Inf", id="nan"),
        pytest.param(np.full(16000, np.inf, np.float32), "NaN or Inf", id="inf"),
        pytest.param(np.zeros((2, 2, 16000), np.float32), "1-D", id="rank-3"),
        pytest.param(np.zeros(100, np.float32), "too short", id="too-short"),
        pytest.param(np.array(["a", "b"]), "numeric", id="strings"),
    ],
)
def test_bad_audio_gets_a_clear_error(extractor, audio, message):
    with pytest.raises(ValueError, match=message):
        extractor(audio, sampling_rate=16000)


def test_too_long_audio_is_refused_with_the_limit():
    extractor = OpenS2SFeatureExtractor(max_audio_seconds=40)
    with pytest.raises(ValueError, match="limit is 40 s"):
        extractor(np.zeros(16000 * 41, np.float32), sampling_rate=16000)


@pytest.mark.parametrize(
    "layout", [pytest.param("channels_first", id="(2, n)"), pytest.param("channels_last", id="(n, 2)")]
)
def test_stereo_is_downmixed(extractor, layout):
    left, right = tone(1.0), tone(1.0, freq=220.0)
    stereo = np.stack([left, right]) if layout == "channels_first" else np.stack([left, right], axis=1)
    mixed = extractor(stereo, sampling_rate=16000)["input_features"]
    expected = extractor((left + right) / 2, sampling_rate=16000)["input_features"]
    np.testing.assert_allclose(mixed, expected, atol=1e-5)


@pytest.mark.parametrize("rate", [pytest.param(8000, id="8kHz"), pytest.param(44100, id="44.1kHz")])
def test_other_rates_are_resampled(extractor, rate):
    reference = extractor(tone(1.5), sampling_rate=16000)
    converted = extractor(tone(1.5, rate=rate), sampling_rate=rate)
    assert converted["attention_mask"].sum() == reference["attention_mask"].sum() == 150
    # Same tone, same frames: the log-mel of the valid frames agrees closely away from the edges.
    np.testing.assert_allclose(
        converted["input_features"][0, :, 5:145], reference["input_features"][0, :, 5:145], atol=0.05
    )


def test_resample_keeps_a_band_limited_tone():
    out = resample(tone(1.0, rate=44100, freq=1000.0), 44100, 16000)
    assert out.shape == (16000,)
    np.testing.assert_allclose(out[200:-200], tone(1.0, freq=1000.0)[200:-200], atol=2e-3)


def test_integer_pcm_is_scaled():
    pcm = (tone(1.0) * 32767).astype(np.int16)
    np.testing.assert_allclose(prepare_waveform(pcm, 16000), tone(1.0), atol=1e-4)


def test_long_audio_fills_whole_30s_windows(extractor):
    features = extractor([tone(45.0), tone(3.0)], sampling_rate=16000)
    assert features["input_features"].shape == (2, 128, 6000)
    assert features["attention_mask"].sum(-1).tolist() == [4500, 300]


def test_load_audio_file_downmixes_and_resamples(tmp_path):
    path = tmp_path / "stereo_44k.wav"
    soundfile.write(path, np.stack([tone(1.0, 44100), tone(1.0, 44100)], axis=1), 44100)
    waveform = load_audio(path)
    assert waveform.dtype == np.float32 and waveform.ndim == 1 and abs(len(waveform) - 16000) <= 1


def test_load_audio_missing_and_unreadable(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_audio(tmp_path / "nope.wav")
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"not audio at all")
    with pytest.raises(ValueError, match="cannot read"):
        load_audio(broken)


def test_load_audio_refuses_nan_samples(tmp_path):
    path = tmp_path / "nan.wav"
    samples = np.zeros(1600, dtype=np.float32)
    samples[10] = np.nan
    soundfile.write(path, samples, 16000, subtype="FLOAT")
    with pytest.raises(ValueError, match="NaN or infinite"):
        load_audio(path)
