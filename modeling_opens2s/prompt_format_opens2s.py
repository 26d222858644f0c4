"""The OpenS2S prompt format in one place: the chat template the processor renders, the layout training rows are
tokenised in, the default system prompt, `IGNORE_INDEX` and speech-unit strings.

A conversation is laid out as Qwen3's chat format plus the OpenS2S markers:

    <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n
    <|im_start|>user\\n<|im_audio_start|><|im_audio|><|im_audio_end|><|im_end|>\\n
    <|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n<|im_tts_start|>answer<|im_tts_end|><|im_end|>\\n

As in Qwen3's own template with `enable_thinking=False`, the assistant turns after the last user turn (the answer
being generated or trained) start with an empty think block, and earlier assistant turns are plain: this is the
prompt the original worker built (`docs/original_behaviour.md#ob-llm-6`). A spoken answer sits between
`<|im_tts_start|>` and `<|im_tts_end|>` (the prompt of a spoken answer ends in `<|im_tts_start|>`).
`<|im_audio|>` is repeated once per adapter frame of its audio ([`~audio_lengths_opens2s.audio_embedding_lengths`]).

Two training layouts ([`PROMPT_LAYOUTS`]):
- `"inference"` (the default): exactly what the chat template renders, tokenised as the processor tokenises it, so a
  model is trained on the prompts it is asked with.
- `"original"`: the original OpenS2S `process_dataset` layout, kept to reproduce the original's training: every
  assistant turn has the think block `<think></think>` (no newlines) and every piece (`<|im_start|>`, the role,
  `\\n`, ...) is tokenised on its own. The original thus trained on other ids than its worker prompted with
  (`docs/original_behaviour.md#ob-llm-6`).
"""

import re
from collections.abc import Iterable
from dataclasses import dataclass


__all__ = [
    "AUDIO_END",
    "AUDIO_START",
    "AUDIO_TOKEN",
    "CHAT_TEMPLATE",
    "DEFAULT_SYSTEM_PROMPT",
    "IGNORE_INDEX",
    "PROMPT_LAYOUTS",
    "TTS_END",
    "TTS_START",
    "UNIT_TOKEN",
    "PromptPiece",
    "parse_unit_string",
    "training_pieces",
    "unit_string",
]

IGNORE_INDEX = -100
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
AUDIO_START, AUDIO_TOKEN, AUDIO_END = "<|im_audio_start|>", "<|im_audio|>", "<|im_audio_end|>"
TTS_START, TTS_END = "<|im_tts_start|>", "<|im_tts_end|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>\n"
# The empty think block after every assistant header: Qwen3's with `enable_thinking=False` (what the original worker
# prompted with), or the original training's.
_THINK = {"inference": "<think>\n\n</think>\n\n", "original": "<think></think>"}
PROMPT_LAYOUTS = tuple(_THINK)

# One speech unit as a unit-tokenizer token: `<|audio_k|>`, k in [0, num_units).
UNIT_TOKEN = re.compile(r"<\|audio_(\d+)\|>")


def _jinja(text: str) -> str:
    """A Python string as a Jinja string literal."""
    return "'" + text.replace("\\", "\\\\").replace("\n", "\\n").replace("'", "\\'") + "'"


# The processor's template: a default system turn unless the conversation has one; audio items as the three audio
# markers; text items as they are; `speech_output=False` leaves `<|im_tts_start|>` out of the generation prompt.
CHAT_TEMPLATE = (
    "{%- set ns = namespace(last_user=-1) -%}"
    "{%- for message in messages -%}{%- if message['role'] == 'user' -%}{%- set ns.last_user = loop.index0 -%}"
    "{%- endif -%}{%- endfor -%}"
    "{%- if messages[0]['role'] != 'system' -%}"
    "{{- " + _jinja(f"{IM_START}system\n{DEFAULT_SYSTEM_PROMPT}{IM_END}") + " -}}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{{- " + _jinja(IM_START) + " + message['role'] + '\\n' -}}"
    "{%- if message['role'] == 'assistant' and loop.index0 > ns.last_user -%}"
    "{{- " + _jinja(_THINK["inference"]) + " -}}{%- endif -%}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'audio' -%}{{- " + _jinja(AUDIO_START + AUDIO_TOKEN + AUDIO_END) + " -}}"
    "{%- elif item['type'] == 'text' -%}{{- item['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- " + _jinja(IM_END) + " -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- " + _jinja(f"{IM_START}assistant\n{_THINK['inference']}") + " -}}"
    "{%- if speech_output is not defined or speech_output -%}{{- " + _jinja(TTS_START) + " -}}{%- endif -%}"
    "{%- endif -%}"
)


