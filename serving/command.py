"""`opens2s serve`: load one model and serve it over HTTP with uvicorn, or as N Ray Serve replicas (`--ray`).

Only argparse at import time: fastapi, uvicorn, torch and ray load in [`run`].
"""

import argparse
import os
from pathlib import Path

from opens2s.processing.loading import add_loading_arguments


__all__ = ["add_arguments", "build_server", "run"]

API_KEY_ENV = "OPENS2S_API_KEY"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `opens2s serve` options to `parser`."""
    parser.add_argument(
        "--model", help="converted OpenS2S folder or Hub id (default: the tiny random model, built on first use)"
    )
    parser.add_argument("--model-id", help="the name clients pass as `model` (default: the folder's or repo's name)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1 ...")
    parser.add_argument(
        "--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"], help="auto: bf16 on CUDA"
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_ENV),
        help=f"require `Authorization: Bearer KEY` on /v1 (default: ${API_KEY_ENV}; none: open)",
    )
    parser.add_argument("--max-active", type=int, default=8, help="answers generated at the same time (default 8)")
    parser.add_argument(
        "--max-queued", type=int, default=32, help="answers that may wait; more get 429 + Retry-After (default 32)"
    )
    parser.add_argument("--max-body-mb", type=float, default=25.0, help="largest request body, MB (default 25)")
    parser.add_argument(
        "--max-audio-seconds", type=float, default=120.0, help="input audio per request, seconds (default 120)"
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds one answer may take (default 300)")
    parser.add_argument(
        "--max-units", type=int, help="speech unit budget per answer (default: the speech generation config)"
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads per process")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="the engine's fast path: static caches and compiled decode steps (CUDA graphs on a GPU); the first "
        "answers pay the compilation",
    )
    parser.add_argument("--ray", action="store_true", help="serve as Ray Serve replicas behind one endpoint")
    parser.add_argument("--replicas", type=int, default=1, help="with --ray: number of replicas (default 1)")
    parser.add_argument(
        "--replica-gpus", type=float, default=None, help="with --ray: GPUs per replica (default: 1 when CUDA, else 0)"
    )
    add_loading_arguments(parser)


def server_options(args: argparse.Namespace) -> dict:
    """The plain options of [`build_server`] from parsed arguments (what a Ray replica is built from)."""
    return {
        "model": args.model,
        "model_id": args.model_id,
        "device": args.device,
        "dtype": args.dtype,
        "api_key": args.api_key,
        "threads": args.threads,
        "max_units": args.max_units,
        "compile": args.compile,
        "trust_remote_code": args.trust_remote_code,
        "verify": args.verify,
        "limits": {
            "max_body_mb": args.max_body_mb,
            "max_audio_seconds": args.max_audio_seconds,
            "max_active": args.max_active,
            "max_queued": args.max_queued,
            "timeout": args.timeout,
        },
    }


def build_server(
    model: str | None = None,
    model_id: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    api_key: str | None = None,
    threads: int | None = None,
    max_units: int | None = None,
    limits: dict | None = None,
    trust_remote_code: bool = False,
    verify: bool = True,
    compile: bool = False,
):
    """Load the model (the tiny random one when `model` is `None`) and its voices: an [`OpenS2SServer`]. The folder
    loads with the installed classes unless `trust_remote_code`, checked against its checksums when `verify`; with
    `compile` the engine runs its fast path."""
    import torch

    from opens2s.processing.chat import load_speech_model, resolve_device_and_dtype
    from opens2s.serving.server import OpenS2SServer, ServerLimits, load_voices

    if threads is not None:
        torch.set_num_threads(threads)
    device, dtype = resolve_device_and_dtype(device, dtype)
    speech_model = load_speech_model(
        model, device=device, dtype=dtype, trust_remote_code=trust_remote_code, verify=verify
    )
    voices = load_voices(model, speech_model.model.config.speaker_embedding_dim)
    if model_id is None:
        model_id = "opens2s-tiny" if model is None else Path(str(model)).name
    return OpenS2SServer(speech_model, model_id, voices, ServerLimits(**(limits or {})), api_key, max_units, compile)


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted (the options of [`add_arguments`])."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.ray:
        from opens2s.serving.ray_app import serve_forever

        return serve_forever(server_options(args), args.replicas, args.host, args.port, args.replica_gpus)
    import uvicorn

    from opens2s.serving.app import build_asgi

    server = build_server(**server_options(args))
    if server.speech_model.is_tiny:
        logging.getLogger(__name__).warning("serving the tiny RANDOM default model: answers are noise (use --model)")
    try:
        uvicorn.run(build_asgi(server), host=args.host, port=args.port, log_level="info")
    finally:
        server.close()
    return 0
