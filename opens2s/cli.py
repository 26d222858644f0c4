"""The `opens2s` command line (also `python -m opens2s`).

    opens2s chat [--audio WAV] [--out reply.wav] [--model ID_OR_FOLDER] [--device cuda --dtype bfloat16] [--threads N]
                 [--trust-remote-code] [--no-verify]
    opens2s convert SRC DST [--max-shard-size 5GB] [--unit-tokenizer-base ID] [--num-units 16384] [--token2wav DIR]
    opens2s convert-token2wav SRC DST
    opens2s eval --out DIR [--benchmarks NAME...] [--model ID_OR_FOLDER] [--mode text|speech] [--judge-base-url URL]
    opens2s data STAGE|all|status --workdir DIR [--seed-data SEEDS] [--llm openai --llm-model NAME] [--tts espeak] ...
    opens2s space [--model ID_OR_FOLDER] [--port 7860] [--max-units 40] [--concurrency-limit 2] [--threads N]
    opens2s serve [--model ID_OR_FOLDER] [--port 8000] [--api-key KEY] [--max-active 8] [--ray --replicas N]
    opens2s tiny [DST] [--seed 0]
    opens2s train --stage STAGE --model ID_OR_FOLDER --data DATA [--lora] [-- TRAINING_ARGS...]
    opens2s units IN... --out units.jsonl [--model ID_OR_FOLDER] [--batch-size 16] [--device cpu] [--dtype float32]
    opens2s verify FOLDER...

A model folder's own code runs only with `--trust-remote-code` (chat, space, serve, train): by default the package's
installed classes load it. Folders with a `checksums.sha256` (converted or built by these tools) are checked before
they load (`--no-verify` skips it; `opens2s verify` checks alone).

Every subcommand is one [`Command`] entry in `COMMANDS`: a function that adds its arguments to an argparse parser
and a function that runs it on the parsed namespace and returns the exit status. A new subcommand adds one entry and
imports its heavy modules inside `run`, so `opens2s --help` stays fast.
"""

import argparse
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


__all__ = ["COMMANDS", "Command", "UsageError", "build_parser", "main", "parse_size"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Command:
    """One subcommand: its one-line help, how to add its arguments, and how to run it (returns the exit status)."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


class UsageError(ValueError):
    """An argument that cannot work, found before any work starts (exit status 2, like argparse's own errors)."""


def parse_size(text: str) -> int:
    """A byte count from `"5GB"`, `"500MB"`, `"2GiB"` or plain digits (the units of transformers' `max_shard_size`:
    GB/MB/KB are powers of 10, GiB/MiB/KiB powers of 2)."""
    from transformers.utils.hub import convert_file_size_to_int

    # Upper-casing keeps "5gb" from meaning gigabits, which transformers reads from a lower-case "b".
    normalized = text.strip().upper()
    try:
        size = int(normalized) if normalized.isdigit() else convert_file_size_to_int(normalized)
    except ValueError:
        size = 0
    if size <= 0:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}: use for example 5GB, 500MB, 2GiB or a byte count")
    return size


def _add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", metavar="SRC", type=Path, help="original OpenS2S checkpoint folder (OmniSpeechModel)")
    parser.add_argument("dst", metavar="DST", type=Path, help="output folder (must not exist or be empty)")
    parser.add_argument(
        "--max-shard-size", type=parse_size, default="5GB", help="largest safetensors shard (default: 5GB)"
    )
    parser.add_argument(
        "--unit-tokenizer-base",
        metavar="ID",
        help="only when SRC has no tts/ folder: the base tokenizer (Hub id or folder) the speech decoder was trained "
        "with; <|audio_k|> unit tokens are appended to it",
    )
    parser.add_argument(
        "--num-units", type=int, default=16384, help="speech unit codebook size for --unit-tokenizer-base"
    )
    parser.add_argument(
        "--token2wav",
        metavar="DECODER",
        type=Path,
        help="the original glm-4-voice-decoder folder (config.yaml, flow.pt, hift.pt), converted into DST/token2wav",
    )
    parser.add_argument(
        "--keep-speech-generation-config",
        action="store_true",
        help="keep the original speech generation config as is (by default non-unit decoder ids are suppressed)",
    )


def _run_convert(args: argparse.Namespace) -> int:
    from opens2s.conversion.convert_original_opens2s import convert_original_checkpoint

    dst = convert_original_checkpoint(
        args.src,
        args.dst,
        max_shard_size=args.max_shard_size,
        unit_tokenizer_base=args.unit_tokenizer_base,
        num_units=args.num_units,
        token2wav=args.token2wav,
        units_only=not args.keep_speech_generation_config,
    )
    print(dst)
    return 0


def _add_convert_token2wav_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "src", metavar="SRC", type=Path, help="original glm-4-voice-decoder folder (config.yaml, flow.pt, hift.pt)"
    )
    parser.add_argument("dst", metavar="DST", type=Path, help="output folder (must not exist or be empty)")


