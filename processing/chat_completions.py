"""A small client for OpenAI-compatible chat-completions endpoints (OpenAI, vLLM, TGI, ollama, llama.cpp server).

Used by the data pipeline (instructions and replies) and the evaluation judges. Standard library only: retries with
exponential backoff on rate limits, server errors and network failures, and a request-rate limit shared by the
threads that use one client.
"""

import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass


__all__ = ["ChatCompletionsClient", "ChatCompletionsError"]

logger = logging.getLogger(__name__)

# Worth retrying: rate limited, or the server (or a proxy before it) failed.
RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


class ChatCompletionsError(RuntimeError):
    """A request that failed for good (after the retries, or at once for a client error such as 401 or 404)."""


@dataclass
class ChatCompletionsClient:
    """Client of `POST {base_url}/chat/completions`.

    Args:
        base_url (`str`): e.g. `"https://api.openai.com/v1"` or `"http://127.0.0.1:8000/v1"` (vLLM).
        model (`str`): the model name the endpoint serves.
        api_key (`str`, *optional*): sent as a bearer token; defaults to `$OPENAI_API_KEY` (none when unset).
        timeout (`float`, *optional*, defaults to 120): seconds per request.
        max_retries (`int`, *optional*, defaults to 5): retries after the first try.
        backoff (`float`, *optional*, defaults to 1.0): first wait in seconds, doubled each retry (a `Retry-After`
            header wins).
        requests_per_second (`float`, *optional*): at most this many requests start per second (all threads).
    """

    base_url: str
    model: str
    api_key: str | None = None
    timeout: float = 120.0
    max_retries: int = 5
    backoff: float = 1.0
    requests_per_second: float | None = None

    def __post_init__(self):
        self.base_url = self.base_url.rstrip("/")
        if self.api_key is None:
            self.api_key = os.environ.get("OPENAI_API_KEY")
        self._lock = threading.Lock()
        self._next_start = 0.0

    def complete(self, messages: list[dict], **params) -> str:
        """The assistant text for `messages` (`[{"role": ..., "content": ...}]`); `params` go into the request body
        (`temperature`, `max_tokens`, `seed`, `response_format`, ...). Raises [`ChatCompletionsError`]."""
        body = json.dumps({"model": self.model, "messages": messages, **params}).encode()
        for attempt in range(self.max_retries + 1):
            self._wait_for_rate_limit()
            try:
                return self._parse(self._post(body))
            except urllib.error.HTTPError as error:
                if error.code not in RETRY_STATUS or attempt == self.max_retries:
                    detail = error.read().decode(errors="replace")[:500]
                    raise ChatCompletionsError(f"{self.base_url}: HTTP {error.code}: {detail}") from error
                delay = _retry_after(error) or self.backoff * 2**attempt
            except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
                if attempt == self.max_retries:
                    raise ChatCompletionsError(f"{self.base_url}: {error}") from error
                delay = self.backoff * 2**attempt
            logger.warning(
                "chat completion failed (try %d of %d); retrying in %.1f s", attempt + 1, self.max_retries + 1, delay
            )
            time.sleep(delay)
        raise AssertionError("unreachable")

    def _post(self, body: bytes) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(f"{self.base_url}/chat/completions", data=body, headers=headers)
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            return json.loads(response.read())

    @staticmethod
    def _parse(payload: dict) -> str:
        try:
            content = payload["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as error:
            raise ChatCompletionsError(f"malformed chat-completions response: {str(payload)[:300]}") from error
        return content if isinstance(content, str) else ""

    def _wait_for_rate_limit(self) -> None:
        if not self.requests_per_second:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next_start)
            self._next_start = start + 1.0 / self.requests_per_second
        time.sleep(max(0.0, start - now))


def _retry_after(error: urllib.error.HTTPError) -> float | None:
    value = error.headers.get("Retry-After") if error.headers else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
