"""Flow part of the GLM-4-Voice speech decoder: speech units -> 80-bin log-mel (CosyVoice v1 `MaskedDiffWithXvec`).

Pipeline of `FlowDecoder.inference` (maths of the original `MaskedDiffWithXvec.inference` + `ConditionalCFM`):

1. `cat(prompt_tokens, tokens)` (negative ids clamped to 0, see below) -> embedding -> `BlockConformerEncoder` ->
   linear projection to `mel_bins` channels (`mu_tokens`).
2. Length regulator: nearest-neighbour interpolation of `mu_tokens` to `T_total` frames, then conv/GroupNorm/Mish
   blocks (`mu`). `T_total = int(float32(tokens / input_frame_rate * sampling_rate / hop_length))`.
3. Conditional flow matching: from noise `x_0`, 10 Euler steps over the cosine schedule
   `t = 1 - cos(linspace(0, 1, 11) * pi / 2)` of the U-Net velocity `ConditionalDecoder` with classifier-free
   guidance `v = (1 + cfg) * v(x, mu, spks, cond) - cfg * v(x, 0, 0, 0)`. `cond` holds the prompt mel in its first
   frames and zeros after; `spks = Linear(normalize(speaker_embedding))`.
4. `mel = mel_full[:, :, prompt_frames:]`.

Behaviours of the original kept on purpose (ids of `docs/original_behaviour.md#t2w-quirks`):

- OB-T2W-2: the original re-seeds the GLOBAL generator with 42 before every ODE. We never touch the global RNG: pass
  `noise`, or a `generator` (`torch.Generator().manual_seed(42)` reproduces the original on CPU bit for bit).
- OB-T2W-6: int32 and int64 prompt tokens are both accepted (everything is embedded as int64).
- OB-T2W-8: the Euler solver feeds the estimator an accumulated float32 `t` (`t += dt; dt = t_span[k + 1] - t`),
  which can differ from `t_span[k]` by one ulp.
- OB-T2W-14: negative token ids are clamped to 0 (an EOS id passed as a unit is silently decoded as unit 0).
- The U-Net attention (diffusers `Attention` in the original) receives the 0/1 frame mask as an ADDITIVE float bias:
  valid keys get +1, padded keys +0, so padding is only down-weighted, never masked. Batch rows of equal length (all
  this module decodes) have no padding, where the +1 is a no-op up to rounding.
"""

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .configuration_token2wav import OpenS2SToken2WavFlowConfig
from .modeling_token2wav_flow_encoder import BlockConformerEncoder, FeedForward


__all__ = [
    "ConditionalDecoder",
    "FlowDecoder",
    "FlowOutput",
    "LengthRegulator",
    "solve_euler_cfg",
]

# GroupNorm groups of every U-Net conv block (fixed in the original).
UNET_NORM_GROUPS = 8
# FFN width multiplier of the U-Net transformer blocks (diffusers `FeedForward(mult=4)`).
UNET_FFN_MULT = 4

StepCallback = Callable[[int, Tensor, Tensor, Tensor, Tensor | None], None]


def sinusoidal_time_embedding(t: Tensor, dim: int, scale: float = 1000.0) -> Tensor:
    """Sinusoidal embedding of the flow time.

    Args:
        t (`Tensor` of shape `()` or `(batch,)`): flow time in [0, 1].
        dim (`int`): embedding size (even): `dim / 2` sines then `dim / 2` cosines.
        scale (`float`): time multiplier.

    Returns:
        `Tensor` of shape `(batch or 1, dim)`, float32.
    """
    t = t.float().reshape(-1)
    half = dim // 2
    frequencies = torch.exp(torch.arange(half, device=t.device).float() * -(math.log(10000) / (half - 1)))
    angles = scale * t.unsqueeze(1) * frequencies.unsqueeze(0)
    return torch.cat((angles.sin(), angles.cos()), dim=-1)


