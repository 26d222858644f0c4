"""`python -m benchmarks.streaming`: the tiny size runs end to end, checks both schedules' ids and prints the table.

Smoke tests only: no timing is asserted (benchmarks are never timed tests).
"""

import importlib
from pathlib import Path

import pytest


REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def streaming_benchmark(monkeypatch: pytest.MonkeyPatch):
    """The `benchmarks.streaming` module, imported from the repository root (it is not an installed package)."""
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    return importlib.import_module("benchmarks.streaming")


def test_tiny_run_checks_ids_and_prints_both_rows(streaming_benchmark, capsys: pytest.CaptureFixture):
    # 8 text ids = 2 chunks of M=4; 24 units = 8 in the first step + a 16-unit flush.
    streaming_benchmark.main(["--size", "tiny", "--text-tokens", "8", "--units", "24", "--repeats", "2"])
    lines = capsys.readouterr().out.splitlines()
    assert "ids match: ours == original, 8 text ids and 24 unit ids" in lines
    header, *rows = lines[next(i for i, line in enumerate(lines) if line.lstrip().startswith("total s")) :]
    assert "ms/text" in header and "1st unit dlv s" in header
    assert [row.split()[0] for row in rows] == ["ours", "original", "original/ours"]
    for row in rows:
        values = [float(value.removesuffix("x")) for value in row.split()[1:]]
        assert len(values) == 7 and all(value > 0 for value in values)


def test_id_check_names_the_first_difference(streaming_benchmark):
    ours = streaming_benchmark.Run(text_ids=[1, 2, 3], unit_ids=[5, 6])
    original = streaming_benchmark.Run(text_ids=[1, 2, 3], unit_ids=[5, 7])
    streaming_benchmark.check_same_ids(ours, ours)
    with pytest.raises(AssertionError, match="unit ids differ from position 1"):
        streaming_benchmark.check_same_ids(ours, original)


def test_budgets_the_original_would_truncate_are_refused(streaming_benchmark):
    # 64 text ids = 16 chunks; with <= 14 * 8 units the original's unit budget ends its loop before the last chunk.
    with pytest.raises(SystemExit, match="--units >= 113"):
        streaming_benchmark.check_budgets(64, 112, text_span=4, speech_span=8)
    streaming_benchmark.check_budgets(64, 113, text_span=4, speech_span=8)
