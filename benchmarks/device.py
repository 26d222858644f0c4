"""Eager against the fast path (`compile=True`: static caches, compiled decode steps), side by side in one run.

Run from the repository root (nothing is downloaded; every model has seeded random weights):

    python -m benchmarks.device --device cuda      # one H100/H200: real dims in bf16 (never run yet: budget 8 min)
    python -m benchmarks.device --threads 1        # CPU: the mid-size LMs in fp32

On `--device cuda` the LMs have the real dimensions (Qwen3-8B LLM, the 1.7B speech decoder: `SIZES["full"]` of
`benchmarks/streaming.py`) and are built directly on the GPU in bf16 (no CPU copy); on CPU the `mid` preset. The
token2wav decoder has the GLM-4-Voice dimensions on both (`benchmarks/token2wav.py`), in the LMs' dtype.

The prompt is `benchmarks/streaming.py`'s (the example wav's features, random ids around its placeholders); decoding
is greedy with the EOS ids suppressed, so both sides write exactly `--text-tokens` text ids and `--units` decoder ids
(the same ids: checked). Unit ids are the decoder ids in the last 16,384 before its EOS; random weights pick other ids
too, so the audio is shorter than `--units / 12.5` s. One warm-up answer per side comes first, as long as the measured
one (so it meets every decode-step shape and every fixed token2wav chunk shape, which `compile=True` compiles too);
for the compiled side its compile stage is the printed compile cost (the compilation is then cached for every later
call, and the measured answer compiles nothing).

Printed per side: compile s, prefill s (audio encoder + LLM prefill), ms per text token, ms per unit (decoder
forward + sampling per decoder id), first text / first unit / first audio (s), audio s, RTF (compute s / audio s),
peak GPU memory (GiB; CUDA only), then eager / compiled.
"""

import argparse
import time
from types import SimpleNamespace

import torch
from transformers.utils import logging as hf_logging

from benchmarks import token2wav as token2wav_bench
from benchmarks.streaming import build_inputs, build_model, check_budgets, generation_configs


__all__ = ["main", "run_side"]

NUM_UNITS = 16384  # GLM-4-Voice speech tokenizer codes


def unit_vocabulary(model) -> SimpleNamespace:
    """`(unit_token_offset, num_units)` of the benchmark decoder: the last `NUM_UNITS` ids before its EOS."""
    vocab = model.config.speech_decoder_config.vocab_size
    return SimpleNamespace(unit_token_offset=vocab - 1 - NUM_UNITS, num_units=NUM_UNITS)


def run_side(model, inputs: dict, configs: tuple, compile: bool) -> dict[str, float]:
    """One answer through `model.stream` (text, units and audio); its metrics."""
    device = model.device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    stats, ids = None, []
    for event in model.stream(
        **inputs,
        generation_config=configs[0],
        speech_generation_config=configs[1],
        unit_tokenizer=unit_vocabulary(model),
        seed=0,
        compile=compile,
    ):
        if event.kind in ("text", "units"):
            ids.append((event.kind, event.token_ids[0]))
        elif event.kind == "done":
            stats = event.stats
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    total = time.perf_counter() - start
    seconds = stats.stage_seconds
    return {
        "compile s": seconds.get("compile", 0.0),
        "prefill s": seconds.get("audio_encoder", 0.0) + seconds.get("text_prefill", 0.0),
        "ms/text": 1000 * seconds.get("text_decode", 0.0) / stats.num_text_tokens,
        "ms/unit": 1000 * seconds.get("speech_decode", 0.0) / stats.num_speech_tokens,
        "1st text s": stats.time_to_first_text,
        "1st unit s": stats.time_to_first_units,
        "1st audio s": stats.time_to_first_audio or float("nan"),
        "audio s": stats.audio_seconds,
        "RTF": total / stats.audio_seconds if stats.audio_seconds else float("nan"),
        "peak GiB": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan"),
        "_ids": ids,
    }


def print_table(rows: dict[str, dict[str, float]]) -> None:
    columns = [name for name in rows["eager"] if not name.startswith("_")]
    rows = {**rows, "eager/compiled": {}}
    for name in columns:
        compiled = rows["compiled"][name]
        rows["eager/compiled"][name] = rows["eager"][name] / compiled if compiled else float("nan")
    print(f"{'':<15}" + "".join(f"{column:>12}" for column in columns))
    for name, values in rows.items():
        suffix = "x" if name == "eager/compiled" else " "
        print(f"{name:<15}" + "".join(f"{values[column]:>11.3f}{suffix}" for column in columns))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--text-tokens", type=int, default=None, help="default: 100 on cuda, 64 on cpu")
    parser.add_argument("--units", type=int, default=None, help="default: 250 (a 20 s answer) on cuda, 160 on cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    args = parse_args(argv)
    cuda = args.device == "cuda"
    size, dtype = ("full", torch.bfloat16) if cuda else ("mid", torch.float32)
    text_tokens = args.text_tokens or (100 if cuda else 64)
    units = args.units or (250 if cuda else 160)
    if args.threads:
        torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()
    device = torch.device(args.device)
    model = build_model(size, args.device, dtype, args.seed)
    model.attach_token2wav(token2wav_bench.build_model("full", device, dtype, args.seed))
    check_budgets(text_tokens, units, model.config.text_span, model.config.speech_span)
    inputs = build_inputs(model, args.seed)
    configs = generation_configs(model, text_tokens, units)
    print(
        f"{args.device} {dtype} ({torch.get_num_threads()} threads), LMs '{size}', token2wav full; prompt "
        f"{inputs['input_ids'].shape[1]} ids; {text_tokens} text ids, {units} decoder ids"
    )
    rows = {}
    for name, compile in (("eager", False), ("compiled", True)):
        begin = time.perf_counter()
        warm_up = run_side(model, inputs, configs, compile)
        print(f"{name}: warm-up answer {time.perf_counter() - begin:.1f} s (compile {warm_up['compile s']:.1f} s)")
        rows[name] = run_side(model, inputs, configs, compile)
        rows[name]["compile s"] = warm_up["compile s"] + rows[name]["compile s"]
    if rows["eager"]["_ids"] != rows["compiled"]["_ids"]:
        raise AssertionError("the compiled path wrote other ids than the eager path")
    print(f"ids match: eager == compiled, {text_tokens} text ids and {units} decoder ids")
    print_table(rows)
    return rows


if __name__ == "__main__":
    main()
