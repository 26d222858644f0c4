"""Speech synthesis backends of the pipeline: voice cloning for the user turns, instruct-TTS for the replies.

A backend has two methods, both returning `(waveform, sampling_rate)` (mono float32):

- `clone(text, *, reference_audio, reference_text, language, emotion, age, gender, speaker)`: say `text` in the
  voice of the seed clip `reference_audio` (paper: CosyVoice2 zero-shot cloning, so the user turn carries the seed
  speaker's timbre and emotion);
- `instruct(text, *, tone, language)`: say `text` in the one fixed reply voice with the tone the LLM chose (paper:
  instruct-TTS).

[`CosyVoice2TTS`] is the paper's backend; it needs the `cosyvoice` package (github.com/FunAudioLLM/CosyVoice, not on
PyPI) and a CosyVoice2 model folder. [`EspeakTTS`] is the fallback that runs everywhere (Debian/Ubuntu:
`apt-get install espeak-ng`). espeak-ng cannot clone a voice: it *imitates the seed's labels* with a voice variant
and prosody, so data made with it trains the plumbing, not the paralinguistic skill. Its mapping (offsets add up):

- gender + age -> variant: female child `f5`, teenager `f4`, adult `f3`, elderly `aunty`; male child `m3`,
  teenager `m2`, adult `m1`, elderly `grandpa`; an unknown gender is picked per speaker.
- age -> pitch, rate: child +30, x1.05; teenager +12, x1.05; adult 0, x1; elderly -8, x0.82.
- emotion -> pitch, rate, amplitude: neutral 0, x1, 100; happy +12, x1.12, 110; sad -10, x0.78, 80;
  angry +4, x1.15, 140; fearful +16, x1.2, 90; disgusted -6, x0.88, 100; surprised +20, x1.05, 115.
- speaker -> pitch, rate: a fixed offset in [-6, +6] and factor in [0.95, 1.05] per speaker id (speakers differ).
- reply tone -> pitch, rate, amplitude: neutral 0, x1, 100; cheerful +10, x1.1, 110; excited +16, x1.2, 120;
  gentle -4, x0.88, 80; soothing -8, x0.8, 75; sympathetic -6, x0.85, 85; encouraging +6, x1.05, 110;
  calm -4, x0.9, 90; serious -8, x0.95, 105.

Pitch is espeak-ng's `-p` (0-99, base 50), rate its `-s` in words per minute (base 165), amplitude its `-a` (base
100). Replies use one variant (`response_voice`, default `f3`). Languages map to espeak-ng voices (`en` -> `en-us`,
`zh` -> `cmn`; others are passed as is). Output is resampled to 16 kHz.
"""

import hashlib
import inspect
import logging
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from opens2s.processing.audio_io import TARGET_SAMPLING_RATE, AudioError, load_audio


__all__ = ["COSYVOICE_INSTALL_HINT", "CosyVoice2TTS", "EspeakTTS", "EspeakVoice", "TTSError"]

logger = logging.getLogger(__name__)

COSYVOICE_INSTALL_HINT = (
    "the cosyvoice2 backend needs the `cosyvoice` package: install CosyVoice from "
    "https://github.com/FunAudioLLM/CosyVoice (clone it, `pip install -r requirements.txt`, put it and "
    "third_party/Matcha-TTS on PYTHONPATH) and download a CosyVoice2 model folder (--cosyvoice-model); "
    "or use --tts espeak"
)

_VARIANTS = {
    ("female", "child"): "f5",
    ("female", "teenager"): "f4",
    ("female", "adult"): "f3",
    ("female", "elderly"): "aunty",
    ("male", "child"): "m3",
    ("male", "teenager"): "m2",
    ("male", "adult"): "m1",
    ("male", "elderly"): "grandpa",
}
# (pitch offset, rate factor)
_AGE_PROSODY = {"child": (30, 1.05), "teenager": (12, 1.05), "adult": (0, 1.0), "elderly": (-8, 0.82)}
# (pitch offset, rate factor, amplitude)
_EMOTION_PROSODY = {
    "neutral": (0, 1.0, 100),
    "happy": (12, 1.12, 110),
    "sad": (-10, 0.78, 80),
    "angry": (4, 1.15, 140),
    "fearful": (16, 1.2, 90),
    "disgusted": (-6, 0.88, 100),
    "surprised": (20, 1.05, 115),
}
_TONE_PROSODY = {
    "neutral": (0, 1.0, 100),
    "cheerful": (10, 1.1, 110),
    "excited": (16, 1.2, 120),
    "gentle": (-4, 0.88, 80),
    "soothing": (-8, 0.8, 75),
    "sympathetic": (-6, 0.85, 85),
    "encouraging": (6, 1.05, 110),
    "calm": (-4, 0.9, 90),
    "serious": (-8, 0.95, 105),
}
_BASE_PITCH, _BASE_RATE = 50, 165
_LANGUAGE_VOICES = {"en": "en-us", "zh": "cmn"}