def _run_convert_token2wav(args: argparse.Namespace) -> int:
    from opens2s.conversion.convert_original_token2wav import convert_original_token2wav

    print(convert_original_token2wav(args.src, args.dst))
    return 0


def _add_tiny_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "dst", metavar="DST", nargs="?", type=Path, help="output folder (default: the cached tiny model, built once)"
    )
    parser.add_argument("--seed", type=int, help="weight seed; needs DST (the cached tiny model uses seed 0)")


def _run_tiny(args: argparse.Namespace) -> int:
    from opens2s.conversion.tiny import build_tiny_model, tiny_model_path

    if args.dst is None:
        if args.seed is not None:
            raise ValueError("--seed needs DST: the cached tiny model is always built with seed 0")
        path = tiny_model_path()
    else:
        path = build_tiny_model(args.dst, seed=0 if args.seed is None else args.seed)
    print(path)
    return 0


def _add_chat_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--audio", type=Path, help="the spoken question (any rate/channels; default: the bundled example.wav)"
    )
    parser.add_argument("--out", type=Path, default=Path("reply.wav"), help="reply wav to write (default: reply.wav)")
    parser.add_argument(
        "--model", help="converted OpenS2S folder or Hub id (default: the tiny random model, built on first use)"
    )
    parser.add_argument("--token2wav", help="token2wav folder or Hub id (default: MODEL/token2wav when present)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps ... (default: cpu)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--max-new-tokens", type=int, help="text budget (default: the model's generation config)")
    parser.add_argument("--max-units", type=int, help="speech unit budget (default: the speech generation config)")
    parser.add_argument("--mode", default="blocks", choices=["blocks", "original"], help="token2wav schedule")
    parser.add_argument("--seed", type=int, default=0, help="seed of sampling and of the voice's noise (default 0)")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="fast path: static caches and compiled decode steps (the first reply pays the compilation)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: half the cores, 1 to 4; more threads make small models slower)",
    )
    from opens2s.processing.loading import add_loading_arguments

    add_loading_arguments(parser)


def check_audio_destination(path: Path, option: str = "--out") -> None:
    """Raise a [`UsageError`] unless an audio file can be written at `path`: its folder exists and is writable, it is
    not a folder, and its extension names a format soundfile writes (`.wav`, `.flac`, `.ogg`, ...)."""
    import soundfile

    formats = soundfile.available_formats()
    if path.is_dir():
        raise UsageError(f"{option} {path} is a folder: give a file name such as {path / 'reply.wav'}")
    if path.suffix[1:].upper() not in formats:
        known = ", ".join(f".{name.lower()}" for name in ("WAV", "FLAC", "OGG") if name in formats)
        raise UsageError(f"{option} {path}: unknown audio format {path.suffix!r}; use one of {known}")
    folder = path.parent
    if not folder.is_dir():
        raise UsageError(f"{option} {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"{option} {path}: the folder {folder} is not writable")


def _run_chat(args: argparse.Namespace) -> int:
    import numpy as np
    import soundfile
    import torch

    from opens2s.processing.chat import EXAMPLE_WAV, load_speech_model, stream_reply
    from opens2s.processing.threads import default_num_threads

    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    check_audio_destination(args.out)  # before the model loads: a bad --out must not cost a whole reply
    torch.set_num_threads(args.threads or default_num_threads())
    speech_model = load_speech_model(
        args.model,
        device=args.device,
        dtype=args.dtype,
        token2wav=args.token2wav,
        trust_remote_code=args.trust_remote_code,
        verify=args.verify,
    )
    if speech_model.is_tiny:
        print("Note: running the tiny RANDOM default model: the reply is noise. Use --model for a real checkpoint.")

    events = stream_reply(
        speech_model,
        args.audio or EXAMPLE_WAV,
        seed=args.seed,
        max_new_tokens=args.max_new_tokens,
        speech_max_new_tokens=args.max_units,
        token2wav_mode=args.mode,
        compile=args.compile,
    )
    audio, stats, sample_rate = [], None, None
    print("Reply: ", end="", flush=True)
    for event in events:
        if event.kind == "text":
            print(event.text, end="", flush=True)
        elif event.kind == "audio":
            audio.append(event.pcm)
            sample_rate = event.sample_rate
        elif event.kind == "done":
            stats = event.stats
    print()
    print(f"{args.device}, {args.dtype}, {torch.get_num_threads()} torch CPU thread(s)")
    print(f"text tokens: {stats.num_text_tokens}, speech units: {stats.num_units}")
    print(f"first text: {_seconds(stats.time_to_first_text)}, first units: {_seconds(stats.time_to_first_units)}")
    if audio:
        waveform = np.concatenate(audio)
        soundfile.write(args.out, waveform, sample_rate)
        print(f"first audio: {_seconds(stats.time_to_first_audio)}")
        print(
            f"reply audio: {stats.audio_seconds:.2f} s -> {args.out}; compute {stats.total_seconds:.2f} s; "
            f"real-time factor {stats.total_seconds / stats.audio_seconds:.3f}"
        )
    else:
        print("no audio: the model has no token2wav decoder (pass --token2wav)")
    return 0


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} s"


