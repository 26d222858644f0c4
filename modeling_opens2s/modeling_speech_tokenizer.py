"""The OpenS2S speech tokenizer: GLM-4-Voice's WhisperVQ encoder turning 16 kHz audio into 12.5 Hz speech units.

Whisper log-mel features (100 frames/s) -> causal stride-1 and stride-2 convolutions (25 frames/s) -> the first
`quantize_position` Whisper encoder layers with block-causal attention -> average pooling by 4 (12.5 frames/s) ->
nearest codebook entry by squared L2 distance = the unit id. Math and parameter names follow `WhisperVQEncoder` in
GLM-4-Voice's `speech_tokenizer/modeling_whisper.py`; the original `glm-4-voice-tokenizer` folder loads unchanged.
"""

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedModel, WhisperFeatureExtractor
from transformers import initialization as init
from transformers.models.whisper.modeling_whisper import WhisperEncoderLayer, sinusoids
from transformers.utils import ModelOutput, logging

from .audio_opens2s import AudioError, load_audio
from .configuration_speech_tokenizer import OpenS2SSpeechTokenizerConfig
from .feature_extraction_speech_tokenizer import segment_features, split_segments


__all__ = [
    "OpenS2SSpeechTokenizer",
    "OpenS2SSpeechTokenizerLayer",
    "OpenS2SSpeechTokenizerOutput",
    "block_causal_attention_bias",
    "nearest_codes",
]

logger = logging.get_logger(__name__)

# `from_pretrained` arguments that locate files; they are passed on when the feature extractor is loaded.
_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "proxies", "revision", "subfolder", "token")


@dataclass
class OpenS2SSpeechTokenizerOutput(ModelOutput):
    r"""
    Output of [`OpenS2SSpeechTokenizer.forward`]. `num_units = ceil(frames / 8)` for the default 12.5 Hz tokenizer.

    Args:
        unit_ids (`torch.LongTensor` of shape `(batch_size, num_units)`):
            Nearest codebook entry of every pooled frame, padding frames included.
        unit_mask (`torch.BoolTensor` of shape `(batch_size, num_units)`):
            True where a unit starts on a valid feature frame; `unit_ids[unit_mask]` are the units the original keeps.
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, num_units, hidden_size)`):
            `codebook[unit_ids] + embed_positions2[:num_units]`, the original's final states.
        pooled_hidden_states (`torch.FloatTensor` of shape `(batch_size, num_units, hidden_size)`):
            The vector-quantiser input (output of the last layer, pooled).
        hidden_states (`tuple(torch.FloatTensor)`, *optional*):
            With `output_hidden_states=True`: the input embeddings and the output of every layer (before pooling for
            the pooling layer), each `(batch_size, frames_at_that_layer, hidden_size)`.
    """

    unit_ids: torch.LongTensor | None = None
    unit_mask: torch.BoolTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None
    pooled_hidden_states: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


def block_causal_attention_bias(
    frame_mask: torch.Tensor, block_size: int | None, causal: bool, dtype: torch.dtype
) -> torch.Tensor:
    """Additive self-attention bias `(batch_size, 1, frames, frames)`: 0 where query frame `i` may see key frame `j`,
    the dtype's minimum elsewhere.

    Block-causal (`block_size` set): `j` is a valid frame and `j // block_size <= i // block_size` (every frame of
    its own block and of earlier blocks; the original ORs a causal mask with block-diagonal squares). `causal`: plain
    `j <= i` *without* a padding mask, as the original's SDPA `is_causal` path. Neither: every valid frame.

    Args:
        frame_mask (`torch.Tensor` of shape `(batch_size, frames)`): 1 on valid frames.
        block_size (`int`, *optional*): block length in frames at this layer's rate.
        causal (`bool`): plain causal attention, taking precedence over `block_size`.
        dtype (`torch.dtype`): dtype of the bias (the attention's dtype).
    """
    frames = frame_mask.shape[1]
    positions = torch.arange(frames, device=frame_mask.device)
    if causal:
        allowed = (positions[None, :] <= positions[:, None])[None].expand(frame_mask.shape[0], -1, -1)
    else:
        allowed = frame_mask.bool()[:, None, :].expand(-1, frames, -1)
        if block_size is not None:
            blocks = positions // block_size
            allowed = allowed & (blocks[None, :] <= blocks[:, None])[None]
    bias = torch.zeros(allowed.shape, dtype=dtype, device=frame_mask.device)
    return bias.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


