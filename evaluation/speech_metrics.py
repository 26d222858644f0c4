"""Metrics of the spoken answer: text-speech consistency (WER / CER between the text answer and the ASR transcript of
the spoken answer), duration and speech rate; and the ASR that transcribes it.

The ASR follows URO-Bench (github.com/Ruiqi-Yan/URO-Bench `asr_for_eval.py`), whose UnderEmotion judge reads the
transcript of the spoken answer: English with Whisper-large-v3 through `pipeline("automatic-speech-recognition")`,
the language *not* forced (Whisper detects it); Chinese with FunASR's `paraformer-zh` (v2.0.4, with the `fsmn-vad`
and `ct-punc-c` models, from ModelScope). [`UroBenchASR`] does the same where it can; where Paraformer cannot be
loaded (FunASR not installed, or its models not reachable) it transcribes Chinese with Whisper with the language forced
to zh, logs a warning and says so in [`UroBenchASR.system`] (recorded per row, shown in the report). Known difference:
answers longer than Whisper's 30 s window are transcribed in 30 s chunks (`chunk_length_s=30`), where URO-Bench calls
the pipeline without chunking. Any callable with the [`ASRFunction`] signature can stand in for it.

Text normalisation before WER/CER: transformers' Whisper `BasicTextNormalizer` (lower case, brackets and symbols
removed, whitespace collapsed) on both sides; for CER (Chinese) the spaces are removed too. Error counts come from
`jiwer` (Levenshtein alignment over words or characters).
"""

import logging
from collections.abc import Callable, Iterable

import numpy as np


__all__ = [
    "ASRFunction",
    "ParaformerASR",
    "UroBenchASR",
    "WhisperASR",
    "corpus_error_rate",
    "normalize_text",
    "speech_rate",
    "text_speech_consistency",
]

logger = logging.getLogger(__name__)

