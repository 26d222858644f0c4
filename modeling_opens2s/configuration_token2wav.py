"""Configuration of the token2wav decoder: GLM-4-Voice's flow matching (CosyVoice v1) + HiFT vocoder.

Nested like Qwen2.5-Omni's token2wav config (`dit_config` + `bigvgan_config`): [`OpenS2SToken2WavConfig`] holds a
`flow_config` ([`OpenS2SToken2WavFlowConfig`]: units -> mel, with the fields of its encoder and estimator) and a
`hift_config` ([`OpenS2SToken2WavHiFTConfig`]: mel -> waveform), plus the streaming schedule. Two levels, no more.
"""

import math

from huggingface_hub.dataclasses import strict
from transformers.configuration_utils import PreTrainedConfig
from transformers.utils import logging


__all__ = ["OpenS2SToken2WavConfig", "OpenS2SToken2WavFlowConfig", "OpenS2SToken2WavHiFTConfig"]

logger = logging.get_logger(__name__)


@strict
class OpenS2SToken2WavFlowConfig(PreTrainedConfig):
    r"""
    Configuration of [`FlowDecoder`], the flow part of the token2wav decoder: speech units (12.5 units/s) -> 80-bin
    log-mel. Defaults are the released `glm-4-voice-decoder`.

    Units are embedded, encoded by a block-causal conformer (`encoder_*`), projected to mel size and stretched to
    `sampling_rate / hop_length` frames/s by the length regulator; a conditional flow-matching U-Net (`estimator_*`)
    turns noise into the mel in `num_timesteps` Euler steps with classifier-free guidance.

    Args:
        vocab_size (`int`, *optional*, defaults to 16384):
            Number of speech units.
        token_embedding_dim (`int`, *optional*, defaults to 512):
            Size of the unit embedding (the encoder input).
        mel_bins (`int`, *optional*, defaults to 80):
            Mel channels of the output.
        speaker_embedding_dim (`int`, *optional*, defaults to 192):
            Size of the x-vector speaker embedding (all zeros = the default voice).
        input_frame_rate (`float`, *optional*, defaults to 12.5):
            Units per second.
        sampling_rate (`int`, *optional*, defaults to 22050):
            Audio rate in Hz of the frame formula `frames = int(units / input_frame_rate * sampling_rate /
            hop_length)` (the original hard-codes 22050 and 256).
        hop_length (`int`, *optional*, defaults to 256):
            Waveform samples per mel frame in that formula.
        encoder_hidden_size (`int`, *optional*, defaults to 512):
            Conformer width.
        encoder_num_heads (`int`, *optional*, defaults to 8):
            Conformer attention heads.
        encoder_ffn_dim (`int`, *optional*, defaults to 2048):
            Conformer feed-forward width.
        encoder_num_layers (`int`, *optional*, defaults to 6):
            Conformer layers.
        encoder_block_size (`int`, *optional*, defaults to 10):
            Units per block of the block-causal attention; streaming chunks are whole blocks.
        encoder_layer_norm_eps (`float`, *optional*, defaults to 1e-05):
            Epsilon of the conformer's LayerNorms.
        regulator_sampling_ratios (`list[int]`, *optional*, defaults to `[1, 1, 1, 1]`):
            One conv + GroupNorm + Mish stage of the length regulator per entry.
        estimator_channels (`list[int]`, *optional*, defaults to `[256, 256]`):
            U-Net channels per level of the flow-matching estimator.
        estimator_attention_head_dim (`int`, *optional*, defaults to 64):
            Head size of the estimator's transformer blocks.
        estimator_num_heads (`int`, *optional*, defaults to 8):
            Heads of the estimator's transformer blocks.
        estimator_num_blocks (`int`, *optional*, defaults to 4):
            Transformer blocks per down/up level.
        estimator_num_mid_blocks (`int`, *optional*, defaults to 12):
            Middle levels of the estimator.
        num_timesteps (`int`, *optional*, defaults to 10):
            Euler steps of the flow ODE (cosine schedule).
        cfg_rate (`float`, *optional*, defaults to 0.7):
            Classifier-free guidance: `v = (1 + cfg_rate) * v_cond - cfg_rate * v_uncond`.
        temperature (`float`, *optional*, defaults to 1.0):
            Scale of the initial noise.
    """

    model_type = "opens2s_token2wav_flow"
    base_config_key = "flow_config"

    vocab_size: int = 16384
    token_embedding_dim: int = 512
    mel_bins: int = 80
    speaker_embedding_dim: int = 192
    input_frame_rate: float | int = 12.5
    sampling_rate: int = 22050
    hop_length: int = 256
    encoder_hidden_size: int = 512
    encoder_num_heads: int = 8
    encoder_ffn_dim: int = 2048
    encoder_num_layers: int = 6
    encoder_block_size: int = 10
    encoder_layer_norm_eps: float = 1e-5
    regulator_sampling_ratios: list[int] | None = None
    estimator_channels: list[int] | None = None
    estimator_attention_head_dim: int = 64
    estimator_num_heads: int = 8
    estimator_num_blocks: int = 4
    estimator_num_mid_blocks: int = 12
    num_timesteps: int = 10
    cfg_rate: float | int = 0.7
    temperature: float | int = 1.0

    def __post_init__(self, **kwargs):
        if self.regulator_sampling_ratios is None:
            self.regulator_sampling_ratios = [1, 1, 1, 1]
        if self.estimator_channels is None:
            self.estimator_channels = [256, 256]
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """The conformer width must split into its heads; the U-Net needs at least one level."""
        if self.encoder_hidden_size % self.encoder_num_heads:
            raise ValueError(
                f"encoder_hidden_size ({self.encoder_hidden_size}) must be divisible by encoder_num_heads "
                f"({self.encoder_num_heads})"
            )
        if not self.estimator_channels:
            raise ValueError("estimator_channels must name at least one U-Net level")

    @property
    def frames_per_unit(self) -> float:
        """Mel frames per speech unit (22050 / 256 / 12.5 = 6.89 for the released decoder)."""
        return self.sampling_rate / self.hop_length / self.input_frame_rate


