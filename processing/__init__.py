"""Inputs and outputs around the model: audio in, chat inputs, voices, speech units for datasets, the chat-completions
client.

Every name loads on first use: `import opens2s.processing` imports neither torch nor transformers' models. The
processor itself lives with the remote-code model files (`opens2s.modeling_opens2s.processing_opens2s`).
"""

from typing import TYPE_CHECKING

from transformers.utils import _LazyModule


_import_structure = {
    "audio_io": [
        "AudioError",
        "MAX_AUDIO_SECONDS",
        "MIN_SAMPLING_RATE",
        "TARGET_SAMPLING_RATE",
        "check_audio",
        "load_audio",
        "resample",
    ],
    "chat": [
        "DTYPES",
        "EXAMPLE_WAV",
        "SpeechModel",
        "chat_inputs",
        "conversation_inputs",
        "load_speech_model",
        "seeded_stream_kwargs",
        "stream_reply",
    ],
    "chat_completions": ["ChatCompletionsClient", "ChatCompletionsError"],
    "prompt_format": [
        "CHAT_TEMPLATE",
        "DEFAULT_SYSTEM_PROMPT",
        "IGNORE_INDEX",
        "PROMPT_LAYOUTS",
        "PromptPiece",
        "parse_unit_string",
        "training_pieces",
        "unit_string",
    ],
    "speech_units": ["add_speech_units", "encode_files"],
    "voices": ["SPEAKERS_SUBFOLDER", "find_speakers", "load_voice"],
}

if TYPE_CHECKING:
    from opens2s.processing.audio_io import (
        MAX_AUDIO_SECONDS,
        MIN_SAMPLING_RATE,
        TARGET_SAMPLING_RATE,
        AudioError,
        check_audio,
        load_audio,
        resample,
    )
    from opens2s.processing.chat import (
        DTYPES,
        EXAMPLE_WAV,
        SpeechModel,
        chat_inputs,
        conversation_inputs,
        load_speech_model,
        seeded_stream_kwargs,
        stream_reply,
    )
    from opens2s.processing.chat_completions import ChatCompletionsClient, ChatCompletionsError
    from opens2s.processing.prompt_format import (
        CHAT_TEMPLATE,
        DEFAULT_SYSTEM_PROMPT,
        IGNORE_INDEX,
        PROMPT_LAYOUTS,
        PromptPiece,
        parse_unit_string,
        training_pieces,
        unit_string,
    )
    from opens2s.processing.speech_units import add_speech_units, encode_files
    from opens2s.processing.voices import SPEAKERS_SUBFOLDER, find_speakers, load_voice
else:
    import sys

    sys.modules[__name__] = _LazyModule(__name__, __file__, _import_structure, module_spec=__spec__)