def nearest_codes(hidden_states: torch.Tensor, codebook: torch.Tensor) -> torch.LongTensor:
    """Index of the nearest codebook row of every frame, by squared L2 distance `|x|^2 + |c|^2 - 2 x.c`.

    Computed in float32 at least (bf16/fp16 models keep full-precision distances); the first index wins a tie.

    Args:
        hidden_states (`torch.Tensor` of shape `(batch_size, frames, hidden_size)`): the quantiser input.
        codebook (`torch.Tensor` of shape `(num_codes, hidden_size)`).

    Returns:
        `torch.LongTensor` of shape `(batch_size, frames)`.
    """
    dtype = torch.promote_types(hidden_states.dtype, torch.float32)
    flat = hidden_states.reshape(-1, hidden_states.shape[-1]).to(dtype)
    codes = codebook.to(dtype)
    squared_norms = codes.pow(2).sum(dim=1) + flat.pow(2).sum(dim=1, keepdim=True)
    distances = torch.addmm(squared_norms, flat, codes.t(), alpha=-2.0)
    return distances.argmin(dim=1).reshape(hidden_states.shape[:-1])


def _is_array_and_rate(value: Any) -> bool:
    """Whether `value` is one `(array, sampling_rate)` tuple rather than a tuple of audios."""
    return (
        isinstance(value, tuple)
        and len(value) == 2
        and isinstance(value[1], (int, np.integer))
        and not isinstance(value[1], bool)
    )


