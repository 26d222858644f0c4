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
from typing import NamedTuple, Protocol

import numpy as np
import torch

from .configuration_token2wav import OpenS2SToken2WavConfig
from .modeling_token2wav_flow import FlowDecoder
from .modeling_token2wav_hift import HiFTVocoder


__all__ = [
    "BatchKey",
    "BlockStream",
    "ChunkCost",
    "OriginalStream",
    "Token2WavModel",
    "check_unit_range",
    "finish_streams",
    "render_chunks",
]

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


class BatchKey(NamedTuple):
    """[`BlockStream.batch_key`]: what a chunk's stacked network calls depend on. Units and frames are counts of the
    next non-final chunk: `new_units` rendered after `context_units` re-read ones, `prompt_frames` of them given as
    prompt mel, `flow_frames` through the flow ODE, `window_frames` mel frames through the vocoder."""

    model: Token2WavModel
    estimator: object
    dtype: torch.dtype
    device: torch.device
    new_units: int
    context_units: int
    prompt_frames: int
    flow_frames: int
    window_frames: int


@dataclass(frozen=True)
class _ChunkPlan:
    """One chunk's positions: units `[context_start, start)` re-read as prompt and `[start, end)` new; mel frames
    `[first_frame, prompt_end)` of prompt and `[prompt_end, last_frame)` new; vocoder window `[window_start,
    last_frame)` (the mel of units `[0, n)` is `num_frames(n)` frames, so `last_frame` is the mel length after it)."""

    context_start: int
    start: int
    end: int
    first_frame: int
    prompt_end: int
    last_frame: int
    window_start: int


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

    Batching: `add(units)` buffers without rendering; streams that are `ready` and share a `batch_key()` (same model
    and estimator, same chunk shapes: new and left-context units, prompt and flow frames, vocoder window frames)
    render their next chunks together with [`render_chunks`]: one flow `inference` on the stacked chunks (estimator
    batch `2 * streams`) and one vocoder `predict_f0`/`decode` on the stacked windows. `push` is `add` plus
    `render_chunks([self])` while ready, so solo and batched chunks run the same code. Randomness stays per stream
    (each stream's flow noise, phases and sine noise come from its own generators, only the network calls are
    stacked), so a stream's audio does not depend on its batch mates, up to float32 rounding: the stacked kernels
    sum in another order. Measured on CPU (float32, random weights), a stream rendered in a batch of 3 differs from
    the same stream alone by at most 1.4e-7 on the tiny decoder (157-unit answers, every chunk size) and 1.2e-7 on the
    full-size decoder (first chunk), for waveforms peaking at ~0.1. With `compile=True` the estimator's batch is
    symbolic: batches of any size share the graph one stream compiled.
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

    def add(self, units) -> None:
        """Buffer `units` (ids checked as in `push`) without rendering anything; see `ready` and [`render_chunks`]."""
        self.units += _unit_list(self.model, units)

    @property
    def ready(self) -> bool:
        """Whether the next non-final chunk (`next_chunk_units` units) is buffered, so [`render_chunks`] can run it."""
        return len(self.units) - self.rendered_units >= self.next_chunk_units

    def batch_key(self) -> BatchKey:
        """What the next non-final chunk's network calls depend on: streams with equal keys can share one
        [`render_chunks`] batch (their inputs stack to one shape, for the same model and estimator)."""
        return self._key(self.next_chunk_units, self.compiled_estimator)

    def final_key(self) -> BatchKey:
        """What the last chunk's network calls depend on (every unit not rendered yet; eager estimator): streams with
        equal keys and no `ready` chunk left finish as one batch in [`finish_streams`]."""
        return self._key(len(self.units) - self.rendered_units, None)

    def _key(self, num_units: int, estimator) -> BatchKey:
        plan = self._plan(num_units)
        return BatchKey(
            model=self.model,
            estimator=estimator,
            dtype=self.model.dtype,
            device=self.model.device,
            new_units=plan.end - plan.start,
            context_units=plan.start - plan.context_start,
            prompt_frames=plan.prompt_end - plan.first_frame,
            flow_frames=plan.last_frame - plan.first_frame,
            window_frames=plan.last_frame - plan.window_start,
        )

    def push(self, units) -> torch.Tensor:
        """Buffer `units`; returns the audio that became final, shape `(1, samples)` (possibly empty)."""
        self.add(units)
        return torch.cat([_empty_waveform(self.model), *self._render_ready()], dim=-1)

    def finish(self) -> torch.Tensor:
        """Render what is pending (the ready chunks of the schedule first, as `push` would have: units buffered with
        `add` are chunked alike) and play everything held back; shape `(1, samples)`."""
        return finish_streams([self])[0]

    def _render_ready(self) -> list[torch.Tensor]:
        """Render this stream's ready chunks alone, one by one; their waveforms."""
        pieces = []
        while self.ready:
            pieces.extend(render_chunks([self]))
        return pieces

    def _plan(self, num_units: int) -> _ChunkPlan:
        """Where the next chunk of `num_units` new units reads and writes (the one home of the chunk arithmetic)."""
        frames = self.model.flow.num_frames
        start = self.rendered_units
        context_start = max(0, start - self.left_context_units)
        return _ChunkPlan(
            context_start=context_start,
            start=start,
            end=start + num_units,
            first_frame=frames(context_start),
            prompt_end=frames(start),
            last_frame=frames(start + num_units),
            window_start=max(0, self.played_frames - self.model.config.stream_vocoder_context_frames),
        )

    def _flow_noise(self, first_frame: int, last_frame: int) -> torch.Tensor:
        missing = last_frame - self.noise.shape[-1]
        if missing > 0:
            # Frame-major draws: frame f gets the same noise whatever the chunking.
            draw = torch.randn((missing, self.noise.shape[1]), generator=self.flow_generator, device=self.noise.device)
            self.noise = torch.cat([self.noise, draw.T[None]], dim=-1)
        return self.noise[..., first_frame:last_frame].to(self.model.dtype)

    def _speaker_row(self) -> torch.Tensor:
        """The speaker embedding as one `(1, speaker_dim)` row in the weights' dtype; zeros when None, as
        `FlowDecoder.inference` does (`speaker_condition` casts to that dtype first, so stacking changes nothing)."""
        flow = self.model.flow
        weight = flow.speaker_projection.weight
        if self.speaker_embedding is None:
            return weight.new_zeros(1, flow.config.speaker_embedding_dim)
        return self.speaker_embedding.to(weight.device, weight.dtype)

    def _play(self, waveform: torch.Tensor, plan: _ChunkPlan, final: bool) -> torch.Tensor:
        """Cut the playable audio out of this stream's vocoded window `(1, window_frames * hop)`; holds back the
        tail (unless `final`) for the next chunk's cross-fade."""
        config = self.model.config
        hop, window_start = config.hop_length, plan.window_start
        play_end = (
            plan.last_frame if final else max(self.played_frames, plan.last_frame - config.stream_holdback_frames)
        )
        played = waveform[:, (self.played_frames - window_start) * hop : (play_end - window_start) * hop]
        played = self._crossfade(played)
        self.held_audio = waveform[:, (play_end - window_start) * hop :]
        self.played_frames = play_end
        return played

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


