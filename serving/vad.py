"""Server-side turn detection for the realtime WebSocket: silero-vad (the `silero-vad` package, which ships its
weights; an optional dependency of the `serve` extra), run on 16 kHz audio in 32 ms windows."""

import logging

import numpy as np


__all__ = ["SpeechDetector", "vad_available"]

logger = logging.getLogger(__name__)

VAD_RATE = 16000
WINDOW = 512  # samples per silero-vad call at 16 kHz (32 ms)


def vad_available() -> bool:
    """Whether `silero-vad` is installed."""
    import importlib.util

    return importlib.util.find_spec("silero_vad") is not None


def _load_silero():
    import torch

    threads = torch.get_num_threads()
    import silero_vad  # its import sets torch's intra-op threads to 1 for the whole process: undone below

    torch.set_num_threads(threads)
    return silero_vad


class SpeechDetector:
    """Finds where speech starts and stops in a stream of 16 kHz audio.

    Args:
        threshold (`float`, *optional*, defaults to 0.5): speech probability above which a window is speech.
        silence_ms (`int`, *optional*, defaults to 500): silence that ends a turn, milliseconds.
        prefix_padding_ms (`int`, *optional*, defaults to 300): audio kept before the detected start, milliseconds.

    Raises:
        `ImportError` when `silero-vad` is not installed.
    """

    def __init__(self, threshold: float = 0.5, silence_ms: int = 500, prefix_padding_ms: int = 300):
        silero_vad = _load_silero()
        self.model = silero_vad.load_silero_vad()  # one per session: the model keeps its recurrent state
        self.iterator = silero_vad.VADIterator(
            self.model,
            threshold=threshold,
            sampling_rate=VAD_RATE,
            min_silence_duration_ms=silence_ms,
            speech_pad_ms=prefix_padding_ms,
        )
        self._pending = np.zeros(0, dtype=np.float32)

    def push(self, waveform: np.ndarray) -> list[str]:
        """Feed mono float32 16 kHz samples; returns the turn events they complete, in order: `"start"` (speech
        began) and `"end"` (speech stopped for `silence_ms`)."""
        import torch

        self._pending = np.concatenate([self._pending, waveform.astype(np.float32)])
        events = []
        with torch.no_grad():
            while self._pending.shape[0] >= WINDOW:
                window, self._pending = self._pending[:WINDOW], self._pending[WINDOW:]
                found = self.iterator(torch.from_numpy(window.copy()), return_seconds=False)
                if found:
                    events += [name for name in ("start", "end") if name in found]
        return events

    def reset(self) -> None:
        self.iterator.reset_states()
        self._pending = np.zeros(0, dtype=np.float32)
