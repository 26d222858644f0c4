"""Loading a speech-to-speech model and running one spoken turn: shared by the `opens2s chat` CLI, the Space and
the benchmarks."""

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers.utils import logging

from opens2s.modeling_opens2s.modeling_opens2s import TOKEN2WAV_SUBFOLDER


__all__ = [
    "DTYPES",
    "EXAMPLE_WAV",
    "SpeechModel",
    "chat_inputs",
    "conversation_inputs",
    "load_speech_model",
    "resolve_device_and_dtype",
    "seeded_stream_kwargs",
    "stream_reply",
]

logger = logging.get_logger(__name__)

# 16 kHz mono PCM-16 English question spoken by espeak-ng (see assets/README.md): the default input of demos.
EXAMPLE_WAV = Path(__file__).parent / "assets" / "example.wav"

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device_and_dtype(device: str, dtype: str) -> tuple[str, str]:
    """`"auto"` device: CUDA when available, else CPU; `"auto"` dtype: bfloat16 on CUDA, float32 elsewhere."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        dtype = "bfloat16" if torch.device(device).type == "cuda" else "float32"
    return device, dtype


class SpeechModel:
    """A loaded OpenS2S model with its processor and (when found) its token2wav decoder."""

    def __init__(self, model, processor, is_tiny: bool):
        self.model, self.processor, self.is_tiny = model, processor, is_tiny

    @property
    def speaks(self) -> bool:
        """Whether a token2wav decoder is attached (else the reply is text + units only)."""
        return self.model.token2wav is not None


def load_speech_model(
    name_or_path: str | Path | None = None,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "float32",
    token2wav: str | Path | None = None,
    trust_remote_code: bool = False,
    verify: bool = True,
) -> SpeechModel:
    """Load an OpenS2S folder or Hub repo, its processor, and its token2wav decoder.

    Args:
        name_or_path: a converted folder or Hub id; `None` builds (once) and loads the tiny random default model.
        device: where to run.
        dtype: `"float32"`, `"bfloat16"`, `"float16"` or a torch dtype, for the LLM and speech decoder; token2wav
            runs in float32 on CPU and in this dtype on accelerators (its vocoder keeps its phase maths in float32).
        token2wav: a token2wav folder or Hub id; default the `token2wav/` subfolder of `name_or_path`, when present.
        trust_remote_code: run the folder's own code instead of this package's classes (see
            [`~opens2s.processing.loading`]); by default no file of the folder is imported.
        verify: check local folders against their `checksums.sha256` first (a `ChecksumError` names the file that
            differs); folders without one are loaded unchecked.
    """
    from opens2s.processing.loading import load_opens2s_model, load_opens2s_processor, verify_model_folder

    is_tiny = name_or_path is None
    if is_tiny:
        from opens2s.conversion.tiny import tiny_model_path

        name_or_path = tiny_model_path()
    if verify:
        verify_model_folder(name_or_path)
        if token2wav is not None:
            verify_model_folder(token2wav)
    dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    model = load_opens2s_model(name_or_path, trust_remote_code=trust_remote_code, dtype=dtype).to(device).eval()
    processor = load_opens2s_processor(name_or_path, trust_remote_code=trust_remote_code)
    token2wav_dtype = torch.float32 if torch.device(device).type == "cpu" else dtype
    if token2wav is not None:
        model.attach_token2wav(str(token2wav), dtype=token2wav_dtype)
    elif _has_token2wav(name_or_path):
        model.attach_token2wav(dtype=token2wav_dtype)
    else:
        logger.warning(
            "%s has no %s/ decoder: the reply will be text and speech units only", name_or_path, TOKEN2WAV_SUBFOLDER
        )
    return SpeechModel(model, processor, is_tiny)


def _has_token2wav(name_or_path: str | Path) -> bool:
    local = Path(name_or_path)
    if local.is_dir():
        return (local / TOKEN2WAV_SUBFOLDER / "config.json").is_file()
    from huggingface_hub import file_exists

    return file_exists(str(name_or_path), f"{TOKEN2WAV_SUBFOLDER}/config.json")


def conversation_inputs(
    processor,
    audio: Any,
    history: Sequence[tuple[Any, str]] = (),
    system_prompt: str | None = None,
    speech_output: bool = True,
    sampling_rate: int | None = None,
) -> dict:
    """Processor inputs (`input_ids`, `attention_mask`, `input_features`, `feature_attention_mask`, torch tensors)
    for a spoken question: the conversation of the CLI chat, the Space and evaluation, through [`chat_inputs`].

    Args:
        processor ([`OpenS2SProcessor`]): gives the chat template and reads the audio.
        audio: the question: anything [`load_audio`] reads (a path, bytes, an array at `sampling_rate`, a
            `datasets.Audio` value). A `list` of questions gives a batch of one-turn conversations, left-padded.
        history (`Sequence[tuple]`): earlier turns of the conversation, oldest first, as `(question, reply_text)`;
            the question in the same forms as `audio`, the reply the assistant's text (earlier spoken replies are
            fed back as their text). Only with a single question.
        system_prompt (`str`, *optional*): replaces the template's default system turn.
        speech_output (`bool`, *optional*, defaults to `True`): end the prompt with `<|im_tts_start|>`, so the
            model also speaks (and writes the text it writes when it speaks).
        sampling_rate (`int`, *optional*): rate of questions given as arrays; default 16 kHz, the processor's.
    """
    batch = isinstance(audio, list)
    if batch and history:
        raise ValueError("a batch of questions takes no history: pass one question with its history")

    def audio_item(question) -> dict:
        item = {"type": "audio", "audio": question}
        return item if sampling_rate is None else item | {"sampling_rate": sampling_rate}

    def conversation(question) -> list[dict]:
        messages = []
        if system_prompt is not None:
            messages.append({"role": "system", "content": [{"type": "text", "text": system_prompt}]})
        for earlier, reply in history:
            messages.append({"role": "user", "content": [audio_item(earlier)]})
            messages.append({"role": "assistant", "content": [{"type": "text", "text": reply}]})
        return messages + [{"role": "user", "content": [audio_item(question)]}]

    if batch:
        return chat_inputs(processor, [conversation(question) for question in audio], speech_output)
    return chat_inputs(processor, conversation(audio), speech_output)


def chat_inputs(processor, messages: list, speech_output: bool = True) -> dict:
    """Processor inputs (`input_ids`, `input_features`, ...) for chat `messages` ending with the user's turn, with the
    generation prompt (ending in `<|im_tts_start|>` with `speech_output`). Message contents are lists of
    `{"type": "text", "text": ...}` and `{"type": "audio", "audio": ...}` items (anything [`load_audio`] reads; an
    array is at the item's `"sampling_rate"`, default 16 kHz), or plain strings. A list of such conversations gives
    a batch, left-padded."""
    batch = bool(messages) and isinstance(messages[0], (list, tuple))
    options = {"processor_kwargs": {"padding": True, "padding_side": "left"}} if batch else {}
    return processor.apply_chat_template(
        messages,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        speech_output=speech_output,
        **options,
    )


def seeded_stream_kwargs(model, seed: int | None, stream_kwargs: dict) -> dict:
    """`stream_kwargs` plus the random sources of a reproducible answer: `seed` seeds text and unit sampling (on the
    model's device) and, in the `"blocks"` token2wav schedule, the voice's noise (the original schedule reseeds 42
    itself). Sources already given are kept; `seed=None` adds none."""
    stream_kwargs = dict(stream_kwargs)
    if seed is not None:
        stream_kwargs.setdefault("generator", torch.Generator(device=model.device).manual_seed(seed))
        if stream_kwargs.get("token2wav_mode", "blocks") == "blocks":
            stream_kwargs.setdefault("token2wav_generator", torch.Generator().manual_seed(seed))
    return stream_kwargs


def stream_reply(
    speech_model: SpeechModel,
    audio: Any,
    seed: int | None = None,
    system_prompt: str | None = None,
    history: Sequence[tuple[Any, str]] = (),
    **stream_kwargs,
) -> Iterator:
    """The events of `model.stream` for one spoken question (`seed` makes sampling and the voice reproducible);
    `history` holds the earlier `(question, reply_text)` turns of a conversation (see [`conversation_inputs`]);
    `stream_kwargs` go to `model.stream` (e.g. `max_new_tokens`, `speech_max_new_tokens`)."""
    model, processor = speech_model.model, speech_model.processor
    inputs = conversation_inputs(processor, audio, history, system_prompt)
    return model.stream(**inputs, processor=processor, **seeded_stream_kwargs(model, seed, stream_kwargs))