def _repeats(streams: list[BlockStream]) -> bool:
    """Whether a stream appears twice in `streams` (a batch would render its chunk twice)."""
    return len({id(stream) for stream in streams}) < len(streams)


def _batch_problem(streams: list[BlockStream]) -> str | None:
    """Why `streams` cannot render their next chunks as one batch, or None."""
    if _repeats(streams):
        return "a stream appears twice"
    for index, stream in enumerate(streams):
        if not stream.ready:
            pending = len(stream.units) - stream.rendered_units
            return f"stream {index} is not ready ({pending} of its next {stream.next_chunk_units} units buffered)"
    keys = [stream.batch_key() for stream in streams]
    for index, key in enumerate(keys[1:], start=1):
        if key != keys[0]:
            fields = ", ".join(
                name if name in ("model", "estimator") else f"{name} {getattr(keys[0], name)} vs {value}"
                for name, value in key._asdict().items()
                if value != getattr(keys[0], name)
            )
            return f"stream {index}'s batch key differs from stream 0's: {fields}"
    return None


@torch.no_grad()
def render_chunks(streams: list[BlockStream]) -> list[torch.Tensor]:
    r"""
    Render the next chunk of every stream as one batch: one flow `inference` call on the stacked chunks and one
    vocoder `predict_f0`/`decode` on the stacked windows. Each stream keeps its own randomness (flow noise, phases,
    sine noise) and state; the result equals rendering each stream alone (`push`) up to float32 rounding (see
    [`BlockStream`], "Batching").

    Args:
        streams (`list[BlockStream]`):
            Streams that are all `ready` and share one `batch_key()`; each renders exactly `next_chunk_units` units.

    Returns:
        `list[torch.Tensor]`: each stream's playable waveform, shape `(1, samples)`, in the order of `streams`.

    Raises:
        `ValueError`: a stream is not ready, appears twice, or its batch key differs from the first stream's.
    """
    if not streams:
        return []
    problem = _batch_problem(streams)
    if problem is not None:
        raise ValueError(f"render_chunks: {problem}")
    waveforms = _render(streams, streams[0].next_chunk_units, final=False)
    for stream in streams:
        # Chunks double up to the largest size: the first audio comes soon, and each later chunk holds enough units
        # to keep playback fed while the next one is generated.
        stream.next_chunk_units = min(2 * stream.next_chunk_units, stream.max_chunk_units)
    return waveforms


