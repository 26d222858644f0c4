"""Reading audio files for OpenS2S: soundfile to decode, soxr to resample, mono float32 at 16 kHz."""

from pathlib import Path
from typing import BinaryIO

import numpy as np


__all__ = ["load_audio", "TARGET_SAMPLING_RATE"]

TARGET_SAMPLING_RATE = 16000


def load_audio(path: str | Path | BinaryIO, sampling_rate: int = TARGET_SAMPLING_RATE) -> np.ndarray:
    """Read an audio file (wav/flac/ogg/mp3 as libsndfile supports) as mono float32 at `sampling_rate` Hz.

    `path` may also be an open binary file object (e.g. `io.BytesIO` of an uploaded file's bytes).
    Multi-channel audio is averaged to mono; other rates are resampled with soxr (high quality).
    Raises `FileNotFoundError` for a missing file and `ValueError` for an unreadable or empty one, or one holding
    NaN or infinite samples (float formats can).
    """
    import soundfile
    import soxr

    if isinstance(path, (str, Path)):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"audio file not found: {path}")
        source = str(path)
    else:
        source, path = path, "(in memory)"
    try:
        waveform, file_rate = soundfile.read(source, dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError) as error:
        raise ValueError(f"cannot read audio file {path}: {error}") from error
    if waveform.shape[0] == 0:
        raise ValueError(f"audio file {path} is empty")
    if not np.isfinite(waveform).all():
        raise ValueError(f"audio file {path} holds NaN or infinite samples")
    mono = waveform.mean(axis=1) if waveform.shape[1] > 1 else waveform[:, 0]
    if file_rate != sampling_rate:
        mono = soxr.resample(mono, file_rate, sampling_rate).astype(np.float32)
    return np.ascontiguousarray(mono, dtype=np.float32)
