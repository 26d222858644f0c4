"""Configuration of OpenS2S (arXiv 2507.05177): audio encoder + adapter + LLM + speech decoder."""

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig
from transformers.configuration_utils import PreTrainedConfig, SubConfigSpec


__all__ = ["OpenS2SConfig", "parse_interleave_strategy"]


def parse_interleave_strategy(strategy: str) -> tuple[int, int]:
    """Parse the original `interleave_strategy` string, e.g. `"4:8"` -> `(text_span=4, speech_span=8)`."""
    try:
        text_span, speech_span = (int(part) for part in strategy.split(":"))
    except ValueError as error:
        raise ValueError(f"interleave_strategy must look like 'M:N' with two integers, got {strategy!r}") from error
    return text_span, speech_span


@strict
class OpenS2SConfig(PreTrainedConfig):
    r"""
    Configuration of [`OpenS2SForConditionalGeneration`].

    The model hears 16 kHz speech through a Qwen2-Audio encoder (25 frames/s), shortens it with a strided
    convolutional adapter (6.25 frames/s) into the embedding space of a Qwen3 LLM, and speaks the answer with a
    second Qwen3 LM (the speech decoder) that reads the LLM's hidden states and writes speech units (12.5 units/s),
    interleaving `text_span` hidden states with `speech_span` units.

    Args:
        audio_config (`dict` or `PreTrainedConfig`, *optional*):
            Config of the audio encoder (`model_type="qwen2_audio_encoder"`).
        text_config (`dict` or `PreTrainedConfig`, *optional*):
            Config of the LLM (`model_type="qwen3"`).
        speech_decoder_config (`dict` or `PreTrainedConfig`, *optional*):
            Config of the speech decoder LM (`model_type="qwen3"`); its vocabulary holds the speech unit tokens.
        adapter_conv_kernel_sizes (`list[int]`, *optional*, defaults to `[5, 5]`):
            Kernel size of every stride-2 convolution of the adapter (each halves the frame rate).
        adapter_inner_dim (`int`, *optional*, defaults to 512):
            Inner size of the adapter's residual feed-forward block.
        text_span (`int`, *optional*, defaults to 4):
            Number of LLM hidden states handed to the speech decoder per interleaving step (M of "M:N").
        speech_span (`int`, *optional*, defaults to 8):
            Number of speech units the decoder writes per interleaving step (N of "M:N").
        speaker_embedding_dim (`int`, *optional*, defaults to 512):
            Size of the speaker embedding projected into the speech decoder's first ("speaker slot") position.
        audio_token_id (`int`, *optional*):
            LLM token id of the audio placeholder `<|im_audio|>`; the processor repeats it once per adapter frame.
        text_loss_weight (`float`, *optional*, defaults to 1.0):
            Weight of the LLM cross-entropy in `loss`.
        speech_loss_weight (`float`, *optional*, defaults to 1.0):
            Weight of the speech-unit cross-entropy in `loss`.
    """

    model_type = "opens2s"
    sub_configs_defaults = {
        "audio_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen2_audio_encoder"),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen3"),
        "speech_decoder_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen3"),
    }

    audio_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    speech_decoder_config: dict | PreTrainedConfig | None = None
    adapter_conv_kernel_sizes: list[int] | None = None
    adapter_inner_dim: int = 512
    text_span: int = 4
    speech_span: int = 8
    speaker_embedding_dim: int = 512
    audio_token_id: int | None = None
    text_loss_weight: float | int = 1.0
    speech_loss_weight: float | int = 1.0

    def __post_init__(self, **kwargs):
        if self.adapter_conv_kernel_sizes is None:
            self.adapter_conv_kernel_sizes = [5, 5]
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Cross-field checks: spans, adapter kernels and the placeholder id."""
        super().validate_architecture()
        if self.text_span < 1 or self.speech_span < 1:
            raise ValueError(f"text_span and speech_span must be >= 1, got {self.text_span}:{self.speech_span}")
        if not self.adapter_conv_kernel_sizes or any(k < 1 for k in self.adapter_conv_kernel_sizes):
            raise ValueError(f"adapter_conv_kernel_sizes must be positive, got {self.adapter_conv_kernel_sizes}")
        if self.audio_token_id is not None and self.audio_token_id < 0:
            raise ValueError(f"audio_token_id must be a non-negative token id, got {self.audio_token_id}")


OpenS2SConfig.register_for_auto_class()