class OpenS2SSpeechTokenizerConv1d(nn.Conv1d):
    """Kernel-3 front-end convolution. Causal: left-padded by `kernel_size - 1` zeros (the original `CausalConv1d`);
    otherwise padded by 1 on both sides as in Whisper."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, causal: bool):
        super().__init__(in_channels, out_channels, kernel_size=3, stride=stride, padding=0 if causal else 1)
        self.causal = causal

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.causal:
            inputs = nn.functional.pad(inputs, (self.kernel_size[0] - 1, 0))
        return super().forward(inputs)


class OpenS2SSpeechTokenizerLayer(WhisperEncoderLayer):
    """A pre-norm Whisper encoder layer; the original's `WhisperVQEncoderLayer` computes the same (and names its
    parameters the same). The block-causal mask arrives as the additive `attention_mask`."""


class OpenS2SSpeechTokenizer(PreTrainedModel):
    r"""
    GLM-4-Voice's speech tokenizer (`WhisperVQEncoder`, Zeng et al. 2024, arXiv 2412.02612): 16 kHz audio -> speech
    units at 12.5 Hz (16,384 codes), the units OpenS2S's speech decoder writes.

    `from_pretrained` loads both our saved folders and the original `glm-4-voice-tokenizer` folder (`config.json` of a
    `WhisperVQConfig`, `model.safetensors` with un-prefixed `WhisperVQEncoder` names, `preprocessor_config.json`):
    the config is mapped by [`OpenS2SSpeechTokenizerConfig`]; the weights need no renaming. The original's `ema_count`
    / `ema_weight` buffers only drive the EMA codebook update during training and are ignored on load. The folder's
    `preprocessor_config.json` becomes `feature_extractor` (a `WhisperFeatureExtractor`) and is written back by
    `save_pretrained`.

    Use [`~OpenS2SSpeechTokenizer.encode`] on audio; `forward` takes features as made by `segment_features`.
    """

    config: OpenS2SSpeechTokenizerConfig
    config_class = OpenS2SSpeechTokenizerConfig
    main_input_name = "input_features"
    input_modalities = ("audio",)
    _no_split_modules = ["OpenS2SSpeechTokenizerLayer"]
    _supports_sdpa = True
    _supports_flash_attn = False  # the block-causal mask is a dense 4-D bias
    _supports_flex_attn = False
    # Training-only state of the original's EMA codebook update (quantize_ema_decay); inference never reads it.
    _keys_to_ignore_on_load_unexpected = [r"^ema_count$", r"^ema_weight$"]

    def __init__(self, config: OpenS2SSpeechTokenizerConfig):
        super().__init__(config)
        causal = config.encoder_causal_convolution
        self.conv1 = OpenS2SSpeechTokenizerConv1d(config.num_mel_bins, config.d_model, stride=1, causal=causal)
        self.conv2 = OpenS2SSpeechTokenizerConv1d(config.d_model, config.d_model, stride=2, causal=causal)
        self.embed_positions = nn.Embedding(config.max_source_positions, config.d_model)
        self.embed_positions.requires_grad_(False)
        self.layers = nn.ModuleList(OpenS2SSpeechTokenizerLayer(config) for _ in range(config.quantize_position))
        self.codebook = nn.Embedding(config.quantize_vocab_size, config.d_model)
        pooled_positions = -(-config.max_source_positions // (config.pooling_kernel_size or 1))
        self.embed_positions2 = nn.Embedding(pooled_positions, config.d_model)
        self.feature_extractor = WhisperFeatureExtractor(feature_size=config.num_mel_bins)
        self.post_init()

    def _init_weights(self, module: nn.Module):
        super()._init_weights(module)
        if isinstance(module, OpenS2SSpeechTokenizer):
            init.copy_(module.embed_positions.weight, sinusoids(*module.embed_positions.weight.shape))
            init.copy_(module.embed_positions2.weight, sinusoids(*module.embed_positions2.weight.shape))

    @property
    def samples_per_unit(self) -> int:
        """Audio samples per speech unit (1280 = 80 ms at 16 kHz for the 12.5 Hz tokenizer)."""
        return self.config.frames_per_unit * self.feature_extractor.hop_length

    def _pool(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """`(batch, frames, hidden)` -> `(batch, ceil(frames / k), hidden)`; the tail is zero-padded to a whole
        window first, and the zeros count in the average, as in the original."""
        kernel = self.config.pooling_kernel_size
        hidden_states = hidden_states.transpose(1, 2)
        hidden_states = nn.functional.pad(hidden_states, (0, -hidden_states.shape[-1] % kernel))
        pool = nn.functional.avg_pool1d if self.config.pooling_type == "avg" else nn.functional.max_pool1d
        return pool(hidden_states, kernel).transpose(1, 2)

    def _embed(self, input_features: torch.Tensor) -> torch.Tensor:
        """Features `(batch, num_mel_bins, frames)` -> `(batch, frames / 2, hidden)` with positions added."""
        _, num_bins, frames = input_features.shape
        if num_bins != self.config.num_mel_bins or frames % 2 or frames // 2 > self.config.max_source_positions:
            raise ValueError(
                f"input_features must be (batch, {self.config.num_mel_bins}, frames) with an even number of frames "
                f"up to {2 * self.config.max_source_positions}, got {tuple(input_features.shape)}"
            )
        hidden_states = nn.functional.gelu(self.conv1(input_features))
        hidden_states = nn.functional.gelu(self.conv2(hidden_states)).transpose(1, 2)
        return hidden_states + self.embed_positions.weight[: hidden_states.shape[1]]

    def forward(
        self,
        input_features: torch.FloatTensor,
        attention_mask: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> OpenS2SSpeechTokenizerOutput:
        r"""
        Args:
            input_features (`torch.FloatTensor` of shape `(batch_size, num_mel_bins, frames)`):
                Whisper log-mel features at 100 frames/s (`frames` even, at most 3000 = 30 s), e.g. from
                [`segment_features`].
            attention_mask (`torch.Tensor` of shape `(batch_size, frames)`, *optional*):
                1 on valid feature frames, 0 on padding (trailing). Defaults to all valid.
            output_hidden_states (`bool`, *optional*):
                Also return the embeddings and every layer's output.

        Returns:
            [`OpenS2SSpeechTokenizerOutput`]; `unit_ids[unit_mask]` are the units of the valid audio.
        """
        output_hidden_states = (
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        if attention_mask is None:
            attention_mask = torch.ones(input_features.shape[::2], dtype=torch.long, device=input_features.device)
        hidden_states = self._embed(input_features)
        frame_mask = attention_mask[:, ::2].bool()
        block_size = self.config.quantize_causal_block_size
        bias = block_causal_attention_bias(frame_mask, block_size, self.config.causal_attention, hidden_states.dtype)
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        for index, layer in enumerate(self.layers, start=1):
            hidden_states = layer(hidden_states, bias, **kwargs)
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if self.config.pooling_kernel_size is not None and index == self.config.pooling_position:
                kernel = self.config.pooling_kernel_size
                hidden_states, frame_mask = self._pool(hidden_states), frame_mask[:, ::kernel]
                if index < len(self.layers):
                    block_size = None if block_size is None else block_size // kernel
                    bias = block_causal_attention_bias(
                        frame_mask, block_size, self.config.causal_attention, hidden_states.dtype
                    )
        unit_ids = nearest_codes(hidden_states, self.codebook.weight)
        quantized = self.codebook(unit_ids) + self.embed_positions2.weight[: unit_ids.shape[1]]
        return OpenS2SSpeechTokenizerOutput(
            unit_ids=unit_ids,
            unit_mask=frame_mask,
            last_hidden_state=quantized,
            pooled_hidden_states=hidden_states,
            hidden_states=all_hidden_states,
        )

    @torch.no_grad()
    def encode(
        self,
        audios: Sequence[Any] | Any,
        sampling_rate: int | None = None,
        batch_size: int = 16,
        show_progress: bool = False,
    ) -> list[list[int]]:
        r"""
        Speech units of every audio, as GLM-4-Voice's `extract_speech_token` computes them.

        Each audio is cut into 30 s segments; segments (in input order) are batched `batch_size` at a time, each batch
        zero-padded to its longest segment rounded up to a whole unit; the units of an audio are the concatenation of
        its segments' units, `ceil(segment_samples / 1280)` per segment at 12.5 Hz.

        Args:
            audios (`list`):
                Audios, each anything [`~audio_opens2s.load_audio`] reads: a path, bytes, a float or PCM array
                `(samples,)` (or `(channels, samples)`, averaged to mono), a `(array, sampling_rate)` tuple as the
                original `extract_speech_token` takes, a `datasets.Audio` value or a torchcodec decoder. A single
                audio (not in a list) is accepted too. There is no length limit (long audio is cut into segments).
            sampling_rate (`int`, *optional*):
                Rate in Hz of bare arrays; `None` means the feature extractor's rate (16 kHz), the documented
                default of this method. Other rates are resampled with soxr.
            batch_size (`int`, *optional*, defaults to 16):
                30 s segments per forward pass. The original used 128. When a segment's audio reaches into the last
                2.5 ms of its last unit, its last feature frame sees the batch's padding through the STFT's reflect
                padding, so batches composed differently from the original's can change the units of that
                segment's last attention block.
            show_progress (`bool`, *optional*, defaults to `False`):
                Show a progress bar over segments (transformers' tqdm; `disable_progress_bar()` silences it).

        Returns:
            `list[list[int]]`: the unit ids of every audio, in input order.

        Raises:
            `ValueError` / `FileNotFoundError` naming the index of an empty, too short (< 10 ms), non-finite, wrongly
            shaped or missing audio.
        """
        if isinstance(audios, (str, os.PathLike, bytes, np.ndarray, torch.Tensor, dict)) or _is_array_and_rate(audios):
            audios = [audios]
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        segments, owners = [], []
        for index, audio in enumerate(audios):
            waveform = self._load(index, audio, sampling_rate)
            pieces = split_segments(waveform, self.feature_extractor.n_samples)
            segments += pieces
            owners += [index] * len(pieces)
        units = [[] for _ in range(len(audios))]
        progress = logging.tqdm(total=len(segments), desc="speech units", unit="segment", disable=not show_progress)
        for start in range(0, len(segments), batch_size):
            batch_units = self._encode_segments(segments[start : start + batch_size])
            for owner, segment_units in zip(owners[start : start + batch_size], batch_units, strict=True):
                units[owner] += segment_units
            progress.update(len(batch_units))
        progress.close()
        return units

    def _load(self, index: int, audio: Any, sampling_rate: int | None) -> np.ndarray:
        """One audio of `encode` -> checked mono 16 kHz waveform ([`~audio_opens2s.load_audio`], no length limit:
        long audio is cut into 30 s segments); errors name the audio's index."""
        extractor = self.feature_extractor
        rate = extractor.sampling_rate if sampling_rate is None else sampling_rate
        try:
            waveform = load_audio(
                audio,
                rate,
                target_sampling_rate=extractor.sampling_rate,
                max_seconds=None,
                min_samples=extractor.hop_length,
            )
        except AudioError as error:
            raise AudioError(error.reason, f"audio {index}: {error}") from error
        except OSError as error:  # a missing file or a folder
            raise type(error)(f"audio {index}: {error}") from error
        if not waveform.any():
            logger.warning(f"audio {index} is digital silence (every sample is 0); its units encode silence")
        return waveform

    def _encode_segments(self, segments: Sequence[np.ndarray]) -> list[list[int]]:
        """Units of each segment of one batch (valid units only)."""
        features = segment_features(self.feature_extractor, segments, self.samples_per_unit, self.device)
        output = self(
            input_features=features["input_features"].to(self.device, self.dtype),
            attention_mask=features["attention_mask"].to(self.device),
        )
        return [ids[mask].tolist() for ids, mask in zip(output.unit_ids.cpu(), output.unit_mask.cpu(), strict=True)]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *model_args, **kwargs):
        """[`PreTrainedModel.from_pretrained`], then the folder's `preprocessor_config.json` as `feature_extractor`
        (Whisper's defaults with `num_mel_bins` bins, and a warning, when the folder has none)."""
        loaded = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        hub_kwargs = {key: kwargs[key] for key in _HUB_KWARGS if key in kwargs}
        try:
            model.feature_extractor = WhisperFeatureExtractor.from_pretrained(
                pretrained_model_name_or_path, **hub_kwargs
            )
        except OSError:
            logger.warning(
                f"No preprocessor_config.json in {pretrained_model_name_or_path}; using Whisper's feature defaults "
                f"with {model.config.num_mel_bins} mel bins"
            )
        if model.feature_extractor.feature_size != model.config.num_mel_bins:
            raise ValueError(
                f"the feature extractor makes {model.feature_extractor.feature_size} mel bins but the model expects "
                f"{model.config.num_mel_bins}"
            )
        return loaded

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs):
        """Write `preprocessor_config.json` and then the model ([`PreTrainedModel.save_pretrained`])."""
        self.feature_extractor.save_pretrained(save_directory)
        super().save_pretrained(save_directory, *args, **kwargs)


OpenS2SSpeechTokenizer.register_for_auto_class("AutoModel")
