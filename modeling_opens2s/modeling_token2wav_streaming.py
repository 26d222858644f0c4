"""Streaming token2wav sessions: `push(units) -> waveform`, `finish() -> waveform`.

Two schedules over the same flow and vocoder:

- [`BlockStream`] (ours, the default): chunks of whole encoder blocks, a bounded left context so every chunk costs
  the same, phase-continuous vocoding with held-back frames and a cross-fade, randomness from the stream's own
  generators. Chunking does not change the random draws (noise is drawn per absolute frame / sample), so the same
  units give the same audio whatever the chunk sizes, away from seams.
- [`OriginalStream`]: OpenS2S `model_worker.generate_stream` + GLM-4-Voice `AudioDecoder.token2wav`, call for call,
  as the parity target (see `docs/original_behaviour.md#t2w-quirks`).
"""

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from .configuration_token2wav import OpenS2SToken2WavConfig
from .modeling_token2wav_flow import FlowDecoder
from .modeling_token2wav_hift import HiFTVocoder


__all__ = ["BlockStream", "ChunkCost", "OriginalStream", "Token2WavModel", "check_unit_range"]

# OpenS2S model_worker: a decoder call every 24 units.
ORIGINAL_CHUNK_UNITS = 24
# GLM-4-Voice AudioDecoder: 5 units of mel overlap, one cached mel frame (= hop_length source samples).
ORIGINAL_OVERLAP_UNITS = 5
ORIGINAL_SEED = 42


class Token2WavModel(Protocol):
    """What a stream reads of its decoder ([`OpenS2SToken2Wav`]): typed structurally, so this module does not import
    the model module that imports it."""

    config: OpenS2SToken2WavConfig
    flow: FlowDecoder
    vocoder: HiFTVocoder

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...


@dataclass(frozen=True)
class ChunkCost:
    """Work done by one chunk: units and mel frames through the flow, mel frames through the vocoder."""

    flow_units: int
    flow_frames: int
    vocoder_frames: int


def check_unit_range(units: torch.Tensor, vocab_size: int) -> None:
    """Refuse unit ids outside `[0, vocab_size)`. The original clamps negative ids to 0, which hides a speech EOS
    leaking into the units; we raise instead."""
    if units.numel() and (units.min() < 0 or units.max() >= vocab_size):
        raise ValueError(f"unit ids must lie in [0, {vocab_size}), got [{int(units.min())}, {int(units.max())}]")


def _unit_list(model: Token2WavModel, units) -> list[int]:
    units = torch.as_tensor(units, dtype=torch.long).reshape(-1)
    check_unit_range(units, model.config.vocab_size)
    return units.tolist()


def _empty_waveform(model: Token2WavModel) -> torch.Tensor:
    return torch.zeros(1, 0, device=model.device, dtype=model.dtype)


