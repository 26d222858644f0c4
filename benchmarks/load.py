"""Load on `opens2s serve`: N concurrent `openai`-client conversations for a bounded time against a local server.

Run from the repository root (the server is started as a subprocess on 127.0.0.1 unless `--url` is given):

    python -m benchmarks.load --concurrency 4 --seconds 30                  # tiny random model, CPU
    python -m benchmarks.load --model /path/to/OpenS2S --device cuda --concurrency 16 --seconds 120
    python -m benchmarks.load --url http://127.0.0.1:8000 --concurrency 8   # a server already running

Every worker asks the bundled example question (3.97 s of speech) with `stream: true`, `modalities: ["text",
"audio"]`, again and again until the time is up (answers under way then finish). Printed: answers and answers/s;
first audio (request sent -> first audio chunk received) p50/p95; errors (must be 0: the concurrency stays within
`--max-active + --max-queued`); the server's resident memory before the load and after it (started server only).
"""

import argparse
import base64
import statistics
import subprocess
import sys
import threading
import time

import httpx


__all__ = ["main", "percentile"]


def percentile(values: list[float], fraction: float) -> float:
    """The `fraction` quantile of `values` (linear interpolation), NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


def _start_server(args: argparse.Namespace, port: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "opens2s", "serve", "--port", str(port), "--device", args.device]
    command += ["--max-active", str(args.max_active), "--max-queued", str(args.max_queued)]
    command += ["--model", args.model] if args.model else []
    command += ["--max-units", str(args.max_units)] if args.max_units else []
    command += ["--threads", str(args.threads)] if args.threads else []
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise RuntimeError(f"the server did not start: {' '.join(command)}")
        time.sleep(0.5)


def _worker(client, model: str, question: str, until: float, max_tokens: int, results: dict, lock) -> None:
    while time.monotonic() < until:
        sent = time.monotonic()
        first_audio = None
        try:
            stream = client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": question}}]}],
                modalities=["text", "audio"],
                audio={"voice": "default", "format": "pcm16"},
                max_completion_tokens=max_tokens,
                stream=True,
            )
            for chunk in stream:
                for choice in chunk.choices:
                    audio = getattr(choice.delta, "audio", None)
                    if first_audio is None and audio is not None and audio.data:
                        first_audio = time.monotonic() - sent
        except Exception as error:  # noqa: BLE001 - counted and shown: the figure that must stay 0
            with lock:
                results["errors"].append(repr(error))
            continue
        with lock:
            results["answers"] += 1
            if first_audio is not None:
                results["first_audio"].append(first_audio)


def main(argv: list[str] | None = None) -> int:
    import openai

    from opens2s.processing.chat import EXAMPLE_WAV

    parser = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running server (default: start one)")
    parser.add_argument("--model", help="model of the started server (default: the tiny random model)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--concurrency", type=int, default=4, help="conversations at once (default 4)")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long new requests are sent (default 30)")
    parser.add_argument("--max-tokens", type=int, default=16, help="max_completion_tokens per answer (default 16)")
    parser.add_argument("--max-units", type=int, default=48, help="started server's speech budget (default 48)")
    parser.add_argument("--max-active", type=int, default=8, help="started server's --max-active (default 8)")
    parser.add_argument("--max-queued", type=int, default=32, help="started server's --max-queued (default 32)")
    parser.add_argument("--threads", type=int, help="started server's torch threads")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--api-key", default="none")
    args = parser.parse_args(argv)

    server = None if args.url else _start_server(args, args.port)
    base_url = args.url or f"http://127.0.0.1:{args.port}"
    try:
        memory_before = _rss_mb(server.pid) if server else None
        client = openai.OpenAI(base_url=base_url + "/v1", api_key=args.api_key, max_retries=0, timeout=600)
        model = client.models.list().data[0].id
        question = base64.b64encode(EXAMPLE_WAV.read_bytes()).decode()
        results, lock = {"answers": 0, "errors": [], "first_audio": []}, threading.Lock()
        start = time.monotonic()
        workers = [
            threading.Thread(
                target=_worker,
                args=(client, model, question, start + args.seconds, args.max_tokens, results, lock),
            )
            for _ in range(args.concurrency)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        elapsed = time.monotonic() - start
        memory_after = _rss_mb(server.pid) if server else None
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
    first_audio = results["first_audio"]
    print(f"model {model} at {base_url}: {args.concurrency} concurrent conversations for {args.seconds:g} s")
    print(f"answers: {results['answers']} in {elapsed:.1f} s = {results['answers'] / elapsed:.2f} answers/s")
    print(
        f"first audio: p50 {percentile(first_audio, 0.5):.3f} s, p95 {percentile(first_audio, 0.95):.3f} s "
        f"(mean {statistics.fmean(first_audio) if first_audio else float('nan'):.3f} s, {len(first_audio)} answers)"
    )
    print(f"errors: {len(results['errors'])}" + (f" (first: {results['errors'][0]})" if results["errors"] else ""))
    if memory_before is not None:
        print(f"server memory (RSS): {memory_before:.0f} MB before, {memory_after:.0f} MB after")
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
