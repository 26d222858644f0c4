"""Whisper log-mel features padded to whole 30 s windows, with input checks (OpenS2S feature extractor)."""

import math

import numpy as np
import torch
from transformers import WhisperFeatureExtractor
from transformers.feature_extraction_utils import BatchFeature
from transformers.utils import logging

from .audio_opens2s import load_audio


__all__ = ["OpenS2SFeatureExtractor"]

logger = logging.get_logger(__name__)


class OpenS2SFeatureExtractor(WhisperFeatureExtractor):
    r"""
    Whisper log-mel features (128 bins, 100 frames/s) as the original OpenS2S computes them: every audio of a batch
    is zero-padded to the batch's longest one rounded *up to a whole number of 30 s windows* (not cut at 30 s), and
    `attention_mask` marks the valid frames (`ceil(samples / 160)`).

    Every audio goes through [`~audio_opens2s.load_audio`] (paths, bytes, arrays, `datasets.Audio` values, ...):
    checked, downmixed, and resampled with soxr to 16 kHz.

    Args:
        max_audio_seconds (`float`, *optional*, defaults to 600.0):
            Longest accepted audio; longer input is refused (before decoding) with a message saying the limit.
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
        `attention_mask` `(num_audios, 3000 * k)`; extra keyword arguments of the generic API are ignored.

        Audios are anything [`~audio_opens2s.load_audio`] reads. `sampling_rate` is the rate of arrays; without it
        arrays are taken to be at `self.sampling_rate` (16 kHz, what the chat template passes), with a warning.
        """
        if isinstance(raw_speech, (list, tuple)) and raw_speech and isinstance(raw_speech[0], (float, np.floating)):
            raw_speech = [np.asarray(raw_speech, dtype=np.float32)]  # one audio given as a list of floats
        elif not isinstance(raw_speech, (list, tuple)):
            raw_speech = [raw_speech]
        if len(raw_speech) == 0:
            raise ValueError("no audio given")
        if sampling_rate is None and any(isinstance(audio, (np.ndarray, torch.Tensor, list)) for audio in raw_speech):
            logger.warning_once(
                f"No sampling_rate given to {type(self).__name__}: arrays are taken to be at {self.sampling_rate} Hz."
            )
        sampling_rate = self.sampling_rate if sampling_rate is None else sampling_rate
        waveforms = [
            load_audio(
                audio,
                sampling_rate,
                target_sampling_rate=self.sampling_rate,
                max_seconds=self.max_audio_seconds,
                min_samples=self.hop_length,
            )
            for audio in raw_speech
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

    def fetch_audio(self, audio_url_or_urls, sampling_rate: int | None = None):
        """Decode paths, bytes and `datasets.Audio` values given to the processor with [`~audio_opens2s.load_audio`]
        at this extractor's rate (instead of transformers' loader); arrays pass through unchanged."""
        if isinstance(audio_url_or_urls, list) and not (
            audio_url_or_urls and isinstance(audio_url_or_urls[0], (float, np.floating))
        ):
            return [self.fetch_audio(audio) for audio in audio_url_or_urls]
        if isinstance(audio_url_or_urls, (np.ndarray, torch.Tensor, list)):
            return audio_url_or_urls
        return load_audio(
            audio_url_or_urls,
            target_sampling_rate=self.sampling_rate,
            max_seconds=self.max_audio_seconds,
            min_samples=self.hop_length,
        )


OpenS2SFeatureExtractor.register_for_auto_class()
