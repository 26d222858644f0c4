"""The OpenS2S Gradio app, a ready Hugging Face Space folder (`app.py`, `requirements.txt`, `packages.txt`, README).

Run it locally with `python -m opens2s.spaces_app [--model ...]`, `opens2s space [--model ...]` or
`python spaces_app/app.py`. This module only defines the command-line arguments (no gradio import), so
`opens2s --help` stays fast and works without the `space` extra; `opens2s.spaces_app.app` holds the app itself.
"""

import argparse
import os

from opens2s.processing.loading import add_loading_arguments
from opens2s.processing.threads import default_num_threads


__all__ = ["add_arguments", "file_size", "main"]


_SIZE_UNITS = {"b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3}


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else None


def file_size(text: str) -> int | None:
    """Bytes of a size written `20mb`, `512kb`, `1gb` or a plain number of bytes; `none` (or `0`) for no limit."""
    text = text.strip().lower()
    if text in ("none", "0"):
        return None
    number = text.rstrip("bgkm")
    unit = text[len(number) :] or "b"
    if not number.replace(".", "", 1).isdigit() or unit not in _SIZE_UNITS:
        raise argparse.ArgumentTypeError(f"not a file size: {text!r} (e.g. 20mb, 512kb, 1gb, none)")
    return int(float(number) * _SIZE_UNITS[unit])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the app's options to `parser`. Every default can also come from an environment variable (what a Space's
    "Variables" settings give): `OPENS2S_MODEL`, `OPENS2S_TOKEN2WAV`, `OPENS2S_SPEAKERS`, `OPENS2S_MAX_NEW_TOKENS`,
    `OPENS2S_MAX_UNITS`, `OPENS2S_CONCURRENCY`, `OPENS2S_MAX_FILE_SIZE`, `OPENS2S_MAX_AUDIO_SECONDS`,
    `OPENS2S_COMPILE` (`1` or `true`)."""
    parser.add_argument(
        "--model",
        default=os.environ.get("OPENS2S_MODEL"),
        help="converted OpenS2S folder or Hub id (default: $OPENS2S_MODEL, else the tiny random model)",
    )
    parser.add_argument("--token2wav", default=os.environ.get("OPENS2S_TOKEN2WAV"), help="token2wav folder or Hub id")
    parser.add_argument(
        "--speakers",
        default=os.environ.get("OPENS2S_SPEAKERS"),
        help="extra folder of voice files (*.safetensors with a `speaker_embedding` tensor); MODEL/speakers/ is "
        "always searched",
    )
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1 ...")
    parser.add_argument(
        "--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"], help="auto: bf16 on CUDA"
    )
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=_env_int("OPENS2S_MAX_NEW_TOKENS"),
        help="text budget per answer (default: the model's generation config)",
    )
    parser.add_argument(
        "--max-units",
        type=int,
        default=_env_int("OPENS2S_MAX_UNITS"),
        help="speech unit budget per answer (default: the speech generation config)",
    )
    parser.add_argument("--max-history-turns", type=int, default=4, help="earlier turns fed back (default 4)")
    parser.add_argument("--seed", type=int, help="seed every answer (reproducible replies; default: random)")
    parser.add_argument(
        "--concurrency-limit",
        type=int,
        default=_env_int("OPENS2S_CONCURRENCY") or 4,
        help="answers decoded together by the app's one engine; later requests wait in the queue (default 4)",
    )
    parser.add_argument(
        "--max-file-size",
        type=file_size,
        default=file_size(os.environ.get("OPENS2S_MAX_FILE_SIZE") or "20mb"),
        help="largest question upload, e.g. 20mb, 512kb or none; larger uploads are refused (default 20mb)",
    )
    parser.add_argument(
        "--max-audio-seconds",
        type=float,
        default=float(os.environ.get("OPENS2S_MAX_AUDIO_SECONDS") or 120),
        help="longest spoken question in seconds, checked from the file header (default 120)",
    )
    parser.add_argument("--max-queue-size", type=int, default=32, help="requests that may wait (default 32)")
    parser.add_argument(
        "--compile",
        action="store_true",
        default=os.environ.get("OPENS2S_COMPILE", "").strip().lower() in ("1", "true"),
        help="the engine's fast path: static caches and compiled decode steps (CUDA graphs), for a Space with a GPU "
        "of its own; the first answers pay the compilation",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=default_num_threads(),
        help="torch CPU threads (default: half the cores, 1 to 4; more threads make small models slower)",
    )
    parser.add_argument("--host", help="address to listen on (default: gradio's, 127.0.0.1 or $GRADIO_SERVER_NAME)")
    parser.add_argument("--port", type=int, help="port (default: gradio's, 7860 or $GRADIO_SERVER_PORT)")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    add_loading_arguments(parser)


def main(argv: list[str] | None = None) -> int:
    """Parse `argv` (default `sys.argv[1:]`), load the model once and serve the app until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m opens2s.spaces_app", description="The OpenS2S Gradio app.")
    add_arguments(parser)
    from opens2s.spaces_app.app import run

    return run(parser.parse_args(argv))
