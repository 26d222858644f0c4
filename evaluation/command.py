"""`opens2s eval`: the arguments and the run of the evaluation command (kept apart from `runner` so that
`opens2s --help` does not import torch).

    opens2s eval --out eval/opens2s [--benchmarks alpacaeval_full commoneval ifeval wildvoice underemotion-en ...]
        [--model ID_OR_FOLDER] [--device cuda] [--dtype bfloat16] [--mode text|speech] [--batch-size 1] [--limit N]
        [--judge-base-url URL] [--judge-model gpt-4o-mini] [--voicebench ID_OR_PATH] [--uro-bench ID_OR_PATH] ...
"""

import argparse
from pathlib import Path


__all__ = ["add_eval_arguments", "run_eval"]


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `opens2s eval` arguments to `parser`."""
    from opens2s.evaluation.benchmarks import BENCHMARKS, DEFAULT_SOURCES, TABLE2_BENCHMARKS

    parser.add_argument("--out", type=Path, required=True, help="output folder (re-use it to resume a run)")
    parser.add_argument(
        "--benchmarks",
        nargs="+",
        default=list(TABLE2_BENCHMARKS),
        choices=list(BENCHMARKS),
        metavar="NAME",
        help=f"benchmarks to run (default: the paper's Table 2: {' '.join(TABLE2_BENCHMARKS)}; "
        f"known: {', '.join(BENCHMARKS)})",
    )
    parser.add_argument("--model", help="converted OpenS2S folder or Hub id (default: the tiny random model)")
    parser.add_argument("--name", help="label of this run's row in the report (default: --model)")
    parser.add_argument("--token2wav", help="token2wav folder or Hub id (default: MODEL/token2wav when present)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps ... (default: cpu)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument(
        "--mode",
        default="text",
        choices=["text", "speech"],
        help="text: speech in, text out (what VoiceBench scores; UnderEmotion is still answered in speech, its judge "
        "reads the ASR transcript as URO-Bench's does); speech: every benchmark also speaks, transcribed "
        "(WER/CER against the text answer, duration, speech rate)",
    )
    parser.add_argument("--batch-size", type=int, default=1, help="rows per generate call in text mode (default 1)")
    parser.add_argument("--limit", type=int, help="only the first N rows of each benchmark (quick runs)")
    parser.add_argument("--max-new-tokens", type=int, help="text budget (default: the model's generation config)")
    parser.add_argument("--max-units", type=int, help="speech unit budget (default: the speech generation config)")
    parser.add_argument(
        "--sample", action="store_true", help="sample with the model's generation config (default: greedy)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of sampling and of the voice (default 0)")
    parser.add_argument(
        "--no-speech-prompt",
        action="store_true",
        help="text mode: leave <|im_tts_start|> out of the prompt (default: the prompt of a spoken reply)",
    )
    for suite, default in DEFAULT_SOURCES.items():
        parser.add_argument(
            f"--{suite}", metavar="ID_OR_PATH", help=f"Hub dataset or local mirror (default {default})"
        )
    judge = parser.add_argument_group("LLM judge (any OpenAI-compatible chat-completions endpoint)")
    judge.add_argument("--judge-base-url", help="e.g. https://api.openai.com/v1 (default: $OPENS2S_JUDGE_BASE_URL)")
    judge.add_argument("--judge-model", help="default: $OPENS2S_JUDGE_MODEL, else gpt-4o-mini (both benchmarks')")
    judge.add_argument("--judge-samples", type=int, default=3, help="judge answers per row (the protocols' n=3)")
    judge.add_argument("--judge-workers", type=int, default=4, help="judge requests in flight (default 4)")
    judge.add_argument("--judge-rps", type=float, help="at most this many judge requests per second")
    judge.add_argument(
        "--judge-input",
        default="reference",
        choices=["reference", "text", "asr"],
        help="what the judge reads: reference (default): each benchmark's own choice (VoiceBench: the text answer; "
        "URO-Bench: the ASR transcript of the spoken answer); text or asr for all",
    )
    judge.add_argument(
        "--judge-parsing",
        default="reference",
        choices=["reference", "lenient"],
        help="reference (default): as the benchmarks read judge answers (VoiceBench float, then [[n]]; URO-Bench int; "
        "every value counts); lenient: also **4**, 4/5, 'Score: 4', values outside 1-5 dropped",
    )
    judge.add_argument(
        "--failed-rows",
        default="reference",
        choices=["reference", "exclude"],
        help="reference (default): failed generations and judge answers count as the benchmarks count them "
        "(VoiceBench: an empty answer; URO-Bench: 0); exclude: left out of the means",
    )
    speech = parser.add_argument_group("speech mode")
    speech.add_argument(
        "--asr-model",
        default="openai/whisper-large-v3",
        help="Whisper checkpoint of the ASR (URO-Bench's; Chinese uses paraformer-zh where FunASR can load it)",
    )
    speech.add_argument("--asr-batch-size", type=int, default=8, help="waveforms per ASR pass (default 8)")
    speech.add_argument("--save-audio", action="store_true", help="write the spoken answers as wav files")
    parser.add_argument("--retry-failed", action="store_true", help="score the rows that failed before again")


def run_eval(args: argparse.Namespace) -> int:
    """Run `opens2s eval` on parsed arguments: print the report and where it is; returns the exit status."""
    from opens2s.evaluation.judges import JudgeConfig
    from opens2s.evaluation.runner import EvalConfig, run_evaluation

    judge = JudgeConfig.from_env(
        args.judge_base_url,
        args.judge_model,
        samples=args.judge_samples,
        requests_per_second=args.judge_rps,
        parsing=args.judge_parsing,
    )
    config = EvalConfig(
        output_dir=args.out,
        benchmarks=tuple(args.benchmarks),
        model=args.model,
        model_name=args.name,
        token2wav=args.token2wav,
        device=args.device,
        dtype=args.dtype,
        mode=args.mode,
        batch_size=args.batch_size,
        limit=args.limit,
        max_new_tokens=args.max_new_tokens,
        speech_max_new_tokens=args.max_units,
        greedy=not args.sample,
        seed=args.seed,
        speech_prompt=not args.no_speech_prompt,
        sources={
            suite: value for suite in ("voicebench", "uro-bench") if (value := getattr(args, suite.replace("-", "_")))
        },
        judge=judge,
        judge_workers=args.judge_workers,
        judge_input=args.judge_input,
        failed_rows=args.failed_rows,
        asr_model=args.asr_model,
        asr_batch_size=args.asr_batch_size,
        save_audio=args.save_audio,
        retry_failed=args.retry_failed,
    )
    run_evaluation(config)
    print((args.out / "report.md").read_text(encoding="utf-8"))
    print(
        f"report: {args.out / 'report.md'} (also report.csv, summary.json; per-row jsonl in {args.out}/<benchmark>/)"
    )
    return 0
