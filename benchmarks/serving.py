"""Serving many conversations: `OpenS2SEngine` (one loop, continuous batching) against the same conversations one
after another (`model.stream`, one at a time).

Run from the repository root (nothing is downloaded; random weights):

    python -m benchmarks.serving                                # CPU, mid size (LLM 1024 x 12, decoder 768 x 8)
    python -m benchmarks.serving --size tiny --conversations 1 2 --text-tokens 8 --units 24   # smoke run
    python -m benchmarks.serving --size full --device cuda --conversations 1 8 32            # a GPU, bf16

Options: `--text-tokens 32 --units 80` (each conversation writes exactly these: greedy, EOS suppressed), `--stagger 3`
(conversation i arrives at engine step 3 i), `--arrival-gap S` (instead: conversation i arrives S i seconds after the
first, by the clock, as traffic does; the engine idles when it has nothing to do before the next arrival),
`--threads N` (torch CPU threads; printed), `--seed`, `--no-audio` (units only: what batching the two LMs gives,
without the per-conversation token2wav), `--compile` (the fast path, static caches and compiled steps, on both sides;
each N first runs once unmeasured to compile its shapes; on CUDA that is CUDA graphs), `--repeat K` (K runs of each
measurement, engine and one-after-another alternating, the solo reference too: the rows show the median run, and each
run's ratios are printed; on a shared CPU one run varies by ~8%).

Each conversation has its own prompt (`benchmarks.streaming.build_inputs` with seed i) and speaks through a token2wav
decoder (tiny dims on CPU, the full GLM-4-Voice dims with `--size full`); every decoder id below the EOS is a unit.

Printed, per number of conversations N, for `engine` (all N submitted at staggered steps, one loop) and `sequential`
(the N run one after another): aggregate units/s (all units / wall seconds from the first arrival to the last answer),
first unit and first audio latency p50 / p95 (seconds from a conversation's arrival; for `sequential` from its own
start, i.e. a solo run), and the engine's peak key/value cache memory per conversation (MB; on CUDA the peak allocated
memory per added conversation), and where the engine's time went (LM forwards, token2wav batches, the audio encoder,
which runs once per prompt, and the rest); the engine's units/s while all N were active at once (from the step that
admitted the last one to the first answer's end: no ramp-up, no drain), against that span of the N=1 run (a
conversation alone, after its prompt's encoding and before its last audio); and whether every conversation wrote in the
engine exactly the text and decoder ids of its run alone (the engine's guarantee; the run exits non-zero, after the
figures, when one did not). Goal on CPU: N=8 engine >= 4x the sequential units/s, first-unit p95 <= 2x solo.
"""

import argparse
import statistics
import time
from types import SimpleNamespace

import torch
from transformers.utils import logging as hf_logging

from benchmarks import token2wav as token2wav_benchmark
from benchmarks.streaming import SIZES, Run, build_inputs, build_model, check_same_ids, generation_configs
from opens2s.conversion.tiny import build_tiny_token2wav_config
from opens2s.modeling_opens2s.engine_opens2s import OpenS2SEngine
from opens2s.modeling_opens2s.modeling_token2wav import OpenS2SToken2Wav


__all__ = ["check_conversation_ids", "main", "run_engine", "run_sequential"]

GOAL_SPEEDUP = 4.0
GOAL_FIRST_UNIT_P95 = 2.0


def attach_speech(model, size: str, device: str, dtype: torch.dtype) -> SimpleNamespace:
    """Attach a token2wav whose units are decoder ids `[offset, offset + count)`; returns that unit range."""
    decoder_vocab = model.config.speech_decoder_config.vocab_size
    if size == "full":
        token2wav = token2wav_benchmark.build_model("full", torch.device(device), dtype, seed=0)
    else:
        config = build_tiny_token2wav_config(num_units=decoder_vocab)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            token2wav = OpenS2SToken2Wav(config).to(device=device, dtype=dtype).eval()
    model.attach_token2wav(token2wav)
    count = token2wav.config.vocab_size
    return SimpleNamespace(unit_token_offset=decoder_vocab - count, num_units=count)