def _add_units_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", metavar="IN", nargs="+", type=Path, help="audio files (any rate/channels)")
    parser.add_argument("--out", type=Path, required=True, help="jsonl to write: one {audio, units} line per file")
    parser.add_argument(
        "--model",
        default="THUDM/glm-4-voice-tokenizer",
        help="speech tokenizer folder or Hub id; the original glm-4-voice-tokenizer layout loads as is "
        "(default: THUDM/glm-4-voice-tokenizer)",
    )
    parser.add_argument("--batch-size", type=int, default=16, help="files read, and 30 s segments encoded, at once")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps ... (default: cpu)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--overwrite", action="store_true", help="replace --out when it exists")


def _run_units(args: argparse.Namespace) -> int:
    import json

    import torch

    from opens2s.modeling_opens2s.modeling_speech_tokenizer import OpenS2SSpeechTokenizer
    from opens2s.processing.speech_units import encode_files

    if args.out.exists() and not args.overwrite:
        raise ValueError(f"{args.out} exists; pass --overwrite to replace it")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    tokenizer = OpenS2SSpeechTokenizer.from_pretrained(args.model, dtype=getattr(torch, args.dtype))
    tokenizer = tokenizer.to(args.device).eval()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_name(args.out.name + ".partial")  # --out appears only when every file is encoded
    try:
        with partial.open("w") as out:
            for path, units in encode_files(args.inputs, tokenizer, batch_size=args.batch_size):
                out.write(json.dumps({"audio": str(path), "units": units}) + "\n")
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(args.out)
    print(args.out)
    return 0


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    from opens2s.training.stages import STAGE_PRESETS

    stages = "; ".join(f"{name}: paper stage {preset.paper_stage}" for name, preset in STAGE_PRESETS.items())
    parser.add_argument("--stage", required=True, choices=list(STAGE_PRESETS), help=f"training stage ({stages})")
    parser.add_argument("--model", required=True, help="OpenS2S folder or Hub id to start from")
    parser.add_argument(
        "--data", required=True, help="jsonl in the original format, a datasets folder, or a Hub dataset id"
    )
    parser.add_argument("--lora", action="store_true", help="train LoRA adapters on the LLM (stages that train it)")
    parser.add_argument(
        "training_args",
        nargs=argparse.REMAINDER,
        metavar="-- ARGS",
        help="after `--`: arguments of the training script (--output_dir, --max_steps, --bf16, --audio_root, ...; "
        "python -m opens2s.training.train --help lists them)",
    )
    from opens2s.processing.loading import add_loading_arguments

    add_loading_arguments(parser)


def _run_train(args: argparse.Namespace) -> int:
    from opens2s.training.train import main as train_main

    extra = args.training_args[1:] if args.training_args[:1] == ["--"] else args.training_args
    argv = ["--stage", args.stage, "--model_name_or_path", args.model, "--dataset_name", args.data]
    argv += ["--trust_remote_code", str(args.trust_remote_code), "--verify_checksums", str(args.verify)]
    argv += (["--lora", "True"] if args.lora else []) + extra
    return train_main(argv)


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    from opens2s.dataset_scripts.cli import add_arguments  # standard library only: the pipeline loads in `run`

    add_arguments(parser)


def _run_data(args: argparse.Namespace) -> int:
    from opens2s.dataset_scripts.cli import run

    return run(args)


def _add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    from opens2s.evaluation.command import add_eval_arguments  # argparse only: torch and datasets load in `run`

    add_eval_arguments(parser)