# (waveforms at `sampling_rate` Hz, sampling_rate, language "en"/"zh") -> one transcript per waveform. An ASR may also
# have `system(language) -> str`, the description of what transcribed that language (recorded per row).
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

    The pipeline is built on the first call. Waveforms are resampled (soxr) to the feature extractor's rate. With a
    `language`, multilingual checkpoints are forced to it (`generate_kwargs={"language": ..., "task": "transcribe"}`);
    with `language=None` Whisper detects it (URO-Bench's English setting).
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

    def __call__(self, waveforms: list[np.ndarray], sampling_rate: int, language: str | None = None) -> list[str]:
        """One transcript per waveform (mono float32 at `sampling_rate` Hz); `language` forced when given."""
        from opens2s.processing.audio_io import resample

        if not waveforms:
            return []
        asr = self.pipeline
        target_rate = asr.feature_extractor.sampling_rate
        inputs = [np.asarray(resample(w, sampling_rate, target_rate), np.float32) for w in waveforms]
        generate_kwargs = {}
        if language is not None and getattr(asr.model.generation_config, "lang_to_id", None):
            generate_kwargs = {"language": language, "task": "transcribe"}
        outputs = asr(inputs, batch_size=self.batch_size, generate_kwargs=generate_kwargs)
        return [output["text"].strip() for output in outputs]


class ParaformerASR:
    """URO-Bench's Chinese ASR: FunASR's `AutoModel(model="paraformer-zh", vad_model="fsmn-vad",
    punc_model="ct-punc-c")`, revisions v2.0.4, from ModelScope (`hub="ms"`), one waveform per `generate` call.

    Needs `pip install funasr` and access to ModelScope; [`load`] raises `ImportError`/`OSError`/`RuntimeError` when
    either is missing. Waveforms are resampled (soxr) to 16 kHz and passed as arrays (URO-Bench passes the wav file).
    """

    SAMPLING_RATE = 16000
    MODEL_ARGS = {
        "model": "paraformer-zh",
        "model_revision": "v2.0.4",
        "vad_model": "fsmn-vad",
        "vad_model_revision": "v2.0.4",
        "punc_model": "ct-punc-c",
        "punc_model_revision": "v2.0.4",
        "hub": "ms",
    }

    def __init__(self, device: str = "cpu"):
        self.device = device
        self._model = None

    def load(self) -> "ParaformerASR":
        """Build the FunASR model (downloads on first use); returns `self`."""
        if self._model is None:
            from funasr import AutoModel

            logger.info("loading ASR model %s (FunASR)", self.MODEL_ARGS["model"])
            self._model = AutoModel(**self.MODEL_ARGS, device=self.device, disable_update=True)
        return self

    def __call__(self, waveforms: list[np.ndarray], sampling_rate: int, language: str | None = "zh") -> list[str]:
        """One transcript per waveform (mono float32 at `sampling_rate` Hz)."""
        from opens2s.processing.audio_io import resample

        model = self.load()._model
        transcripts = []
        for waveform in waveforms:
            waveform = resample(waveform, sampling_rate, self.SAMPLING_RATE)
            result = model.generate(input=np.asarray(waveform, dtype=np.float32))
            transcripts.append(result[0]["text"].strip())
        return transcripts


class UroBenchASR:
    """The ASR of URO-Bench's speech path: Whisper without a forced language for English, Paraformer for Chinese,
    Whisper with the language forced to zh where Paraformer cannot be loaded (said in [`system`]).

    Args:
        whisper (`str`, *optional*, defaults to `"openai/whisper-large-v3"`): Whisper checkpoint (URO-Bench's).
        device (`str`, *optional*, defaults to `"cpu"`) / dtype (`str`, *optional*, defaults to `"float32"`).
        batch_size (`int`, *optional*, defaults to 8): Whisper waveforms per forward pass.
        paraformer ([`ParaformerASR`], *optional*): the Chinese ASR (default: `ParaformerASR(device)`).
    """

    def __init__(
        self,
        whisper: str = "openai/whisper-large-v3",
        device: str = "cpu",
        dtype: str = "float32",
        batch_size: int = 8,
        paraformer: ParaformerASR | None = None,
    ):
        self.whisper = WhisperASR(whisper, device, dtype, batch_size=batch_size)
        self.paraformer = paraformer if paraformer is not None else ParaformerASR(device)
        self.paraformer_error: str | None = None

    def _paraformer_ready(self) -> bool:
        if self.paraformer_error is None and self.paraformer._model is None:
            try:
                self.paraformer.load()
            except (ImportError, OSError, RuntimeError, ValueError) as error:
                self.paraformer_error = f"{type(error).__name__}: {error}"
                logger.warning(
                    "URO-Bench transcribes Chinese with paraformer-zh, which cannot be loaded here (%s); "
                    "using %s with language zh instead",
                    self.paraformer_error,
                    self.whisper.model,
                )
        return self.paraformer_error is None

    def __call__(self, waveforms: list[np.ndarray], sampling_rate: int, language: str = "en") -> list[str]:
        """One transcript per waveform (mono float32 at `sampling_rate` Hz) of `language` (`"en"` or `"zh"`)."""
        if language == "zh":
            if self._paraformer_ready():
                return self.paraformer(waveforms, sampling_rate)
            return self.whisper(waveforms, sampling_rate, language="zh")
        return self.whisper(waveforms, sampling_rate, language=None)

    def system(self, language: str) -> str:
        """What transcribes `language`, in words (for the report)."""
        if language != "zh":
            return f"{self.whisper.model}, language detected by Whisper (URO-Bench)"
        if self._paraformer_ready():
            return f"{self.paraformer.MODEL_ARGS['model']} {self.paraformer.MODEL_ARGS['model_revision']} (URO-Bench)"
        return (
            f"{self.whisper.model} with language zh, NOT URO-Bench's paraformer-zh (cannot be loaded: "
            f"{self.paraformer_error})"
        )
