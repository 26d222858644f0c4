"""OpenS2S: an empathetic speech-to-speech LM (arXiv 2507.05177), as a transformers model.

wav -> Qwen2-Audio encoder (25 Hz) -> adapter (stride-2 convs + GLU, FFN residual, LayerNorm; 6.25 Hz) -> spliced
into the LLM input at the audio placeholders -> Qwen3 LLM -> text; the LLM's last hidden states, projected and
normalised, condition a second Qwen3 LM (the speech decoder) that writes speech units in an interleaved M:N layout.
"""

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import WeightRenaming
from transformers.modeling_outputs import BaseModelOutputWithPast, BaseModelOutputWithPooling
from transformers.utils import ModelOutput, can_return_tuple, logging
from transformers.utils.deprecation import deprecate_kwarg

from .audio_lengths_opens2s import adapter_output_lengths, encoder_output_lengths
from .configuration_opens2s import OpenS2SConfig
from .engine_opens2s import OpenS2SEngine, split_batch
from .engine_opens2s import stream as stream_events
from .interleave_opens2s import IGNORE_INDEX, build_interleaved_rows, find_speech_spans
from .saving_opens2s import TOKEN2WAV_SUBFOLDER, publish_folder, save_speech_parts, staging_folder
from .streaming_opens2s import load_generation_config_file


if TYPE_CHECKING:
    from .modeling_token2wav import OpenS2SToken2Wav

__all__ = [
    "CHECKPOINT_KEY_PREFIXES",
    "checkpoint_key",
    "TOKEN2WAV_SUBFOLDER",
    "OpenS2SAudioAdapter",
    "OpenS2SAudioOutput",
    "OpenS2SForConditionalGeneration",
    "OpenS2SGenerateOutput",
    "OpenS2SModel",
    "OpenS2SOutput",
    "OpenS2SPreTrainedModel",
]

logger = logging.get_logger(__name__)
GENERATION_CONFIG_NAME = "generation_config.json"
# The positional arguments of `adjust_generation_fn` after the model id, in transformers' order.
_ADJUST_GENERATION_ARGS = (
    "cache_dir",
    "force_download",
    "proxies",
    "local_files_only",
    "token",
    "revision",
    "subfolder",
)
# Checkpoint key prefix -> module prefix. Checkpoints keep the names of the modules before `OpenS2SModel` existed (the
# LLM as one causal LM `language_model`, the audio parts at the top); transformers renames them on load and back on
# save (see `register_checkpoint_conversion_mapping` at the end of this file), so folders of every version load.
CHECKPOINT_KEY_PREFIXES = (
    ("language_model.lm_head.", "lm_head."),
    ("language_model.model.", "model.language_model."),
    ("audio_encoder.", "model.audio_encoder."),
    ("audio_adapter.", "model.audio_adapter."),
)


def _replace_prefix(name: str, pairs) -> str:
    """`name` with the first matching `(prefix, replacement)` of `pairs` applied; unchanged when none matches."""
    for prefix, replacement in pairs:
        if name.startswith(prefix):
            return replacement + name[len(prefix) :]
    return name


def checkpoint_key(name: str) -> str:
    """The checkpoint key of state-dict entry `name` of the generation model (see `CHECKPOINT_KEY_PREFIXES`)."""
    return _replace_prefix(name, [(new, old) for old, new in CHECKPOINT_KEY_PREFIXES])


def module_key(key: str) -> str:
    """The state-dict name of checkpoint key `key` (the inverse of `checkpoint_key`; module names pass unchanged)."""
    return _replace_prefix(key, CHECKPOINT_KEY_PREFIXES)


@dataclass
class OpenS2SOutput(ModelOutput):
    r"""
    Output of [`OpenS2SForConditionalGeneration.forward`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*):
            `text_loss_weight * text_loss + speech_loss_weight * speech_loss` (only the text loss without units).
        text_loss (`torch.FloatTensor` of shape `()`, *optional*): LLM next-token cross-entropy.
        speech_loss (`torch.FloatTensor` of shape `()`, *optional*): speech decoder next-unit cross-entropy.
        logits (`torch.FloatTensor` of shape `(batch_size, sequence_length, text_vocab_size)`): LLM logits.
        speech_logits (`torch.FloatTensor` of shape `(num_speech_turns, speech_length, speech_vocab)`, *optional*):
            Speech decoder logits, one row per assistant speech turn in the interleaved layout, speaker slot first.
        speech_attention_mask (`torch.LongTensor` of shape `(num_speech_turns, speech_length)`, *optional*):
            1 on the filled positions of `speech_logits` rows.
        speech_labels (`torch.LongTensor` of shape `(num_speech_turns, speech_length)`, *optional*):
            Unshifted unit targets of the speech decoder (-100 on speaker slot, text rows and padding).
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, sequence_length, text_hidden_size)`):
            LLM hidden states after its final norm (what the speech decoder is conditioned on).
        cache (`Cache`, *optional*): the LLM's key/value cache.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned with `output_hidden_states=True`):
            The LLM's input embeddings and the output of each of its layers, each `(batch_size, sequence_length,
            text_hidden_size)`.
        attentions (`tuple(torch.FloatTensor)`, *optional*, returned with `output_attentions=True`):
            The LLM's attention weights per layer, each `(batch_size, num_heads, sequence_length, key_length)`.
    """

    loss: torch.FloatTensor | None = None
    text_loss: torch.FloatTensor | None = None
    speech_loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    speech_logits: torch.FloatTensor | None = None
    speech_attention_mask: torch.LongTensor | None = None
    speech_labels: torch.LongTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None
    cache: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class OpenS2SAudioOutput(BaseModelOutputWithPooling):
    r"""
    Output of [`OpenS2SForConditionalGeneration.get_audio_features`].

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(num_audios, encoder_frames, encoder_dim)`):
            Audio encoder output (25 frames/s), the 30 s windows of each audio concatenated.
        pooler_output (`torch.FloatTensor` of shape `(num_audios, frames, text_hidden_size)`):
            The adapter's output (6.25 frames/s): what is written over the audio placeholders.
        audio_lengths (`torch.LongTensor` of shape `(num_audios,)`): valid frames of `pooler_output` per audio.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned with `output_hidden_states=True`):
            The encoder's per-layer states, each `(num_windows, 1500, encoder_dim)` over the encoded 30 s windows.
        attentions (`tuple(torch.FloatTensor)`, *optional*, returned with `output_attentions=True`):
            The encoder's attention weights per layer over the encoded windows.
    """

    audio_lengths: torch.LongTensor | None = None