class ConvBlock(nn.Module):
    """`Mish(GroupNorm(Conv1d(k=3)(x)))`, masked in and out when a frame mask is given.

    Args:
        dim (`int`): input channels.
        dim_out (`int`): output channels.
        groups (`int`): GroupNorm groups.
    """

    def __init__(self, dim: int, dim_out: int, groups: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(dim, dim_out, 3, padding=1)
        self.norm = nn.GroupNorm(groups, dim_out)
        self.act = nn.Mish()

    def forward(self, hidden_states: Tensor, mask: Tensor | None = None) -> Tensor:
        """`(batch, dim, frames)` (+ mask `(batch, 1, frames)`) -> `(batch, dim_out, frames)`."""
        if mask is None:
            return self.act(self.norm(self.conv(hidden_states)))
        return self.act(self.norm(self.conv(hidden_states * mask))) * mask


class LengthRegulator(nn.Module):
    """Token rate -> frame rate: nearest interpolation, then one conv block per entry of
    `regulator_sampling_ratios` (the values themselves are unused, as the original) and a 1x1 conv, on `mel_bins`
    channels.

    Args:
        config ([`OpenS2SToken2WavFlowConfig`]): its `mel_bins` and `regulator_sampling_ratios`.
    """

    def __init__(self, config: OpenS2SToken2WavFlowConfig) -> None:
        super().__init__()
        channels = config.mel_bins
        self.blocks = nn.ModuleList(ConvBlock(channels, channels, groups=1) for _ in config.regulator_sampling_ratios)
        self.output_conv = nn.Conv1d(channels, channels, 1)

    def forward(self, hidden_states: Tensor, num_frames: int) -> Tensor:
        """`(batch, tokens, channels)` -> `(batch, num_frames, channels)`."""
        hidden_states = F.interpolate(hidden_states.transpose(1, 2).contiguous(), size=num_frames, mode="nearest")
        for block in self.blocks:
            hidden_states = block(hidden_states)
        return self.output_conv(hidden_states).transpose(1, 2).contiguous()


class ResnetBlock(nn.Module):
    """Two conv blocks with the time embedding added in between, plus a 1x1 residual conv.

    Args:
        dim (`int`): input channels.
        dim_out (`int`): output channels.
        time_dim (`int`): time-embedding width.
    """

    def __init__(self, dim: int, dim_out: int, time_dim: int) -> None:
        super().__init__()
        self.time_act = nn.Mish()
        self.time_proj = nn.Linear(time_dim, dim_out)
        self.block1 = ConvBlock(dim, dim_out, UNET_NORM_GROUPS)
        self.block2 = ConvBlock(dim_out, dim_out, UNET_NORM_GROUPS)
        self.res_conv = nn.Conv1d(dim, dim_out, 1)

    def forward(self, hidden_states: Tensor, mask: Tensor, time_emb: Tensor) -> Tensor:
        """`(batch, dim, frames)`, mask `(batch, 1, frames)`, time `(batch or 1, time_dim)` -> `(batch, dim_out, .)`"""
        out = self.block1(hidden_states, mask) + self.time_proj(self.time_act(time_emb)).unsqueeze(-1)
        return self.block2(out, mask) + self.res_conv(hidden_states * mask)


class Attention(nn.Module):
    """Multi-head self-attention in the diffusers layout (bias-free q/k/v, `inner = heads * head_dim`).

    Args:
        dim (`int`): input/output width.
        num_heads (`int`): heads.
        head_dim (`int`): width per head (`num_heads * head_dim` need not equal `dim`).
    """

    def __init__(self, dim: int, num_heads: int, head_dim: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim
        inner = num_heads * head_dim
        self.q_proj = nn.Linear(dim, inner, bias=False)
        self.k_proj = nn.Linear(dim, inner, bias=False)
        self.v_proj = nn.Linear(dim, inner, bias=False)
        self.o_proj = nn.Linear(inner, dim)

    def forward(self, hidden_states: Tensor, attention_bias: Tensor) -> Tensor:
        """`(batch, frames, dim)`, additive bias `(batch, 1, frames, frames)` -> `(batch, frames, dim)`."""
        batch = hidden_states.shape[0]
        query, key, value = (
            proj(hidden_states).view(batch, -1, self.num_heads, self.head_dim).transpose(1, 2)
            for proj in (self.q_proj, self.k_proj, self.v_proj)
        )
        context = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_bias)
        return self.o_proj(context.transpose(1, 2).reshape(batch, -1, self.num_heads * self.head_dim))


class TransformerBlock(nn.Module):
    """Pre-norm transformer block: `x + attn(LN(x))`, then `x + FFN_gelu(LN(x))` (Matcha `BasicTransformerBlock`).

    Args:
        dim (`int`): width.
        num_heads (`int`): attention heads.
        head_dim (`int`): width per head.
    """

    def __init__(self, dim: int, num_heads: int, head_dim: int) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(dim)
        self.self_attn = Attention(dim, num_heads, head_dim)
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, dim * UNET_FFN_MULT, nn.GELU())

    def forward(self, hidden_states: Tensor, attention_bias: Tensor) -> Tensor:
        hidden_states = self.self_attn(self.attn_norm(hidden_states), attention_bias) + hidden_states
        return self.ffn(self.ffn_norm(hidden_states)) + hidden_states