class TTSError(RuntimeError):
    """A synthesis that failed (the row's failure reason is `"tts error"`)."""


@dataclass(frozen=True)
class EspeakVoice:
    """espeak-ng settings of one utterance: `-v voice`, `-p pitch` (0-99), `-s rate` (words/min), `-a amplitude`."""

    voice: str
    pitch: int
    rate: int
    amplitude: int

    def arguments(self) -> list[str]:
        return ["-v", self.voice, "-p", str(self.pitch), "-s", str(self.rate), "-a", str(self.amplitude)]


def _speaker_offsets(speaker: str) -> tuple[int, float, int]:
    """A stable (pitch offset, rate factor, coin) of a speaker id, so that seed speakers sound different."""
    digest = hashlib.sha1(speaker.encode("utf-8")).digest()
    return digest[0] % 13 - 6, 0.95 + (digest[1] % 11) / 100, digest[2] % 2


def _clip(value: float, low: int, high: int) -> int:
    return int(min(max(round(value), low), high))


class EspeakTTS:
    """The built-in fallback backend: espeak-ng's command line, labels mapped to voice variants and prosody (see the
    module docstring for the table).

    Args:
        response_voice (`str`, *optional*, defaults to `"f3"`): espeak-ng variant of every reply.
        executable (`str`, *optional*, defaults to `"espeak-ng"`): the program (`espeak` works too).
        timeout (`float`, *optional*, defaults to 60): seconds per utterance.
    """

    name = "espeak"
    max_workers = None  # subprocesses: any number of threads may call it

    def __init__(self, response_voice: str | None = None, executable: str = "espeak-ng", timeout: float = 60.0):
        path = shutil.which(executable)
        if path is None:
            raise FileNotFoundError(
                f"{executable} not found: install it (Debian/Ubuntu: apt-get install espeak-ng; macOS: brew install "
                "espeak-ng) or choose another --tts backend"
            )
        self.executable, self.timeout = path, timeout
        self.response_voice = response_voice or "f3"

    @staticmethod
    def language_voice(language: str) -> str:
        return _LANGUAGE_VOICES.get(language, language)

    def clone_voice(self, *, language: str, emotion: str, age: str, gender: str, speaker: str) -> EspeakVoice:
        """The espeak-ng settings that imitate a seed speaker's labels."""
        pitch_offset, rate_factor, coin = _speaker_offsets(speaker)
        if gender not in ("female", "male"):
            gender = ("female", "male")[coin]
        variant = _VARIANTS[(gender, age if age in _AGE_PROSODY else "adult")]
        age_pitch, age_rate = _AGE_PROSODY.get(age, (0, 1.0))
        emotion_pitch, emotion_rate, amplitude = _EMOTION_PROSODY.get(emotion, (0, 1.0, 100))
        return EspeakVoice(
            voice=f"{self.language_voice(language)}+{variant}",
            pitch=_clip(_BASE_PITCH + pitch_offset + age_pitch + emotion_pitch, 0, 99),
            rate=_clip(_BASE_RATE * rate_factor * age_rate * emotion_rate, 80, 450),
            amplitude=amplitude,
        )

    def tone_voice(self, *, tone: str, language: str) -> EspeakVoice:
        """The espeak-ng settings of the reply voice speaking with `tone`."""
        pitch, rate, amplitude = _TONE_PROSODY.get(tone, (0, 1.0, 100))
        return EspeakVoice(
            voice=f"{self.language_voice(language)}+{self.response_voice}",
            pitch=_clip(_BASE_PITCH + pitch, 0, 99),
            rate=_clip(_BASE_RATE * rate, 80, 450),
            amplitude=amplitude,
        )

    def clone(self, text: str, *, reference_audio=None, reference_text=None, **labels) -> tuple[np.ndarray, int]:
        """Say `text` imitating the seed speaker's labels (`language`, `emotion`, `age`, `gender`, `speaker`)."""
        return self.speak(text, self.clone_voice(**labels))

    def instruct(self, text: str, *, tone: str, language: str) -> tuple[np.ndarray, int]:
        """Say `text` in the reply voice with `tone`."""
        return self.speak(text, self.tone_voice(tone=tone, language=language))

    def speak(self, text: str, voice: EspeakVoice) -> tuple[np.ndarray, int]:
        """Run espeak-ng once; 16 kHz mono float32. Raises [`TTSError`]."""
        with tempfile.TemporaryDirectory(prefix="opens2s-espeak-") as folder:
            out = Path(folder) / "out.wav"
            command = [self.executable, *voice.arguments(), "-w", str(out), "--stdin"]
            try:
                subprocess.run(
                    command, input=text.encode("utf-8"), capture_output=True, timeout=self.timeout, check=True
                )
                waveform = load_audio(out, max_seconds=None, min_samples=1)
            except AudioError as error:
                if error.reason != "empty audio":  # an empty answer fails its row later, as "empty audio"
                    raise TTSError(f"espeak-ng wrote unusable audio: {error}") from error
                waveform = np.zeros(0, np.float32)
            except subprocess.CalledProcessError as error:
                raise TTSError(f"espeak-ng failed: {error.stderr.decode(errors='replace')[:200]}") from error
            except (subprocess.TimeoutExpired, OSError) as error:
                raise TTSError(f"espeak-ng failed: {error}") from error
        return waveform, TARGET_SAMPLING_RATE


