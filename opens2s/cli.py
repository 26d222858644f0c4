"""The `opens2s` command line (also `python -m opens2s`).

    opens2s convert SRC DST [--max-shard-size 5GB] [--unit-tokenizer-base ID] [--num-units 16384]
    opens2s tiny [DST] [--seed 0]

Every subcommand is one [`Command`] entry in `COMMANDS`: a function that adds its arguments to an argparse parser
and a function that runs it on the parsed namespace and returns the exit status. A new subcommand adds one entry and
imports its heavy modules inside `run`, so `opens2s --help` stays fast.
"""

import argparse
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


__all__ = ["COMMANDS", "Command", "build_parser", "main", "parse_size"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Command:
    """One subcommand: its one-line help, how to add its arguments, and how to run it (returns the exit status)."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


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


def _run_convert(args: argparse.Namespace) -> int:
    from .modeling_opens2s.convert_original_opens2s import convert_original_checkpoint

    dst = convert_original_checkpoint(
        args.src,
        args.dst,
        max_shard_size=args.max_shard_size,
        unit_tokenizer_base=args.unit_tokenizer_base,
        num_units=args.num_units,
    )
    print(dst)
    return 0


def _add_tiny_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "dst", metavar="DST", nargs="?", type=Path, help="output folder (default: the cached tiny model, built once)"
    )
    parser.add_argument("--seed", type=int, help="weight seed; needs DST (the cached tiny model uses seed 0)")


def _run_tiny(args: argparse.Namespace) -> int:
    from .tiny import build_tiny_model, tiny_model_path

    if args.dst is None:
        if args.seed is not None:
            raise ValueError("--seed needs DST: the cached tiny model is always built with seed 0")
        path = tiny_model_path()
    else:
        path = build_tiny_model(args.dst, seed=0 if args.seed is None else args.seed)
    print(path)
    return 0


COMMANDS: dict[str, Command] = {
    "convert": Command(
        "convert an original OpenS2S checkpoint into a transformers remote-code folder",
        _add_convert_arguments,
        _run_convert,
    ),
    "tiny": Command(
        "build the tiny random OpenS2S model (for tests and demos) and print its path",
        _add_tiny_arguments,
        _run_tiny,
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

    Argument errors exit through argparse (status 2); a command that fails on its input (a missing folder, not a
    checkpoint, an output that exists) prints one `opens2s COMMAND: error: ...` line and returns 1.
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
        print(f"opens2s {args.command}: error: {error}", file=sys.stderr)
        return 1