class UNetLevel(nn.Module):
    """One U-Net level: resnet block, transformer blocks, and an optional resampling conv."""

    def __init__(self, resnet: ResnetBlock, transformer_blocks: nn.ModuleList, resample: nn.Module | None) -> None:
        super().__init__()
        self.resnet = resnet
        self.transformer_blocks = transformer_blocks
        self.resample = resample

    def forward(self, hidden_states: Tensor, mask: Tensor, time_emb: Tensor) -> Tensor:
        """Resnet + transformers on `(batch, channels, frames)`; the resampling is left to the caller."""
        hidden_states = self.resnet(hidden_states, mask, time_emb).transpose(1, 2).contiguous()
        # The original passes the 0/1 outer-product mask as an additive bias (see the module docstring).
        attention_bias = torch.matmul(mask.transpose(1, 2).contiguous(), mask).unsqueeze(1)
        for block in self.transformer_blocks:
            hidden_states = block(hidden_states, attention_bias)
        return hidden_states.transpose(1, 2).contiguous()


class ConditionalDecoder(nn.Module):
    """1-D U-Net velocity estimator `v(x, mask, mu, t, spks, cond)` of the flow (CosyVoice `ConditionalDecoder`).

    Its input is `cat(x, mu, spks, cond)` (4 x `mel_bins` = 320 channels), its output `mel_bins` channels.

    Args:
        config ([`OpenS2SToken2WavFlowConfig`]): `mel_bins` and the `estimator_*` fields: `estimator_channels` (width
            per down level; the last level does not downsample), `estimator_attention_head_dim`,
            `estimator_num_heads`, `estimator_num_blocks` (transformer blocks per level), `estimator_num_mid_blocks`.
    """

    def __init__(self, config: OpenS2SToken2WavFlowConfig) -> None:
        super().__init__()
        in_channels, out_channels, channels = 4 * config.mel_bins, config.mel_bins, config.estimator_channels
        num_heads, head_dim = config.estimator_num_heads, config.estimator_attention_head_dim
        self.in_channels = in_channels
        time_dim = channels[0] * 4
        self.time_mlp = nn.Sequential(
            OrderedDict(
                linear_1=nn.Linear(in_channels, time_dim), act=nn.SiLU(), linear_2=nn.Linear(time_dim, time_dim)
            )
        )

        def level(dim: int, dim_out: int, resample: nn.Module | None) -> UNetLevel:
            blocks = nn.ModuleList(
                TransformerBlock(dim_out, num_heads, head_dim) for _ in range(config.estimator_num_blocks)
            )
            return UNetLevel(ResnetBlock(dim, dim_out, time_dim), blocks, resample)

        last = len(channels) - 1
        widths = [in_channels, *channels]
        self.down_blocks = nn.ModuleList(
            level(widths[i], widths[i + 1], _resample_conv(widths[i + 1], "down" if i < last else "keep"))
            for i in range(len(channels))
        )
        self.mid_blocks = nn.ModuleList(
            level(channels[-1], channels[-1], None) for _ in range(config.estimator_num_mid_blocks)
        )
        widths = [*channels[::-1], channels[0]]
        self.up_blocks = nn.ModuleList(
            level(2 * widths[i], widths[i + 1], _resample_conv(widths[i + 1], "up" if i < last else "keep"))
            for i in range(len(channels))
        )
        self.final_block = ConvBlock(channels[0], channels[0], UNET_NORM_GROUPS)
        self.final_proj = nn.Conv1d(channels[0], out_channels, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        """The original's init: Kaiming-normal (ReLU gain) Conv1d/Linear weights, zero biases, unit GroupNorms."""
        for module in self.modules():
            if isinstance(module, nn.Conv1d | nn.Linear):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.GroupNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor, mask: Tensor, mu: Tensor, t: Tensor, spks: Tensor, cond: Tensor) -> Tensor:
        """Velocity at time `t`.

        Args:
            x (`Tensor` of shape `(batch, mel, frames)`): current ODE state.
            mask (`Tensor` of shape `(batch, 1, frames)`): 1 for real frames.
            mu (`Tensor` of shape `(batch, mel, frames)`): length-regulated encoder output.
            t (`Tensor` of shape `()` or `(batch,)`): flow time (any float dtype; embedded in float32).
            spks (`Tensor` of shape `(batch, mel)`): speaker condition.
            cond (`Tensor` of shape `(batch, mel, frames)`): prompt mel, zeros after the prompt.

        Returns:
            `Tensor` of shape `(batch, out_channels, frames)`, zero on masked frames.
        """
        time_emb = self.time_mlp(sinusoidal_time_embedding(t, self.in_channels).to(x.dtype))
        hidden = torch.cat([x, mu, spks.unsqueeze(-1).expand(-1, -1, x.shape[-1]), cond], dim=1)

        skips, masks = [], [mask]
        for down in self.down_blocks:
            hidden = down(hidden, masks[-1], time_emb)
            skips.append(hidden)
            hidden = down.resample(hidden * masks[-1])
            masks.append(masks[-1][:, :, ::2])
        masks.pop()  # the deepest (downsampled) resolution is never used: the last level keeps its length
        for mid in self.mid_blocks:
            hidden = mid(hidden, masks[-1], time_emb)
        for up in self.up_blocks:
            level_mask, skip = masks.pop(), skips.pop()
            hidden = torch.cat([hidden[:, :, : skip.shape[-1]], skip], dim=1)
            hidden = up.resample(up(hidden, level_mask, time_emb) * level_mask)
        hidden = self.final_block(hidden, mask)
        return self.final_proj(hidden * mask) * mask