def _cache_bytes(engine: OpenS2SEngine) -> int:
    """Bytes of key/value caches the engine holds now: its conversations' caches, or on the fast path its
    preallocated pools (every slot, used or not)."""
    if engine.fast is not None:
        pools = engine.fast.pools.values()
        return sum(tensor.numel() * tensor.element_size() for pool in pools for tensor in (*pool.keys, *pool.values))
    total = 0
    for conversation in engine.active:
        for state in (conversation.interleaver.text, conversation.interleaver.speech):
            for layer in state.cache.layers:
                if getattr(layer, "keys", None) is not None:
                    total += layer.keys.numel() * layer.keys.element_size() * 2
    return total


def _percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def _ids(events: list) -> Run:
    """The text and decoder ids one conversation's events carry."""
    run = Run()
    for event in events:
        if event.kind == "text":
            run.text_ids += event.token_ids
        elif event.kind == "units":
            run.unit_ids += event.token_ids
    return run


def check_conversation_ids(engine_runs: list[Run], alone_runs: list[Run]) -> list[str]:
    """The conversations whose ids in the engine differ from the same conversation's run alone, each with its first
    difference (empty: every conversation wrote exactly its ids alone, as the engine guarantees)."""
    problems = []
    for index, (in_engine, alone) in enumerate(zip(engine_runs, alone_runs, strict=True)):
        try:
            check_same_ids(in_engine, alone, names=("engine", "alone"))
        except AssertionError as difference:
            problems.append(f"conversation {index}: {difference}")
    return problems


