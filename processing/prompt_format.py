"""The OpenS2S prompt format, for code outside the model folder: re-exported from the remote-code module
`opens2s.modeling_opens2s.prompt_format_opens2s` (which the processor's chat template is built from)."""

from opens2s.modeling_opens2s.prompt_format_opens2s import (
    CHAT_TEMPLATE,
    DEFAULT_SYSTEM_PROMPT,
    IGNORE_INDEX,
    PROMPT_LAYOUTS,
    PromptPiece,
    parse_unit_string,
    training_pieces,
    unit_string,
)


__all__ = [
    "CHAT_TEMPLATE",
    "DEFAULT_SYSTEM_PROMPT",
    "IGNORE_INDEX",
    "PROMPT_LAYOUTS",
    "PromptPiece",
    "parse_unit_string",
    "training_pieces",
    "unit_string",
]