def _resample_conv(channels: int, kind: str) -> nn.Module:
    """Stride-2 conv (`down`), stride-2 transposed conv doubling the length (`up`), or a 3-tap conv (`keep`)."""
    if kind == "down":
        return nn.Conv1d(channels, channels, 3, stride=2, padding=1)
    if kind == "up":
        return nn.ConvTranspose1d(channels, channels, 4, stride=2, padding=1)
    return nn.Conv1d(channels, channels, 3, padding=1)


def solve_euler_cfg(
    estimator: nn.Module,
    noise: Tensor,
    mask: Tensor,
    mu: Tensor,
    spks: Tensor,
    cond: Tensor,
    num_timesteps: int,
    cfg_rate: float,
    step_callback: StepCallback | None = None,
    batch_guidance: bool = False,
) -> Tensor:
    """Fixed-step Euler solver of the flow ODE over the cosine schedule, with classifier-free guidance.

    Args:
        estimator (`nn.Module`): velocity model called as `estimator(x, mask, mu, t, spks, cond)`.
        noise (`Tensor` of shape `(batch, mel, frames)`): the ODE start `x_0` (temperature already applied).
        mask (`Tensor` of shape `(batch, 1, frames)`): 1 for real frames.
        mu (`Tensor` of shape `(batch, mel, frames)`): length-regulated encoder output.
        spks (`Tensor` of shape `(batch, mel)`): speaker condition.
        cond (`Tensor` of shape `(batch, mel, frames)`): prompt-mel condition.
        num_timesteps (`int`): Euler steps (10 in GLM-4-Voice).
        cfg_rate (`float`): guidance weight; 0 skips the unconditional call.
        step_callback (`Callable`, *optional*): called before each update as
            `step_callback(step, t, x, v_cond, v_uncond)` (`v_uncond` is None when `cfg_rate == 0`), to observe the
            intermediates; it must not modify them.
        batch_guidance (`bool`, *optional*, defaults to `False`): run the conditional and unconditional velocities
            as one estimator call on a batch of `2 * batch` rows instead of two calls. Same maths, fewer and larger
            kernels (about 1.3x faster on CPU at one encoder block); the kernels sum in another order, so the result
            differs from the two-call solver by float32 rounding (~1e-6 on mel), which is why the parity paths
            (`synthesize`, the original's stream) keep the two calls.

    Returns:
        `Tensor` of shape `(batch, mel, frames)`, float32: the state at t = 1.
    """
    # x and t stay float32 whatever the estimator dtype: ten small Euler increments summed in bfloat16 (8 mantissa
    # bits) would lose most of each update, and t would drift from the schedule; only the estimator inputs are cast.
    dtype = next(estimator.parameters()).dtype
    t_span = torch.linspace(0, 1, num_timesteps + 1, dtype=torch.float32, device=noise.device)
    t_span = 1 - torch.cos(t_span * 0.5 * torch.pi)
    mask, mu, spks, cond = (tensor.to(dtype) for tensor in (mask, mu, spks, cond))
    unconditioned = (torch.zeros_like(mu), torch.zeros_like(spks), torch.zeros_like(cond))
    batched = cfg_rate > 0 and batch_guidance
    if batched:
        # Rows [0, batch) conditional, [batch, 2 * batch) unconditional; built once for the ten steps.
        batch = mu.shape[0]
        mask2 = torch.cat([mask, mask])
        mu2, spks2, cond2 = (
            torch.cat([tensor, zero]) for tensor, zero in zip((mu, spks, cond), unconditioned, strict=True)
        )
    x = noise.float()
    # Accumulated t as in the original (OB-T2W-8): t += dt, then dt = t_span[k + 1] - t.
    t, dt = t_span[0], t_span[1] - t_span[0]
    for step in range(num_timesteps):
        x_in = x.to(dtype)
        if batched:
            velocities = estimator(torch.cat([x_in, x_in]), mask2, mu2, t, spks2, cond2).float()
            v_cond, v_uncond = velocities.split(batch)
        else:
            v_cond, v_uncond = estimator(x_in, mask, mu, t, spks, cond).float(), None
            if cfg_rate > 0:
                # Two calls like the original, not one batch-2 call: bitwise equal to it on the same machine, where
                # a batch-2 call changes kernel summation order (~3e-6 on mel).
                mu_zero, spks_zero, cond_zero = unconditioned
                v_uncond = estimator(x_in, mask, mu_zero, t, spks_zero, cond_zero).float()
        velocity = v_cond if v_uncond is None else (1.0 + cfg_rate) * v_cond - cfg_rate * v_uncond
        if step_callback is not None:
            step_callback(step, t, x, v_cond, v_uncond)
        x = x + dt * velocity
        t = t + dt
        if step < num_timesteps - 1:
            dt = t_span[step + 2] - t
    return x