def causal_lm_loss(
    logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch: torch.Tensor | int | None = None
) -> torch.Tensor:
    """Next-token cross-entropy in float32: position `t` predicts `labels[t + 1]`; -100 ignored.

    The mean over the targets, or, with `num_items_in_batch` (the targets of every micro-batch of one optimiser step,
    as `Trainer` counts them), the sum divided by it, so gradient accumulation gives the full-batch loss.
    """
    shift_logits = logits[:, :-1].float().reshape(-1, logits.shape[-1])
    shift_labels = labels[:, 1:].reshape(-1).to(shift_logits.device)
    if num_items_in_batch is None:
        return nn.functional.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX)
    total = nn.functional.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="sum")
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


def count_targets(labels: torch.Tensor) -> torch.Tensor:
    """Number of next-token targets of `labels` (what `causal_lm_loss` averages over)."""
    return labels[:, 1:].ne(IGNORE_INDEX).sum()


def left_padded(
    input_ids: torch.LongTensor | None, attention_mask: torch.Tensor | None
) -> tuple[torch.LongTensor | None, torch.Tensor | None]:
    """Move right padding to the left (`(batch_size, sequence_length)` each), as decoder-only generation needs: a row
    padded on the right would continue from its padding. Left-padded or unpadded inputs come back unchanged."""
    if input_ids is None or attention_mask is None or input_ids.dim() != 2:
        return input_ids, attention_mask
    if not bool((attention_mask[:, 1:] < attention_mask[:, :-1]).any()):  # no token is followed by padding
        return input_ids, attention_mask
    # A stable sort on the mask puts every row's padding (0) first and keeps the order of its tokens (1).
    order = torch.sort(attention_mask.long(), dim=-1, stable=True).indices
    return input_ids.gather(-1, order), attention_mask.gather(-1, order)


