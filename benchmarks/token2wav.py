"""token2wav cost: our block streaming against the original OpenS2S schedule, same weights, one run.

Run from the repository root (nothing is downloaded; the decoder has seeded random weights):

    python -m benchmarks.token2wav --size full --units 250               # real decoder dims, 20 s answer, CPU fp32
    python -m benchmarks.token2wav --size tiny --units 30                # smoke run, seconds
    python -m benchmarks.token2wav --size full --device cuda --dtype bfloat16   # lent GPU

Other options: `--threads N` (`torch.set_num_threads`; on a loaded 2-core CPU `--threads 1` avoids OpenMP
oversubscription), `--seed 0`, `--skip-original` (the slow row), `--repeats 3` (first audio measured again per side,
alternating, and the medians compared: one first chunk is a short, noisy measurement on a shared machine).

`--units` random unit ids (12.5 units/s: 250 units = 20 s at 22.05 kHz), after a warm-up pass over one block:

* `ours offline`: `model.synthesize(units)`, one flow pass and one vocoder pass over the whole answer.
* `ours stream`: `model.start_stream()` (chunks of whole encoder blocks, bounded left context, the guidance's two
  estimator passes as one batch-2 call), the units pushed one at a time as an LLM writes them, then `finish()`.
  The first audio is the first one-block chunk (10 units = 68 frames, the encoder's block: a smaller chunk would
  change the sound); the original's is its first 24-unit call (163 frames, two estimator calls per Euler step).
* `original`: `model.start_stream(mode="original")`, OpenS2S's loop (a call per 24 units, the whole history re-run
  as the flow's prompt), same push pattern.

Units arrive instantly, so the times are decoder time only. A "chunk" is a call (`push` or `finish`) that returned
audio; its cost is that call's seconds. `last chunk s` is the last chunk that ran the flow (our vocoder-only flush
is in the per-chunk list only).

Printed: the sizes; one table (total s, RTF = seconds / audio seconds, time to first audio, first and last chunk
cost and their ratio, chunks); the goal ratios (`GOAL_*`), the spread of our steady chunks and the units each side
ran through the flow (its ODE re-runs the prompt frames, so this sets the streaming overhead); per-chunk seconds and
flow units, our frames from `BlockStream.costs`; the sample counts: ours streaming must equal ours offline (else
`AssertionError`). The original loses one mel frame per boundary from its 3rd call on, and when the answer is a
multiple of 24 units its held 34-frame overlap and last hop are never played.

Example, `--size full --units 120 --threads 1` on the shared 2-core CPU (loaded by other jobs: times are noisy):

                         total s           RTF   1st audio s   1st chunk s  last chunk s      last/1st        chunks
    ours offline          94.171         9.820        94.171        94.171        94.171         1.00x             1
    ours stream          137.633        14.352         5.205         5.203        17.882         3.44x             7
    original             151.170        15.764        13.400        13.398        55.607         4.15x             5
    units through the flow: ours offline 120, ours stream 320 (2.67x), original 360 (3.00x)
"""

import argparse
import statistics
import time
from dataclasses import dataclass, field

import torch

from opens2s.conversion.tiny import build_tiny_token2wav_config
from opens2s.modeling_opens2s.configuration_token2wav import OpenS2SToken2WavConfig
from opens2s.modeling_opens2s.modeling_token2wav import OpenS2SToken2Wav
from opens2s.modeling_opens2s.modeling_token2wav_streaming import ORIGINAL_CHUNK_UNITS, BlockStream, OriginalStream


__all__ = ["Run", "build_model", "check_samples", "main", "run_offline", "run_stream"]

# Goals of block streaming: at most 1.3x the offline cost, the original's loop at least 4x ours, first audio at
# least 2x sooner than the original's.
GOAL_STREAM_OVER_OFFLINE = 1.3
GOAL_ORIGINAL_OVER_STREAM = 4.0
GOAL_FIRST_AUDIO_SPEEDUP = 2.0


@dataclass
class Run:
    """One row: wall seconds of the whole answer, when the first audio came, and the cost of each chunk."""

    name: str
    total_s: float = 0.0
    first_audio_s: float = 0.0
    chunk_s: list[float] = field(default_factory=list)  # seconds of each call that returned audio
    chunk_flow_units: list[int] = field(default_factory=list)  # units through the flow per chunk (0: vocoder only)
    samples: int = 0

    @property
    def last_flow_chunk_s(self) -> float:
        pairs = zip(reversed(self.chunk_s), reversed(self.chunk_flow_units), strict=True)
        return next(seconds for seconds, units in pairs if units)


def build_model(size: str, device: torch.device, dtype: torch.dtype, seed: int) -> OpenS2SToken2Wav:
    """Seeded random weights; `full`: `OpenS2SToken2WavConfig()` (GLM-4-Voice decoder dims), `tiny`: toy width."""
    config = OpenS2SToken2WavConfig() if size == "full" else build_tiny_token2wav_config()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = OpenS2SToken2Wav(config)
    return model.to(device=device, dtype=dtype).eval()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def run_offline(model: OpenS2SToken2Wav, units: list[int], seed: int) -> Run:
    """One `synthesize` pass; its only chunk arrives at the end."""
    generator = torch.Generator(device=model.device).manual_seed(seed)
    _sync(model.device)
    start = time.perf_counter()
    samples = model.synthesize(units, generator=generator).waveform.shape[-1]
    _sync(model.device)
    total = time.perf_counter() - start
    return Run("ours offline", total, total, [total], [len(units)], samples)