def _summary(name: str, units: int, seconds: float, stats: list, memory_mb: float | None) -> dict:
    first_units = [s.time_to_first_units for s in stats]
    first_audio = [s.time_to_first_audio for s in stats if s.time_to_first_audio is not None]
    return {
        "name": name,
        "units_per_s": units / seconds,
        "unit_p50": statistics.median(first_units),
        "unit_p95": _percentile(first_units, 0.95),
        "audio_p50": statistics.median(first_audio) if first_audio else float("nan"),
        "audio_p95": _percentile(first_audio, 0.95) if first_audio else float("nan"),
        "memory_mb": memory_mb,
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_engine(
    model, prompts: list[dict], kwargs: dict, stagger: int, arrival_gap: float | None = None, compile: bool = False
) -> dict:
    """All conversations through one engine (the fast path with `compile`), conversation i submitted at step
    `stagger * i`, or with `arrival_gap` at `arrival_gap * i` seconds after the first."""
    engine = OpenS2SEngine(model, max_active=len(prompts), max_queued=0, compile=compile)
    device = model.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    conversations, peak_cache, step = [], 0, 0
    together = []  # (seconds, units so far) after each step with every conversation active: none queued or done
    start = time.perf_counter()
    while len(conversations) < len(prompts) or engine.active or engine.queued:
        if len(conversations) < len(prompts):
            if arrival_gap is None:
                due = step == stagger * len(conversations)
            else:
                arrival = start + arrival_gap * len(conversations)
                if not (engine.active or engine.queued):
                    time.sleep(max(0.0, arrival - time.perf_counter()))  # nothing to do until the next arrival
                due = time.perf_counter() >= arrival
            if due:
                conversations.append(engine.submit(prompts[len(conversations)], **kwargs))
                continue
        engine.step()
        peak_cache = max(peak_cache, _cache_bytes(engine))
        step += 1
        if len(conversations) == len(prompts) and len(engine.active) == len(prompts):
            units_so_far = sum(c.interleaver.stats.num_speech_tokens for c in engine.active if c.interleaver)
            together.append((time.perf_counter() - start, units_so_far))
    _sync(device)
    seconds = time.perf_counter() - start
    events = [list(conversation) for conversation in conversations]
    stats = [conversation_events[-1].stats for conversation_events in events]
    if device.type == "cuda":
        memory_mb = (torch.cuda.max_memory_allocated(device) - base) / len(prompts) / 2**20
    else:
        memory_mb = peak_cache / len(prompts) / 2**20
    units = sum(s.num_speech_tokens for s in stats)
    result = _summary("engine", units, seconds, stats, memory_mb)
    result["ids"] = [_ids(conversation_events) for conversation_events in events]
    result["together_units_per_s"] = result["together_seconds"] = None
    if len(together) > 1 and together[-1][0] > together[0][0]:
        (first_seconds, first_units), (last_seconds, last_units) = together[0], together[-1]
        result["together_units_per_s"] = (last_units - first_units) / (last_seconds - first_seconds)
        result["together_seconds"] = last_seconds - first_seconds
    result["work"] = {**engine.stats(), "seconds": seconds, "side_threads": engine.side.threads if engine.side else 0}
    return result


def _work_line(count: int, work: dict) -> str:
    """Where the engine's time went: LM forwards, token2wav batches, the audio encoder, the part of those two that
    ran beside the loop on the side worker, and the rest of the loop (sampling, events)."""
    in_loop = work["forward_seconds"] + work["token2wav_seconds"] + work["audio_encoder_seconds"]
    rest = work["seconds"] - in_loop + work["side_seconds"]
    forwards = f"{work['forwards']} LM forwards {work['forward_seconds']:.1f} s"
    token2wav = f"token2wav {work['token2wav_chunks']} chunks in {work['token2wav_batches']} batches + last chunks"
    return (
        f"{count:>3} engine time {work['seconds']:.1f} s: {forwards}, {token2wav} {work['token2wav_seconds']:.1f} s, "
        f"audio encoder {work['audio_encoder_seconds']:.1f} s; beside the loop {work['side_seconds']:.1f} s "
        f"({work['side_threads']} side threads); rest of the loop {rest:.1f} s"
    )


def _together_line(count: int, engine: dict, alone_rate: float | None) -> str:
    """The engine's units/s while every conversation was active at once (from the step the last one was admitted
    to the one before the first answer ended), against the same span of a conversation alone (`alone_rate`: the N=1
    run's; that span leaves out the prompt's encoding and the last audio, which a whole run counts)."""
    if engine["together_units_per_s"] is None:
        return f"{count:>3} all active never all {count} at once"
    rate = engine["together_units_per_s"]
    line = f"{count:>3} all active {rate:>8.1f} units/s over {engine['together_seconds']:.1f} s of the run"
    if alone_rate is not None and count > 1:
        line += f", {rate / alone_rate:.2f}x a conversation alone over the same span ({alone_rate:.1f} units/s)"
    return line


def run_sequential(model, prompts: list[dict], kwargs: dict, compile: bool = False) -> dict:
    """The same conversations one after another, each `model.stream` alone (the fast path with `compile`)."""
    start, stats, ids = time.perf_counter(), [], []
    for prompt in prompts:
        events = list(model.stream(**prompt, **kwargs, compile=compile))
        stats.append(events[-1].stats)
        ids.append(_ids(events))
    _sync(model.device)
    seconds = time.perf_counter() - start
    result = _summary("sequential", sum(s.num_speech_tokens for s in stats), seconds, stats, None)
    result["ids"] = ids
    return result


def _row(counts: int, result: dict) -> str:
    memory = f"{result['memory_mb']:10.2f}" if result["memory_mb"] is not None else f"{'-':>10}"
    return (
        f"{counts:>3} {result['name']:<11}{result['units_per_s']:>9.1f}{result['unit_p50']:>9.2f}"
        f"{result['unit_p95']:>9.2f}{result['audio_p50']:>9.2f}{result['audio_p95']:>9.2f}{memory}"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="mid")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--conversations", type=int, nargs="+", default=None, help="default 1 2 4 8 (cuda: 1 8 32)")
    parser.add_argument("--text-tokens", type=int, default=32)
    parser.add_argument("--units", type=int, default=80)
    parser.add_argument("--stagger", type=int, default=3, help="engine steps between two arrivals")
    parser.add_argument(
        "--arrival-gap", type=float, default=None, help="seconds between two arrivals (instead of --stagger)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-audio", action="store_true", help="units only (no token2wav): the LMs' batching alone")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each measurement; the median run is shown")
    parser.add_argument(
        "--compile", action="store_true", help="the fast path (static caches, compiled steps) on both sides"
    )
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error(f"--repeat must be >= 1, got {args.repeat}")
    if args.arrival_gap is not None and args.arrival_gap < 0:
        parser.error(f"--arrival-gap must be >= 0 seconds, got {args.arrival_gap}")
    return args


def _median_run(results: list[dict], key: str) -> dict:
    """The run whose `key` is the median (the lower middle of an even count)."""
    return sorted(results, key=lambda result: result[key])[(len(results) - 1) // 2]


def _listed(values: list[float], unit: str) -> str:
    return " ".join(f"{value:.2f}{unit}" for value in values)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    size = args.size if args.device == "cpu" or args.size != "mid" else "full"
    counts = args.conversations or ([1, 8, 32] if args.device == "cuda" else [1, 2, 4, 8])
    model = build_model(size, args.device, dtype, seed=args.seed)
    unit_range = attach_speech(model, size, args.device, dtype)
    text_config, speech_config = generation_configs(model, args.text_tokens, args.units)
    kwargs = {
        "generation_config": text_config,
        "speech_generation_config": speech_config,
        "unit_tokenizer": unit_range,
        "seed": args.seed,
    }
    if args.no_audio:
        kwargs["token2wav"] = False
    text, decoder = model.config.text_config, model.config.speech_decoder_config
    arrivals = f"{args.stagger} steps" if args.arrival_gap is None else f"{args.arrival_gap:g} s"
    print(
        f"size {size} on {args.device} ({dtype}), {torch.get_num_threads()} threads: LLM {text.hidden_size} x "
        f"{text.num_hidden_layers}, decoder {decoder.hidden_size} x {decoder.num_hidden_layers}; "
        f"{args.text_tokens} text tokens and {args.units} units per conversation, arrivals every {arrivals}; "
        + ("fast path (compile=True)" if args.compile else "eager")
    )
    prompts_all = [build_inputs(model, seed=args.seed + index) for index in range(max(counts))]
    list(model.stream(**prompts_all[0], **kwargs, compile=args.compile))  # warm-up
    print(
        f"{'N':>3} {'mode':<11}{'units/s':>9}{'unit p50':>9}{'unit p95':>9}{'aud p50':>9}{'aud p95':>9}{'MB/conv':>10}"
    )
    solos = [run_sequential(model, prompts_all[:1], kwargs, args.compile) for _ in range(args.repeat)]
    solo = _median_run(solos, "unit_p95")
    mismatches, alone_rate = [], None
    for count in counts:
        prompts = prompts_all[:count]
        engines, sequentials = [], []
        if args.compile:  # an engine of `count` slots compiles its own step shapes: not in the figures
            begin = time.perf_counter()
            run_engine(model, prompts, kwargs, args.stagger, args.arrival_gap, compile=True)
            seconds = time.perf_counter() - begin
            print(f"{count:>3} warm-up    {seconds:.1f} s (compiles the fast path for {count} conversations)")
        for run in range(args.repeat):
            engines.append(run_engine(model, prompts, kwargs, args.stagger, args.arrival_gap, args.compile))
            sequential = solos[run] if count == 1 else run_sequential(model, prompts, kwargs, args.compile)
            sequentials.append(sequential)
        engine, sequential = _median_run(engines, "units_per_s"), _median_run(sequentials, "units_per_s")
        print(_row(count, engine))
        print(_row(count, sequential))
        print(_work_line(count, engine["work"]))
        print(
            f"{count:>3} engine/seq  {engine['units_per_s'] / sequential['units_per_s']:>8.2f}x units/s, "
            f"first-unit p95 {_median_run(engines, 'unit_p95')['unit_p95'] / solo['unit_p95']:.2f}x solo "
            f"(goal at 8 on CPU: >= {GOAL_SPEEDUP}x, <= {GOAL_FIRST_UNIT_P95}x)"
        )
        if count == 1:
            alone_rate = engine["together_units_per_s"]
        print(_together_line(count, engine, alone_rate))
        if args.repeat > 1:
            ratios = [e["units_per_s"] / s["units_per_s"] for e, s in zip(engines, sequentials, strict=True)]
            latencies = [e["unit_p95"] / solo["unit_p95"] for e in engines]
            print(
                f"{count:>3} each run   units/s ratio {_listed(ratios, 'x')}; first-unit p95 vs solo "
                f"{_listed(latencies, 'x')} (solo runs {_listed([s['unit_p95'] for s in solos], ' s')})"
            )
        problems = [
            f"N={count} run {run}, {problem}"
            for run, (e, s) in enumerate(zip(engines, sequentials, strict=True))
            for problem in check_conversation_ids(e["ids"], s["ids"])
        ]
        print(f"{count:>3} ids        " + ("; ".join(problems) or f"engine == alone in all {count} conversations"))
        mismatches += problems
    if mismatches:
        raise SystemExit(f"ids in the engine differ from the same conversations alone: {'; '.join(mismatches)}")


if __name__ == "__main__":
    main()
