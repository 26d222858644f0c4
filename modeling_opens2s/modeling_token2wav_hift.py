"""HiFT, the vocoder of the GLM-4-Voice speech decoder: mel spectrogram (22.05 kHz, hop 256) -> waveform.

HiFT (HiFTNet, https://arxiv.org/abs/2309.09493, as in CosyVoice v1 `cosyvoice/hifigan/generator.py`) is a
HiFi-GAN generator with two additions:

1. a neural source filter (NSF): a small conv net predicts f0 per mel frame, a bank of sines at f0 and its harmonics
   (plus noise) is merged into one excitation signal, and that excitation's STFT is fed into every upsampling stage;
2. an iSTFT head: the last convolution predicts a log-magnitude and a phase per bin and `torch.istft` renders the
   samples, so the network itself only upsamples `prod(upsample_rates)` times and the iSTFT hop does the rest.

The sine bank is random (one random initial phase per harmonic, Gaussian noise per sample). The original draws it
from the global torch generator; here it comes from an explicit `torch.Generator` or is passed in (`draw_noise`),
in the original order, so a generator seeded like the original's global one reproduces its waveform.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput

from .configuration_token2wav import OpenS2SToken2WavHiFTConfig


__all__ = ["F0_PREDICTOR_LAYERS", "HiFTOutput", "HiFTVocoder"]

# Convolutions of the f0 predictor (fixed in the original `ConvRNNF0Predictor`).
F0_PREDICTOR_LAYERS = 5


@dataclass
class HiFTOutput(ModelOutput):
    """
    Output of [`HiFTVocoder`].

    Args:
        waveform (`torch.FloatTensor` of shape `(batch_size, frames * samples_per_frame)`):
            The audio, in `[-audio_limit, audio_limit]`.
        source (`torch.FloatTensor` of shape `(batch_size, 1, frames * samples_per_frame)`):
            The NSF excitation that conditioned it (after the `cache_source` overwrite). Its tail is what a streaming
            caller hands back as the next chunk's `cache_source`.
        f0 (`torch.FloatTensor` of shape `(batch_size, frames)`):
            Predicted fundamental frequency per mel frame, in Hz.
    """

    waveform: torch.FloatTensor | None = None
    source: torch.FloatTensor | None = None
    f0: torch.FloatTensor | None = None


class Snake(nn.Module):
    """Snake activation `x + sin(alpha * x)^2 / alpha`, one learned `alpha` per channel (linear scale)."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(channels))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        alpha = self.alpha[None, :, None]
        # The 1e-9 keeps the original's guard against alpha == 0 (and its rounding).
        return hidden_states + (1.0 / (alpha + 1e-9)) * torch.sin(hidden_states * alpha).pow(2)


class HiFTResidualLayer(nn.Module):
    """Snake -> dilated conv -> Snake -> conv, added to the input; lengths are kept."""

    def __init__(self, channels: int, kernel_size: int, dilation: int):
        super().__init__()
        self.dilated_snake = Snake(channels)
        self.dilated_conv = nn.Conv1d(
            channels, channels, kernel_size, dilation=dilation, padding=(kernel_size - 1) * dilation // 2
        )
        self.snake = Snake(channels)
        self.conv = nn.Conv1d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        residual = self.dilated_conv(self.dilated_snake(hidden_states))
        return hidden_states + self.conv(self.snake(residual))


class HiFTResBlock(nn.Module):
    """One residual layer per dilation, applied in sequence (HiFi-GAN's ResBlock1 with Snake activations)."""

    def __init__(self, channels: int, kernel_size: int, dilations: list[int]):
        super().__init__()
        self.layers = nn.ModuleList(HiFTResidualLayer(channels, kernel_size, dilation) for dilation in dilations)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            hidden_states = layer(hidden_states)
        return hidden_states


class HiFTF0Predictor(nn.Module):
    """Five `Conv1d(k=3) + ELU` layers and a linear head: mel `(batch, mel_bins, frames)` -> f0 `(batch, frames)`."""

    def __init__(self, mel_bins: int, channels: int):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv1d(mel_bins if i == 0 else channels, channels, kernel_size=3, padding=1)
            for i in range(F0_PREDICTOR_LAYERS)
        )
        self.classifier = nn.Linear(channels, 1)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        hidden_states = mel
        for conv in self.convs:
            hidden_states = F.elu(conv(hidden_states))
        return self.classifier(hidden_states.transpose(1, 2)).squeeze(-1).abs()


