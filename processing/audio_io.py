"""The one audio entry of OpenS2S, for code outside the model folder: re-exported from the remote-code module
`opens2s.modeling_opens2s.audio_opens2s` (the processor uses the same code when loaded with `trust_remote_code`)."""

from opens2s.modeling_opens2s.audio_opens2s import (
    MAX_AUDIO_SECONDS,
    MIN_SAMPLING_RATE,
    TARGET_SAMPLING_RATE,
    AudioError,
    check_audio,
    load_audio,
    resample,
)


__all__ = [
    "AudioError",
    "MAX_AUDIO_SECONDS",
    "MIN_SAMPLING_RATE",
    "TARGET_SAMPLING_RATE",
    "check_audio",
    "load_audio",
    "resample",
]