def _run_eval(args: argparse.Namespace) -> int:
    from opens2s.evaluation.command import run_eval

    return run_eval(args)


def _add_space_arguments(parser: argparse.ArgumentParser) -> None:
    from opens2s.spaces_app import add_arguments  # argparse only: gradio is imported by `run`

    add_arguments(parser)


def _run_space(args: argparse.Namespace) -> int:
    from opens2s.spaces_app.app import run

    return run(args)


def _add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    from opens2s.serving.command import add_arguments  # argparse only: fastapi, torch and ray load in `run`

    add_arguments(parser)


def _run_serve(args: argparse.Namespace) -> int:
    from opens2s.serving.command import run

    return run(args)


def _add_verify_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folders", metavar="FOLDER", nargs="+", type=Path, help="model folders to check")


def _run_verify(args: argparse.Namespace) -> int:
    from opens2s.conversion.checksums import CHECKSUMS_NAME, verify_checksums

    unchecked = []
    for folder in args.folders:
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} is not a folder")
        checked = verify_checksums(folder)  # a ChecksumError names the files that differ
        if checked is None:
            unchecked.append(folder)
        else:
            print(f"{folder}: OK, {len(checked)} files match {CHECKSUMS_NAME}")
    for folder in unchecked:
        print(f"{folder}: no {CHECKSUMS_NAME}, nothing to check")
    return 1 if unchecked else 0


COMMANDS: dict[str, Command] = {
    "chat": Command(
        "one spoken turn: stream the text reply, write the spoken reply, print latency and real-time factor",
        _add_chat_arguments,
        _run_chat,
    ),
    "convert": Command(
        "convert an original OpenS2S checkpoint into a transformers remote-code folder",
        _add_convert_arguments,
        _run_convert,
    ),
    "convert-token2wav": Command(
        "convert the original GLM-4-Voice speech decoder (flow + HiFT) into a safetensors token2wav folder",
        _add_convert_token2wav_arguments,
        _run_convert_token2wav,
    ),
    "data": Command(
        "build empathetic speech dialogues (paper section 3.2): seed audio -> LLM -> TTS -> speech units, resumable",
        _add_data_arguments,
        _run_data,
    ),
    "eval": Command(
        "evaluate on VoiceBench and URO-Bench UnderEmotion (the paper's Table 2) with their judges; resumable",
        _add_eval_arguments,
        _run_eval,
    ),
    "serve": Command(
        "serve the model over an OpenAI-compatible API (chat completions with audio, realtime WebSocket, metrics)",
        _add_serve_arguments,
        _run_serve,
    ),
    "space": Command(
        "serve the Gradio app (also a ready Hugging Face Space): ask by voice, streaming text and speech answers",
        _add_space_arguments,
        _run_space,
    ),
    "tiny": Command(
        "build the tiny random OpenS2S model (for tests and demos) and print its path",
        _add_tiny_arguments,
        _run_tiny,
    ),
    "train": Command(
        "train one OpenS2S stage (paper section 2.2) with the Trainer/TRL API; multi-GPU: accelerate launch",
        _add_train_arguments,
        _run_train,
    ),
    "units": Command(
        "speech units (GLM-4-Voice tokenizer, 12.5 Hz) of audio files, written as jsonl",
        _add_units_arguments,
        _run_units,
    ),
    "verify": Command(
        "check model folders against their checksums.sha256 (written by convert, convert-token2wav and tiny)",
        _add_verify_arguments,
        _run_verify,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    """The `opens2s` parser with one subparser per entry of `COMMANDS`."""
    parser = argparse.ArgumentParser(prog="opens2s", description="OpenS2S empathetic speech-to-speech tools.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, command in COMMANDS.items():
        subparser = subparsers.add_parser(name, help=command.help, description=command.help)
        command.add_arguments(subparser)
        subparser.set_defaults(run=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the `opens2s` command line on `argv` (default `sys.argv[1:]`) and return the exit status.

    Argument errors exit through argparse, and arguments that cannot work (a [`UsageError`], found before any work)
    return 2; a command that fails on its input (a missing folder, not a checkpoint, an output that exists, a folder
    that fails its checksums) returns 1. Both print one `opens2s COMMAND: error: ...` line; `--verbose` shows the
    traceback instead. Any other exception is a bug and shows its traceback.
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.run(args)
    except (OSError, ValueError) as error:
        if args.verbose:
            raise
        message = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
        print(f"opens2s {args.command}: error: {message}", file=sys.stderr)
        return 2 if isinstance(error, UsageError) else 1
