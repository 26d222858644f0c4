"""`python -m benchmarks.token2wav`: the tiny size runs end to end, prints the three rows and checks the sample counts.

Smoke tests only: no timing is asserted (benchmarks are never timed tests).
"""

import importlib
from pathlib import Path

import pytest
import torch


REPO_ROOT = Path(__file__).resolve().parents[1]
ROWS = ["ours offline", "ours stream", "original"]


@pytest.fixture
def token2wav_benchmark(monkeypatch: pytest.MonkeyPatch):
    """The `benchmarks.token2wav` module, imported from the repository root (it is not an installed package)."""
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    threads = torch.get_num_threads()
    yield importlib.import_module("benchmarks.token2wav")
    torch.set_num_threads(threads)  # `--threads` is process-wide


def _table_rows(lines: list[str]) -> list[str]:
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["total", "s"]) + 1
    end = lines.index("", start)
    return lines[start:end]


def test_tiny_run_prints_rows_and_keeps_every_frame(token2wav_benchmark, capsys: pytest.CaptureFixture):
    # 30 units: ours = one 10-unit block, one 20-unit chunk, a vocoder-only flush; the original = one 24-unit call
    # and a final call with 6 units.
    runs = token2wav_benchmark.main(["--size", "tiny", "--units", "30", "--threads", "1"])
    lines = capsys.readouterr().out.splitlines()
    rows = _table_rows(lines)
    assert [row[:14].strip() for row in rows] == ROWS
    assert all(len(row[14:].split()) == 7 for row in rows)
    for prefix in [
        "ours streaming / ours offline:",
        "original streaming / ours streaming:",
        "original first audio / ours first audio:",
        "last / first chunk cost, ours stream:",
        "last / first chunk cost, original:",
        "ours stream per-chunk flow frames:",
        "first audio, median of 3 alternating runs: ours ",
    ]:
        assert any(line.startswith(prefix) for line in lines), prefix
    assert list(runs) == ROWS
    assert runs["ours stream"].samples == runs["ours offline"].samples
    assert f"samples: ours streaming == ours offline == {runs['ours offline'].samples} (no lost frames)" in lines
    assert any(line.startswith(f"samples: original {runs['original'].samples} = offline - ") for line in lines)
    assert runs["ours stream"].chunk_flow_units == [10, 30, 0]
    assert runs["original"].chunk_flow_units == [24, 30]


def test_skip_original_drops_its_row(token2wav_benchmark, capsys: pytest.CaptureFixture):
    runs = token2wav_benchmark.main(["--size", "tiny", "--units", "12", "--threads", "1", "--skip-original"])
    lines = capsys.readouterr().out.splitlines()
    assert not any(line.startswith("first audio, median") for line in lines)  # there is no original to compare
    assert [row[:14].strip() for row in _table_rows(lines)] == ROWS[:2]
    assert list(runs) == ROWS[:2]
    assert not any(line.startswith("samples: original") for line in lines)


def test_sample_check_names_both_counts(token2wav_benchmark):
    run = token2wav_benchmark.Run
    with pytest.raises(AssertionError, match="ours streaming gave 512 samples, ours offline 768"):
        token2wav_benchmark.check_samples(run("ours offline", samples=768), run("ours stream", samples=512), None, 256)
