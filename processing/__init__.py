"""Audio I/O and the OpenS2S processor (the processor itself lives with the remote-code model files)."""

from ..modeling_opens2s.processing_opens2s import OpenS2SProcessor
from .audio_io import TARGET_SAMPLING_RATE, load_audio


__all__ = ["OpenS2SProcessor", "load_audio", "TARGET_SAMPLING_RATE"]
