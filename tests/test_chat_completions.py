"""The chat-completions client against a real HTTP server on 127.0.0.1 (a test double of an OpenAI endpoint)."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from opens2s.processing.chat_completions import ChatCompletionsClient, ChatCompletionsError


class ScriptedEndpoint(BaseHTTPRequestHandler):
    """Answers each POST with the next `(status, body)` of the server's script; records the request bodies."""

    def do_POST(self):
        length = int(self.headers["Content-Length"])
        self.server.requests.append(
            (self.path, self.headers.get("Authorization"), json.loads(self.rfile.read(length)))
        )
        status, body = self.server.script.pop(0)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps(body).encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def endpoint():
    server = ThreadingHTTPServer(("127.0.0.1", 0), ScriptedEndpoint)
    server.script, server.requests = [], []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


def reply(text):
    return {"choices": [{"message": {"role": "assistant", "content": text}}]}


def client_for(server, **kwargs) -> ChatCompletionsClient:
    return ChatCompletionsClient(f"http://127.0.0.1:{server.server_port}/v1/", "judge", backoff=0.01, **kwargs)


def test_retries_rate_limits_and_server_errors(endpoint):
    endpoint.script = [(429, {"error": "slow down"}), (503, {}), (200, reply("fine"))]
    client = client_for(endpoint, api_key="secret")
    assert client.complete([{"role": "user", "content": "hi"}], temperature=0) == "fine"
    assert len(endpoint.requests) == 3
    path, auth, body = endpoint.requests[-1]
    assert path == "/v1/chat/completions" and auth == "Bearer secret"
    assert body == {"model": "judge", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}


def test_client_errors_fail_at_once_with_the_reason(endpoint):
    endpoint.script = [(401, {"error": "bad key"})]
    with pytest.raises(ChatCompletionsError, match="HTTP 401.*bad key"):
        client_for(endpoint).complete([{"role": "user", "content": "hi"}])
    assert len(endpoint.requests) == 1


def test_gives_up_after_max_retries(endpoint):
    endpoint.script = [(500, {})] * 3
    with pytest.raises(ChatCompletionsError, match="HTTP 500"):
        client_for(endpoint, max_retries=2).complete([{"role": "user", "content": "hi"}])


def test_malformed_response_is_an_error(endpoint):
    endpoint.script = [(200, {"choices": []})]
    with pytest.raises(ChatCompletionsError, match="malformed"):
        client_for(endpoint).complete([{"role": "user", "content": "hi"}])


def test_unreachable_server_is_an_error():
    client = ChatCompletionsClient("http://127.0.0.1:9/v1", "judge", max_retries=1, backoff=0.01, timeout=2)
    with pytest.raises(ChatCompletionsError):
        client.complete([{"role": "user", "content": "hi"}])