class OriginalStream:
    r"""
    The original OpenS2S streaming schedule, for parity: a decoder call each time 24 units are pending
    (`finalize=False`), and a final call with the rest. Every call re-runs the flow over all earlier units with the
    earlier returned mels as prompt, reseeds 42 (our own generator, not the global one), fades 34 overlapping log-mel
    frames with a Hamming window, prepends one cached mel frame and overwrites the first hop (256) of source
    samples, and holds back the last hop of samples of a non-final call. Kept on purpose: the lost mel frame per
    boundary from the 3rd call on, and a reply that is a multiple of 24 units never vocoding its held overlap.
    Changed: a reply of fewer than 24 units works (the original raises `AttributeError` on its `prompt_feat=None`).
    """

    def __init__(self, model: Token2WavModel, speaker_embedding: torch.Tensor | None = None):
        self.model = model
        self.speaker_embedding = speaker_embedding
        # The original hard-codes 22050 Hz and 256 samples per frame, the values of every released decoder's config.
        flow = model.config.flow_config
        self.overlap_frames = int(
            ORIGINAL_OVERLAP_UNITS / flow.input_frame_rate * flow.sampling_rate / flow.hop_length
        )
        self.window = torch.from_numpy(np.hamming(2 * self.overlap_frames))  # float64, as the original's numpy array
        self.pending: list[int] = []
        self.history: list[int] = []
        self.returned_mels: list[torch.Tensor] = []
        self.mel_overlap: torch.Tensor | None = None
        self.cache_mel: torch.Tensor | None = None
        self.cache_source: torch.Tensor | None = None

    def push(self, units) -> torch.Tensor:
        """Buffer `units`; returns the audio of every 24-unit call this completes, shape `(1, samples)`."""
        self.pending += _unit_list(self.model, units)
        pieces = [_empty_waveform(self.model)]
        while len(self.pending) >= ORIGINAL_CHUNK_UNITS:
            chunk, self.pending = self.pending[:ORIGINAL_CHUNK_UNITS], self.pending[ORIGINAL_CHUNK_UNITS:]
            pieces.append(self._call(chunk, finalize=False))
        return torch.cat(pieces, dim=-1)

    def finish(self) -> torch.Tensor:
        """The final call with the pending units (empty when none are pending, as the original)."""
        if not self.pending:
            return _empty_waveform(self.model)
        chunk, self.pending = self.pending, []
        return self._call(chunk, finalize=True)

    @torch.no_grad()
    def _call(self, chunk: list[int], finalize: bool) -> torch.Tensor:
        model, device = self.model, self.model.device
        prompt_tokens = torch.tensor([self.history], dtype=torch.long, device=device) if self.history else None
        prompt_mel = torch.cat(self.returned_mels, dim=-1).transpose(1, 2) if self.returned_mels else None
        generator = torch.Generator(device=device).manual_seed(ORIGINAL_SEED)
        mel = model.flow.inference(
            torch.tensor([chunk], dtype=torch.long, device=device),
            prompt_tokens=prompt_tokens,
            prompt_mel=prompt_mel,
            speaker_embedding=self.speaker_embedding,
            generator=generator,
        ).mel
        if self.mel_overlap is not None:
            mel = self._fade(mel, self.mel_overlap)
        if self.cache_mel is not None:
            mel = torch.cat([self.cache_mel, mel], dim=-1)
            cache_source = self.cache_source
        else:
            cache_source = None
        hop = model.config.hop_length
        if not finalize:
            self.mel_overlap = mel[..., -self.overlap_frames :]
            mel = mel[..., : -self.overlap_frames]
        output = model.vocoder(mel, cache_source=cache_source, generator=generator)
        waveform = output.waveform
        if not finalize:
            self.cache_mel = mel[..., -1:]
            self.cache_source = output.source[..., -hop:]
            waveform = waveform[:, :-hop]
        self.returned_mels.append(mel)
        self.history += chunk
        return waveform

    def _fade(self, mel: torch.Tensor, overlap: torch.Tensor) -> torch.Tensor:
        # Log-mel fade with the two Hamming halves (their sum is ~1.07, not 1: OB-T2W-4), computed in float64 as the
        # original's numpy window promotes it, then stored back in the mel's dtype.
        half = self.overlap_frames
        window = self.window.to(mel.device)
        faded = mel[..., :half].double() * window[:half] + overlap[..., -half:].double() * window[half:]
        return torch.cat([faded.to(mel.dtype), mel[..., half:]], dim=-1)


