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


@pytest.fixture
def serving_benchmark(monkeypatch: pytest.MonkeyPatch):
    """The `benchmarks.serving` module, imported from the repository root."""
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    return importlib.import_module("benchmarks.serving")


SERVING_TINY = ["--size", "tiny", "--conversations", "1", "3", "--text-tokens", "8", "--units", "24", "--stagger", "2"]


def test_serving_tiny_run_prints_both_modes_and_checks_every_conversations_ids(serving_benchmark, capsys):
    serving_benchmark.main(SERVING_TINY)
    lines = capsys.readouterr().out.splitlines()
    for count in (1, 3):
        rows = [line.split() for line in lines if line.split()[:1] == [str(count)]]
        modes = [row[1] for row in rows]
        assert modes[:2] == ["engine", "sequential"] and "engine/seq" in modes
        for row in rows[:2]:
            assert all(float(value) > 0 for value in row[2:7])  # units/s, first unit and first audio p50 / p95
        assert f"{count:>3} ids        engine == alone in all {count} conversations" in lines
    together = [line for line in lines if " all active " in line]
    assert len(together) == 2 and "a conversation alone over the same span" in together[1]


def test_serving_run_fails_after_the_figures_when_a_conversation_differs_alone(
    serving_benchmark, monkeypatch: pytest.MonkeyPatch, capsys
):
    run_sequential = serving_benchmark.run_sequential

    def one_unit_off(*args, **kwargs):
        result = run_sequential(*args, **kwargs)
        if len(result["ids"]) > 1:
            result["ids"][1].unit_ids[3] += 1
        return result

    monkeypatch.setattr(serving_benchmark, "run_sequential", one_unit_off)
    with pytest.raises(SystemExit, match=r"N=3 run 0, conversation 1: unit ids differ from position 3"):
        serving_benchmark.main(SERVING_TINY)
    assert "engine/seq" in capsys.readouterr().out  # the figures came first


def test_conversation_id_check_names_each_conversation_that_differs(serving_benchmark):
    same, other = serving_benchmark.Run(text_ids=[1, 2], unit_ids=[5, 6]), serving_benchmark.Run([1, 3], [5, 6])
    assert serving_benchmark.check_conversation_ids([same, same], [same, same]) == []
    problems = serving_benchmark.check_conversation_ids([same, same], [same, other])
    assert problems == ["conversation 1: text ids differ from position 1: engine [2], alone [3] (2 vs 2 ids)"]


@pytest.mark.slow
def test_serving_fast_path_run_compiles_before_measuring_and_keeps_every_conversations_ids(serving_benchmark, capsys):
    serving_benchmark.main([*SERVING_TINY, "--compile"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("fast path (compile=True)")
    for count in (1, 3):
        warm_up = next(index for index, line in enumerate(lines) if line.startswith(f"{count:>3} warm-up"))
        assert lines[warm_up + 1].split()[:2] == [str(count), "engine"]  # measured after it
        assert f"{count:>3} ids        engine == alone in all {count} conversations" in lines
