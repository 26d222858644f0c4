"""Audio -> Whisper features for the speech tokenizer, cut and padded as GLM-4-Voice's `extract_speech_token` does.

One audio becomes independent 30 s segments (the last one shorter); a batch of segments is zero-padded to its longest
segment rounded up to a whole speech unit (1280 samples = 8 feature frames = 80 ms), and the feature-frame mask of
every segment says which units are kept. Features are `transformers.WhisperFeatureExtractor`'s, unchanged (torch STFT
path, `max - 8` clamp per segment).
"""

from collections.abc import Sequence

import numpy as np
import torch
from transformers import WhisperFeatureExtractor
from transformers.feature_extraction_utils import BatchFeature


__all__ = ["segment_features", "split_segments"]


def split_segments(waveform: np.ndarray, segment_samples: int) -> list[np.ndarray]:
    """Cut `(samples,)` into consecutive `segment_samples`-long pieces (30 s), the last one shorter; no empty piece."""
    return [waveform[start : start + segment_samples] for start in range(0, waveform.shape[0], segment_samples)]


def segment_features(
    feature_extractor: WhisperFeatureExtractor,
    segments: Sequence[np.ndarray],
    samples_per_unit: int,
    device: str | torch.device = "cpu",
) -> BatchFeature:
    """Whisper log-mel features of a batch of segments, padded as the original tokenizer pads them.

    Args:
        feature_extractor ([`WhisperFeatureExtractor`]): computes the features (torch STFT on `device`).
        segments (`Sequence[np.ndarray]`): 1-D float32 segments at 16 kHz, each at most 30 s.
        samples_per_unit (`int`): samples per speech unit (1280 at 12.5 Hz); the batch is zero-padded to its longest
            segment rounded up to a multiple of it.
        device (`str` or `torch.device`, *optional*, defaults to `"cpu"`): where the STFT runs.

    Returns:
        [`BatchFeature`] with torch tensors `input_features` `(num_segments, num_mel_bins, frames)`, float32, and
        `attention_mask` `(num_segments, frames)`, 1 on the `ceil(samples / hop_length)` valid frames of a segment.
        `frames` is a multiple of `samples_per_unit / hop_length` (8).
    """
    if samples_per_unit % feature_extractor.hop_length:
        raise ValueError(
            f"samples_per_unit ({samples_per_unit}) must be a multiple of hop_length ({feature_extractor.hop_length})"
        )
    longest = max(segment.shape[0] for segment in segments)
    if longest > feature_extractor.n_samples:
        raise ValueError(f"a segment has {longest} samples; segments hold at most {feature_extractor.n_samples}")
    features = feature_extractor(
        list(segments),
        sampling_rate=feature_extractor.sampling_rate,
        padding="longest",
        pad_to_multiple_of=samples_per_unit,
        return_attention_mask=True,
        return_tensors="pt",
        device=str(device),
    )
    return features
