"""The one audio entry (`load_audio`): every input form, every check, one resampler; the feature extractor and the
processor read audio through it, so a file and its samples as an array give the same features.

Bad inputs are generated here (no binary blobs): wav/flac files written with soundfile, broken bytes, NaN samples.
"""

import io
import logging

import numpy as np
import pytest
import soundfile
import torch

from opens2s.modeling_opens2s.feature_extraction_opens2s import OpenS2SFeatureExtractor
from opens2s.processing import AudioError, check_audio, load_audio, resample


def tone(seconds: float, rate: int = 16000, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture(scope="module")
def extractor():
    return OpenS2SFeatureExtractor()


def write_pcm16(path, samples: np.ndarray, rate: int):
    """A PCM-16 wav and the float32 samples soundfile reads back from it (int16 / 32768)."""
    soundfile.write(path, samples, rate, subtype="PCM_16")
    return soundfile.read(path, dtype="float32")[0]


# ------------------------------------------------------------------ file and array give the same features
@pytest.mark.parametrize("rate", [pytest.param(16000, id="16kHz"), pytest.param(22050, id="22.05kHz")])
def test_file_and_its_samples_as_an_array_give_identical_features(extractor, tmp_path, rate):
    path = tmp_path / "question.wav"
    samples = write_pcm16(path, tone(1.3, rate, freq=300.0) + tone(1.3, rate, freq=1700.0), rate)
    pcm = soundfile.read(path, dtype="int16")[0]
    by_path = extractor(str(path))["input_features"]
    for same in (samples, pcm, torch.from_numpy(samples), {"array": samples, "sampling_rate": rate}, (samples, rate)):
        by_array = extractor([same], sampling_rate=rate)["input_features"]
        np.testing.assert_array_equal(by_array, by_path)
    by_bytes = extractor([{"bytes": path.read_bytes(), "path": "question.wav"}])["input_features"]
    np.testing.assert_array_equal(by_bytes, by_path)


def test_chat_content_path_goes_through_load_audio(tmp_path, tiny_model_dir):
    """`{"type": "audio", "path": ...}` and the same samples as an array item give the same processor inputs."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_model_dir, trust_remote_code=True)
    path = tmp_path / "q.wav"
    samples = write_pcm16(path, tone(1.0, 22050), 22050)

    def inputs(item: dict) -> dict:
        messages = [{"role": "user", "content": [item]}]
        return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)

    by_path = inputs({"type": "audio", "path": str(path)})
    by_array = inputs({"type": "audio", "audio": samples, "sampling_rate": 22050})
    assert by_path["input_ids"] == by_array["input_ids"]
    np.testing.assert_array_equal(by_path["input_features"], by_array["input_features"])
    with pytest.raises(FileNotFoundError, match="audio file not found"):
        inputs({"type": "audio", "path": str(tmp_path / "missing.wav")})


# ------------------------------------------------------------------ checks of in-memory audio
@pytest.mark.parametrize(
    "audio, message",
    [
        pytest.param(None, "missing", id="missing"),
        pytest.param(np.zeros(0, np.float32), "empty", id="empty"),
        pytest.param(np.full(16000, np.nan, np.float32), "NaN or Inf", id="nan"),
        pytest.param(np.full(16000, np.inf, np.float32), "NaN or Inf", id="inf"),
        pytest.param(np.zeros((2, 2, 16000), np.float32), "1-D", id="rank-3"),
        pytest.param(np.zeros((16, 16000), np.float32), "at most 8 channels", id="16-channels"),
        pytest.param(np.zeros(100, np.float32), "too short", id="too-short"),
        pytest.param(np.array(["a", "b"]), "numeric", id="strings"),
        pytest.param(np.zeros(16000, np.int64), "int64 is not PCM", id="int64"),
    ],
)
def test_bad_audio_gets_a_clear_error(extractor, audio, message):
    with pytest.raises(ValueError, match=message):
        extractor(audio, sampling_rate=16000)


def test_array_without_sampling_rate_is_refused():
    with pytest.raises(AudioError, match="sampling_rate is required") as error:
        load_audio(tone(1.0))
    assert error.value.reason == "no sampling rate"


def test_too_long_audio_is_refused_with_the_limit():
    extractor = OpenS2SFeatureExtractor(max_audio_seconds=40)
    with pytest.raises(ValueError, match="limit is 40 s"):
        extractor(np.zeros(16000 * 41, np.float32), sampling_rate=16000)


@pytest.mark.parametrize("rate", [pytest.param(1, id="1Hz"), pytest.param(3999, id="3999Hz")])
def test_rates_below_4khz_are_refused(rate):
    with pytest.raises(AudioError, match="below the minimum of 4000 Hz"):
        load_audio(np.zeros(40000, np.float32), sampling_rate=rate, max_seconds=None)


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
    assert out.shape == (16000,) and out.dtype == np.float32
    np.testing.assert_allclose(out[200:-200], tone(1.0, freq=1000.0)[200:-200], atol=2e-3)


@pytest.mark.parametrize(
    ("pcm", "expected"),
    [
        pytest.param(np.array([0, 16384, -32768, 32767], np.int16), [0, 0.5, -1, 32767 / 32768], id="int16"),
        pytest.param(np.array([0, 2**30, -(2**31)], np.int32), [0, 0.5, -1], id="int32"),
        pytest.param(np.array([0, 64, -128], np.int8), [0, 0.5, -1], id="int8"),
        pytest.param(np.array([128, 192, 0, 255], np.uint8), [0, 0.5, -1, 127 / 128], id="uint8-offset-binary"),
    ],
)
def test_integer_pcm_is_scaled(pcm, expected):
    waveform = load_audio(np.repeat(pcm, 100), sampling_rate=16000)
    np.testing.assert_allclose(waveform[::100], np.array(expected, np.float32), atol=1e-7)


def test_loud_float_audio_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="opens2s"):
        waveform = load_audio(tone(1.0) * 32767, sampling_rate=16000)
    assert "far outside [-1, 1]" in caplog.text
    assert np.abs(waveform).max() > 9000  # used as is


def test_long_audio_fills_whole_30s_windows(extractor):
    features = extractor([tone(45.0), tone(3.0)], sampling_rate=16000)
    assert features["input_features"].shape == (2, 128, 6000)
    assert features["attention_mask"].sum(-1).tolist() == [4500, 300]


# ------------------------------------------------------------------ files, bytes, decoders
def test_file_is_downmixed_and_resampled(tmp_path):
    path = tmp_path / "stereo_44k.flac"
    soundfile.write(path, np.stack([tone(1.0, 44100), tone(1.0, 44100)], axis=1), 44100)
    waveform = load_audio(path)
    assert waveform.dtype == np.float32 and waveform.ndim == 1 and abs(len(waveform) - 16000) <= 1


def test_missing_folder_and_unreadable_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="audio file not found"):
        load_audio(tmp_path / "nope.wav")
    with pytest.raises(IsADirectoryError, match="is a folder"):
        load_audio(tmp_path)
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"not audio at all")
    with pytest.raises(AudioError, match="cannot read audio file .*broken.wav: Format not recognised") as error:
        load_audio(broken)
    assert error.value.reason == "unreadable audio file"
    with pytest.raises(AudioError, match="cannot read audio bytes of upload.wav: Format not recognised"):
        load_audio({"bytes": b"not audio at all", "path": "upload.wav"})
    with pytest.raises(AudioError, match="^cannot read audio bytes: Format not recognised"):
        load_audio(b"not audio at all")


def test_empty_short_and_nan_files(tmp_path):
    soundfile.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 16000)
    soundfile.write(tmp_path / "short.wav", np.zeros(50, np.float32), 16000)
    nan = np.zeros(1600, np.float32)
    nan[10] = np.nan
    soundfile.write(tmp_path / "nan.wav", nan, 16000, subtype="FLOAT")
    for name, message in (("empty", "empty"), ("short", "too short"), ("nan", "NaN or Inf")):
        with pytest.raises(AudioError, match=message):
            load_audio(tmp_path / f"{name}.wav")


def test_header_decides_before_decoding(tmp_path, monkeypatch):
    """A 40 KB wav whose header says 1 Hz (or 2 hours) is refused from its header: nothing is decoded or resampled,
    so a broken header cannot blow memory up."""
    one_hz = tmp_path / "one_hz.wav"
    soundfile.write(one_hz, np.zeros(20000, np.int16), 1, subtype="PCM_16")
    long = tmp_path / "long.wav"
    soundfile.write(long, np.zeros(20000, np.int16), 4000, subtype="PCM_16")
    assert one_hz.stat().st_size < 41000

    def never(*args, **kwargs):
        raise AssertionError("audio was decoded or resampled")

    import soxr

    monkeypatch.setattr(soundfile.SoundFile, "read", never)
    monkeypatch.setattr(soxr, "resample", never)
    with pytest.raises(AudioError, match="1 Hz, below the minimum of 4000 Hz"):
        load_audio(one_hz, max_seconds=None)
    with pytest.raises(AudioError, match="1 Hz, below the minimum"):
        load_audio(one_hz.read_bytes(), max_seconds=None)
    with pytest.raises(AudioError, match="too long: 5.0 s; the limit is 4 s"):
        load_audio(long, max_seconds=4)
    with pytest.raises(AudioError, match="too long") as error:
        check_audio(str(long), max_seconds=4)
    assert error.value.reason == "audio too long"


def test_open_binary_file_and_torchcodec_decoder(tmp_path):
    """An open file object (an upload), and a stand-in for torchcodec's `AudioDecoder` (what `datasets.Audio`
    decodes to): metadata checked before `get_all_samples`, (channels, samples) downmixed."""
    path = tmp_path / "q.wav"
    samples = write_pcm16(path, tone(1.0, 22050), 22050)
    expected = load_audio(samples, sampling_rate=22050)
    np.testing.assert_array_equal(load_audio(io.BytesIO(path.read_bytes())), expected)

    class Decoder:
        def __init__(self, data: torch.Tensor, rate: int, header_rate: int):
            self.data, self.rate = data, rate
            self.metadata = type("Metadata", (), {"sample_rate": header_rate, "duration_seconds_from_header": 1.0})
            self.decoded = False

        def get_all_samples(self):
            self.decoded = True
            return type("AudioSamples", (), {"data": self.data, "sample_rate": self.rate})

    stereo = torch.from_numpy(np.stack([samples, samples]))
    np.testing.assert_allclose(load_audio(Decoder(stereo, 22050, 22050)), expected, atol=1e-6)
    broken = Decoder(stereo, 22050, header_rate=2)
    with pytest.raises(AudioError, match="2 Hz, below the minimum"):
        load_audio(broken)
    assert not broken.decoded


def test_soxr_missing_names_the_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "soxr", None)
    with pytest.raises(ImportError, match="pip install soxr"):
        load_audio(tone(1.0, 22050), sampling_rate=22050)
    assert load_audio(tone(1.0), sampling_rate=16000).shape == (16000,)  # no resampling, no soxr needed