class HiFTVocoder(nn.Module):
    """
    HiFT vocoder: mel `(batch, mel_bins, frames)` -> waveform `(batch, frames * samples_per_frame)`.

    Args:
        config ([`OpenS2SToken2WavHiFTConfig`]):
            Channels (`base_channels`, halved by every upsampling stage; `f0_cond_channels` of the f0 predictor), the
            upsampling stages (`upsample_rates`, `upsample_kernel_sizes`), the residual blocks averaged after every
            stage (`resblock_*`, one per kernel) and the one on each stage's source branch (`source_resblock_*`),
            the iSTFT head (`istft_n_fft`, `istft_hop_length`) and the sine source (`num_harmonics`, `nsf_*`,
            `voiced_threshold`, `sampling_rate`). `lrelu_slope` is the Leaky-ReLU slope before each upsampling
            (the one before `conv_post` is 0.01).
    """

    def __init__(self, config: OpenS2SToken2WavHiFTConfig):
        super().__init__()
        self.config = config
        base_channels, upsample_rates = config.base_channels, config.upsample_rates
        self.f0_predictor = HiFTF0Predictor(config.mel_bins, config.f0_cond_channels)
        self.source_linear = nn.Linear(config.num_harmonics + 1, 1)
        self.conv_pre = nn.Conv1d(config.mel_bins, base_channels, 7, padding=3)
        self.upsamples = nn.ModuleList(
            nn.ConvTranspose1d(
                base_channels // 2**i, base_channels // 2 ** (i + 1), kernel, rate, padding=(kernel - rate) // 2
            )
            for i, (rate, kernel) in enumerate(zip(upsample_rates, config.upsample_kernel_sizes, strict=True))
        )
        # The source STFT (one frame per `istft_hop_length` samples) is brought down to each stage's frame rate:
        # stage i runs at prod(upsample_rates[: i + 1]) frames per mel frame, the STFT at prod(upsample_rates).
        spectrum_channels = config.istft_n_fft + 2
        self.source_downsamples = nn.ModuleList()
        self.source_resblocks = nn.ModuleList()
        for i, (kernel, dilations) in enumerate(
            zip(config.source_resblock_kernel_sizes, config.source_resblock_dilation_sizes, strict=True)
        ):
            channels = base_channels // 2 ** (i + 1)
            stride = math.prod(upsample_rates[i + 1 :])
            if stride == 1:
                self.source_downsamples.append(nn.Conv1d(spectrum_channels, channels, 1))
            else:
                self.source_downsamples.append(
                    nn.Conv1d(spectrum_channels, channels, 2 * stride, stride, padding=stride // 2)
                )
            self.source_resblocks.append(HiFTResBlock(channels, kernel, dilations))
        self.resblocks = nn.ModuleList(
            HiFTResBlock(base_channels // 2 ** (i + 1), kernel, dilations)
            for i in range(len(upsample_rates))
            for kernel, dilations in zip(config.resblock_kernel_sizes, config.resblock_dilation_sizes, strict=True)
        )
        self.conv_post = nn.Conv1d(base_channels // 2 ** len(upsample_rates), spectrum_channels, 7, padding=3)

    @property
    def samples_per_frame(self) -> int:
        """Waveform samples per mel frame: `prod(upsample_rates) * istft_hop_length` (256 for GLM-4-Voice)."""
        return self.config.samples_per_frame

    def predict_f0(self, mel: torch.Tensor) -> torch.Tensor:
        """
        Args:
            mel (`torch.Tensor` of shape `(batch_size, mel_bins, frames)`): Log-mel spectrogram.

        Returns:
            `torch.Tensor` of shape `(batch_size, frames)`: f0 in Hz (>= 0), in the weights' dtype.
        """
        return self.f0_predictor(mel.to(self.conv_pre.weight.dtype))

    def upsample_f0(self, f0: torch.Tensor) -> torch.Tensor:
        """
        Nearest-neighbour upsampling of f0 to the sample rate.

        Args:
            f0 (`torch.Tensor` of shape `(batch_size, frames)`): f0 per mel frame, Hz.

        Returns:
            `torch.Tensor` of shape `(batch_size, frames * samples_per_frame)`: f0 per sample, Hz, float32.
        """
        return f0.float().repeat_interleave(self.samples_per_frame, dim=-1)

    def harmonic_phases(self, f0_samples: torch.Tensor, initial_phase: torch.Tensor) -> torch.Tensor:
        """
        Instantaneous phase of every sine of the bank (f0 and its harmonics).

        The phase of harmonic k is `2 pi * (cumsum(k * f0 / sampling_rate) mod 1) + initial_phase[k]`. It is always
        accumulated in float32: in bfloat16 a running sum over ~10^5 samples loses its fractional part.

        Args:
            f0_samples (`torch.Tensor` of shape `(batch_size, samples)`): f0 per sample, Hz.
            initial_phase (`torch.Tensor` of shape `(batch_size, num_harmonics + 1, 1)`): Radians.

        Returns:
            `torch.Tensor` of shape `(batch_size, num_harmonics + 1, samples)`: float32 radians.
        """
        harmonics = torch.arange(1, self.config.num_harmonics + 2, device=f0_samples.device, dtype=torch.float32)
        cycles_per_sample = f0_samples.float()[:, None, :] * harmonics[None, :, None] / self.config.sampling_rate
        # `mod 1` keeps the phase small before the sine, as the original does (bit-level parity).
        return 2 * math.pi * (torch.cumsum(cycles_per_sample, dim=-1) % 1) + initial_phase.float()

    def excitation(self, f0_samples: torch.Tensor, phases: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """
        The NSF source: sines on voiced samples plus noise, merged by `tanh(Linear(num_harmonics + 1 -> 1))`.

        Voiced samples (f0 > `voiced_threshold`) get `nsf_alpha * sin(phase) + nsf_sigma * noise`, unvoiced ones
        `nsf_alpha / 3 * noise` only.

        Args:
            f0_samples (`torch.Tensor` of shape `(batch_size, samples)`): f0 per sample, Hz.
            phases (`torch.Tensor` of shape `(batch_size, num_harmonics + 1, samples)`): From `harmonic_phases`.
            noise (`torch.Tensor` of shape `(batch_size, num_harmonics + 1, samples)`): Standard normal noise.

        Returns:
            `torch.Tensor` of shape `(batch_size, 1, samples)`: the source, in the weights' dtype.
        """
        voiced = (f0_samples.float() > self.config.voiced_threshold).float()[:, None, :]
        noise_std = voiced * self.config.nsf_sigma + (1 - voiced) * self.config.nsf_alpha / 3
        sines = self.config.nsf_alpha * torch.sin(phases.float()) * voiced + noise_std * noise.float()
        merged = self.source_linear(sines.transpose(1, 2).to(self.source_linear.weight.dtype))
        return torch.tanh(merged).transpose(1, 2)

    def decode(self, mel: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """
        The HiFi-GAN / iSTFT part: mel and NSF source -> waveform.

        Args:
            mel (`torch.Tensor` of shape `(batch_size, mel_bins, frames)`): Log-mel spectrogram.
            source (`torch.Tensor` of shape `(batch_size, 1, frames * samples_per_frame)`): From `excitation`.

        Returns:
            `torch.Tensor` of shape `(batch_size, frames * samples_per_frame)`: the waveform, clamped to
            `[-audio_limit, audio_limit]`, in the weights' dtype (the STFT/iSTFT run in float32).
        """
        dtype = self.conv_pre.weight.dtype
        spectrum = torch.stft(
            source.squeeze(1).float(),
            self.config.istft_n_fft,
            self.config.istft_hop_length,
            self.config.istft_n_fft,
            window=self._float_window(),
            return_complex=True,
        )
        source_features = torch.cat([spectrum.real, spectrum.imag], dim=1).to(dtype)

        hidden_states = self.conv_pre(mel.to(dtype))
        num_kernels = len(self.config.resblock_kernel_sizes)
        for i, upsample in enumerate(self.upsamples):
            hidden_states = upsample(F.leaky_relu(hidden_states, self.config.lrelu_slope))
            if i == len(self.upsamples) - 1:
                # One extra frame on the left: the iSTFT (center=True) needs samples / hop + 1 frames.
                hidden_states = F.pad(hidden_states, (1, 0), mode="reflect")
            hidden_states = hidden_states + self.source_resblocks[i](self.source_downsamples[i](source_features))
            blocks = self.resblocks[i * num_kernels : (i + 1) * num_kernels]
            total = blocks[0](hidden_states)
            for block in blocks[1:]:
                total = total + block(hidden_states)
            hidden_states = total / num_kernels

        # The last activation uses leaky_relu's default slope (0.01), not `lrelu_slope`, as the original.
        spectrum = self.conv_post(F.leaky_relu(hidden_states)).float()
        magnitude = torch.exp(spectrum[:, : self.config.istft_n_fft // 2 + 1]).clamp(max=1e2)
        # The original takes sin() of the phase output (a bounded phase); kept for weight compatibility.
        phase = torch.sin(spectrum[:, self.config.istft_n_fft // 2 + 1 :])
        waveform = torch.istft(
            torch.complex(magnitude * torch.cos(phase), magnitude * torch.sin(phase)),
            self.config.istft_n_fft,
            self.config.istft_hop_length,
            self.config.istft_n_fft,
            window=self._float_window(),
        )
        return waveform.clamp(-self.config.audio_limit, self.config.audio_limit).to(dtype)

    def draw_noise(
        self, batch_size: int, samples: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        The sine bank's randomness, drawn from `generator` in the original's order.

        First `rand((batch_size, num_harmonics + 1, 1))` mapped to `U(-pi, pi)` as `torch.distributions.Uniform`
        does (the fundamental's phase is then set to 0), then `randn((batch_size, num_harmonics + 1, samples))`.

        Args:
            batch_size (`int`): Batch size.
            samples (`int`): Waveform samples (`frames * samples_per_frame`).
            generator (`torch.Generator`): The source of randomness; tensors are created on its device.

        Returns:
            `tuple(torch.Tensor, torch.Tensor)`: `initial_phase` `(batch_size, num_harmonics + 1, 1)` radians and
            `noise` `(batch_size, num_harmonics + 1, samples)`, both float32.
        """
        shape = (batch_size, self.config.num_harmonics + 1)
        device = generator.device
        low = torch.tensor(-math.pi, device=device)
        high = torch.tensor(math.pi, device=device)
        initial_phase = low + torch.rand((*shape, 1), generator=generator, device=device) * (high - low)
        initial_phase[:, 0] = 0
        noise = torch.randn((*shape, samples), generator=generator, device=device)
        return initial_phase, noise

    def forward(
        self,
        mel: torch.Tensor,
        cache_source: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        initial_phase: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
    ) -> HiFTOutput:
        """
        Args:
            mel (`torch.Tensor` of shape `(batch_size, mel_bins, frames)`): Log-mel spectrogram.
            cache_source (`torch.Tensor` of shape `(batch_size, 1, cached_samples)`, *optional*):
                Replaces the first `cached_samples` samples of the source (streaming: the previous chunk's source
                tail, so the excitation does not jump at the seam).
            generator (`torch.Generator`, *optional*):
                Source of the sine bank's randomness when `initial_phase`/`noise` are not given. Defaults to a fresh,
                unseeded `torch.Generator` on `mel`'s device (torch's default seed, so the same draws every call); the
                global generator is never used.
            initial_phase (`torch.Tensor` of shape `(batch_size, num_harmonics + 1, 1)`, *optional*):
                Initial phase per sine, radians (see `draw_noise`).
            noise (`torch.Tensor` of shape `(batch_size, num_harmonics + 1, frames * samples_per_frame)`, *optional*):
                Standard normal noise for the sine bank.

        Returns:
            [`HiFTOutput`]
        """
        batch_size, _, frames = mel.shape
        samples = frames * self.samples_per_frame
        f0 = self.predict_f0(mel)
        f0_samples = self.upsample_f0(f0)
        if initial_phase is None or noise is None:
            if initial_phase is not None or noise is not None:
                raise ValueError("pass both initial_phase and noise, or neither")
            generator = generator if generator is not None else torch.Generator(device=mel.device)
            # The original then draws a third `randn` (a noise branch it never uses). It comes after every draw
            # used in a call, so not making it changes nothing.
            initial_phase, noise = self.draw_noise(batch_size, samples, generator)
        phases = self.harmonic_phases(f0_samples, initial_phase.to(mel.device))
        source = self.excitation(f0_samples, phases, noise.to(mel.device))
        if cache_source is not None and cache_source.shape[-1] > 0:
            cached = cache_source.shape[-1]
            if cached > samples:
                raise ValueError(f"cache_source has {cached} samples, more than the {samples} being rendered")
            # As the original: the source is computed in full first, then its head is overwritten.
            source = torch.cat([cache_source.to(source), source[..., cached:]], dim=-1)
        waveform = self.decode(mel, source)
        return HiFTOutput(waveform=waveform, source=source, f0=f0)

    def _float_window(self) -> torch.Tensor:
        """The float32 periodic Hann window of the STFT/iSTFT. Made per call (n_fft is tiny) rather than kept as a
        buffer: `from_pretrained` leaves non-persistent buffers uninitialised, and `.to(bfloat16)` would round it."""
        device = self.conv_post.weight.device
        return torch.hann_window(self.config.istft_n_fft, periodic=True, dtype=torch.float32, device=device)