# How a reply tone is asked of CosyVoice2's instruct mode, per language.
_COSYVOICE_INSTRUCTIONS = {
    "en": "Speak in a {tone} tone.",
    "zh": {
        "neutral": "用平静自然的语气说",
        "cheerful": "用开心愉快的语气说",
        "excited": "用兴奋激动的语气说",
        "gentle": "用温柔的语气说",
        "soothing": "用舒缓安慰的语气说",
        "sympathetic": "用同情关切的语气说",
        "encouraging": "用鼓励的语气说",
        "calm": "用冷静的语气说",
        "serious": "用严肃认真的语气说",
    },
}


class CosyVoice2TTS:
    """CosyVoice2 (paper section 3.2): zero-shot voice cloning from the seed clip for the user turns, and
    `inference_instruct2` with the tone as a natural-language instruction, in the voice of one prompt clip, for the
    replies. Needs the `cosyvoice` package ([`COSYVOICE_INSTALL_HINT`]); raises `ImportError` saying so otherwise.

    Args:
        model_dir (`str`): CosyVoice2 model folder (e.g. `pretrained_models/CosyVoice2-0.5B`).
        response_voice (`str`, *optional*): prompt wav of the one reply voice; needed by `instruct`.
    """

    name = "cosyvoice2"
    max_workers = 1  # one model, one stream at a time

    def __init__(self, model_dir: str, response_voice: str | None = None):
        try:
            from cosyvoice.cli.cosyvoice import CosyVoice2
        except ImportError as error:
            raise ImportError(COSYVOICE_INSTALL_HINT) from error
        self.model = CosyVoice2(model_dir, load_jit=False, load_trt=False, fp16=False)
        self.sampling_rate = int(self.model.sample_rate)
        self.response_voice = response_voice

    def _prompt(self, method, path: str):
        """CosyVoice releases take either the prompt wav's path (`prompt_wav`) or its 16 kHz samples."""
        if "prompt_wav" in inspect.signature(method).parameters:
            return str(path)
        from cosyvoice.utils.file_utils import load_wav

        return load_wav(str(path), 16000)

    def _collect(self, outputs) -> tuple[np.ndarray, int]:
        pieces = [output["tts_speech"].reshape(-1).float().cpu().numpy() for output in outputs]
        if not pieces:
            raise TTSError("CosyVoice2 produced no audio")
        return np.concatenate(pieces), self.sampling_rate

    def clone(self, text: str, *, reference_audio: str, reference_text: str, **labels) -> tuple[np.ndarray, int]:
        method = self.model.inference_zero_shot
        return self._collect(method(text, reference_text, self._prompt(method, reference_audio), stream=False))

    def instruct(self, text: str, *, tone: str, language: str) -> tuple[np.ndarray, int]:
        if not self.response_voice:
            raise ValueError("the cosyvoice2 reply voice needs --response-voice PROMPT.wav (the one reply voice)")
        template = _COSYVOICE_INSTRUCTIONS.get(language, _COSYVOICE_INSTRUCTIONS["en"])
        instruction = (
            template.get(tone, template["neutral"]) if isinstance(template, dict) else template.format(tone=tone)
        )
        method = self.model.inference_instruct2
        return self._collect(method(text, instruction, self._prompt(method, self.response_voice), stream=False))