@dataclass
class FlowOutput:
    """Result of `FlowDecoder.inference`.

    Args:
        mel (`Tensor` of shape `(batch, mel, new_frames)`): log-mel of the new tokens (`mel_full` minus the prompt).
        mel_full (`Tensor` of shape `(batch, mel, total_frames)`): ODE result over prompt + new frames, float32.
        mu (`Tensor` of shape `(batch, mel, total_frames)`): length-regulated encoder output (the ODE condition).
        encoder_out (`Tensor` of shape `(batch, tokens, encoder_hidden)`): encoder states of prompt + new tokens.
        encoder_proj_out (`Tensor` of shape `(batch, tokens, mel)`): their projection to mel channels.
        speaker_condition (`Tensor` of shape `(batch, mel)`): projected speaker embedding.
    """

    mel: Tensor
    mel_full: Tensor
    mu: Tensor
    encoder_out: Tensor
    encoder_proj_out: Tensor
    speaker_condition: Tensor


class BatchSymbolicEstimator:
    """`torch.compile(estimator)` called with its batch dimension marked dynamic (when it holds 2 rows or more), so
    the first call compiles one graph for every batch size: a token2wav chunk batched with other conversations' (an
    engine's batch of any size) reuses what one conversation alone compiled. Other dimensions stay as dynamo decides
    (static at first; a second chunk length compiles once more)."""

    def __init__(self, estimator: nn.Module, mode: str | None = None):
        self.compiled = torch.compile(estimator, mode=mode)
        self.parameters = estimator.parameters  # what `solve_euler_cfg` reads the estimator's dtype from

    def __call__(self, x: Tensor, mask: Tensor, mu: Tensor, t: Tensor, spks: Tensor, cond: Tensor) -> Tensor:
        for tensor in (x, mask, mu, spks, cond):
            if tensor.shape[0] > 1:  # dynamo specializes sizes 0 and 1
                torch._dynamo.mark_dynamic(tensor, 0)
        return self.compiled(x, mask, mu, t, spks, cond)


