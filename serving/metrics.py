"""Prometheus metrics of the server, written in the text exposition format (version 0.0.4) by hand: no client
library needed.

- `opens2s_requests_total{endpoint,status}`: answered requests (HTTP status; realtime responses by final status);
- `opens2s_active_conversations` / `opens2s_queued_conversations`: the backend's answers generating / waiting;
- `opens2s_first_audio_seconds`: histogram of the time from a request's arrival to its first audio chunk;
- `opens2s_errors_total{reason}`: errors by their OpenAI error `code` (`queue_full`, `invalid_api_key`, ...).
"""

import threading
from collections import Counter
from collections.abc import Callable


__all__ = ["FIRST_AUDIO_BUCKETS", "Metrics"]

FIRST_AUDIO_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


# Counters of the engine's `stats()` exported as `opens2s_engine_<key>_total`: how much batching the load gets
# (chunks / batches above 1 means token2wav renders batched; forwards per answer falls as conversations share steps).
ENGINE_WORK = (
    ("forwards", "LM forwards run (every conversation's new positions of one LM packed into one)."),
    ("token2wav_batches", "token2wav flow + vocoder calls (ready chunks of one shape render as one batch)."),
    ("token2wav_chunks", "token2wav chunks rendered in those calls."),
    ("side_seconds", "Seconds of prompt encoding, prompt forwards and token2wav run beside the engine loop."),
)


def _labels(**labels: str) -> str:
    def escape(value: str) -> str:
        return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return "{" + ",".join(f'{name}="{escape(value)}"' for name, value in labels.items()) + "}"


class Metrics:
    """Counters and the first-audio histogram; thread-safe.

    Args:
        backend_stats (`Callable[[], dict]`): the backend's `stats()` (read at every scrape for the gauges).
    """

    def __init__(self, backend_stats: Callable[[], dict]):
        self.backend_stats = backend_stats
        self._lock = threading.Lock()
        self._requests: Counter = Counter()
        self._errors: Counter = Counter()
        self._buckets = [0] * len(FIRST_AUDIO_BUCKETS)
        self._first_audio_count = 0
        self._first_audio_sum = 0.0

    def request(self, endpoint: str, status: int | str) -> None:
        with self._lock:
            self._requests[(endpoint, str(status))] += 1

    def error(self, reason: str) -> None:
        with self._lock:
            self._errors[reason] += 1

    def first_audio(self, seconds: float) -> None:
        with self._lock:
            self._first_audio_count += 1
            self._first_audio_sum += seconds
            for index, bound in enumerate(FIRST_AUDIO_BUCKETS):
                if seconds <= bound:
                    self._buckets[index] += 1

    def render(self) -> str:
        """The exposition text (`Content-Type: text/plain; version=0.0.4`)."""
        stats = self.backend_stats()
        with self._lock:
            lines = ["# HELP opens2s_requests_total Answered requests.", "# TYPE opens2s_requests_total counter"]
            for (endpoint, status), count in sorted(self._requests.items()):
                lines.append(f"opens2s_requests_total{_labels(endpoint=endpoint, status=status)} {count}")
            lines += [
                "# HELP opens2s_active_conversations Answers being generated.",
                "# TYPE opens2s_active_conversations gauge",
                f"opens2s_active_conversations {stats.get('active', 0)}",
                "# HELP opens2s_queued_conversations Admitted answers waiting for a slot.",
                "# TYPE opens2s_queued_conversations gauge",
                f"opens2s_queued_conversations {stats.get('queued', 0)}",
            ]
            for key, help_text in ENGINE_WORK:
                if key in stats:  # the continuous-batching engine's counters
                    name = f"opens2s_engine_{key}_total"
                    lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter", f"{name} {stats[key]}"]
            lines += [
                "# HELP opens2s_first_audio_seconds Time from a request's arrival to its first audio chunk.",
                "# TYPE opens2s_first_audio_seconds histogram",
            ]
            for bound, count in zip(FIRST_AUDIO_BUCKETS, self._buckets, strict=True):
                lines.append(f"opens2s_first_audio_seconds_bucket{_labels(le=repr(bound))} {count}")
            lines += [
                f'opens2s_first_audio_seconds_bucket{{le="+Inf"}} {self._first_audio_count}',
                f"opens2s_first_audio_seconds_sum {self._first_audio_sum}",
                f"opens2s_first_audio_seconds_count {self._first_audio_count}",
                "# HELP opens2s_errors_total Errors by reason.",
                "# TYPE opens2s_errors_total counter",
            ]
            for reason, count in sorted(self._errors.items()):
                lines.append(f"opens2s_errors_total{_labels(reason=reason)} {count}")
        return "\n".join(lines) + "\n"