@strict
class OpenS2SToken2WavHiFTConfig(PreTrainedConfig):
    r"""
    Configuration of [`HiFTVocoder`]: log-mel -> waveform (HiFi-GAN with a neural source filter and an iSTFT head).
    Defaults are the released `glm-4-voice-decoder`.

    Args:
        mel_bins (`int`, *optional*, defaults to 80):
            Mel channels of the input.
        sampling_rate (`int`, *optional*, defaults to 22050):
            Output sample rate in Hz (the sine bank's phase increment is `f0 / sampling_rate`).
        base_channels (`int`, *optional*, defaults to 512):
            Channels after the input convolution (halved at each upsampling).
        num_harmonics (`int`, *optional*, defaults to 8):
            Harmonics of the sine source (plus the fundamental).
        upsample_rates (`list[int]`, *optional*, defaults to `[8, 8]`):
            Transposed-convolution strides.
        upsample_kernel_sizes (`list[int]`, *optional*, defaults to `[16, 16]`):
            Transposed-convolution kernels.
        istft_n_fft (`int`, *optional*, defaults to 16):
            FFT size (= window) of the source STFT and of the iSTFT head.
        istft_hop_length (`int`, *optional*, defaults to 4):
            Hop of both (`prod(upsample_rates) * istft_hop_length` = samples per mel frame).
        resblock_kernel_sizes (`list[int]`, *optional*, defaults to `[3, 7, 11]`):
            Kernels of the multi-receptive-field residual blocks.
        resblock_dilation_sizes (`list[list[int]]`, *optional*, defaults to `[[1, 3, 5]] * 3`):
            Dilations of those blocks.
        source_resblock_kernel_sizes (`list[int]`, *optional*, defaults to `[7, 11]`):
            Kernels of the residual blocks on the source branch (one per upsampling stage).
        source_resblock_dilation_sizes (`list[list[int]]`, *optional*, defaults to `[[1, 3, 5]] * 2`):
            Dilations of those blocks.
        lrelu_slope (`float`, *optional*, defaults to 0.1):
            Leaky-ReLU slope before each upsampling.
        audio_limit (`float`, *optional*, defaults to 0.99):
            The waveform is clamped to `[-audio_limit, audio_limit]`.
        nsf_alpha (`float`, *optional*, defaults to 0.1):
            Amplitude of the sine source; unvoiced samples get noise of std `nsf_alpha / 3` instead.
        nsf_sigma (`float`, *optional*, defaults to 0.003):
            Noise std on voiced samples.
        voiced_threshold (`float`, *optional*, defaults to 10.0):
            Frames with f0 above this (Hz) are voiced.
        f0_cond_channels (`int`, *optional*, defaults to 512):
            Width of the f0 predictor's convolutions.
    """

    model_type = "opens2s_token2wav_hift"
    base_config_key = "hift_config"

    mel_bins: int = 80
    sampling_rate: int = 22050
    base_channels: int = 512
    num_harmonics: int = 8
    upsample_rates: list[int] | None = None
    upsample_kernel_sizes: list[int] | None = None
    istft_n_fft: int = 16
    istft_hop_length: int = 4
    resblock_kernel_sizes: list[int] | None = None
    resblock_dilation_sizes: list[list[int]] | None = None
    source_resblock_kernel_sizes: list[int] | None = None
    source_resblock_dilation_sizes: list[list[int]] | None = None
    lrelu_slope: float | int = 0.1
    audio_limit: float | int = 0.99
    nsf_alpha: float | int = 0.1
    nsf_sigma: float | int = 0.003
    voiced_threshold: float | int = 10.0
    f0_cond_channels: int = 512

    def __post_init__(self, **kwargs):
        defaults = {
            "upsample_rates": [8, 8],
            "upsample_kernel_sizes": [16, 16],
            "resblock_kernel_sizes": [3, 7, 11],
            "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
            "source_resblock_kernel_sizes": [7, 11],
            "source_resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5]],
        }
        for name, value in defaults.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Lists must pair up: one kernel per stride, one source block per upsampling stage, dilations per kernel."""
        if not len(self.upsample_rates) == len(self.upsample_kernel_sizes) == len(self.source_resblock_kernel_sizes):
            raise ValueError("upsample_rates, upsample_kernel_sizes and source_resblock_kernel_sizes must pair up")
        if len(self.resblock_kernel_sizes) != len(self.resblock_dilation_sizes):
            raise ValueError("resblock_kernel_sizes and resblock_dilation_sizes must have the same length")
        if len(self.source_resblock_kernel_sizes) != len(self.source_resblock_dilation_sizes):
            raise ValueError(
                "source_resblock_kernel_sizes and source_resblock_dilation_sizes must have the same length"
            )

    @property
    def samples_per_frame(self) -> int:
        """Waveform samples per mel frame: `prod(upsample_rates) * istft_hop_length` (256 for GLM-4-Voice)."""
        return math.prod(self.upsample_rates) * self.istft_hop_length


# Fields of the flat config written before the nesting (config.json of folders converted until tiny-v3): the flow's
# kept their names, HiFT's dropped the `hift_` prefix, `mel_bins` and `sampling_rate` went to both sub-configs.
_LEGACY_FLOW_FIELDS = (
    "vocab_size",
    "token_embedding_dim",
    "mel_bins",
    "speaker_embedding_dim",
    "input_frame_rate",
    "sampling_rate",
    "hop_length",
    "encoder_hidden_size",
    "encoder_num_heads",
    "encoder_ffn_dim",
    "encoder_num_layers",
    "encoder_block_size",
    "regulator_sampling_ratios",
    "estimator_channels",
    "estimator_attention_head_dim",
    "estimator_num_heads",
    "estimator_num_blocks",
    "estimator_num_mid_blocks",
    "num_timesteps",
    "cfg_rate",
    "temperature",
)
_LEGACY_HIFT_SHARED_FIELDS = ("mel_bins", "sampling_rate")
_LEGACY_HIFT_PREFIX = "hift_"


def _split_legacy_fields(kwargs: dict) -> tuple[dict, dict]:
    """Pop the flat config's fields out of `kwargs` (in place) as `(flow_config, hift_config)` dicts."""
    hift = {name: kwargs[name] for name in _LEGACY_HIFT_SHARED_FIELDS if name in kwargs}
    hift |= {
        name[len(_LEGACY_HIFT_PREFIX) :]: kwargs.pop(name)
        for name in list(kwargs)
        if name.startswith(_LEGACY_HIFT_PREFIX)
    }
    flow = {name: kwargs.pop(name) for name in _LEGACY_FLOW_FIELDS if name in kwargs}
    return flow, hift