class BlockStream:
    r"""
    Our streaming schedule (see [`OpenS2SToken2Wav.start_stream`]).

    Flow: the first chunk is `stream_first_chunk_blocks` encoder blocks, each later one twice the previous up to
    `stream_chunk_blocks`; each chunk re-reads at most `stream_left_context_blocks` earlier blocks as prompt (their
    units, and the mel already made for them as `prompt_mel`), so its cost does not grow with the answer, and the
    flow reads `(left context + chunk) / chunk` times the units of one offline pass (1.25 with the defaults). Chunk
    starts are block aligned, so the block-causal encoder sees the same block grid as one pass over the answer. The
    frame count of units `[0, n)` is the decoder's `num_frames(n)`, so chunk frames add up to the offline count:
    nothing is lost.

    Vocoder: HiFT re-reads `stream_vocoder_context_frames` earlier mel frames (their source is reused, so the
    excitation is continuous), the harmonic phases continue from the previous chunk, the last
    `stream_holdback_frames` are rendered but not played until the next chunk gives them right context, and the
    seam is cross-faded over `stream_crossfade_samples`.

    Randomness: two generators derived from `generator`; flow noise drawn per frame and sine noise per sample, in
    time order, so the draws do not depend on the chunking.

    Speed: the flow's conditional and unconditional (guidance) velocities run as one batch-2 estimator call per Euler
    step (see `solve_euler_cfg`'s `batch_guidance`; equal to two calls up to float32 rounding), and with
    `compile=True` the chunks of the schedule's fixed sizes call the `torch.compile`d estimator
    ([`FlowDecoder.compiled_estimator`], shared by every stream of the model); the last, ragged chunk runs eager so
    that no answer length compiles a new graph.
    """

    def __init__(
        self,
        model: Token2WavModel,
        speaker_embedding: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        compile: bool = False,
    ):
        self.model = model
        self.speaker_embedding = speaker_embedding
        self.compiled_estimator = model.flow.compiled_estimator() if compile else None
        config, device = model.config, model.device
        block, mel_bins = config.flow_config.encoder_block_size, config.flow_config.mel_bins
        self.next_chunk_units = config.stream_first_chunk_blocks * block
        self.max_chunk_units = max(config.stream_chunk_blocks, config.stream_first_chunk_blocks) * block
        self.left_context_units = config.stream_left_context_blocks * block
        if generator is None:
            generator = torch.Generator()
            generator.seed()
        seeds = torch.randint(0, 2**62, (2,), generator=generator).tolist()
        self.flow_generator = torch.Generator(device=device).manual_seed(seeds[0])
        self.vocoder_generator = torch.Generator(device=device).manual_seed(seeds[1])
        self.units: list[int] = []
        self.rendered_units = 0
        self.mel = torch.zeros(1, mel_bins, 0, device=device, dtype=model.dtype)
        self.noise = torch.zeros(1, mel_bins, 0, device=device, dtype=torch.float32)
        self.source = torch.zeros(1, 1, 0, device=device, dtype=torch.float32)
        self.held_audio = _empty_waveform(model)
        self.played_frames = 0
        self.phase: torch.Tensor | None = None
        self.costs: list[ChunkCost] = []

    def push(self, units) -> torch.Tensor:
        """Buffer `units`; returns the audio that became final, shape `(1, samples)` (possibly empty)."""
        self.units += _unit_list(self.model, units)
        pieces = [_empty_waveform(self.model)]
        while len(self.units) - self.rendered_units >= self.next_chunk_units:
            pieces.append(self._step(self.next_chunk_units, final=False))
            # Chunks double up to the largest size: the first audio comes soon, and each later chunk holds enough
            # units to keep playback fed while the next one is generated.
            self.next_chunk_units = min(2 * self.next_chunk_units, self.max_chunk_units)
        return torch.cat(pieces, dim=-1)

    def finish(self) -> torch.Tensor:
        """Render what is pending and play everything held back; shape `(1, samples)`."""
        pending = len(self.units) - self.rendered_units
        if pending == 0 and self.played_frames == self.mel.shape[-1]:
            return _empty_waveform(self.model)
        return self._step(pending, final=True)

    @torch.no_grad()
    def _step(self, num_units: int, final: bool) -> torch.Tensor:
        flow_units, flow_frames = self._render_mel(num_units, final) if num_units else (0, 0)
        waveform, vocoder_frames = self._vocode(final)
        self.costs.append(ChunkCost(flow_units=flow_units, flow_frames=flow_frames, vocoder_frames=vocoder_frames))
        return waveform

    def _frames(self, num_units: int) -> int:
        return self.model.flow.num_frames(num_units)

    def _render_mel(self, num_units: int, final: bool) -> tuple[int, int]:
        """Flow over (left context + `num_units` new units); appends the new frames to `self.mel`. The compiled
        estimator (if any) serves the schedule's fixed chunk sizes, not the `final` chunk's ragged one."""
        device = self.model.device
        start, end = self.rendered_units, self.rendered_units + num_units
        context_start = max(0, start - self.left_context_units)
        first_frame, prompt_end, last_frame = self._frames(context_start), self._frames(start), self._frames(end)
        prompt_tokens = prompt_mel = None
        if start > context_start:
            prompt_tokens = torch.tensor([self.units[context_start:start]], dtype=torch.long, device=device)
            prompt_mel = self.mel[..., first_frame:prompt_end].transpose(1, 2)
        mel = self.model.flow.inference(
            torch.tensor([self.units[start:end]], dtype=torch.long, device=device),
            prompt_tokens=prompt_tokens,
            prompt_mel=prompt_mel,
            speaker_embedding=self.speaker_embedding,
            noise=self._flow_noise(first_frame, last_frame),
            num_frames=last_frame - first_frame,
            batch_guidance=True,
            estimator=None if final else self.compiled_estimator,
        ).mel
        self.mel = torch.cat([self.mel, mel], dim=-1)
        self.rendered_units = end
        return end - context_start, last_frame - first_frame

    def _flow_noise(self, first_frame: int, last_frame: int) -> torch.Tensor:
        missing = last_frame - self.noise.shape[-1]
        if missing > 0:
            # Frame-major draws: frame f gets the same noise whatever the chunking.
            draw = torch.randn((missing, self.noise.shape[1]), generator=self.flow_generator, device=self.noise.device)
            self.noise = torch.cat([self.noise, draw.T[None]], dim=-1)
        return self.noise[..., first_frame:last_frame].to(self.model.dtype)

    def _vocode(self, final: bool) -> tuple[torch.Tensor, int]:
        """Vocode the frames made since the last call (with context); returns the playable audio and frames read."""
        config, vocoder = self.model.config, self.model.vocoder
        hop = config.hop_length
        vocoded, available = self.source.shape[-1] // hop, self.mel.shape[-1]
        window_start = max(0, self.played_frames - config.stream_vocoder_context_frames)
        mel = self.mel[..., window_start:available]
        f0 = vocoder.upsample_f0(vocoder.predict_f0(mel))
        new_f0 = f0[:, (vocoded - window_start) * hop :]
        source = self.source[..., window_start * hop :]
        if new_f0.shape[-1]:
            source = torch.cat([source, self._excitation(new_f0)], dim=-1)
            self.source = torch.cat([self.source, source[..., (vocoded - window_start) * hop :]], dim=-1)
        waveform = vocoder.decode(mel, source.to(mel.dtype))
        play_end = available if final else max(self.played_frames, available - config.stream_holdback_frames)
        played = waveform[:, (self.played_frames - window_start) * hop : (play_end - window_start) * hop]
        played = self._crossfade(played)
        self.held_audio = waveform[:, (play_end - window_start) * hop :]
        self.played_frames = play_end
        return played, available - window_start

    def _excitation(self, f0: torch.Tensor) -> torch.Tensor:
        """NSF source of new samples, its harmonic phases continuing those of the previous chunk."""
        vocoder = self.model.vocoder
        harmonics = vocoder.config.num_harmonics + 1
        if self.phase is None:
            uniform = torch.rand((1, harmonics, 1), generator=self.vocoder_generator, device=f0.device)
            self.phase = (uniform * 2 - 1) * torch.pi
            self.phase[:, 0] = 0  # the fundamental starts at phase 0, as the original
        # Sample-major draws: sample n gets the same noise whatever the chunking.
        noise = torch.randn((f0.shape[-1], harmonics), generator=self.vocoder_generator, device=f0.device).T[None]
        phases = vocoder.harmonic_phases(f0.float(), self.phase)
        self.phase = phases[..., -1:] % (2 * torch.pi)  # wrapped: float32 keeps its precision on long answers
        return vocoder.excitation(f0.float(), phases, noise).float()

    def _crossfade(self, played: torch.Tensor) -> torch.Tensor:
        length = min(self.model.config.stream_crossfade_samples, self.held_audio.shape[-1], played.shape[-1])
        if length == 0:
            return played
        ramp = torch.linspace(0, 1, length + 2, device=played.device, dtype=played.dtype)[1:-1]
        faded = self.held_audio[:, :length] * (1 - ramp) + played[:, :length] * ramp
        return torch.cat([faded, played[:, length:]], dim=-1)
