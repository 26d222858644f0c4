"""Configuration of the OpenS2S speech tokenizer: GLM-4-Voice's WhisperVQ encoder (audio -> 12.5 Hz speech units)."""

import os
from typing import Any

from huggingface_hub.dataclasses import strict
from transformers.configuration_utils import PreTrainedConfig
from transformers.utils import logging


__all__ = ["OpenS2SSpeechTokenizerConfig", "convert_whisper_vq_config", "is_whisper_vq_config"]

logger = logging.get_logger(__name__)

# Keys of a `PreTrainedConfig` that the original `config.json` may carry and that keep their meaning here.
_KEPT_BASE_KEYS = ("dtype", "torch_dtype")


def is_whisper_vq_config(config_dict: dict[str, Any]) -> bool:
    """Whether `config_dict` is the original GLM-4-Voice tokenizer config (`WhisperVQConfig`, `model_type="whisper"`
    with a VQ codebook), as found in the `glm-4-voice-tokenizer` folder."""
    return config_dict.get("model_type") == "whisper" and config_dict.get("quantize_vocab_size") is not None


def convert_whisper_vq_config(config_dict: dict[str, Any]) -> dict[str, Any]:
    """Map an original `WhisperVQConfig` dict onto the fields of [`OpenS2SSpeechTokenizerConfig`].

    The field names are the original ones, so the map is a filter: the Whisper decoder, generation, SpecAugment and
    VQ-training fields (`decoder_*`, token ids, `mask_*`, `quantize_ema_decay`, `quantize_commit_coefficient`, ...)
    are dropped and logged at info level. `encoder_layers` (the full Whisper depth) is dropped because the tokenizer
    only holds the `quantize_position` layers below the codebook, as the original's `quantize_encoder_only` mode does;
    `scale_embedding` is dropped because the original encoder never applies it.

    Raises:
        `ValueError`: when `config_dict` is a Whisper config without a VQ codebook (not a speech tokenizer).
    """
    if not is_whisper_vq_config(config_dict):
        raise ValueError(
            "not a GLM-4-Voice tokenizer config: expected model_type 'whisper' with 'quantize_vocab_size', got "
            f"model_type {config_dict.get('model_type')!r}"
        )
    fields = set(OpenS2SSpeechTokenizerConfig.__dataclass_fields__) - set(PreTrainedConfig.__dataclass_fields__)
    kept = {key: value for key, value in config_dict.items() if key in fields or key in _KEPT_BASE_KEYS}
    dropped = sorted(set(config_dict) - set(kept) - {"model_type"})
    logger.info(f"Read an original WhisperVQConfig; ignored the fields the tokenizer does not use: {dropped}")
    if not config_dict.get("quantize_encoder_only", True):
        logger.info("quantize_encoder_only is false in the original config; only the layers below the codebook load")
    kept["model_type"] = OpenS2SSpeechTokenizerConfig.model_type
    return kept