@strict
class OpenS2SToken2WavConfig(PreTrainedConfig):
    r"""
    Configuration of [`OpenS2SToken2Wav`], the speech decoder that turns speech units (12.5 units/s) into a
    22.05 kHz waveform: a flow-matching mel generator (`flow_config`) and the HiFT vocoder (`hift_config`), plus the
    streaming schedule of [`~OpenS2SToken2Wav.start_stream`]. Defaults are the released `glm-4-voice-decoder`.

    A `config.json` written before the nesting (flat fields such as `encoder_hidden_size` and `hift_base_channels`)
    still loads: those fields are moved into the sub-configs.

    Args:
        flow_config (`dict` or [`OpenS2SToken2WavFlowConfig`], *optional*):
            Units -> mel (embedding, block-causal conformer, length regulator, flow-matching U-Net).
        hift_config (`dict` or [`OpenS2SToken2WavHiFTConfig`], *optional*):
            Mel -> waveform.
        stream_first_chunk_blocks (`int`, *optional*, defaults to 1):
            Streaming (`mode="blocks"`): encoder blocks in the first chunk (small for a short time to first audio).
        stream_chunk_blocks (`int`, *optional*, defaults to 4):
            Streaming: the largest chunk, in encoder blocks; chunk sizes double from the first up to this one.
        stream_left_context_blocks (`int`, *optional*, defaults to 1):
            Streaming: earlier blocks (units and their mel) re-read as the flow's prompt, so a chunk costs the same
            however long the answer is. The flow re-solves these frames too: a steady chunk reads
            `(stream_left_context_blocks + stream_chunk_blocks) / stream_chunk_blocks` times its own units.
        stream_vocoder_context_frames (`int`, *optional*, defaults to 8):
            Streaming: earlier mel frames re-rendered by HiFT before each chunk, so its convolutions see the past.
        stream_holdback_frames (`int`, *optional*, defaults to 4):
            Streaming: last mel frames of a chunk not played yet (the vocoder needs their right context); they are
            played, cross-faded, with the next chunk.
        stream_crossfade_samples (`int`, *optional*, defaults to 256):
            Streaming: length of the waveform cross-fade at each seam.
    """

    model_type = "opens2s_token2wav"
    sub_configs_defaults = {
        "flow_config": OpenS2SToken2WavFlowConfig,
        "hift_config": OpenS2SToken2WavHiFTConfig,
    }

    flow_config: dict | OpenS2SToken2WavFlowConfig | None = None
    hift_config: dict | OpenS2SToken2WavHiFTConfig | None = None
    stream_first_chunk_blocks: int = 1
    stream_chunk_blocks: int = 4
    stream_left_context_blocks: int = 1
    stream_vocoder_context_frames: int = 8
    stream_holdback_frames: int = 4
    stream_crossfade_samples: int = 256

    def __post_init__(self, **kwargs):
        legacy_flow, legacy_hift = _split_legacy_fields(kwargs)
        if legacy_flow or legacy_hift:
            if isinstance(self.flow_config, PreTrainedConfig) or isinstance(self.hift_config, PreTrainedConfig):
                raise ValueError("pass the flat token2wav fields or flow_config/hift_config objects, not both")
            self.flow_config = {**legacy_flow, **(self.flow_config or {})}
            self.hift_config = {**legacy_hift, **(self.hift_config or {})}
            logger.warning_once(
                "token2wav config.json in the flat layout of opens2s <= tiny-v3: its fields were moved into "
                "flow_config / hift_config (save the model again to write the nested layout)"
            )
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Flow and vocoder must agree (mel bins, sample rate, samples per mel frame); streaming sizes in range."""
        flow, hift = self.flow_config, self.hift_config
        for name in ("mel_bins", "sampling_rate"):
            if getattr(flow, name) != getattr(hift, name):
                raise ValueError(
                    f"flow_config.{name} ({getattr(flow, name)}) must equal hift_config.{name} ({getattr(hift, name)})"
                )
        if hift.samples_per_frame != flow.hop_length:
            raise ValueError(
                f"prod(hift_config.upsample_rates) * hift_config.istft_hop_length = {hift.samples_per_frame} must "
                f"equal flow_config.hop_length = {flow.hop_length}"
            )
        for name in ("stream_first_chunk_blocks", "stream_chunk_blocks"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("stream_left_context_blocks", "stream_vocoder_context_frames", "stream_holdback_frames"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.stream_crossfade_samples > self.stream_holdback_frames * flow.hop_length:
            raise ValueError(
                "stream_crossfade_samples must fit in the held-back audio (stream_holdback_frames * hop_length)"
            )

    # Read-only shortcuts to the sub-config fields that callers of the whole decoder need.
    @property
    def vocab_size(self) -> int:
        """Number of speech units (`flow_config.vocab_size`)."""
        return self.flow_config.vocab_size

    @property
    def sampling_rate(self) -> int:
        """Output sample rate in Hz (`hift_config.sampling_rate`)."""
        return self.hift_config.sampling_rate

    @property
    def hop_length(self) -> int:
        """Waveform samples per mel frame (`flow_config.hop_length`)."""
        return self.flow_config.hop_length


OpenS2SToken2WavConfig.register_for_auto_class()
