"""Configuration of the token2wav decoder: GLM-4-Voice's flow matching (CosyVoice v1) + HiFT vocoder."""

from huggingface_hub.dataclasses import strict
from transformers.configuration_utils import PreTrainedConfig


__all__ = ["OpenS2SToken2WavConfig"]


@strict
class OpenS2SToken2WavConfig(PreTrainedConfig):
    r"""
    Configuration of [`OpenS2SToken2Wav`], the speech decoder that turns speech units (12.5 units/s) into a
    22.05 kHz waveform. Defaults are the released `glm-4-voice-decoder`.

    Units are embedded, encoded by a block-causal conformer, projected to mel size and stretched to the mel frame
    rate (`sampling_rate / hop_length` frames/s); a conditional flow-matching U-Net turns noise into an 80-bin mel in
    `num_timesteps` Euler steps with classifier-free guidance, and HiFT (HiFi-GAN with a neural source filter and an
    iSTFT head) renders the mel.

    Args:
        vocab_size (`int`, *optional*, defaults to 16384):
            Number of speech units.
        token_embedding_dim (`int`, *optional*, defaults to 512):
            Size of the unit embedding (the encoder input).
        mel_bins (`int`, *optional*, defaults to 80):
            Mel channels.
        speaker_embedding_dim (`int`, *optional*, defaults to 192):
            Size of the x-vector speaker embedding (all zeros = the default voice).
        input_frame_rate (`float`, *optional*, defaults to 12.5):
            Units per second.
        sampling_rate (`int`, *optional*, defaults to 22050):
            Output sample rate in Hz.
        hop_length (`int`, *optional*, defaults to 256):
            Waveform samples per mel frame.
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
        hift_base_channels (`int`, *optional*, defaults to 512):
            Channels after HiFT's input convolution (halved at each upsampling).
        hift_num_harmonics (`int`, *optional*, defaults to 8):
            Harmonics of the sine source (plus the fundamental).
        hift_upsample_rates (`list[int]`, *optional*, defaults to `[8, 8]`):
            Transposed-convolution strides.
        hift_upsample_kernel_sizes (`list[int]`, *optional*, defaults to `[16, 16]`):
            Transposed-convolution kernels.
        hift_istft_n_fft (`int`, *optional*, defaults to 16):
            FFT size of the iSTFT head.
        hift_istft_hop_length (`int`, *optional*, defaults to 4):
            Hop of the iSTFT head (`prod(upsample_rates) * hop = hop_length`).
        hift_resblock_kernel_sizes (`list[int]`, *optional*, defaults to `[3, 7, 11]`):
            Kernels of the multi-receptive-field residual blocks.
        hift_resblock_dilation_sizes (`list[list[int]]`, *optional*, defaults to `[[1, 3, 5]] * 3`):
            Dilations of those blocks.
        hift_source_resblock_kernel_sizes (`list[int]`, *optional*, defaults to `[7, 11]`):
            Kernels of the residual blocks on the source branch.
        hift_source_resblock_dilation_sizes (`list[list[int]]`, *optional*, defaults to `[[1, 3, 5]] * 2`):
            Dilations of those blocks.
        hift_lrelu_slope (`float`, *optional*, defaults to 0.1):
            Leaky-ReLU slope between stages.
        hift_audio_limit (`float`, *optional*, defaults to 0.99):
            The waveform is clamped to `[-audio_limit, audio_limit]`.
        hift_nsf_alpha (`float`, *optional*, defaults to 0.1):
            Amplitude of the sine source.
        hift_nsf_sigma (`float`, *optional*, defaults to 0.003):
            Noise std on voiced samples.
        hift_voiced_threshold (`float`, *optional*, defaults to 10.0):
            Frames with f0 above this (Hz) are voiced.
        hift_f0_cond_channels (`int`, *optional*, defaults to 512):
            Width of the f0 predictor's convolutions.
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
    regulator_sampling_ratios: list[int] | None = None
    estimator_channels: list[int] | None = None
    estimator_attention_head_dim: int = 64
    estimator_num_heads: int = 8
    estimator_num_blocks: int = 4
    estimator_num_mid_blocks: int = 12
    num_timesteps: int = 10
    cfg_rate: float | int = 0.7
    temperature: float | int = 1.0
    hift_base_channels: int = 512
    hift_num_harmonics: int = 8
    hift_upsample_rates: list[int] | None = None
    hift_upsample_kernel_sizes: list[int] | None = None
    hift_istft_n_fft: int = 16
    hift_istft_hop_length: int = 4
    hift_resblock_kernel_sizes: list[int] | None = None
    hift_resblock_dilation_sizes: list[list[int]] | None = None
    hift_source_resblock_kernel_sizes: list[int] | None = None
    hift_source_resblock_dilation_sizes: list[list[int]] | None = None
    hift_lrelu_slope: float | int = 0.1
    hift_audio_limit: float | int = 0.99
    hift_nsf_alpha: float | int = 0.1
    hift_nsf_sigma: float | int = 0.003
    hift_voiced_threshold: float | int = 10.0
    hift_f0_cond_channels: int = 512
    stream_first_chunk_blocks: int = 1
    stream_chunk_blocks: int = 4
    stream_left_context_blocks: int = 1
    stream_vocoder_context_frames: int = 8
    stream_holdback_frames: int = 4
    stream_crossfade_samples: int = 256

    def __post_init__(self, **kwargs):
        defaults = {
            "regulator_sampling_ratios": [1, 1, 1, 1],
            "estimator_channels": [256, 256],
            "hift_upsample_rates": [8, 8],
            "hift_upsample_kernel_sizes": [16, 16],
            "hift_resblock_kernel_sizes": [3, 7, 11],
            "hift_resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
            "hift_source_resblock_kernel_sizes": [7, 11],
            "hift_source_resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5]],
        }
        for name, value in defaults.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Cross-field checks: the vocoder's hop must equal the mel hop, lists must pair up, streaming sizes > 0."""
        vocoder_hop = self.hift_istft_hop_length
        for rate in self.hift_upsample_rates:
            vocoder_hop *= rate
        if vocoder_hop != self.hop_length:
            raise ValueError(
                f"prod(hift_upsample_rates) * hift_istft_hop_length = {vocoder_hop} must equal hop_length "
                f"= {self.hop_length}"
            )
        if len(self.hift_upsample_rates) != len(self.hift_upsample_kernel_sizes):
            raise ValueError("hift_upsample_rates and hift_upsample_kernel_sizes must have the same length")
        if len(self.hift_resblock_kernel_sizes) != len(self.hift_resblock_dilation_sizes):
            raise ValueError("hift_resblock_kernel_sizes and hift_resblock_dilation_sizes must have the same length")
        if len(self.hift_source_resblock_kernel_sizes) != len(self.hift_source_resblock_dilation_sizes):
            raise ValueError(
                "hift_source_resblock_kernel_sizes and hift_source_resblock_dilation_sizes must have the same length"
            )
        if self.encoder_hidden_size % self.encoder_num_heads:
            raise ValueError(
                f"encoder_hidden_size ({self.encoder_hidden_size}) must be divisible by encoder_num_heads "
                f"({self.encoder_num_heads})"
            )
        streaming = {
            "stream_first_chunk_blocks": self.stream_first_chunk_blocks,
            "stream_chunk_blocks": self.stream_chunk_blocks,
        }
        for name, value in streaming.items():
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        for name in ("stream_left_context_blocks", "stream_vocoder_context_frames", "stream_holdback_frames"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.stream_crossfade_samples > self.stream_holdback_frames * self.hop_length:
            raise ValueError(
                "stream_crossfade_samples must fit in the held-back audio (stream_holdback_frames * hop_length)"
            )

    @property
    def frames_per_unit(self) -> float:
        """Mel frames per speech unit (22050 / 256 / 12.5 = 6.89 for the released decoder)."""
        return self.sampling_rate / self.hop_length / self.input_frame_rate


OpenS2SToken2WavConfig.register_for_auto_class()
