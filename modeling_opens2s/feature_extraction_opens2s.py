"""Whisper log-mel features padded to whole 30 s windows, with input checks (OpenS2S feature extractor)."""

import math

import numpy as np
import torch
from transformers import WhisperFeatureExtractor
from transformers.feature_extraction_utils import BatchFeature
from transformers.utils import logging


__all__ = ["OpenS2SFeatureExtractor", "prepare_waveform", "resample"]

logger = logging.get_logger(__name__)


def resample(waveform: np.ndarray, orig_sr: int, target_sr: int, lowpass_filter_width: int = 6) -> np.ndarray:
    """Band-limited resampling of a 1-D float waveform with a Hann-windowed sinc filter (polyphase, torch conv1d).

    The rates are reduced by their gcd; each of the `target` output phases gets its own filter, cut off at 99 % of
    the lower Nyquist frequency.
    """
    if orig_sr == target_sr:
        return waveform
    divisor = math.gcd(orig_sr, target_sr)
    orig, new = orig_sr // divisor, target_sr // divisor
    cutoff = min(orig, new) * 0.99
    width = math.ceil(lowpass_filter_width * orig / cutoff)
    taps = torch.arange(-width, width + orig, dtype=torch.float64)[None, :] / orig
    phases = -torch.arange(new, dtype=torch.float64)[:, None] / new
    t = ((phases + taps) * cutoff).clamp(-lowpass_filter_width, lowpass_filter_width)
    window = torch.cos(t * math.pi / lowpass_filter_width / 2) ** 2
    t = t * math.pi
    kernels = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / t) * window * (cutoff / orig)
    signal = torch.from_numpy(np.ascontiguousarray(waveform, dtype=np.float64))
    padded = torch.nn.functional.pad(signal[None, None], (width, width + orig))
    out = torch.nn.functional.conv1d(padded, kernels[:, None], stride=orig)
    out = out.transpose(1, 2).reshape(-1)[: math.ceil(new * signal.shape[0] / orig)]
    return out.numpy().astype(np.float32)


def prepare_waveform(
    waveform,
    sampling_rate: int | None,
    target_sr: int = 16000,
    max_seconds: float | None = None,
    min_samples: int = 160,
) -> np.ndarray:
    """Check one audio and bring it to mono float32 at `target_sr`.

    Accepts 1-D `(samples,)` or 2-D `(channels, samples)` / `(samples, channels)` arrays (downmixed by averaging).
    Raises a `ValueError` that names the problem for empty, too short, too long, NaN/Inf or higher-rank input.
    """
    if waveform is None:
        raise ValueError("audio is missing (got None)")
    if isinstance(waveform, torch.Tensor):
        waveform = waveform.detach().cpu().float().numpy()
    array = np.asarray(waveform)
    if array.dtype.kind not in "fiu":
        raise ValueError(f"audio must be numeric samples, got dtype {array.dtype}")
    if array.dtype.kind in "iu":  # PCM integers -> [-1, 1)
        array = array.astype(np.float32) / float(np.iinfo(array.dtype).max + 1)
    array = array.astype(np.float32, copy=False)
    if array.ndim == 2:
        channel_axis = 0 if array.shape[0] <= array.shape[1] else 1
        if array.shape[channel_axis] > 8:
            raise ValueError(f"audio of shape {array.shape} does not look like (channels, samples); pass 1-D mono")
        array = array.mean(axis=channel_axis)
    elif array.ndim != 1:
        raise ValueError(f"audio must be 1-D (samples,) or 2-D (channels, samples), got shape {array.shape}")
    if array.size == 0:
        raise ValueError("audio is empty (0 samples)")
    if not np.isfinite(array).all():
        raise ValueError("audio contains NaN or Inf samples")
    if sampling_rate is None:
        logger.warning_once(f"No sampling_rate given for the audio; assuming {target_sr} Hz.")
        sampling_rate = target_sr
    if sampling_rate <= 0:
        raise ValueError(f"sampling_rate must be positive, got {sampling_rate}")
    array = resample(array, int(sampling_rate), target_sr)
    if array.shape[0] < min_samples:
        raise ValueError(
            f"audio is too short: {array.shape[0]} samples at {target_sr} Hz, need at least {min_samples}"
        )
    if max_seconds is not None and array.shape[0] > max_seconds * target_sr:
        raise ValueError(
            f"audio is too long: {array.shape[0] / target_sr:.1f} s; the limit is {max_seconds:.0f} s "
            "(set feature_extractor.max_audio_seconds to change it)"
        )
    return array


class OpenS2SFeatureExtractor(WhisperFeatureExtractor):
    r"""
    Whisper log-mel features (128 bins, 100 frames/s) as the original OpenS2S computes them: every audio of a batch
    is zero-padded to the batch's longest one rounded *up to a whole number of 30 s windows* (not cut at 30 s), and
    `attention_mask` marks the valid frames (`ceil(samples / 160)`).

    Args:
        max_audio_seconds (`float`, *optional*, defaults to 600.0):
            Longest accepted audio; longer input is refused with a message saying the limit.
    """

    model_input_names = ["input_features", "attention_mask"]

    def __init__(self, feature_size: int = 128, max_audio_seconds: float = 600.0, **kwargs):
        kwargs.setdefault("return_attention_mask", True)
        super().__init__(feature_size=feature_size, **kwargs)
        self.max_audio_seconds = max_audio_seconds

    def __call__(
        self,
        raw_speech,
        sampling_rate: int | None = None,
        return_tensors: str | None = None,
        device: str = "cpu",
        **kwargs,
    ) -> BatchFeature:
        """Turn one audio or a list of audios into `input_features` `(num_audios, 128, 3000 * k)` and
        `attention_mask` `(num_audios, 3000 * k)`; extra keyword arguments of the generic API are ignored."""
        if isinstance(raw_speech, (list, tuple)) and raw_speech and np.ndim(raw_speech[0]) == 0:
            raw_speech = [np.asarray(raw_speech, dtype=np.float32)]  # one audio given as a list of floats
        elif not isinstance(raw_speech, (list, tuple)):
            raw_speech = [raw_speech]
        if len(raw_speech) == 0:
            raise ValueError("no audio given")
        waveforms = [
            prepare_waveform(audio, sampling_rate, self.sampling_rate, self.max_audio_seconds) for audio in raw_speech
        ]
        longest = max(wave.shape[0] for wave in waveforms)
        padded_length = math.ceil(longest / self.n_samples) * self.n_samples
        batch = np.zeros((len(waveforms), padded_length), dtype=np.float32)
        for index, wave in enumerate(waveforms):
            batch[index, : wave.shape[0]] = wave
        features = self._torch_extract_fbank_features(batch, device)
        num_frames = padded_length // self.hop_length
        frame_lengths = np.array([math.ceil(wave.shape[0] / self.hop_length) for wave in waveforms])
        attention_mask = (np.arange(num_frames)[None, :] < frame_lengths[:, None]).astype(np.int32)
        return BatchFeature(
            {"input_features": features.astype(np.float32), "attention_mask": attention_mask},
            tensor_type=return_tensors,
        )


OpenS2SFeatureExtractor.register_for_auto_class()
