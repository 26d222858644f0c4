"""Metrics of the spoken answer: text-speech consistency (WER / CER between the text answer and the ASR transcript of
the spoken answer), duration and speech rate; and the Whisper ASR that transcribes it.

The paper's Table 2 scores the text answer only; these numbers say whether the model *says* what it writes. The
ASR is `transformers.pipeline("automatic-speech-recognition")` with a Whisper model (URO-Bench transcribes English
with whisper-large-v3, and Chinese with paraformer-zh, which is not on this stack: we use Whisper for both, with the
language forced). Any callable with the [`ASRFunction`] signature can stand in for it.

Text normalisation before WER/CER: transformers' Whisper `BasicTextNormalizer` (lower case, brackets and symbols
removed, whitespace collapsed) on both sides; for CER (Chinese) the spaces are removed too. Error counts come from
`jiwer` (Levenshtein alignment over words or characters).
"""

import logging
from collections.abc import Callable, Iterable

import numpy as np


__all__ = [
    "ASRFunction",
    "WhisperASR",
    "corpus_error_rate",
    "normalize_text",
    "speech_rate",
    "text_speech_consistency",
]

logger = logging.getLogger(__name__)

# (waveforms at `sampling_rate` Hz, sampling_rate, language "en"/"zh") -> one transcript per waveform
ASRFunction = Callable[[list[np.ndarray], int, str], list[str]]
CHARACTER_LANGUAGES = frozenset({"zh", "ja"})


def normalize_text(text: str, language: str = "en") -> str:
    """Lower case, no punctuation or symbols, single spaces (Whisper's basic normaliser); no spaces at all for
    character-scored languages (zh)."""
    from transformers.models.whisper.english_normalizer import BasicTextNormalizer

    normalized = " ".join(BasicTextNormalizer()(text).split())
    return normalized.replace(" ", "") if language in CHARACTER_LANGUAGES else normalized


def _units(text: str, language: str) -> list[str]:
    normalized = normalize_text(text, language)
    return list(normalized) if language in CHARACTER_LANGUAGES else normalized.split()


def text_speech_consistency(text: str, transcript: str, language: str = "en") -> dict:
    """WER (or CER for zh) of the ASR `transcript` of the spoken answer against the text answer `text`.

    Returns:
        `dict` with `metric` (`"wer"` or `"cer"`), `errors` (substitutions + deletions + insertions),
        `reference_length` (words or characters of the normalised text) and `value` (`errors / reference_length`;
        `None` when the text is empty: then any transcript is all insertions, counted in `errors`).
    """
    import jiwer

    metric = "cer" if language in CHARACTER_LANGUAGES else "wer"
    reference, hypothesis = _units(text, language), _units(transcript, language)
    if not reference:
        return {"metric": metric, "errors": len(hypothesis), "reference_length": 0, "value": None}
    if not hypothesis:
        return {"metric": metric, "errors": len(reference), "reference_length": len(reference), "value": 1.0}
    # jiwer aligns lists of words; characters are passed as space-joined "words" (identical to its CER).
    output = jiwer.process_words(" ".join(reference), " ".join(hypothesis))
    errors = output.substitutions + output.deletions + output.insertions
    return {"metric": metric, "errors": errors, "reference_length": len(reference), "value": errors / len(reference)}


def corpus_error_rate(items: Iterable[dict]) -> float | None:
    """Corpus WER/CER of [`text_speech_consistency`] results: all errors over all reference words (as jiwer does
    for a list of sentences); `None` without reference words."""
    errors = length = 0
    for item in items:
        errors += item["errors"]
        length += item["reference_length"]
    return errors / length if length else None


def speech_rate(transcript: str, duration_seconds: float, language: str = "en") -> float | None:
    """Words per second (characters per second for zh) of what was said (the ASR transcript); `None` for silence."""
    if duration_seconds <= 0:
        return None
    return len(_units(transcript, language)) / duration_seconds


class WhisperASR:
    """Transcribe spoken answers with a Whisper checkpoint through `pipeline("automatic-speech-recognition")`.

    Args:
        model (`str`): a Hub id or folder, e.g. `"openai/whisper-large-v3"`.
        device (`str`, *optional*, defaults to `"cpu"`): where to run.
        dtype (`str`, *optional*, defaults to `"float32"`): `"float16"` / `"bfloat16"` on GPUs.
        batch_size (`int`, *optional*, defaults to 8): waveforms per forward pass.
        chunk_length_s (`float`, *optional*, defaults to 30): answers longer than Whisper's 30 s window are
            transcribed in chunks.

    The pipeline is built on the first call. Waveforms are resampled (soxr) to the feature extractor's rate; the
    language is forced (`generate_kwargs={"language": ..., "task": "transcribe"}`) for multilingual checkpoints.
    """

    def __init__(
        self,
        model: str,
        device: str = "cpu",
        dtype: str = "float32",
        batch_size: int = 8,
        chunk_length_s: float = 30.0,
    ):
        self.model, self.device, self.dtype = model, device, dtype
        self.batch_size, self.chunk_length_s = batch_size, chunk_length_s
        self._pipeline = None

    @property
    def pipeline(self):
        """The underlying `AutomaticSpeechRecognitionPipeline` (built on first use)."""
        if self._pipeline is None:
            import torch
            from transformers import pipeline

            logger.info("loading ASR model %s", self.model)
            self._pipeline = pipeline(
                "automatic-speech-recognition",
                model=self.model,
                device=self.device,
                dtype=getattr(torch, self.dtype),
                chunk_length_s=self.chunk_length_s,
                ignore_warning=True,  # chunking is what lets long and short answers share a batch
            )
        return self._pipeline

    def __call__(self, waveforms: list[np.ndarray], sampling_rate: int, language: str = "en") -> list[str]:
        """One transcript per waveform (mono float32 at `sampling_rate` Hz)."""
        import soxr

        if not waveforms:
            return []
        asr = self.pipeline
        target_rate = asr.feature_extractor.sampling_rate
        inputs = [
            np.asarray(soxr.resample(w, sampling_rate, target_rate) if sampling_rate != target_rate else w, np.float32)
            for w in waveforms
        ]
        generate_kwargs = {}
        if getattr(asr.model.generation_config, "lang_to_id", None):
            generate_kwargs = {"language": language, "task": "transcribe"}
        outputs = asr(inputs, batch_size=self.batch_size, generate_kwargs=generate_kwargs)
        return [output["text"].strip() for output in outputs]
