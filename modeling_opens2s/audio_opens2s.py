"""The one audio entry of OpenS2S: any audio source -> checked mono float32 at the model's rate (16 kHz).

Everything that reads audio (the processor and its feature extractor, the speech tokenizer, training, evaluation, the
data pipeline, the Space) calls [`load_audio`], so a file and the same samples given as an array give the same
waveform, and every input is checked in one place. Files and bytes are decoded with `soundfile`, and every rate change
goes through one resampler, `soxr` ([`resample`]); both are imported only when needed.
"""

import io
import math
import os
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import torch
from transformers.utils import logging


__all__ = [
    "AudioError",
    "MAX_AUDIO_SECONDS",
    "MIN_SAMPLING_RATE",
    "TARGET_SAMPLING_RATE",
    "check_audio",
    "load_audio",
    "resample",
]

logger = logging.get_logger(__name__)

TARGET_SAMPLING_RATE = 16000
# Below this a rate is a broken header or not speech; refusing it also stops a tiny file whose header says 1 Hz from
# being resampled into gigabytes.
MIN_SAMPLING_RATE = 4000
MAX_AUDIO_SECONDS = 600.0
MAX_CHANNELS = 8
# Float audio peaking above this is most likely integer PCM cast to float without scaling.
_LOUD_PEAK = 2.0
# Signed PCM integers map to [-1, 1) by their full scale; 8-bit PCM (wav) is unsigned with silence at 128.
_PCM_SCALE = {np.dtype(np.int8): 2**7, np.dtype(np.int16): 2**15, np.dtype(np.int32): 2**31}