@torch.no_grad()
def finish_streams(streams: list[BlockStream]) -> list[torch.Tensor]:
    r"""
    Every stream's `finish()`: its ready chunks of the schedule first (one by one), then its last chunk (all the units
    left, and the audio held back); the last chunks of streams with equal `final_key()` render as one batch, equal to
    rendering each stream alone up to float32 rounding (as [`render_chunks`]).

    Args:
        streams (`list[BlockStream]`): distinct streams.

    Returns:
        `list[torch.Tensor]`: each stream's remaining waveform, shape `(1, samples)` (possibly empty), in order.
    """
    if _repeats(streams):
        raise ValueError("finish_streams: a stream appears twice")
    pieces = [[_empty_waveform(stream.model), *stream._render_ready()] for stream in streams]
    last_chunks: dict[BatchKey, list[int]] = {}
    for index, stream in enumerate(streams):
        if len(stream.units) > stream.rendered_units or stream.played_frames < stream.mel.shape[-1]:
            last_chunks.setdefault(stream.final_key(), []).append(index)
    for key, indices in last_chunks.items():
        waveforms = _render([streams[index] for index in indices], key.new_units, final=True)
        for index, waveform in zip(indices, waveforms, strict=True):
            pieces[index].append(waveform)
    return [torch.cat(parts, dim=-1) for parts in pieces]


@torch.no_grad()
def _render(streams: list[BlockStream], num_units: int, final: bool) -> list[torch.Tensor]:
    """Flow over `num_units` new units of every stream (none: only vocode what is held), then vocode; the one render
    path of `push`, `finish` and [`render_chunks`]. The streams' plans must stack (equal batch keys)."""
    plans = [stream._plan(num_units) for stream in streams]
    if num_units:
        _render_mels(streams, plans, final)
    waveforms = _vocode(streams, plans, final)
    for stream, plan in zip(streams, plans, strict=True):
        flow_units, flow_frames = (
            (plan.end - plan.context_start, plan.last_frame - plan.first_frame) if num_units else (0, 0)
        )
        vocoder_frames = plan.last_frame - plan.window_start
        stream.costs.append(ChunkCost(flow_units=flow_units, flow_frames=flow_frames, vocoder_frames=vocoder_frames))
    return waveforms


def _render_mels(streams: list[BlockStream], plans: list[_ChunkPlan], final: bool) -> None:
    """One flow call over (left context + new units) of every stream; appends each stream's new frames to its
    `mel`. The compiled estimator (if any) serves the schedule's fixed chunk sizes, not the `final` chunk's ragged
    one."""
    model = streams[0].model
    pairs = list(zip(streams, plans, strict=True))
    prompt_tokens = prompt_mel = None
    if plans[0].start > plans[0].context_start:
        prompt_units = [stream.units[plan.context_start : plan.start] for stream, plan in pairs]
        prompt_tokens = torch.tensor(prompt_units, dtype=torch.long, device=model.device)
        prompt_mel = torch.cat([stream.mel[..., plan.first_frame : plan.prompt_end] for stream, plan in pairs])
        prompt_mel = prompt_mel.transpose(1, 2)
    new_units = [stream.units[plan.start : plan.end] for stream, plan in pairs]
    mel = model.flow.inference(
        torch.tensor(new_units, dtype=torch.long, device=model.device),
        prompt_tokens=prompt_tokens,
        prompt_mel=prompt_mel,
        speaker_embedding=torch.cat([stream._speaker_row() for stream in streams]),
        noise=torch.cat([stream._flow_noise(plan.first_frame, plan.last_frame) for stream, plan in pairs]),
        num_frames=plans[0].last_frame - plans[0].first_frame,
        batch_guidance=True,
        estimator=None if final else streams[0].compiled_estimator,
    ).mel
    for row, (stream, plan) in enumerate(pairs):
        stream.mel = torch.cat([stream.mel, mel[row : row + 1]], dim=-1)
        stream.rendered_units = plan.end


def _vocode(streams: list[BlockStream], plans: list[_ChunkPlan], final: bool) -> list[torch.Tensor]:
    """Vocode every stream's frames made since its last call, with context, as one batch; the excitation of the new
    samples stays per stream (its own phase and generator). Returns each stream's playable audio."""
    vocoder, hop = streams[0].model.vocoder, streams[0].model.config.hop_length
    pairs = list(zip(streams, plans, strict=True))
    mel = torch.cat([stream.mel[..., plan.window_start : plan.last_frame] for stream, plan in pairs])
    f0 = vocoder.upsample_f0(vocoder.predict_f0(mel))
    sources = []
    for row, (stream, plan) in enumerate(pairs):
        vocoded = stream.source.shape[-1] // hop
        new_f0 = f0[row : row + 1, (vocoded - plan.window_start) * hop :]
        source = stream.source[..., plan.window_start * hop :]
        if new_f0.shape[-1]:
            source = torch.cat([source, stream._excitation(new_f0)], dim=-1)
            stream.source = torch.cat([stream.source, source[..., (vocoded - plan.window_start) * hop :]], dim=-1)
        sources.append(source)
    waveform = vocoder.decode(mel, torch.cat(sources).to(mel.dtype))
    return [stream._play(waveform[row : row + 1], plan, final) for row, (stream, plan) in enumerate(pairs)]