@dataclass(frozen=True)
class PromptPiece:
    """A piece of a training row: `text` is tokenised on its own, or (layout `"inference"`) joined with the pieces
    next to it that have the same flags. `labelled`: the ids are targets; `speech`: inside a spoken answer."""

    text: str
    labelled: bool = False
    speech: bool = False


def training_pieces(
    messages: list[dict],
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
    layout: str = "inference",
    use_speech_units: bool = True,
) -> list[PromptPiece]:
    r"""
    The pieces of one training conversation in the given layout.

    Args:
        messages (`list[dict]`): `{"role", "content": [{"text", "audio", "speech_units"}, ...]}` (the original jsonl
            items); per item the first non-empty of `audio`, `speech_units` (with `use_speech_units`), `text` wins.
        system_prompt (`str`, *optional*): the system turn; `None` leaves it out.
        layout (`str`, *optional*, defaults to `"inference"`): one of [`PROMPT_LAYOUTS`] (see the module docstring).
        use_speech_units (`bool`, *optional*, defaults to `True`): `False` turns spoken answers into plain answers.

    Returns:
        `list[PromptPiece]`: audio appears as `<|im_audio_start|>`, one `<|im_audio|>`, `<|im_audio_end|>`; assistant
        answers (their markers and the closing `<|im_end|>\n` included) are labelled; spoken answers are
        `<|im_tts_start|>text<|im_tts_end|>`, one piece marked `speech`.
    """
    if layout not in _THINK:
        raise ValueError(f"unknown prompt layout {layout!r}: expected one of {PROMPT_LAYOUTS}")
    split = layout == "original"  # the original encodes every piece on its own

    def turn_start(role: str) -> list[PromptPiece]:
        pieces = [IM_START, role, "\n"] if split else [f"{IM_START}{role}\n"]
        return [PromptPiece(piece) for piece in pieces]

    last_user = max((index for index, message in enumerate(messages) if message["role"] == "user"), default=-1)
    pieces = []
    if system_prompt is not None:
        pieces += turn_start("system") + [PromptPiece(system_prompt), PromptPiece(IM_END)]
    for index, message in enumerate(messages):
        assistant = message["role"] == "assistant"
        pieces += turn_start(message["role"])
        if assistant and (split or index > last_user):  # see the module docstring: history turns are plain
            pieces.append(PromptPiece(_THINK[layout]))
        for item in message["content"]:
            if item.get("audio") is not None and len(item["audio"]) > 0:
                pieces += [PromptPiece(AUDIO_START), PromptPiece(AUDIO_TOKEN), PromptPiece(AUDIO_END)]
            elif use_speech_units and item.get("speech_units") is not None and len(item["speech_units"]) > 0:
                pieces.append(PromptPiece(f"{TTS_START}{item['text']}{TTS_END}", labelled=True, speech=True))
            elif item.get("text"):
                pieces.append(PromptPiece(item["text"], labelled=assistant))
        pieces.append(PromptPiece(IM_END, labelled=assistant))
    return pieces if split else _join(pieces)


def _join(pieces: list[PromptPiece]) -> list[PromptPiece]:
    """Join neighbours with the same flags, so that they are tokenised as the chat template's string is."""
    joined = []
    for piece in pieces:
        if joined and (joined[-1].labelled, joined[-1].speech) == (piece.labelled, piece.speech) and not piece.speech:
            joined[-1] = PromptPiece(joined[-1].text + piece.text, piece.labelled, piece.speech)
        else:
            joined.append(piece)
    return joined


def unit_string(units: Iterable[int]) -> str:
    """Speech units as the unit tokenizer's tokens: `[3, 7]` -> `"<|audio_3|><|audio_7|>"`."""
    return "".join(f"<|audio_{int(unit)}|>" for unit in units)


def parse_unit_string(units: str | Iterable[int]) -> list[int]:
    """Unit indices of a unit string (`"<|audio_3|><|audio_7|>"`, whitespace between tokens allowed) or of a list of
    indices. Raises `ValueError` when a string holds anything but unit tokens."""
    if not isinstance(units, str):
        return [int(unit) for unit in units]
    matches = list(UNIT_TOKEN.finditer(units))
    if UNIT_TOKEN.sub("", units).strip():
        raise ValueError("speech units are not a string of <|audio_k|> tokens")
    return [int(match.group(1)) for match in matches]