class OpenS2SAudioAdapter(nn.Module):
    """Encoder frames -> LLM embeddings: stride-2 convolutions each followed by a GLU over channels, then
    `x + fc2(gelu(fc1(x)))` and LayerNorm (original `Subsampler`; BLSP-Emo, arXiv 2406.03872)."""

    def __init__(self, config: OpenS2SConfig):
        super().__init__()
        encoder_dim = config.audio_config.d_model
        llm_dim = config.text_config.hidden_size
        kernel_sizes = config.adapter_conv_kernel_sizes
        # GLU halves the channels: inner convs output 2*encoder_dim (-> encoder_dim), the last 2*llm_dim (-> llm_dim).
        self.conv_layers = nn.ModuleList(
            nn.Conv1d(
                encoder_dim,
                2 * encoder_dim if index < len(kernel_sizes) - 1 else 2 * llm_dim,
                kernel_size,
                stride=2,
                padding=kernel_size // 2,
            )
            for index, kernel_size in enumerate(kernel_sizes)
        )
        self.fc1 = nn.Linear(llm_dim, config.adapter_inner_dim, bias=False)
        self.fc2 = nn.Linear(config.adapter_inner_dim, llm_dim, bias=False)
        self.activation = nn.GELU()
        self.ln = nn.LayerNorm(llm_dim, eps=1e-5)

    def forward(
        self, encoder_states: torch.Tensor, encoder_lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`(num_audios, frames, encoder_dim)` -> `(num_audios, frames / 2**num_convs, llm_dim)` and valid lengths."""
        hidden = encoder_states.transpose(1, 2)
        for conv in self.conv_layers:
            hidden = nn.functional.glu(conv(hidden), dim=1)
        hidden = hidden.transpose(1, 2)
        hidden = hidden + self.fc2(self.activation(self.fc1(hidden)))
        return self.ln(hidden), adapter_output_lengths(encoder_lengths, len(self.conv_layers))


@dataclass
class OpenS2SGenerateOutput(ModelOutput):
    r"""
    Output of [`OpenS2SForConditionalGeneration.generate`] (with `return_speech=True`).

    sequences (`torch.LongTensor` of shape `(batch_size, prompt_length + num_text_tokens)`):
        The prompts as given followed by the generated text ids (a text EOS included, as `GenerationMixin.generate`);
        a shorter answer is padded on the right with the pad token id (else the first EOS id).
    unit_sequences (`torch.LongTensor` of shape `(batch_size, num_units)`):
        The speech units `0..K-1` of each answer (speech EOS and non-unit decoder ids left out), padded with -1.
    unit_lengths (`torch.LongTensor` of shape `(batch_size,)`): units per answer.
    audio_values (`torch.FloatTensor` of shape `(batch_size, num_samples)`, *optional*):
        The spoken answers at `sampling_rate`, zero-padded, when a token2wav decoder is attached or passed.
    audio_lengths (`torch.LongTensor` of shape `(batch_size,)`, *optional*): samples per answer.
    sampling_rate (`int`, *optional*):
        Sample rate of `audio_values` in Hz.
    stats (`StreamStats`, *optional*):
        Counts, stop reasons and timings of the answer, for a batch of one (else `None`; see `row_stats`).
    row_stats (`list[StreamStats]`): the same per answer.
    """

    sequences: torch.LongTensor | None = None
    unit_sequences: torch.LongTensor | None = None
    unit_lengths: torch.LongTensor | None = None
    audio_values: torch.FloatTensor | None = None
    audio_lengths: torch.LongTensor | None = None
    sampling_rate: int | None = None
    stats: object | None = None
    row_stats: list | None = None


def _pad_stack(rows: list[torch.Tensor], value) -> torch.Tensor:
    """`(len(rows), longest)` from 1-D tensors, right-padded with `value`."""
    width = max(row.shape[0] for row in rows)
    return torch.stack([torch.nn.functional.pad(row, (0, width - row.shape[0]), value=value) for row in rows])


class OpenS2SPreTrainedModel(PreTrainedModel):
    config: OpenS2SConfig
    config_class = OpenS2SConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    input_modalities = ("audio", "text")
    output_modalities = ("text", "audio")
    supports_gradient_checkpointing = True
    _no_split_modules = ["Qwen2AudioEncoderLayer", "Qwen3DecoderLayer"]
    _supports_flash_attn = True
    _supports_sdpa = True
    # The Qwen2-Audio encoder has no flex-attention path, so the composite claims none.
    _supports_flex_attn = False
    _can_compile_fullgraph = False
    # `forward` takes `num_items_in_batch` (see `causal_lm_loss`): `Trainer` passes it and does not rescale the loss.
    accepts_loss_kwargs = True

    def _init_weights(self, module: nn.Module):
        # Modules of the encoder and the two LMs use their own model's init (and initializer_range).
        owner = self._sub_model_of(module)
        if owner is not None:
            owner._init_weights(module)
            return
        std = getattr(self.config.text_config, "initializer_range", 0.02)
        if isinstance(module, (nn.Linear, nn.Conv1d)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        else:
            super()._init_weights(module)

    def _sub_model_of(self, module: nn.Module) -> PreTrainedModel | None:
        if getattr(self, "_sub_model_index", None) is None:
            sub_models = [
                m
                for m in self.modules()
                if isinstance(m, PreTrainedModel) and not isinstance(m, OpenS2SPreTrainedModel)
            ]
            self._sub_model_index = {id(inner): sub for sub in sub_models for inner in sub.modules()}
        return self._sub_model_index.get(id(module))


class OpenS2SModel(OpenS2SPreTrainedModel):
    """The OpenS2S backbone: the audio encoder, the adapter and the LLM's base model (`Qwen3Model`, no LM head).

    `forward` embeds the text with the audio frames written over the placeholders and returns the LLM's hidden states
    after its final norm. [`OpenS2SForConditionalGeneration`] holds it as `model` and adds the LM head and the speech
    decoder.
    """

    def __init__(self, config: OpenS2SConfig):
        super().__init__(config)
        self.audio_encoder = AutoModel.from_config(config.audio_config)
        self.audio_adapter = OpenS2SAudioAdapter(config)
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module):
        self.language_model.set_input_embeddings(value)

    @can_return_tuple
    def get_audio_features(
        self, input_features: torch.Tensor, feature_attention_mask: torch.Tensor, **kwargs
    ) -> OpenS2SAudioOutput:
        """Encode audios into LLM embeddings.

        Reproduces two behaviours of the original on purpose (parity with the released weights): every 30 s window
        is encoded *without* a mask (its zero padding is attended to), and the adapter runs over the encoder frames
        of all audios padded to the longest one, so a shorter audio's last frames see encoder outputs of padding.

        Args:
            input_features (`torch.FloatTensor` of shape `(num_audios, num_mel_bins, 3000 * k)`): log-mel features.
            feature_attention_mask (`torch.LongTensor` of shape `(num_audios, 3000 * k)`): 1 on valid mel frames.
            kwargs: `output_hidden_states`, `output_attentions` (of the encoder), `return_dict`.

        Returns:
            [`OpenS2SAudioOutput`]: the adapter output (`pooler_output`, `(num_audios, frames, llm_hidden)`), its valid
            frames per audio (`audio_lengths`) and the encoder output (`last_hidden_state`).
        """
        encoded = self._encode_audio_windows(input_features, feature_attention_mask, return_dict=True, **kwargs)
        audio_embeds, audio_lengths = self.audio_adapter(encoded.last_hidden_state, encoded.audio_lengths)
        return OpenS2SAudioOutput(
            last_hidden_state=encoded.last_hidden_state,
            pooler_output=audio_embeds,
            audio_lengths=audio_lengths,
            hidden_states=encoded.hidden_states,
            attentions=encoded.attentions,
        )

    @can_return_tuple
    def _encode_audio_windows(
        self, input_features: torch.Tensor, feature_attention_mask: torch.Tensor, **kwargs
    ) -> OpenS2SAudioOutput:
        """Encoder states of every audio `(num_audios, frames, encoder_dim)` (windows concatenated) in
        `last_hidden_state` and their valid frames in `audio_lengths`."""
        window = self.config.audio_config.max_source_positions * 2
        num_audios, num_mels, num_frames = input_features.shape
        if num_frames % window != 0:
            raise ValueError(f"input_features must hold whole 30 s windows of {window} frames, got {num_frames}")
        num_windows = num_frames // window
        feature_lengths = feature_attention_mask.sum(-1)
        windows_used = torch.div(feature_lengths + window - 1, window, rounding_mode="floor")
        if bool((windows_used == 0).any()):
            raise ValueError("every audio needs at least one valid feature frame; got an empty feature_attention_mask")
        windows = input_features.reshape(num_audios, num_mels, num_windows, window).permute(0, 2, 1, 3)
        window_masks = feature_attention_mask.reshape(num_audios, num_windows, window)
        used = torch.arange(num_windows, device=windows_used.device)[None, :] < windows_used[:, None]
        # Windows entirely made of padding (a short audio batched with a long one) are skipped, as in the original.
        encoder_dtype = self.audio_encoder.conv1.weight.dtype
        encoder_output = self.audio_encoder(windows[used].to(encoder_dtype), return_dict=True, **kwargs)
        encoded = encoder_output.last_hidden_state
        window_lengths = encoder_output_lengths(window_masks[used].sum(-1))
        frames_per_window = encoded.shape[1]
        states = encoded.new_zeros(num_audios, num_windows * frames_per_window, encoded.shape[-1])
        lengths = torch.zeros(num_audios, dtype=torch.long, device=encoded.device)
        offset = 0
        for audio, count in enumerate(windows_used.tolist()):
            states[audio, : count * frames_per_window] = encoded[offset : offset + count].flatten(0, 1)
            lengths[audio] = window_lengths[offset : offset + count].sum()
            offset += count
        return OpenS2SAudioOutput(
            last_hidden_state=states[:, : int(lengths.max())],
            audio_lengths=lengths,
            hidden_states=encoder_output.hidden_states,
            attentions=encoder_output.attentions,
        )

    def get_placeholder_mask(self, input_ids: torch.LongTensor, num_audio_frames: int) -> torch.Tensor:
        """Mask of the audio placeholder positions; raises if their number differs from the audio frames."""
        if self.config.audio_token_id is None:
            raise ValueError("config.audio_token_id is not set: the model cannot find where to put the audio")
        mask = input_ids == self.config.audio_token_id
        num_placeholders = int(mask.sum())
        if num_placeholders != num_audio_frames:
            raise ValueError(
                f"Audio features and audio placeholder tokens do not match: {num_placeholders} placeholder tokens in "
                f"input_ids but the audios give {num_audio_frames} frames. Build inputs with OpenS2SProcessor, which "
                "repeats the placeholder once per audio frame."
            )
        return mask

    def embed_inputs(
        self,
        input_ids: torch.LongTensor,
        input_features: torch.Tensor | None = None,
        feature_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Text embeddings of `input_ids` with the audio frames written over the placeholder positions."""
        embed_tokens = self.get_input_embeddings()
        placeholder = input_ids == self.config.audio_token_id if self.config.audio_token_id is not None else None
        if input_features is None:
            if placeholder is not None and bool(placeholder.any()):
                raise ValueError("input_ids hold audio placeholder tokens but no input_features were given")
            return embed_tokens(input_ids)
        if feature_attention_mask is None:
            raise ValueError("feature_attention_mask is required with input_features (it marks the valid frames)")
        audio = self.get_audio_features(input_features, feature_attention_mask, return_dict=True)
        audio_embeds, audio_lengths = audio.pooler_output, audio.audio_lengths
        valid = torch.arange(audio_embeds.shape[1], device=audio_lengths.device)[None, :] < audio_lengths[:, None]
        audio_frames = audio_embeds[valid]
        mask = self.get_placeholder_mask(input_ids, audio_frames.shape[0])
        inputs_embeds = embed_tokens(input_ids.masked_fill(mask, 0))
        return inputs_embeds.masked_scatter(mask.unsqueeze(-1), audio_frames.to(inputs_embeds.dtype))

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        input_features: torch.Tensor | None = None,
        feature_attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`):
                LLM token ids; each audio is a run of `config.audio_token_id` with one position per adapter frame.
            input_features (`torch.FloatTensor` of shape `(num_audios, num_mel_bins, 3000 * k)`, *optional*):
                Log-mel features of all audios of the batch, in the order their placeholders appear.
            feature_attention_mask (`torch.LongTensor` of shape `(num_audios, 3000 * k)`, *optional*):
                1 on valid mel frames (100 per second).
            cache (`Cache`, *optional*; `past_key_values` is the deprecated name):
                The LLM's cache of the positions before `input_ids`.
            kwargs: `output_hidden_states`, `output_attentions` and attention kwargs of the LLM; `return_dict`.

        Returns:
            The LLM base model's output: `last_hidden_state` `(batch_size, sequence_length, text_hidden_size)` after
            its final norm, its cache, and the hidden states / attentions when asked for.
        """
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("pass input_ids (or inputs_embeds)")
            inputs_embeds = self.embed_inputs(input_ids, input_features, feature_attention_mask)
        return self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            **kwargs,
        )


class OpenS2SForConditionalGeneration(OpenS2SPreTrainedModel, GenerationMixin):
    """OpenS2S: hears speech, answers in text, and writes speech units for the answer.

    `forward` computes the LLM logits and, when `speech_units` are given, the speech decoder's teacher-forced
    logits in the original interleaved layout; `generate` (from [`GenerationMixin`]) produces text;
    `stream` (see `streaming_opens2s.py`) produces text and speech together.
    """

    def __init__(self, config: OpenS2SConfig):
        super().__init__(config)
        self.model = OpenS2SModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        if getattr(config.text_config, "tie_word_embeddings", False):
            self._tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}
        self.speech_decoder = AutoModelForCausalLM.from_config(config.speech_decoder_config)
        decoder_dim = config.speech_decoder_config.hidden_size
        # LLM hidden state -> speech decoder input (original `llm2tts` + `llm_ln`).
        self.hidden_projection = nn.Linear(config.text_config.hidden_size, decoder_dim, bias=False)
        self.hidden_norm = nn.LayerNorm(decoder_dim, eps=1e-5)
        # Speaker embedding -> the decoder's first position (original `spk2tts` + `spk_ln`).
        self.speaker_projection = nn.Linear(config.speaker_embedding_dim, decoder_dim, bias=False)
        self.speaker_norm = nn.LayerNorm(decoder_dim, eps=1e-5)
        self.post_init()

    def adjust_generation_fn(
        self, generation_config, from_auto_class, from_pipeline, pretrained_model_name_or_path, *args, **kwargs
    ):
        """`GenerationMixin.adjust_generation_fn`, except that a `generation_config.json` which exists but cannot be
        read is an error (transformers would silently use the defaults: other ids, no `suppress_tokens`), and a
        missing one is a warning saying what is assumed."""
        if generation_config is None and pretrained_model_name_or_path is not None:
            hub_kwargs = dict(zip(_ADJUST_GENERATION_ARGS, args, strict=False)) | kwargs
            load_generation_config_file(
                pretrained_model_name_or_path,
                GENERATION_CONFIG_NAME,
                f"the LLM decodes greedily until its EOS {self.config.text_config.eos_token_id}, without "
                "suppress_tokens",
                **hub_kwargs,
            )
        super().adjust_generation_fn(
            generation_config, from_auto_class, from_pipeline, pretrained_model_name_or_path, *args, **kwargs
        )

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Module):
        self.lm_head = new_embeddings

    def get_decoder(self) -> nn.Module:
        return self.model.language_model

    def load_state_dict(self, state_dict, *args, **kwargs):
        """`nn.Module.load_state_dict`, also taking the checkpoint key names that `save_pretrained` writes (see
        `CHECKPOINT_KEY_PREFIXES`): `Trainer` resumes from a checkpoint folder through it."""
        return super().load_state_dict({module_key(key): value for key, value in state_dict.items()}, *args, **kwargs)

    # ---------------------------------------------------------------- the parts under their own names
    @property
    def audio_encoder(self) -> nn.Module:
        """The audio encoder (`model.audio_encoder`)."""
        return self.model.audio_encoder

    @property
    def audio_adapter(self) -> OpenS2SAudioAdapter:
        """The adapter (`model.audio_adapter`)."""
        return self.model.audio_adapter

    @property
    def language_model(self) -> PreTrainedModel:
        """The LLM as a causal LM (a `Qwen3ForCausalLM` whose `model` is `model.language_model` and whose `lm_head` is
        `lm_head`: the same modules, not copies), as the streaming engine drives it beside `speech_decoder`.

        It is built once (on the meta device, then given this model's modules) and kept outside this model's modules,
        so it adds nothing to the state dict; `lm_head` is re-read on every access (`set_output_embeddings`)."""
        view = self.__dict__.get("_language_model_view")
        if view is None:
            with torch.device("meta"):
                view = AutoModelForCausalLM.from_config(self.config.text_config)
            self.__dict__["_language_model_view"] = view
        view._modules["model"], view._modules["lm_head"] = self.model.language_model, self.lm_head
        return view

    def parts(self) -> dict[str, tuple[nn.Module, ...]]:
        """The trainable parts by name (what training stages freeze and unfreeze): `audio_encoder`, `audio_adapter`,
        `language_model` (the LLM and its head), `speech_decoder` and the four speech-head layers."""
        parts = {
            "audio_encoder": (self.model.audio_encoder,),
            "audio_adapter": (self.model.audio_adapter,),
            "language_model": (self.model.language_model, self.lm_head),
        }
        for name, child in self.named_children():
            if name not in ("model", "lm_head"):
                parts[name] = (child,)
        return parts

    # ---------------------------------------------------------------- audio (see `OpenS2SModel`)
    def get_audio_features(
        self, input_features: torch.Tensor, feature_attention_mask: torch.Tensor, **kwargs
    ) -> OpenS2SAudioOutput:
        """[`OpenS2SModel.get_audio_features`]."""
        return self.model.get_audio_features(input_features, feature_attention_mask, **kwargs)

    def get_placeholder_mask(self, input_ids: torch.LongTensor, num_audio_frames: int) -> torch.Tensor:
        """[`OpenS2SModel.get_placeholder_mask`]."""
        return self.model.get_placeholder_mask(input_ids, num_audio_frames)

    def embed_inputs(
        self,
        input_ids: torch.LongTensor,
        input_features: torch.Tensor | None = None,
        feature_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """[`OpenS2SModel.embed_inputs`]."""
        return self.model.embed_inputs(input_ids, input_features, feature_attention_mask)

    # ---------------------------------------------------------------- speech decoder
    def project_hidden_states(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """LLM hidden states -> speech decoder input rows (`hidden_norm(hidden_projection(h))`)."""
        return self.hidden_norm(self.hidden_projection(hidden_states))

    def speaker_slot(self, speaker_embeddings: torch.Tensor | None, num_rows: int = 1) -> torch.Tensor:
        """The speech decoder's first input row per sequence, `(num_rows, decoder_hidden)`; zeros when None."""
        weight = self.speaker_projection.weight
        if speaker_embeddings is None:
            speaker_embeddings = weight.new_zeros(num_rows, self.config.speaker_embedding_dim)
        speaker_embeddings = speaker_embeddings.reshape(-1, self.config.speaker_embedding_dim)
        if speaker_embeddings.shape[-1] != self.config.speaker_embedding_dim:
            raise ValueError(f"speaker embeddings must have size {self.config.speaker_embedding_dim}")
        return self.speaker_norm(self.speaker_projection(speaker_embeddings.to(weight.device, weight.dtype)))

    def _speech_decoder_forward(
        self,
        last_hidden_state: torch.Tensor,
        speech_span_mask: torch.Tensor,
        speech_units: torch.Tensor,
        speech_units_mask: torch.Tensor | None,
        speaker_embeddings: torch.Tensor | None,
    ):
        spans = find_speech_spans(speech_span_mask)
        if len(spans) != speech_units.shape[0]:
            raise ValueError(
                f"speech_span_mask marks {len(spans)} speech turns but speech_units has {speech_units.shape[0]} rows"
            )
        if speech_units_mask is None:
            speech_units_mask = torch.ones_like(speech_units)
        rows = self.project_hidden_states(last_hidden_state)
        text_rows = [rows[row, start:end] for row, start, end in spans]
        unit_embeddings = self.speech_decoder.get_input_embeddings()(speech_units)
        slots = self.speaker_slot(speaker_embeddings, num_rows=speech_units.shape[0])
        inputs_embeds, attention_mask, labels = build_interleaved_rows(
            text_rows,
            speech_units,
            speech_units_mask,
            unit_embeddings,
            slots,
            self.config.text_span,
            self.config.speech_span,
        )
        logits = self.speech_decoder(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, use_cache=False
        ).logits
        return logits, attention_mask, labels

    # ---------------------------------------------------------------- forward
    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        input_features: torch.Tensor | None = None,
        feature_attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        speech_span_mask: torch.Tensor | None = None,
        speech_units: torch.LongTensor | None = None,
        speech_units_mask: torch.Tensor | None = None,
        speaker_embeddings: torch.Tensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        num_items_in_batch: torch.Tensor | int | None = None,
        num_speech_items_in_batch: torch.Tensor | int | None = None,
        **kwargs,
    ) -> OpenS2SOutput:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`):
                LLM token ids; each audio is a run of `config.audio_token_id` with one position per adapter frame.
            input_features (`torch.FloatTensor` of shape `(num_audios, num_mel_bins, 3000 * k)`, *optional*):
                Log-mel features of all audios of the batch, in the order their placeholders appear.
            feature_attention_mask (`torch.LongTensor` of shape `(num_audios, 3000 * k)`, *optional*):
                1 on valid mel frames (100 per second).
            labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
                LLM targets aligned with `input_ids` (shifted inside); -100 is ignored.
            speech_span_mask (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
                1 on the positions whose hidden states condition the speech decoder: `<|im_tts_start|>`, the text
                and `<|im_tts_end|>` of every assistant speech turn (the original `token_types == 1`).
            speech_units (`torch.LongTensor` of shape `(num_speech_turns, max_units)`, *optional*):
                Speech decoder ids of every speech turn (units + EOS), in the order of the spans, right-padded.
            speech_units_mask (`torch.LongTensor` of shape `(num_speech_turns, max_units)`, *optional*):
                1 on real units.
            speaker_embeddings (`torch.FloatTensor` of shape `(num_speech_turns, speaker_embedding_dim)`, *optional*):
                Speaker embedding per speech turn; zeros when omitted.
            cache (`Cache`, *optional*; `past_key_values` is the deprecated name):
                The LLM's cache of the positions before `input_ids`; generation continues from it exactly.
            num_items_in_batch (`int` or `torch.Tensor`, *optional*):
                Text targets (`labels[:, 1:] != -100`) of all micro-batches of one optimiser step, as `Trainer` counts
                them: the text loss becomes a sum over this micro-batch divided by it, so gradient accumulation gives
                the loss of the whole batch.
            num_speech_items_in_batch (`int` or `torch.Tensor`, *optional*):
                The same count for the speech targets (`OpenS2STrainer` passes it). Without it, when
                `num_items_in_batch` is given, the speech loss keeps this micro-batch's mean weighted by its share of
                the step's text targets (exact when the micro-batches have the same speech/text ratio).
            kwargs: `output_hidden_states`, `output_attentions` and attention kwargs of the LLM; `return_dict`.
        """
        outputs = self.model(
            input_ids=input_ids,
            input_features=input_features,
            feature_attention_mask=feature_attention_mask,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            **kwargs,
        )
        last_hidden_state = outputs.last_hidden_state
        # logits_to_keep: 0 keeps every position, n > 0 the last n (generation), a tensor selects positions.
        kept = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(last_hidden_state[:, kept])

        text_loss = speech_loss = loss = None
        speech_logits = speech_attention_mask = speech_labels = None
        if labels is not None:
            text_loss = causal_lm_loss(logits, labels, num_items_in_batch)
            loss = self.config.text_loss_weight * text_loss
        if speech_units is not None:
            if speech_span_mask is None:
                raise ValueError("speech_units need speech_span_mask to know which hidden states condition them")
            speech_logits, speech_attention_mask, speech_labels = self._speech_decoder_forward(
                last_hidden_state, speech_span_mask, speech_units, speech_units_mask, speaker_embeddings
            )
            speech_items = self._speech_items(speech_labels, labels, num_items_in_batch, num_speech_items_in_batch)
            speech_loss = causal_lm_loss(speech_logits, speech_labels, speech_items)
            weighted = self.config.speech_loss_weight * speech_loss
            loss = weighted if loss is None else loss + weighted
        return OpenS2SOutput(
            loss=loss,
            text_loss=text_loss,
            speech_loss=speech_loss,
            logits=logits,
            speech_logits=speech_logits,
            speech_attention_mask=speech_attention_mask,
            speech_labels=speech_labels,
            last_hidden_state=last_hidden_state,
            cache=outputs.cache if use_cache is not False else None,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    @staticmethod
    def _speech_items(
        speech_labels: torch.Tensor,
        labels: torch.Tensor | None,
        num_items_in_batch: torch.Tensor | int | None,
        num_speech_items_in_batch: torch.Tensor | int | None,
    ) -> torch.Tensor | int | None:
        """The divisor of the summed speech loss (see `forward`); None keeps the mean."""
        if num_speech_items_in_batch is not None or num_items_in_batch is None or labels is None:
            return num_speech_items_in_batch
        text_items = count_targets(labels)
        if int(text_items) == 0:
            return None
        return count_targets(speech_labels) * num_items_in_batch / text_items

    def stream(self, **kwargs):
        """Generate text, speech units and (with a token2wav decoder) audio together as an iterator of events
        (`TextDelta`, `SpeechUnits`, `AudioChunk`, `Done`); see `engine_opens2s.stream` for the arguments, e.g.
        `model.stream(**inputs, processor=processor)`."""
        return stream_events(self, **kwargs)

    # ---------------------------------------------------------------- speech output
    @property
    def token2wav(self) -> "OpenS2SToken2Wav | None":
        """The attached unit-to-speech decoder (see [`attach_token2wav`]), or `None`."""
        return self.__dict__.get("_token2wav")

    def attach_token2wav(
        self, token2wav: "OpenS2SToken2Wav | str | None" = None, **from_pretrained_kwargs
    ) -> "OpenS2SToken2Wav":
        """Attach the token2wav decoder that `stream` and `generate` use to speak.

        Args:
            token2wav ([`OpenS2SToken2Wav`] or `str`, *optional*):
                A loaded decoder, or a folder / Hub id of one. By default the `token2wav/` subfolder of the folder or
                Hub repo this model was loaded from.
            from_pretrained_kwargs: passed to `OpenS2SToken2Wav.from_pretrained` (e.g. `dtype`).

        The decoder is moved to this model's device. It is kept outside this model's modules (it is not part of its
        state dict or `save_pretrained`, and `model.to()` does not move it).
        """
        # Imported here: the speech-to-text path needs none of the token2wav code.
        from .modeling_token2wav import OpenS2SToken2Wav

        if not isinstance(token2wav, OpenS2SToken2Wav):
            if token2wav is None:
                source, from_pretrained_kwargs = (
                    self.name_or_path,
                    {"subfolder": TOKEN2WAV_SUBFOLDER} | from_pretrained_kwargs,
                )
            else:
                source = token2wav
            token2wav = OpenS2SToken2Wav.from_pretrained(source, **from_pretrained_kwargs)
        token2wav = token2wav.to(self.device).eval()
        self.__dict__["_token2wav"] = token2wav
        return token2wav

    def save_pretrained(self, save_directory: str | os.PathLike, is_main_process: bool = True, **kwargs):
        """[`PreTrainedModel.save_pretrained`] plus what the folder needs to speak: `speech_generation_config.json`,
        the token2wav decoder in `token2wav/` (the attached one, else the one of the local folder this model was
        loaded from), the processor of that folder, and a model card (`README.md`, kept if present).

        Everything is written to a staging folder next to `save_directory` first and then moved into place, so the
        folder is complete or absent (into an existing folder, each file is replaced atomically). `Trainer.save_model`
        and `push_to_hub` go through here; `push_to_hub=True` uploads the finished folder (`repo_id`, `commit_message`,
        `create_pr`, `private`, `token` as in transformers).
        """
        if not is_main_process:  # other ranks only join the collectives of a sharded save
            return super().save_pretrained(save_directory, is_main_process=False, **kwargs)
        hub_kwargs = {
            name: kwargs.pop(name) for name in ("repo_id", "commit_message", "create_pr", "private") if name in kwargs
        }
        push_to_hub = kwargs.pop("push_to_hub", False)
        target = Path(save_directory)
        staging = staging_folder(target)
        try:
            if getattr(self.config, "auto_map", None) is not None or self._auto_class is not None:
                module = type(self).__module__.split(".")[-1]
                self.config.auto_map = (getattr(self.config, "auto_map", None) or {}) | {
                    "AutoModelForMultimodalLM": f"{module}.{type(self).__name__}"
                }
            super().save_pretrained(staging, **kwargs)
            save_speech_parts(self, staging)
            publish_folder(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if push_to_hub:
            self._upload_folder(target, token=kwargs.get("token"), **hub_kwargs)

    def _upload_folder(self, folder: Path, repo_id: str | None = None, token: str | bool | None = None, **kwargs):
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        repo_id = api.create_repo(repo_id or folder.name, private=kwargs.pop("private", None), exist_ok=True).repo_id
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            commit_message=kwargs.get("commit_message") or "Upload OpenS2S",
            create_pr=kwargs.get("create_pr", False),
        )

    def generate(self, input_ids: torch.LongTensor | None = None, return_speech: bool = True, **kwargs):
        """Generate the whole answer.

        With `return_speech=True` (the default) this runs [`stream`] to the end for every row of the batch (one
        [`OpenS2SEngine`] decodes the rows together; each answer equals that prompt's answer alone) and returns an
        [`OpenS2SGenerateOutput`] (text ids, unit ids, and audio when a token2wav decoder is attached). `kwargs` are
        the processor's inputs (`attention_mask`, `input_features`, `feature_attention_mask`) and `stream`'s
        (`processor`, `generation_config`, `speech_generation_config`, `speaker_embedding`, `seed`, ...);
        `max_new_tokens` / `speech_max_new_tokens` override the text / speech budgets, and the standard sampling
        arguments (`do_sample`, `temperature`, `top_k`, `top_p`, `repetition_penalty`, ...) apply to the LLM
        (`speech_`-prefixed to the speech decoder). Beam search and assisted decoding need `return_speech=False`.
        With sampling, pass `seed=` rather than one `generator` so every row draws from its own generator.

        With `return_speech=False` it is `GenerationMixin.generate` (text only, batched, returns token ids).

        `generation_mode` (what `pipeline("any-to-any")` passes) chooses the path: `"text"` is `return_speech=False`;
        `"audio"` speaks, attaching the folder's token2wav decoder and reading its processor (for the unit
        vocabulary) when none is attached or passed.
        """
        generation_mode = kwargs.pop("generation_mode", None)
        if generation_mode not in (None, "text", "audio"):
            raise ValueError(f"generation_mode must be 'text' or 'audio', got {generation_mode!r}")
        if generation_mode == "text":
            return_speech = False
        elif generation_mode == "audio":
            self._prepare_to_speak(kwargs)
        if not return_speech:
            input_ids, kwargs["attention_mask"] = left_padded(input_ids, kwargs.get("attention_mask"))
            return super().generate(input_ids, **kwargs)
        if "logits_processor" in kwargs:
            kwargs["text_logits_processor"] = kwargs.pop("logits_processor")
        prompt = input_ids if input_ids.dim() == 2 else input_ids[None]
        batch = {"input_ids": prompt}
        for name in ("attention_mask", "input_features", "feature_attention_mask"):
            if kwargs.get(name) is not None:
                batch[name] = kwargs.pop(name)
        rows = [batch] if prompt.shape[0] == 1 else split_batch(self, batch)
        engine = OpenS2SEngine(self, max_active=len(rows), max_queued=0)
        conversations = [engine.submit(row, **kwargs) for row in rows]
        answers = [self._collect_answer(conversation) for conversation in conversations]
        text_config = kwargs.get("generation_config") or self.generation_config
        pad = text_config.pad_token_id if text_config.pad_token_id is not None else text_config.eos_token_id
        pad = pad[0] if isinstance(pad, list) else (pad if pad is not None else 0)
        new_ids = _pad_stack([torch.tensor(text, dtype=prompt.dtype) for text, *_ in answers], pad)
        audio = [audio for _, _, audio, _, _ in answers]
        spoken = any(row is not None for row in audio)
        audio = [row if row is not None else torch.zeros(0) for row in audio]
        return OpenS2SGenerateOutput(
            sequences=torch.cat([prompt, new_ids.to(prompt.device)], dim=-1),
            unit_sequences=_pad_stack([torch.tensor(units, dtype=torch.long) for _, units, *_ in answers], -1),
            unit_lengths=torch.tensor([len(units) for _, units, *_ in answers]),
            audio_values=_pad_stack(audio, 0.0) if spoken else None,
            audio_lengths=torch.tensor([row.shape[0] for row in audio]) if spoken else None,
            sampling_rate=next((rate for *_, rate, _ in answers if rate is not None), None),
            stats=answers[0][4] if len(answers) == 1 else None,
            row_stats=[stats for *_, stats in answers],
        )

    def _prepare_to_speak(self, kwargs: dict):
        """Fill in what `generate(generation_mode="audio")` needs and was not given: the attached token2wav decoder
        (from this model's folder) and the processor (the unit vocabulary)."""
        if kwargs.get("token2wav") is None and self.token2wav is None:
            self.attach_token2wav()
        if kwargs.get("processor") is None and kwargs.get("unit_tokenizer") is None:
            from transformers import AutoProcessor

            kwargs["processor"] = AutoProcessor.from_pretrained(self.name_or_path, trust_remote_code=True)

    @staticmethod
    def _collect_answer(events) -> tuple[list[int], list[int], torch.Tensor | None, int | None, object]:
        """`(text ids, units, audio (num_samples,) or None, sample rate, stats)` of one conversation's events."""
        text_ids, unit_ids, audio, sampling_rate, stats = [], [], [], None, None
        for event in events:
            if event.kind == "text":
                text_ids += event.token_ids
            elif event.kind == "units":
                unit_ids += event.units or []
            elif event.kind == "audio":
                audio.append(torch.from_numpy(event.pcm))
                sampling_rate = event.sample_rate
            else:
                stats = event.stats
        return text_ids, unit_ids, torch.cat(audio) if audio else None, sampling_rate, stats

    def engine(self, processor=None, **kwargs) -> OpenS2SEngine:
        """An [`OpenS2SEngine`] over this model (`max_active`, `max_queued`): many conversations decoded together."""
        return OpenS2SEngine(self, processor, **kwargs)


OpenS2SForConditionalGeneration.register_for_auto_class("AutoModel")
# Registered (not only declared) because transformers applies no conversion mapping to remote code otherwise.
register_checkpoint_conversion_mapping(
    OpenS2SForConditionalGeneration.__name__,
    [
        WeightRenaming(source_patterns=rf"^{old[:-1]}", target_patterns=new[:-1])
        for old, new in CHECKPOINT_KEY_PREFIXES
    ],
    overwrite=True,
)
