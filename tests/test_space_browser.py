"""End to end in a real browser: the Gradio app served on localhost with the tiny model, driven by headless Chromium.

The test uploads the bundled example question, presses Ask, and checks what a user sees and hears: the answer's
text in the chat, the latency line, and the spoken answer arriving in the autoplaying streaming player (AAC segments
served with data, and the `<audio>` element decoding a duration). A second question checks that the conversation
goes on; asking without a question checks that the error is a readable message. It saves a screenshot and the
browser-side timings to `$OPENS2S_ARTIFACTS` (default `artifacts/` at the repository root, ignored by git).

Needs the Python `playwright` package, Debian's `chromium` (`/usr/bin/chromium`, or `$OPENS2S_CHROMIUM`) and
`ffmpeg`, all installed by `.ci/run`; it is skipped when one is missing, unless `OPENS2S_REQUIRE_BROWSER=1` (set by
`.ci/run`) makes that a failure. About 30 s on 2 cores, most of it the app's start-up.
"""

import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from opens2s.processing.chat import EXAMPLE_WAV


REPO_ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("OPENS2S_ARTIFACTS") or REPO_ROOT / "artifacts")
CHROMIUM = Path(os.environ.get("OPENS2S_CHROMIUM", "/usr/bin/chromium"))
# As root on a closed network: no sandbox, and no background connections (they are refused by the network and slow
# every start); autoplay without a user gesture, as after a real click.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]
REQUIRE_BROWSER = os.environ.get("OPENS2S_REQUIRE_BROWSER") == "1"
APP_ARGS = ["--max-new-tokens", "8", "--max-units", "20", "--seed", "0", "--threads", "1"]
START_TIMEOUT, ANSWER_TIMEOUT_MS = 180, 90_000


def _missing() -> str | None:
    for module in ("gradio", "playwright"):
        if importlib.util.find_spec(module) is None:
            return f"the Python package {module} is not installed (pip install -e '.[test]')"
    if not CHROMIUM.is_file():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium, or set OPENS2S_CHROMIUM)"
    if shutil.which("ffmpeg") is None:
        return "no ffmpeg (apt-get install ffmpeg): Gradio encodes the streamed answer with it"
    return None


MISSING = _missing()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(MISSING is not None and not REQUIRE_BROWSER, reason=f"browser test: {MISSING}"),
]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_until_served(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the app exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"the app did not answer on {url} within {START_TIMEOUT} s:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    """`python -m opens2s.spaces_app` with the tiny model on a free localhost port (stopped afterwards)."""
    if MISSING is not None:
        pytest.fail(f"OPENS2S_REQUIRE_BROWSER=1 but {MISSING}")
    port = _free_port()
    log = tmp_path_factory.mktemp("space") / "app.log"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "NO_PROXY": "127.0.0.1"}
    command = [sys.executable, "-m", "opens2s.spaces_app", "--host", "127.0.0.1", "--port", str(port), *APP_ARGS]
    with log.open("w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT)
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_until_served(url, process, log)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            yield browser.new_page(viewport={"width": 1280, "height": 900})
        finally:
            browser.close()


def _ask(page, number: int) -> tuple[float, dict]:
    """Upload the example question, press Ask and wait until answer `number` (1-based) is complete. Returns when
    Ask was clicked (`time.monotonic()`) and when, in seconds from the click, the answer's first text showed and its
    latency line closed it."""
    from playwright.sync_api import expect

    page.get_by_label("Upload file").click()
    page.locator("#question input[type=file]").set_input_files(str(EXAMPLE_WAV))
    expect(page.locator("#question audio").first).to_be_attached()  # the upload is done: a player shows it
    clicked = time.monotonic()
    page.locator("#ask").click()
    page.wait_for_function(
        "n => { const bots = document.querySelectorAll('#chat [data-testid=\"bot\"]');"
        " return bots.length === n && !['', '…'].includes(bots[n - 1].innerText.trim()); }",
        arg=number,
        timeout=ANSWER_TIMEOUT_MS,
    )
    first_text = time.monotonic() - clicked
    answer = page.locator('#chat [data-testid="bot"]').nth(number - 1)
    expect(answer).to_contain_text("RTF", timeout=ANSWER_TIMEOUT_MS)  # the latency line closes every answer
    expect(page.locator("#status")).to_contain_text("first audio")
    return clicked, {"first_text": round(first_text, 3), "complete": round(time.monotonic() - clicked, 3)}


def test_upload_ask_and_hear_the_streamed_answer(app_url, page):
    from playwright.sync_api import expect

    segments = []  # (when, response) of every AAC segment of the streamed answer the player fetches

    def record_segment(response) -> None:
        if ".aac" in response.url:
            segments.append((time.monotonic(), response))

    page.on("response", record_segment)
    page.goto(app_url)
    clicked, first = _ask(page, 1)

    bots = page.locator('#chat [data-testid="bot"]')
    expect(bots).to_have_count(1)
    answer, latency = bots.first.inner_text().strip().rsplit("\n", 1)
    assert answer.strip() and answer.strip() != "…", "the answer's text is in the chat"
    assert latency.startswith("first text ") and "first audio" in latency and "RTF" in latency

    # The spoken answer: Gradio's HLS playlist serves AAC segments as chunks are encoded, and the browser decodes
    # them into the player, until the whole answer (the latency line's audio seconds) is there.
    spoken = float(re.search(r"([0-9.]+) s of audio", latency).group(1))
    page.wait_for_function(
        "seconds => { const a = document.querySelector('#reply-audio audio');"
        " return a !== null && a.buffered.length > 0 && a.duration >= seconds; }",
        arg=spoken - 0.1,
        timeout=30_000,
    )
    received = [(at, len(response.body())) for at, response in segments if response.ok]
    first["first_audio_segment"] = round(segments[0][0] - clicked, 3) if segments else None  # what users wait for
    assert received and all(size > 0 for _, size in received), "the streaming audio component receives data"
    duration = page.evaluate("document.querySelector('#reply-audio audio').duration")
    assert duration < spoken + 0.3, "one continuous stream: AAC adds only its frame padding"

    _, second = _ask(page, 2)  # the conversation goes on: a second question and answer
    expect(bots).to_have_count(2)
    expect(page.locator('#chat [data-testid="user"]')).to_have_count(2)

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "space.png"), full_page=True)
    timings = {
        "seconds_from_ask": [first, second],
        "first_answer_audio": {"segments": len(received), "bytes": sum(s for _, s in received), "seconds": duration},
    }
    (ARTIFACTS / "space_timings.json").write_text(json.dumps(timings, indent=2) + "\n")

    page.locator("#ask").click()  # the question was cleared after the answer: asking now is a user error
    expect(page.locator(".toast-body")).to_contain_text("Record or upload a spoken question first")
    expect(page.locator(".toast-body")).not_to_contain_text("Traceback")
