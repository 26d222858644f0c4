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
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput


__all__ = ["HiFTOutput", "HiFTVocoder", "hift_state_dict_from_original"]

# Convolutions of the f0 predictor (fixed in the original `ConvRNNF0Predictor`).
F0_PREDICTOR_LAYERS = 5

# Original `HiFTGenerator` key fragment -> ours, applied in order (regular expressions). Weight-norm pairs are folded
# into `.weight` first; every original key must be changed by at most these rules into one of our keys.
ORIGINAL_KEY_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^m_source\.l_linear\.", "source_linear."),
    *((rf"^f0_predictor\.condnet\.{2 * i}\.", f"f0_predictor.convs.{i}.") for i in range(F0_PREDICTOR_LAYERS)),
    (r"^ups\.", "upsamples."),
    (r"^source_downs\.", "source_downsamples."),
    (r"\.convs1\.(\d+)\.", r".layers.\1.dilated_conv."),
    (r"\.convs2\.(\d+)\.", r".layers.\1.conv."),
    (r"\.activations1\.(\d+)\.", r".layers.\1.dilated_snake."),
    (r"\.activations2\.(\d+)\.", r".layers.\1.snake."),
)


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
        mel_bins (`int`): Mel channels of the input.
        base_channels (`int`): Channels after the input convolution, halved by every upsampling stage.
        num_harmonics (`int`): Overtones of the sine source; the bank has `num_harmonics + 1` sines.
        sampling_rate (`int`): Output sample rate in Hz (the sine bank's phase increment is `f0 / sampling_rate`).
        upsample_rates (`list[int]`): Strides of the transposed convolutions.
        upsample_kernel_sizes (`list[int]`): Their kernels.
        istft_n_fft (`int`): FFT size (= window) of the source STFT and of the output iSTFT.
        istft_hop_length (`int`): Hop of both.
        resblock_kernel_sizes (`list[int]`), resblock_dilation_sizes (`list[list[int]]`):
            The residual blocks averaged after every upsampling stage, one per kernel.
        source_resblock_kernel_sizes (`list[int]`), source_resblock_dilation_sizes (`list[list[int]]`):
            The residual block on the source branch of each upsampling stage.
        lrelu_slope (`float`): Leaky-ReLU slope before each upsampling (the one before `conv_post` is 0.01).
        audio_limit (`float`): The waveform is clamped to `[-audio_limit, audio_limit]`.
        nsf_alpha (`float`): Sine amplitude; unvoiced samples get noise of std `nsf_alpha / 3` instead.
        nsf_sigma (`float`): Noise std added on voiced samples.
        voiced_threshold (`float`): Samples with f0 above this (Hz) are voiced.
        f0_cond_channels (`int`): Width of the f0 predictor.
    """

    def __init__(
        self,
        *,
        mel_bins: int,
        base_channels: int,
        num_harmonics: int,
        sampling_rate: int,
        upsample_rates: list[int],
        upsample_kernel_sizes: list[int],
        istft_n_fft: int,
        istft_hop_length: int,
        resblock_kernel_sizes: list[int],
        resblock_dilation_sizes: list[list[int]],
        source_resblock_kernel_sizes: list[int],
        source_resblock_dilation_sizes: list[list[int]],
        lrelu_slope: float,
        audio_limit: float,
        nsf_alpha: float,
        nsf_sigma: float,
        voiced_threshold: float,
        f0_cond_channels: int,
    ):
        super().__init__()
        if not len(upsample_rates) == len(upsample_kernel_sizes) == len(source_resblock_kernel_sizes):
            raise ValueError("upsample_rates, upsample_kernel_sizes and source_resblock_kernel_sizes must pair up")
        self.num_harmonics = num_harmonics
        self.sampling_rate = sampling_rate
        self.upsample_rates = list(upsample_rates)
        self.n_fft = istft_n_fft
        self.hop_length = istft_hop_length
        self.lrelu_slope = lrelu_slope
        self.audio_limit = audio_limit
        self.nsf_alpha = nsf_alpha
        self.nsf_sigma = nsf_sigma
        self.voiced_threshold = voiced_threshold
        self.num_kernels = len(resblock_kernel_sizes)

        self.f0_predictor = HiFTF0Predictor(mel_bins, f0_cond_channels)
        self.source_linear = nn.Linear(num_harmonics + 1, 1)
        self.conv_pre = nn.Conv1d(mel_bins, base_channels, 7, padding=3)
        self.upsamples = nn.ModuleList(
            nn.ConvTranspose1d(
                base_channels // 2**i, base_channels // 2 ** (i + 1), kernel, rate, padding=(kernel - rate) // 2
            )
            for i, (rate, kernel) in enumerate(zip(upsample_rates, upsample_kernel_sizes, strict=True))
        )
        # The source STFT (one frame per `istft_hop_length` samples) is brought down to each stage's frame rate:
        # stage i runs at prod(upsample_rates[: i + 1]) frames per mel frame, the STFT at prod(upsample_rates).
        spectrum_channels = istft_n_fft + 2
        self.source_downsamples = nn.ModuleList()
        self.source_resblocks = nn.ModuleList()
        for i, (kernel, dilations) in enumerate(
            zip(source_resblock_kernel_sizes, source_resblock_dilation_sizes, strict=True)
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
            for kernel, dilations in zip(resblock_kernel_sizes, resblock_dilation_sizes, strict=True)
        )
        self.conv_post = nn.Conv1d(base_channels // 2 ** len(upsample_rates), spectrum_channels, 7, padding=3)

    @property
    def samples_per_frame(self) -> int:
        """Waveform samples per mel frame: `prod(upsample_rates) * istft_hop_length` (256 for GLM-4-Voice)."""
        return math.prod(self.upsample_rates) * self.hop_length

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
        harmonics = torch.arange(1, self.num_harmonics + 2, device=f0_samples.device, dtype=torch.float32)
        cycles_per_sample = f0_samples.float()[:, None, :] * harmonics[None, :, None] / self.sampling_rate
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
        voiced = (f0_samples.float() > self.voiced_threshold).float()[:, None, :]
        noise_std = voiced * self.nsf_sigma + (1 - voiced) * self.nsf_alpha / 3
        sines = self.nsf_alpha * torch.sin(phases.float()) * voiced + noise_std * noise.float()
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
            self.n_fft,
            self.hop_length,
            self.n_fft,
            window=self._float_window(),
            return_complex=True,
        )
        source_features = torch.cat([spectrum.real, spectrum.imag], dim=1).to(dtype)

        hidden_states = self.conv_pre(mel.to(dtype))
        for i, upsample in enumerate(self.upsamples):
            hidden_states = upsample(F.leaky_relu(hidden_states, self.lrelu_slope))
            if i == len(self.upsamples) - 1:
                # One extra frame on the left: the iSTFT (center=True) needs samples / hop + 1 frames.
                hidden_states = F.pad(hidden_states, (1, 0), mode="reflect")
            hidden_states = hidden_states + self.source_resblocks[i](self.source_downsamples[i](source_features))
            blocks = self.resblocks[i * self.num_kernels : (i + 1) * self.num_kernels]
            total = blocks[0](hidden_states)
            for block in blocks[1:]:
                total = total + block(hidden_states)
            hidden_states = total / self.num_kernels

        # The last activation uses leaky_relu's default slope (0.01), not `lrelu_slope`, as the original.
        spectrum = self.conv_post(F.leaky_relu(hidden_states)).float()
        magnitude = torch.exp(spectrum[:, : self.n_fft // 2 + 1]).clamp(max=1e2)
        # The original takes sin() of the phase output (a bounded phase); kept for weight compatibility.
        phase = torch.sin(spectrum[:, self.n_fft // 2 + 1 :])
        waveform = torch.istft(
            torch.complex(magnitude * torch.cos(phase), magnitude * torch.sin(phase)),
            self.n_fft,
            self.hop_length,
            self.n_fft,
            window=self._float_window(),
        )
        return waveform.clamp(-self.audio_limit, self.audio_limit).to(dtype)

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
        shape = (batch_size, self.num_harmonics + 1)
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
        return torch.hann_window(self.n_fft, periodic=True, dtype=torch.float32, device=self.conv_post.weight.device)


def _original_key_template(keys: set[str]) -> set[str]:
    """Every key an original `HiFTGenerator` state dict with as many blocks (by index) as `keys` must hold."""

    def count(prefix: str) -> int:
        found = [re.match(r"\d+", key[len(prefix) :]) for key in keys if key.startswith(prefix)]
        return max((int(match.group()) + 1 for match in found if match), default=0)

    def normed(name: str) -> set[str]:
        return {f"{name}.bias", f"{name}.weight_g", f"{name}.weight_v"}

    def plain(name: str) -> set[str]:
        return {f"{name}.bias", f"{name}.weight"}

    expected = plain("m_source.l_linear") | plain("f0_predictor.classifier") | normed("conv_pre") | normed("conv_post")
    for i in range(F0_PREDICTOR_LAYERS):
        expected |= normed(f"f0_predictor.condnet.{2 * i}")
    expected |= {key for i in range(count("ups.")) for key in normed(f"ups.{i}")}
    expected |= {key for i in range(count("source_downs.")) for key in plain(f"source_downs.{i}")}
    for group in ("source_resblocks", "resblocks"):
        for block in range(count(f"{group}.")):
            prefix = f"{group}.{block}"
            for j in range(count(f"{prefix}.convs1.")):
                expected |= normed(f"{prefix}.convs1.{j}") | normed(f"{prefix}.convs2.{j}")
                expected |= {f"{prefix}.activations1.{j}.alpha", f"{prefix}.activations2.{j}.alpha"}
    return expected


def _fold_weight_norm(magnitude: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """Legacy `weight_norm(dim=0)`: `W = g * v / ||v||`, the norm over every dim but 0 (for ConvTranspose1d: input)."""
    direction32 = direction.float()
    norm = torch.linalg.vector_norm(direction32, dim=tuple(range(1, direction.dim())), keepdim=True)
    return (direction32 * (magnitude.float() / norm)).to(direction.dtype)


def hift_state_dict_from_original(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """
    Convert an original CosyVoice / GLM-4-Voice `HiFTGenerator` state dict (`hift.pt`) to [`HiFTVocoder`] keys.

    Weight-norm pairs (`*.weight_g`, `*.weight_v`) are folded into plain `*.weight`, and keys are renamed with
    `ORIGINAL_KEY_RENAMES` (e.g. `ups.0.*` -> `upsamples.0.*`, `resblocks.0.convs1.2.*` ->
    `resblocks.0.layers.2.dilated_conv.*`).

    Args:
        state_dict (`dict[str, torch.Tensor]`): As `torch.load("hift.pt", weights_only=True)` returns it.

    Returns:
        `dict[str, torch.Tensor]`: Loadable with `HiFTVocoder.load_state_dict(..., strict=True)`.

    Raises:
        `ValueError`: when keys of an original checkpoint are missing or keys it cannot hold are present.
    """
    keys = set(state_dict)
    expected = _original_key_template(keys)
    missing, unexpected = sorted(expected - keys), sorted(keys - expected)
    if missing or unexpected:
        raise ValueError(
            f"not an original HiFTGenerator state dict: missing {missing[:10]}{' ...' if len(missing) > 10 else ''}"
            f"; unexpected {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}"
        )
    converted = {}
    for key, tensor in state_dict.items():
        if key.endswith(".weight_v"):
            continue
        if key.endswith(".weight_g"):
            key, tensor = key[: -len("_g")], _fold_weight_norm(tensor, state_dict[key[: -len("g")] + "v"])
        for pattern, replacement in ORIGINAL_KEY_RENAMES:
            key = re.sub(pattern, replacement, key)
        converted[key] = tensor
    return converted