@torch.inference_mode()
def run_stream(
    model: OpenS2SToken2Wav, units: list[int], mode: str, seed: int
) -> tuple[Run, BlockStream | OriginalStream]:
    """Push `units` one at a time, then `finish()`; time every call that returns audio. Returns the run and session."""
    device = model.device
    run = Run("ours stream" if mode == "blocks" else "original")
    generator = torch.Generator().manual_seed(seed) if mode == "blocks" else None
    _sync(device)
    start = time.perf_counter()
    stream = model.start_stream(mode=mode, generator=generator)
    calls = [(lambda unit=unit: stream.push([unit])) for unit in units] + [stream.finish]
    for call in calls:
        before = len(stream.costs) if isinstance(stream, BlockStream) else len(stream.history)
        call_start = time.perf_counter()
        waveform = call()
        _sync(device)
        now = time.perf_counter()
        if waveform.shape[-1] == 0:
            continue
        if not run.chunk_s:
            run.first_audio_s = now - start
        run.chunk_s.append(now - call_start)
        run.chunk_flow_units.append(_flow_units(stream, before))
        run.samples += waveform.shape[-1]
    run.total_s = time.perf_counter() - start
    return run, stream


@torch.inference_mode()
def first_audio_seconds(model: OpenS2SToken2Wav, units: list[int], mode: str, seed: int) -> float:
    """Seconds from a fresh stream to its first audio, the units pushed one at a time as in [`run_stream`]."""
    generator = torch.Generator().manual_seed(seed) if mode == "blocks" else None
    _sync(model.device)
    start = time.perf_counter()
    stream = model.start_stream(mode=mode, generator=generator)
    for unit in units:
        waveform = stream.push([unit])
        _sync(model.device)
        if waveform.shape[-1]:
            return time.perf_counter() - start
    raise ValueError(f"{len(units)} units give no audio before finish(): use more --units")


def median_first_audio(model: OpenS2SToken2Wav, units: list[int], seed: int, repeats: int) -> dict[str, float]:
    """Median first-audio seconds of `repeats` runs per side, ours and the original alternating (so a slow spell of
    a shared machine hits both sides alike)."""
    times: dict[str, list[float]] = {"ours stream": [], "original": []}
    for _ in range(repeats):
        times["ours stream"].append(first_audio_seconds(model, units, "blocks", seed))
        times["original"].append(first_audio_seconds(model, units, "original", seed))
    return {name: statistics.median(values) for name, values in times.items()}


def _flow_units(stream: BlockStream | OriginalStream, before: int) -> int:
    """Units the flow read in the last call: ours from `.costs[before:]`; the original re-reads its whole history."""
    if isinstance(stream, BlockStream):
        return sum(cost.flow_units for cost in stream.costs[before:])
    return len(stream.history) if len(stream.history) > before else 0


def check_samples(offline: Run, stream: Run, original: Run | None, hop_length: int) -> list[str]:
    """Our streamed audio has exactly the offline sample count (no lost frames); the original's count is reported."""
    if stream.samples != offline.samples:
        raise AssertionError(f"ours streaming gave {stream.samples} samples, ours offline {offline.samples}")
    lines = [f"samples: ours streaming == ours offline == {offline.samples} (no lost frames)"]
    if original is not None:
        lost = offline.samples - original.samples
        lines.append(
            f"samples: original {original.samples} = offline - {lost} ({lost / hop_length:g} mel frames) "
            f"over {len(original.chunk_s)} calls"
        )
    return lines


def _format_table(runs: list[Run], audio_s: float) -> list[str]:
    header = ["total s", "RTF", "1st audio s", "1st chunk s", "last chunk s", "last/1st", "chunks"]
    lines = [f"{'':<14}" + "".join(f"{name:>14}" for name in header)]
    for run in runs:
        last = run.last_flow_chunk_s
        values = [f"{run.total_s:.3f}", f"{run.total_s / audio_s:.3f}", f"{run.first_audio_s:.3f}"]
        values += [f"{run.chunk_s[0]:.3f}", f"{last:.3f}", f"{last / run.chunk_s[0]:.2f}x", f"{len(run.chunk_s)}"]
        lines.append(f"{run.name:<14}" + "".join(f"{value:>14}" for value in values))
    return lines


def _goal(value: float, goal: float, at_least: bool) -> str:
    met = value >= goal if at_least else value <= goal
    return f"(goal {'>=' if at_least else '<='} {goal:g}x: {'met' if met else 'NOT met'})"