@strict
class OpenS2SSpeechTokenizerConfig(PreTrainedConfig):
    r"""
    Configuration of [`OpenS2SSpeechTokenizer`], the GLM-4-Voice speech tokenizer (`WhisperVQEncoder`).

    A Whisper-large-v3 encoder with a causal convolutional front-end (100 feature frames/s -> 25 frames/s),
    block-causal self-attention, truncated after layer `quantize_position`; average pooling by `pooling_kernel_size`
    after layer `pooling_position` (25 -> 12.5 frames/s) and nearest-code vector quantisation against a
    `quantize_vocab_size` codebook give one speech unit per 80 ms. Field names are those of the original
    `WhisperVQConfig`, so its `config.json` (`model_type="whisper"`) loads with `from_pretrained`:
    [`convert_whisper_vq_config`] drops the fields the tokenizer does not use. Defaults are the released
    `glm-4-voice-tokenizer`.

    Args:
        num_mel_bins (`int`, *optional*, defaults to 128):
            Number of log-mel bins of the input features.
        d_model (`int`, *optional*, defaults to 1280):
            Hidden size of the encoder.
        encoder_attention_heads (`int`, *optional*, defaults to 20):
            Number of attention heads of every encoder layer.
        encoder_ffn_dim (`int`, *optional*, defaults to 5120):
            Inner size of the feed-forward block of every encoder layer.
        activation_function (`str`, *optional*, defaults to `"gelu"`):
            Activation of the feed-forward blocks (the convolutional front-end always uses GELU, as the original).
        max_source_positions (`int`, *optional*, defaults to 1500):
            Number of encoder positions (25 frames/s x 30 s); longer audio is cut into 30 s segments.
        encoder_causal_convolution (`bool`, *optional*, defaults to `True`):
            Left-pad the two front-end convolutions (kernel 3) by 2 instead of 1 on both sides, so a frame never sees
            later features.
        encoder_causal_attention (`bool`, *optional*, defaults to `False`):
            Plain causal self-attention in every layer (takes precedence over `quantize_causal_block_size`).
        quantize_causal_encoder (`bool`, *optional*, defaults to `False`):
            Same effect as `encoder_causal_attention` for the layers below the codebook (the original's name).
        quantize_causal_block_size (`int`, *optional*, defaults to 200):
            Block size, in 25 Hz encoder frames, of the block-causal attention: a frame sees every frame of its own
            block and of the blocks before it (200 frames = 8 s). After pooling the block is
            `quantize_causal_block_size // pooling_kernel_size` pooled frames. `None` gives full attention.
        pooling_kernel_size (`int`, *optional*, defaults to 4):
            Pooling window and stride, in encoder frames. `None` keeps 25 Hz.
        pooling_type (`str`, *optional*, defaults to `"avg"`):
            `"avg"` or `"max"` pooling.
        pooling_position (`int`, *optional*, defaults to 16):
            Pooling follows this (1-based) encoder layer.
        quantize_vocab_size (`int`, *optional*, defaults to 16384):
            Number of codebook entries, i.e. of speech units.
        quantize_position (`int`, *optional*, defaults to 16):
            Number of encoder layers; the codebook follows the last one.
        dropout (`float`, *optional*, defaults to 0.0):
            Dropout on the residual branches (training only).
        attention_dropout (`float`, *optional*, defaults to 0.0):
            Dropout on the attention probabilities (training only).
        activation_dropout (`float`, *optional*, defaults to 0.0):
            Dropout after the feed-forward activation (training only).
        init_std (`float`, *optional*, defaults to 0.02):
            Standard deviation of the random weight initialisation.
    """

    model_type = "opens2s_speech_tokenizer"
    attribute_map = {
        "hidden_size": "d_model",
        "num_attention_heads": "encoder_attention_heads",
        "num_hidden_layers": "quantize_position",
        "intermediate_size": "encoder_ffn_dim",
    }

    num_mel_bins: int = 128
    d_model: int = 1280
    encoder_attention_heads: int = 20
    encoder_ffn_dim: int = 5120
    activation_function: str = "gelu"
    max_source_positions: int = 1500
    encoder_causal_convolution: bool = True
    encoder_causal_attention: bool = False
    quantize_causal_encoder: bool = False
    quantize_causal_block_size: int | None = 200
    pooling_kernel_size: int | None = 4
    pooling_type: str = "avg"
    pooling_position: int = 16
    quantize_vocab_size: int = 16384
    quantize_position: int = 16
    dropout: float | int = 0.0
    attention_dropout: float | int = 0.0
    activation_dropout: float | int = 0.0
    init_std: float = 0.02

    @property
    def frames_per_unit(self) -> int:
        """Feature frames (100/s) per speech unit: the stride-2 front-end times the pooling window (8 -> 12.5 Hz)."""
        return 2 * (self.pooling_kernel_size or 1)

    @property
    def causal_attention(self) -> bool:
        """Whether every layer uses plain causal attention instead of the block-causal mask."""
        return self.encoder_causal_attention or self.quantize_causal_encoder

    @classmethod
    def get_config_dict(
        cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Read `config.json` as the base class does, mapping an original `WhisperVQConfig` onto our fields."""
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        if is_whisper_vq_config(config_dict):
            config_dict = convert_whisper_vq_config(config_dict)
        return config_dict, kwargs

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs) -> "OpenS2SSpeechTokenizerConfig":
        """Build the config from a dict; an original `WhisperVQConfig` dict is mapped first."""
        if is_whisper_vq_config(config_dict):
            config_dict = convert_whisper_vq_config(config_dict)
        return super().from_dict(config_dict, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        """The base `to_dict`, with plain `auto_map` references.

        transformers' `custom_object_save` stores a `(slow, fast)` text-tokenizer pair for every class whose name
        contains "Tokenizer", which `AutoConfig` / `AutoModel` cannot resolve; our classes are a config and a model.
        """
        output = super().to_dict()
        if "auto_map" in output:
            output["auto_map"] = {
                auto_class: reference[0] if isinstance(reference, (list, tuple)) else reference
                for auto_class, reference in output["auto_map"].items()
            }
        return output

    def validate_architecture(self):
        """Cross-field checks: head split, pooling and codebook placement."""
        super().validate_architecture()
        if self.d_model % self.encoder_attention_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by encoder_attention_heads "
                f"({self.encoder_attention_heads})"
            )
        if self.quantize_position < 1 or self.quantize_vocab_size < 1:
            raise ValueError(
                f"quantize_position and quantize_vocab_size must be >= 1, got {self.quantize_position} and "
                f"{self.quantize_vocab_size}"
            )
        if self.pooling_kernel_size is not None:
            if self.pooling_kernel_size < 1 or self.pooling_type not in ("avg", "max"):
                raise ValueError(
                    "pooling needs pooling_kernel_size >= 1 and pooling_type 'avg' or 'max', got "
                    f"{self.pooling_kernel_size} and {self.pooling_type!r}"
                )
            if not 1 <= self.pooling_position <= self.quantize_position:
                raise ValueError(
                    f"pooling_position ({self.pooling_position}) must lie in [1, quantize_position "
                    f"({self.quantize_position})]: pooling follows an encoder layer below the codebook"
                )
        if self.quantize_causal_block_size is not None and self.quantize_causal_block_size < 1:
            raise ValueError(f"quantize_causal_block_size must be >= 1 or None, got {self.quantize_causal_block_size}")
        block, kernel = self.quantize_causal_block_size, self.pooling_kernel_size
        pools_below_last_layer = kernel is not None and self.pooling_position < self.quantize_position
        if pools_below_last_layer and block is not None and block < kernel:
            raise ValueError(
                f"quantize_causal_block_size ({self.quantize_causal_block_size}) must be >= pooling_kernel_size "
                f"({self.pooling_kernel_size}) when layers follow the pooling: they use blocks of block // kernel"
            )


OpenS2SSpeechTokenizerConfig.register_for_auto_class()
