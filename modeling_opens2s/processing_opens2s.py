"""OpenS2SProcessor: Whisper features + LLM tokenizer + speech-unit tokenizer + the OpenS2S chat template."""

import re

import numpy as np
import torch
from transformers.processing_utils import ProcessorMixin

from .audio_lengths_opens2s import audio_embedding_lengths


__all__ = ["OpenS2SProcessor", "DEFAULT_CHAT_TEMPLATE", "find_unit_tokens"]

# The prompt of the original OpenS2S worker: a default system turn, audio as
# <|im_audio_start|><|im_audio|><|im_audio_end|>, Qwen3's empty think block, and <|im_tts_start|> when the answer
# should also be spoken (`speech_output=False` leaves it out).
DEFAULT_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'audio' -%}{{- '<|im_audio_start|><|im_audio|><|im_audio_end|>' -}}"
    "{%- elif item['type'] == 'text' -%}{{- item['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' -}}"
    "{%- if speech_output is not defined or speech_output -%}{{- '<|im_tts_start|>' -}}{%- endif -%}"
    "{%- endif -%}"
)

_UNIT_TOKEN = re.compile(r"^<\|audio_(\d+)\|>$")


def find_unit_tokens(unit_tokenizer) -> tuple[int, int]:
    """Id of `<|audio_0|>` and the number of units in a speech decoder tokenizer; the unit ids must be contiguous."""
    vocab = unit_tokenizer.get_vocab()
    units = {int(m.group(1)): token_id for token, token_id in vocab.items() if (m := _UNIT_TOKEN.match(token))}
    if not units:
        raise ValueError("the unit tokenizer has no <|audio_k|> tokens")
    offset = units.get(0)
    if offset is None or any(units.get(k) != offset + k for k in range(len(units))):
        raise ValueError("the unit tokenizer's <|audio_k|> tokens must have contiguous ids starting at <|audio_0|>")
    return offset, len(units)


class OpenS2SProcessor(ProcessorMixin):
    r"""
    Builds OpenS2S model inputs: log-mel features for the audios, LLM ids in which every audio placeholder is
    repeated once per adapter frame, and the mapping between speech units and the speech decoder's
    `<|audio_k|>` tokens.

    Args:
        feature_extractor ([`OpenS2SFeatureExtractor`]): log-mel features in whole 30 s windows.
        tokenizer ([`PreTrainedTokenizerBase`]): the LLM tokenizer (Qwen3 + OpenS2S markers + `<|im_audio|>`).
        unit_tokenizer ([`PreTrainedTokenizerBase`]): the speech decoder tokenizer holding `<|audio_k|>` tokens.
        chat_template (`str`, *optional*): defaults to the original worker's prompt format.
        audio_token (`str`, *optional*, defaults to `"<|im_audio|>"`): the audio placeholder.
        num_adapter_convs (`int`, *optional*, defaults to 2): stride-2 convolutions of the model's adapter.
    """

    def __init__(
        self,
        feature_extractor=None,
        tokenizer=None,
        unit_tokenizer=None,
        chat_template: str | None = None,
        audio_token: str = "<|im_audio|>",
        num_adapter_convs: int = 2,
    ):
        self.audio_token = audio_token
        self.audio_token_id = tokenizer.convert_tokens_to_ids(audio_token)
        self.num_adapter_convs = num_adapter_convs
        super().__init__(
            feature_extractor, tokenizer, unit_tokenizer, chat_template=chat_template or DEFAULT_CHAT_TEMPLATE
        )
        self._unit_offset, self._num_units = find_unit_tokens(unit_tokenizer)

    @property
    def num_units(self) -> int:
        """Size of the speech unit codebook (16,384 for GLM-4-Voice units)."""
        return self._num_units

    @property
    def unit_token_offset(self) -> int:
        """Speech decoder id of `<|audio_0|>`; unit `k` has id `unit_token_offset + k`."""
        return self._unit_offset

    def units_to_ids(self, units) -> list[int]:
        """Unit indices (0..K-1) -> speech decoder token ids."""
        units = [int(unit) for unit in units]
        if any(unit < 0 or unit >= self._num_units for unit in units):
            raise ValueError(f"speech units must be in [0, {self._num_units}), got {units}")
        return [self._unit_offset + unit for unit in units]

    def ids_to_units(self, token_ids) -> list[int]:
        """Speech decoder token ids -> unit indices, dropping ids that are not unit tokens (EOS, text BPE)."""
        if isinstance(token_ids, torch.Tensor):
            token_ids = token_ids.tolist()
        return [t - self._unit_offset for t in token_ids if 0 <= t - self._unit_offset < self._num_units]

    def _process_audio(self, audio, **kwargs):
        kwargs.pop("return_tensors", None)
        audio_inputs = self.feature_extractor(audio, sampling_rate=kwargs.get("sampling_rate"))
        mask = audio_inputs.pop("attention_mask")
        audio_inputs["feature_attention_mask"] = mask
        lengths = audio_embedding_lengths(torch.as_tensor(np.asarray(mask).sum(-1)), self.num_adapter_convs)
        audio_inputs["num_audio_tokens"] = lengths.tolist()
        replacements = [self.replace_audio_token(audio_inputs, index) for index in range(len(lengths))]
        return audio_inputs, replacements

    def replace_audio_token(self, audio_inputs: dict, audio_idx: int, **kwargs) -> str:
        return self.audio_token * audio_inputs["num_audio_tokens"][audio_idx]

    @property
    def unused_input_names(self) -> list[str]:
        return ["num_audio_tokens"]

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "input_features", "feature_attention_mask"]


OpenS2SProcessor.register_for_auto_class()