class AudioError(ValueError):
    """A `ValueError` about an audio input; `reason` is a short fixed phrase (e.g. `"unreadable audio file"`,
    `"audio too long"`) for counting bad rows, the message says the details."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class _Limits:
    target_sampling_rate: int
    max_seconds: float | None
    min_samples: int

    def check(self, num_samples: int, sampling_rate: int, name: str) -> None:
        """Refuse a rate or a length before anything is decoded or resampled."""
        if sampling_rate < MIN_SAMPLING_RATE:
            raise AudioError(
                "sampling rate too low",
                f"{name} has a sampling rate of {sampling_rate} Hz, below the minimum of {MIN_SAMPLING_RATE} Hz",
            )
        if num_samples <= 0:
            raise AudioError("empty audio", f"{name} is empty (0 samples)")
        seconds = num_samples / sampling_rate
        if self.max_seconds is not None and seconds > self.max_seconds:
            raise AudioError(
                "audio too long", f"{name} is too long: {seconds:.1f} s; the limit is {self.max_seconds:g} s"
            )
        if seconds * self.target_sampling_rate < self.min_samples:
            raise AudioError(
                "audio too short",
                f"{name} is too short: {num_samples} samples at {sampling_rate} Hz; at least {self.min_samples} "
                f"samples at {self.target_sampling_rate} Hz are needed",
            )


def load_audio(
    audio: Any,
    sampling_rate: int | None = None,
    target_sampling_rate: int = TARGET_SAMPLING_RATE,
    max_seconds: float | None = MAX_AUDIO_SECONDS,
    min_samples: int = 160,
) -> np.ndarray:
    r"""
    Read, check and convert one audio to mono float32 at `target_sampling_rate`.

    Args:
        audio:
            One of
            - a path (`str` / `os.PathLike`) of a file libsndfile reads (wav, flac, ogg, mp3, ...);
            - the file's `bytes`, or an open binary file object (`io.BytesIO`, ...);
            - a numpy array or torch tensor of shape `(samples,)`, `(channels, samples)` or `(samples, channels)`
              (the shorter axis, at most 8 long, is the channel axis) at `sampling_rate`: float in [-1, 1], or
              integer PCM (int8/int16/int32 scaled by their full scale; uint8 is offset binary, 128 is silence);
            - a `(array, sampling_rate)` tuple;
            - a `datasets.Audio` value: decoded `{"array", "sampling_rate"}` or undecoded `{"bytes", "path"}`;
            - a torchcodec `AudioDecoder` (what `datasets.Audio` decodes to since `datasets` 4).
        sampling_rate (`int`, *optional*):
            Rate in Hz of a bare array or tensor; required for those (there is no silent default). Inputs that carry
            their own rate (files, bytes, dicts with `sampling_rate`, tuples, decoders) use their own.
        target_sampling_rate (`int`, *optional*, defaults to 16000): rate of the returned waveform in Hz.
        max_seconds (`float`, *optional*, defaults to 600): longest accepted audio; `None` for no limit.
        min_samples (`int`, *optional*, defaults to 160): fewest samples at `target_sampling_rate` (160 = one 10 ms
            feature frame).

    Returns:
        `np.ndarray` of shape `(samples,)`, float32 at `target_sampling_rate` Hz. Channels are averaged; other rates
        are resampled with soxr (high quality).

    Raises:
        `FileNotFoundError` / `IsADirectoryError` for a path that is missing or a folder; `ValueError` naming the
        problem for unreadable, empty, too short or too long audio, a rate below 4000 Hz, NaN/Inf samples, an array
        without `sampling_rate`, or an unsupported shape or dtype. Rates and durations are checked from the file
        header (or array shape) before anything is decoded or resampled. Float audio far outside [-1, 1] is used
        as is, with a warning.
    """
    if audio is None:
        raise AudioError("missing audio", "audio is missing (got None)")
    limits = _Limits(int(target_sampling_rate), max_seconds, int(min_samples))
    name = "audio"
    if isinstance(audio, dict):
        audio, sampling_rate, name = _unpack_dict(audio, sampling_rate)
    elif isinstance(audio, tuple) and len(audio) == 2 and _is_rate(audio[1]):
        audio, sampling_rate = audio
    if isinstance(audio, (str, os.PathLike)):
        path = _existing_file(audio)
        waveform, sampling_rate = _open_file(path, f"audio file {path}", limits)
    elif isinstance(audio, (bytes, bytearray, memoryview)):
        label = f"audio bytes of {name}" if name != "audio" else "audio bytes"
        waveform, sampling_rate = _open_file(io.BytesIO(bytes(audio)), label, limits)
    elif hasattr(audio, "read") and hasattr(audio, "seek"):  # an open binary file, e.g. `io.BytesIO` of an upload
        waveform, sampling_rate = _open_file(audio, "audio file object", limits)
    elif hasattr(audio, "get_all_samples"):
        waveform, sampling_rate = _decode_torchcodec(audio, limits)
    else:
        if sampling_rate is None:
            raise AudioError(
                "no sampling rate",
                "sampling_rate is required for audio given as an array: pass sampling_rate=... (or a "
                '{"array", "sampling_rate"} dict, or a file)',
            )
        waveform = _mono_float(audio)
        sampling_rate = _checked_rate(sampling_rate)
        limits.check(waveform.shape[0], sampling_rate, name)
    if not np.isfinite(waveform).all():
        raise AudioError("NaN or Inf samples", f"{name} contains NaN or Inf samples")
    peak = float(np.abs(waveform).max())
    if peak > _LOUD_PEAK:
        logger.warning(
            f"{name} peaks at {peak:g}, far outside [-1, 1] (integer PCM passed as float?); it is used as is"
        )
    waveform = resample(waveform, sampling_rate, limits.target_sampling_rate)
    return np.ascontiguousarray(waveform, dtype=np.float32)


def check_audio(
    audio: Any,
    target_sampling_rate: int = TARGET_SAMPLING_RATE,
    max_seconds: float | None = MAX_AUDIO_SECONDS,
    min_samples: int = 160,
) -> None:
    """Check a path, bytes or `{"bytes", "path"}` value from its header only (no samples decoded): exists, readable,
    rate, length; the same errors as [`load_audio`]. Other inputs are in memory already and are checked by
    [`load_audio`] itself. For skipping bad rows of a dataset cheaply."""
    if isinstance(audio, dict) and audio.get("array") is None:
        audio = audio.get("bytes") if audio.get("bytes") is not None else audio.get("path") or None
    limits = _Limits(int(target_sampling_rate), max_seconds, int(min_samples))
    if isinstance(audio, (str, os.PathLike)):
        _open_file(_existing_file(audio), f"audio file {os.fspath(audio)}", limits, decode=False)
    elif isinstance(audio, (bytes, bytearray, memoryview)):
        _open_file(io.BytesIO(bytes(audio)), "audio bytes", limits, decode=False)
    elif audio is None:
        raise AudioError("missing audio", "audio is missing")


def resample(waveform: np.ndarray, orig_sampling_rate: int, target_sampling_rate: int) -> np.ndarray:
    """Resample a 1-D float waveform `(samples,)` with soxr (high quality); the one resampler of OpenS2S.

    Returns the input unchanged when the rates are equal. Raises `ImportError` naming `pip install soxr` when soxr is
    not installed (a remote-code environment may lack it).
    """
    if orig_sampling_rate == target_sampling_rate:
        return waveform
    try:
        import soxr
    except ImportError as error:
        raise ImportError(
            f"resampling audio from {orig_sampling_rate} Hz to {target_sampling_rate} Hz needs soxr: pip install soxr"
        ) from error
    waveform = np.ascontiguousarray(waveform, dtype=np.float32)
    return soxr.resample(waveform, orig_sampling_rate, target_sampling_rate, quality="HQ").astype(np.float32)


def _is_rate(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _checked_rate(sampling_rate: Any) -> int:
    if isinstance(sampling_rate, bool) or not isinstance(sampling_rate, (int, float, np.integer, np.floating)):
        raise AudioError("bad sampling rate", f"sampling_rate must be a number of Hz, got {sampling_rate!r}")
    if sampling_rate <= 0 or not float(sampling_rate).is_integer():
        raise AudioError(
            "bad sampling rate", f"sampling_rate must be a positive whole number of Hz, got {sampling_rate}"
        )
    return int(sampling_rate)


def _unpack_dict(value: dict, sampling_rate: int | None) -> tuple[Any, int | None, str]:
    """A `datasets.Audio` value -> (array, bytes or path; its rate; a name for messages)."""
    name = str(value.get("path") or "audio")
    if value.get("array") is not None:
        rate = value.get("sampling_rate")
        return value["array"], rate if rate is not None else sampling_rate, name
    if value.get("bytes") is not None:
        return value["bytes"], None, name
    if value.get("path"):
        return value["path"], None, name
    raise AudioError("missing audio", "audio dict has neither an array, bytes nor a path")


def _mono_float(audio: Any) -> np.ndarray:
    """An array or tensor of samples -> 1-D float32 (PCM integers scaled, channels averaged)."""
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().cpu()
        audio = audio.float().numpy() if audio.is_floating_point() else audio.numpy()
    array = np.asarray(audio)
    if array.dtype.kind == "f":
        array = array.astype(np.float32, copy=False)
    elif array.dtype in _PCM_SCALE:
        array = array.astype(np.float32) / _PCM_SCALE[array.dtype]
    elif array.dtype == np.uint8:
        array = (array.astype(np.float32) - 128.0) / 128.0
    elif array.dtype.kind in "iu":
        raise AudioError(
            "bad audio dtype",
            f"integer audio of dtype {array.dtype} is not PCM OpenS2S knows: pass float32 in [-1, 1], or int16, "
            "int32, int8 or uint8 PCM",
        )
    else:
        raise AudioError("bad audio dtype", f"audio must be numeric samples, got dtype {array.dtype}")
    if array.ndim == 2:
        channel_axis = int(np.argmin(array.shape))
        if array.shape[channel_axis] > MAX_CHANNELS:
            raise AudioError(
                "bad audio shape",
                f"audio of shape {array.shape} does not look like (channels, samples) or (samples, channels) with "
                f"at most {MAX_CHANNELS} channels; pass 1-D mono",
            )
        array = array.mean(axis=channel_axis)
    elif array.ndim != 1:
        raise AudioError(
            "bad audio shape", f"audio must be 1-D (samples,) or 2-D (channels, samples), got shape {array.shape}"
        )
    return array


def _existing_file(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"audio path is a folder, not a file: {path}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"audio file not found: {path}")
    return path


def _open_file(
    source: str | BinaryIO, name: str, limits: _Limits, decode: bool = True
) -> tuple[np.ndarray, int] | None:
    """Check a file's rate and length from its header, then (with `decode`) decode it with soundfile."""
    import soundfile

    try:
        with soundfile.SoundFile(source) as handle:
            limits.check(handle.frames, handle.samplerate, name)
            if not decode:
                return None
            waveform = handle.read(dtype="float32", always_2d=True)
            rate = handle.samplerate
    except RuntimeError as error:  # soundfile.LibsndfileError; its message names a BytesIO object, so not shown
        reason = getattr(error, "error_string", None) or str(error)
        raise AudioError("unreadable audio file", f"cannot read {name}: {reason}") from error
    if waveform.shape[0] == 0:
        raise AudioError("empty audio", f"{name} is empty (0 samples)")
    return waveform.mean(axis=1) if waveform.shape[1] > 1 else waveform[:, 0], rate


def _decode_torchcodec(decoder: Any, limits: _Limits) -> tuple[np.ndarray, int]:
    """Decode a torchcodec `AudioDecoder`, after checking rate and duration from its stream metadata."""
    metadata = getattr(decoder, "metadata", None)
    rate = getattr(metadata, "sample_rate", None)
    seconds = getattr(metadata, "duration_seconds_from_header", None)
    if rate is not None and seconds is not None:
        limits.check(math.ceil(seconds * rate), int(rate), "audio")
    samples = decoder.get_all_samples()
    waveform = _mono_float(samples.data)  # (channels, samples)
    rate = _checked_rate(samples.sample_rate)
    limits.check(waveform.shape[0], rate, "audio")
    return waveform, rate