def _format_ratios(offline: Run, stream: Run, original: Run | None) -> list[str]:
    streams = [stream] if original is None else [stream, original]
    ratio = stream.total_s / offline.total_s
    goal = _goal(ratio, GOAL_STREAM_OVER_OFFLINE, False)
    lines = [f"ours streaming / ours offline:            {ratio:7.2f}x {goal}"]
    if original is not None:
        ratio = original.total_s / stream.total_s
        goal = _goal(ratio, GOAL_ORIGINAL_OVER_STREAM, True)
        lines.append(f"original streaming / ours streaming:      {ratio:7.2f}x {goal}")
        ratio = original.first_audio_s / stream.first_audio_s
        goal = _goal(ratio, GOAL_FIRST_AUDIO_SPEEDUP, True)
        lines.append(f"original first audio / ours first audio:  {ratio:7.2f}x {goal}")
    for run in streams:
        lines.append(f"last / first chunk cost, {run.name + ':':<16}{run.last_flow_chunk_s / run.chunk_s[0]:7.2f}x")
    # Our first chunks are smaller by design (one block, then a growing left context): flatness is judged on the
    # chunks that read the full left context.
    widest = max(stream.chunk_flow_units)
    pairs = zip(stream.chunk_s, stream.chunk_flow_units, strict=True)
    steady = [seconds for seconds, units in pairs if units == widest]
    lines.append(
        f"ours steady chunks ({len(steady)} with the widest flow window, {widest} units): {min(steady):.3f} .. "
        f"{max(steady):.3f} s, max / min {max(steady) / min(steady):.2f}x"
    )
    # The flow ODE runs over prompt + new frames, so the units it reads in total set the streaming overhead.
    one_pass = sum(offline.chunk_flow_units)
    work = ", ".join(
        f"{run.name} {sum(run.chunk_flow_units)} ({sum(run.chunk_flow_units) / one_pass:.2f}x)" for run in streams
    )
    lines.append(f"units through the flow: ours offline {one_pass}, {work}")
    return lines


def _format_chunks(stream: Run, session: BlockStream, original: Run | None) -> list[str]:
    rows = []
    for run in [stream] if original is None else [stream, original]:
        rows.append((f"{run.name} per-chunk s", [f"{seconds:.2f}" for seconds in run.chunk_s]))
        rows.append((f"{run.name} per-chunk flow units", [str(units) for units in run.chunk_flow_units]))
    rows.append(("ours stream per-chunk flow frames", [str(cost.flow_frames) for cost in session.costs]))
    rows.append(("ours stream per-chunk vocoder frames", [str(cost.vocoder_frames) for cost in session.costs]))
    return [f"{label + ':':<38}" + "".join(f"{value:>6}" for value in values) for label, values in rows]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["full", "tiny"], default="full")
    parser.add_argument("--units", type=int, default=250, help="answer length in units (12.5 units/s)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads; default: torch's choice")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-original", action="store_true", help="skip the (slow) original schedule")
    parser.add_argument(
        "--repeats", type=int, default=3, help="first-audio runs per side, alternating, medians printed (0: none)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Run]:
    """Run the benchmark, print the report, return the rows by name."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = build_model(args.size, device, getattr(torch, args.dtype), args.seed)
    config = model.config
    block = config.flow_config.encoder_block_size
    units = torch.randint(0, config.vocab_size, (args.units,), generator=torch.Generator().manual_seed(args.seed))
    units = units.tolist()
    audio_s = model.flow.num_frames(args.units) * config.hop_length / config.sampling_rate
    params = sum(parameter.numel() for parameter in model.parameters()) / 1e6
    print(
        f"token2wav {args.size}: {params:.1f}M parameters, {args.device} {args.dtype}, {torch.get_num_threads()} "
        f"threads; {args.units} units = {audio_s:.2f} s of audio; ours: first chunk "
        f"{config.stream_first_chunk_blocks * block} units, then {config.stream_chunk_blocks * block}, left context "
        f"{config.stream_left_context_blocks * block}; original: {ORIGINAL_CHUNK_UNITS}-unit calls, whole history"
    )
    run_offline(model, units[:block], args.seed)  # warm-up
    offline = run_offline(model, units, args.seed)
    stream, session = run_stream(model, units, "blocks", args.seed)
    original = None if args.skip_original else run_stream(model, units, "original", args.seed)[0]
    runs = [offline, stream] + ([] if original is None else [original])
    lines = _format_table(runs, audio_s) + [""] + _format_ratios(offline, stream, original) + [""]
    print("\n".join(lines + _format_chunks(stream, session, original) + [""]))
    print("\n".join(check_samples(offline, stream, original, config.hop_length)))
    if original is not None and args.repeats > 0:
        medians = median_first_audio(model, units, args.seed, args.repeats)
        ratio = medians["original"] / medians["ours stream"]
        print(
            f"first audio, median of {args.repeats} alternating runs: ours {medians['ours stream']:.3f} s, original "
            f"{medians['original']:.3f} s, {ratio:.2f}x sooner {_goal(ratio, GOAL_FIRST_AUDIO_SPEEDUP, True)}"
        )
    return {run.name: run for run in runs}


if __name__ == "__main__":
    main()
