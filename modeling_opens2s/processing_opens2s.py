"""OpenS2SProcessor: Whisper features + LLM tokenizer + speech-unit tokenizer + the OpenS2S chat template."""

import numpy as np
import torch
from transformers.processing_utils import ProcessorMixin

from .audio_lengths_opens2s import audio_embedding_lengths
from .audio_opens2s import load_audio
from .prompt_format_opens2s import AUDIO_TOKEN, CHAT_TEMPLATE, UNIT_TOKEN


__all__ = ["OpenS2SProcessor", "find_unit_tokens"]


def find_unit_tokens(unit_tokenizer) -> tuple[int, int]:
    """Id of `<|audio_0|>` and the number of units in a speech decoder tokenizer; the unit ids must be contiguous."""
    vocab = unit_tokenizer.get_vocab()
    units = {int(m.group(1)): token_id for token, token_id in vocab.items() if (m := UNIT_TOKEN.fullmatch(token))}
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
        chat_template (`str`, *optional*): defaults to [`~prompt_format_opens2s.CHAT_TEMPLATE`], the format training
            uses too.
        audio_token (`str`, *optional*, defaults to `"<|im_audio|>"`): the audio placeholder.

    Audio in chat content (`{"type": "audio", "audio" | "path" | "url": ...}`) and in `audio=` is read by
    [`~audio_opens2s.load_audio`] (paths, bytes, arrays, `datasets.Audio` values): checked, downmixed and resampled
    to 16 kHz. An array in chat content is at the rate of its item's `"sampling_rate"` key, else of the
    `sampling_rate` given to `apply_chat_template`, else 16 kHz (transformers' convention for chat content).
        num_adapter_convs (`int`, *optional*, defaults to 2): stride-2 convolutions of the model's adapter.
    """

    def __init__(
        self,
        feature_extractor=None,
        tokenizer=None,
        unit_tokenizer=None,
        chat_template: str | None = None,
        audio_token: str = AUDIO_TOKEN,
        num_adapter_convs: int = 2,
    ):
        self.audio_token = audio_token
        self.audio_token_id = tokenizer.convert_tokens_to_ids(audio_token)
        self.num_adapter_convs = num_adapter_convs
        super().__init__(feature_extractor, tokenizer, unit_tokenizer, chat_template=chat_template or CHAT_TEMPLATE)
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

    def apply_chat_template(self, conversation, *args, **kwargs):
        """[`ProcessorMixin.apply_chat_template`], with every audio item of the conversation(s) read by
        [`~audio_opens2s.load_audio`] first (transformers' own loader is never used)."""
        if not kwargs.get("tokenize", False):
            return super().apply_chat_template(conversation, *args, **kwargs)
        processor_kwargs = dict(kwargs.pop("processor_kwargs", None) or {})
        rate = kwargs.pop("sampling_rate", None) or processor_kwargs.pop("sampling_rate", None)
        target = self.feature_extractor.sampling_rate
        batched = bool(conversation) and isinstance(conversation[0], (list, tuple))
        conversations = conversation if batched else [conversation]
        conversations = [self._load_audio_items(messages, rate or target) for messages in conversations]
        processor_kwargs["sampling_rate"] = target
        return super().apply_chat_template(
            conversations if batched else conversations[0], *args, processor_kwargs=processor_kwargs, **kwargs
        )

    def _load_audio_items(self, messages: list[dict], sampling_rate: int) -> list[dict]:
        """A copy of `messages` whose audio items hold checked 16 kHz waveforms."""
        extractor, loaded = self.feature_extractor, []
        for message in messages:
            content = message.get("content")
            if isinstance(content, (list, tuple)):
                items = []
                for item in content:
                    source = next((item[key] for key in ("audio", "path", "url") if key in item), None)
                    if item.get("type") == "audio" and source is not None:
                        waveform = load_audio(
                            source,
                            item.get("sampling_rate", sampling_rate),
                            target_sampling_rate=extractor.sampling_rate,
                            max_seconds=extractor.max_audio_seconds,
                            min_samples=extractor.hop_length,
                        )
                        item = {"type": "audio", "audio": waveform}
                    items.append(item)
                message = {**message, "content": items}
            loaded.append(message)
        return loaded

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

    def post_process_multimodal_output(
        self, generated_outputs, skip_special_tokens: bool = True, generation_mode: str | None = None, **kwargs
    ) -> list:
        """Text or audio answers from `generate`'s output (what `pipeline("any-to-any")` calls).

        Args:
            generated_outputs ([`OpenS2SGenerateOutput`] or `torch.LongTensor` of shape `(batch_size, length)`):
                `generate`'s output: its `sequences` are decoded for text, its `audio_values` cut to `audio_lengths`
                for audio. Ids alone (`generate(return_speech=False)`) give text.
            skip_special_tokens (`bool`, *optional*, defaults to `True`): leave special tokens out of the text.
            generation_mode (`str`, *optional*): `"text"` (default) or `"audio"`.
            kwargs: passed to the tokenizer's `batch_decode`.

        Returns:
            `list[str]` for text, `list[np.ndarray]` of shape `(num_samples,)` (float32, at the token2wav decoder's
            rate) for audio: one per row.
        """
        if generation_mode in (None, "text"):
            sequences = getattr(generated_outputs, "sequences", generated_outputs)
            if isinstance(sequences, torch.Tensor) and sequences.dim() == 1:
                sequences = sequences[None]
            return self.tokenizer.batch_decode(sequences, skip_special_tokens=skip_special_tokens, **kwargs)
        if generation_mode != "audio":
            raise ValueError(f"generation_mode must be 'text' or 'audio', got {generation_mode!r}")
        audio = getattr(generated_outputs, "audio_values", None)
        if audio is None:
            raise ValueError(
                "the output holds no audio: generate with generation_mode='audio' (or a token2wav decoder attached)"
            )
        lengths = generated_outputs.audio_lengths.tolist()
        return [row[:length].float().cpu().numpy() for row, length in zip(audio, lengths, strict=True)]

    @property
    def unused_input_names(self) -> list[str]:
        return ["num_audio_tokens"]

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "input_features", "feature_attention_mask"]


OpenS2SProcessor.register_for_auto_class()