class FlowDecoder(nn.Module):
    """Speech units -> log-mel: block-causal encoder, length regulator and conditional flow matching.

    Args:
        config ([`OpenS2SToken2WavFlowConfig`]): the unit embedding (`vocab_size`, `token_embedding_dim`), the
            speaker projection (`speaker_embedding_dim` -> `mel_bins`), the frame formula (`input_frame_rate`,
            `sampling_rate`, `hop_length`), the encoder (`encoder_*`), the regulator, the estimator (`estimator_*`)
            and the ODE (`num_timesteps`, `cfg_rate`, `temperature`).
    """

    def __init__(self, config: OpenS2SToken2WavFlowConfig) -> None:
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.token_embedding_dim)
        self.speaker_projection = nn.Linear(config.speaker_embedding_dim, config.mel_bins)
        self.encoder = BlockConformerEncoder(config)
        self.encoder_projection = nn.Linear(config.encoder_hidden_size, config.mel_bins)
        self.length_regulator = LengthRegulator(config)
        self.estimator = ConditionalDecoder(config)
        self._compiled_estimators: dict[str, Callable] = {}  # torch.compile mode -> compiled estimator

    def compiled_estimator(self, mode: str | None = None) -> Callable:
        """The estimator compiled with `torch.compile` ([`BatchSymbolicEstimator`]), built once per `mode` and kept,
        so every stream of this decoder reuses its graphs: the batch is symbolic, so batches of any size share one
        graph, and a new chunk length compiles once. Its output equals the eager estimator's up to float32 rounding
        (fused kernels sum in another order)."""
        if mode not in self._compiled_estimators:
            self._compiled_estimators[mode] = BatchSymbolicEstimator(self.estimator, mode)
        return self._compiled_estimators[mode]

    @property
    def num_timesteps(self) -> int:
        """Euler steps of the flow ODE."""
        return self.config.num_timesteps

    def num_frames(self, num_tokens: int) -> int:
        """Frames for `num_tokens` units: `int(tokens / rate * sampling_rate / hop)` in float32, as the original."""
        tokens = torch.tensor(num_tokens, dtype=torch.float32)
        config = self.config
        return int(tokens / config.input_frame_rate * config.sampling_rate / config.hop_length)

    def encode(self, tokens: Tensor, prompt_tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Encode `cat(prompt_tokens, tokens)`.

        Args:
            tokens (`Tensor` of shape `(batch, new_tokens)`): unit ids (any integer dtype).
            prompt_tokens (`Tensor` of shape `(batch, prompt_tokens)`): earlier unit ids (may be empty).

        Returns:
            `(encoder_out, mu_tokens)`: `(batch, tokens, encoder_hidden)` and its projection `(batch, tokens, mel)`.
            Negative ids are clamped to 0 like the original (OB-T2W-14: an EOS id passed as a unit is decoded as 0).
        """
        ids = torch.cat([prompt_tokens.long(), tokens.long()], dim=1).clamp(min=0)
        encoder_out = self.encoder(self.token_embedding(ids))
        return encoder_out, self.encoder_projection(encoder_out)

    def speaker_condition(self, speaker_embedding: Tensor) -> Tensor:
        """`(batch, speaker_dim)` x-vector -> `(batch, mel)`: `Linear(normalize(e))` (zeros give the bias)."""
        weight = self.speaker_projection.weight
        return self.speaker_projection(F.normalize(speaker_embedding.to(weight.dtype), dim=1))

    def inference(
        self,
        tokens: Tensor,
        prompt_tokens: Tensor | None = None,
        prompt_mel: Tensor | None = None,
        speaker_embedding: Tensor | None = None,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
        num_frames: int | None = None,
        step_callback: StepCallback | None = None,
        batch_guidance: bool = False,
        estimator: nn.Module | None = None,
    ) -> FlowOutput:
        """Decode units to log-mel (rows of equal length; no padding).

        Args:
            tokens (`Tensor` of shape `(batch, new_tokens)`): unit ids to decode.
            prompt_tokens (`Tensor` of shape `(batch, prompt_tokens)`, *optional*): units already decoded (context).
            prompt_mel (`Tensor` of shape `(batch, prompt_frames, mel)`, *optional*): their mel (the original's
                `prompt_feat`), copied into the first `prompt_frames` frames of the condition.
            speaker_embedding (`Tensor` of shape `(batch, speaker_dim)`, *optional*): x-vector; zeros when omitted.
            noise (`Tensor` of shape `(batch, mel, total_frames)`, *optional*): ODE start before temperature.
            generator (`torch.Generator`, *optional*): draws the noise when `noise` is omitted; a fresh
                `torch.Generator` (its fixed default seed) when None. The global RNG is never used.
                `torch.Generator().manual_seed(42)` reproduces the original's noise on CPU.
            num_frames (`int`, *optional*): total frames (prompt + new); defaults to `self.num_frames(P + C)`.
            step_callback (`Callable`, *optional*): see `solve_euler_cfg`.
            batch_guidance (`bool`, *optional*, defaults to `False`): see `solve_euler_cfg` (float32 rounding away
                from the two-call solver of the original).
            estimator (`nn.Module`, *optional*): the velocity model to call instead of `self.estimator`, e.g. its
                `torch.compile`d form ([`~FlowDecoder.compiled_estimator`]).

        Returns:
            `FlowOutput`; `mel` holds the frames after the prompt mel.
        """
        batch, device, config = tokens.shape[0], tokens.device, self.config
        if prompt_tokens is None:
            prompt_tokens = tokens.new_zeros(batch, 0)
        encoder_out, encoder_proj_out = self.encode(tokens, prompt_tokens)
        total = self.num_frames(encoder_out.shape[1]) if num_frames is None else num_frames
        prompt_frames = 0 if prompt_mel is None else prompt_mel.shape[1]
        if prompt_frames > total:
            raise ValueError(f"prompt_mel has {prompt_frames} frames, more than the {total} frames decoded")

        mu = self.length_regulator(encoder_proj_out, total).transpose(1, 2)
        if speaker_embedding is None:
            speaker_embedding = mu.new_zeros(batch, config.speaker_embedding_dim)
        spks = self.speaker_condition(speaker_embedding)
        cond = mu.new_zeros(batch, config.mel_bins, total)
        if prompt_mel is not None:
            cond[:, :, :prompt_frames] = prompt_mel.transpose(1, 2).to(cond.dtype)
        if noise is None:
            generator = torch.Generator(device=device) if generator is None else generator
            noise = torch.randn(
                (batch, config.mel_bins, total), generator=generator, device=device, dtype=torch.float32
            )
        elif tuple(noise.shape) != (batch, config.mel_bins, total):
            raise ValueError(f"noise must have shape {(batch, config.mel_bins, total)}, got {tuple(noise.shape)}")

        mel_full = solve_euler_cfg(
            self.estimator if estimator is None else estimator,
            noise.float() * config.temperature,
            mu.new_ones(batch, 1, total),
            mu,
            spks,
            cond,
            config.num_timesteps,
            config.cfg_rate,
            step_callback,
            batch_guidance,
        )
        return FlowOutput(
            mel=mel_full[:, :, prompt_frames:],
            mel_full=mel_full,
            mu=mu,
            encoder_out=encoder_out,
            encoder_proj_out=encoder_proj_out,
            speaker_condition=spks,
        )
