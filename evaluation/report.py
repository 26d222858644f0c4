"""The report of an evaluation run: the paper's Table 2 layout with the paper's rows for comparison, row counts and
failure reasons per benchmark, and the metrics of the spoken answers.

Paper rows (OpenS2S paper, Table 2, as quoted): OpenS2S 4.09 / 3.65 / 42.89 / 3.66 / 46.90 / 67.68 and
Kimi-Audio 4.46 / 3.97 / 61.10 / 4.20 / 59.22 / 76.96. The quoted header names the columns "alpacaeval / commoneval /
wildvoice / ifeval", but the third number is on IFEval's 0-100 scale and the fourth on the judges' 1-5 scale, and
Kimi-Audio's public VoiceBench leaderboard row (github.com/MatthewCYM/VoiceBench README: AlpacaEval 4.46, CommonEval
3.97, WildVoice 4.20, IFEval 61.10) confirms it: the numbers are AlpacaEval, CommonEval, IFEval, WildVoice, and this
report keeps them in that order. AlpacaEval is VoiceBench's leaderboard subset `alpacaeval_full`. UnderEmotion is
URO-Bench's 0-100 score.

Averaging follows each benchmark's code: VoiceBench's open-ended score is the mean of every judge answer of every row
(`np.mean` over the flattened scores), URO-Bench's the mean of the row scores over all rows, IFEval the mean of its
four accuracies. Under `failed_rows="exclude"` the open-ended score is the mean of the row means instead. Each column
states its protocol: subset, what the judge read (and which ASR), the judge, and how many rows failed and how they
were counted.
"""

import csv
import json
import logging
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from opens2s.evaluation.benchmarks import BENCHMARKS, TABLE2_BENCHMARKS, BenchmarkSpec
from opens2s.evaluation.ifeval import ifeval_accuracy
from opens2s.evaluation.speech_metrics import corpus_error_rate


__all__ = ["PAPER_TABLE2", "BenchmarkSummary", "format_report", "summarize_benchmark", "write_report"]

logger = logging.getLogger(__name__)

PAPER_TABLE2: dict[str, dict[str, float]] = {
    "OpenS2S (paper)": {
        "alpacaeval_full": 4.09,
        "commoneval": 3.65,
        "ifeval": 42.89,
        "wildvoice": 3.66,
        "underemotion-en": 46.90,
        "underemotion-zh": 67.68,
    },
    "Kimi-Audio (paper)": {
        "alpacaeval_full": 4.46,
        "commoneval": 3.97,
        "ifeval": 61.10,
        "wildvoice": 4.20,
        "underemotion-en": 59.22,
        "underemotion-zh": 76.96,
    },
}
SCALES = {"open": "GPT score 1-5", "ifeval": "IFEval 0-100", "underemotion": "URO-Bench 0-100"}
MAX_REASONS = 5


@dataclass
class BenchmarkSummary:
    """The numbers of one benchmark in one run.

    Args:
        name (`str`) / title (`str`) / scorer (`str`): from its [`BenchmarkSpec`].
        rows (`int`): rows evaluated (after `limit`).
        answered (`int`): rows with an answer (generation did not fail).
        scored (`int`): rows scored (`status == "ok"`).
        failed (`int`): rows whose generation or scoring failed.
        value (`float`, *optional*): the benchmark score on its scale (`None` when nothing was scored).
        details (`dict`): IFEval's four accuracies, the most common failure reasons with counts.
        speech (`dict`, *optional*): metrics of the spoken answers (speech mode).
        protocol (`dict`): how it was scored: `subset`, `judge_input`, `asr` (the ASR systems of the judged
            transcripts), `judge`, `failed_rows` (the policy) and `failures` (`{how counted: rows}`).
    """

    name: str
    title: str
    scorer: str
    rows: int
    answered: int
    scored: int
    failed: int
    value: float | None
    details: dict = field(default_factory=dict)
    speech: dict | None = None
    protocol: dict = field(default_factory=dict)


def _mean(values: list[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


def _benchmark_value(scorer: str, ok: list[dict], failed_rows: str) -> tuple[float | None, dict]:
    """The benchmark score from its counted rows, averaged as the benchmark's code does."""
    if scorer == "ifeval":
        accuracy = ifeval_accuracy([record["ifeval"] for record in ok]) if ok else None
        return (accuracy["score"] if accuracy else None), {"ifeval": accuracy}
    if scorer == "open" and failed_rows == "reference":  # VoiceBench: np.mean over all answers of all rows
        return _mean([value for record in ok for value in record["judge_scores"] if value is not None]), {}
    return _mean([record["score"] for record in ok]), {}


def summarize_benchmark(
    spec: BenchmarkSpec, responses: list[dict], scores: list[dict], protocol: dict | None = None
) -> BenchmarkSummary:
    """Aggregate the per-row answers and scores of one benchmark (see [`BenchmarkSummary`]).

    Args:
        spec ([`BenchmarkSpec`]): the benchmark.
        responses (`list[dict]`) / scores (`list[dict]`): its rows' records (`responses.jsonl`, `scores.jsonl`).
        protocol (`dict`, *optional*): `subset`, `judge_input`, `judge` and `failed_rows` (default `"reference"`)
            of the run; the rows' ASR systems and failure counts are added.
    """
    protocol = {"failed_rows": "reference"} | (protocol or {})
    ok = [record for record in scores if record.get("status") == "ok"]
    failed = [record for record in scores if record.get("status") != "ok"]
    value, details = _benchmark_value(spec.scorer, ok, protocol["failed_rows"])
    reasons = Counter(str(record.get("failure") or record.get("reason"))[:160] for record in failed)
    details["failure_reasons"] = dict(reasons.most_common(MAX_REASONS))
    with_failure = [record for record in scores if record.get("failure") or record.get("status") != "ok"]
    protocol["failures"] = dict(Counter(record.get("counted_as") or "left out" for record in with_failure))
    protocol["asr"] = sorted({record["asr_system"] for record in responses if record.get("asr_system")})
    return BenchmarkSummary(
        name=spec.name,
        title=spec.title,
        scorer=spec.scorer,
        rows=len(responses),
        answered=sum(1 for record in responses if "error" not in record),
        scored=len(ok),
        failed=len(failed),
        value=value,
        details=details,
        speech=_speech_summary(responses, spec.language),
        protocol=protocol,
    )


def _speech_summary(responses: list[dict], language: str) -> dict | None:
    spoken = [record for record in responses if "audio_seconds" in record]
    with_units = [record for record in responses if "num_units" in record]
    if not with_units:
        return None
    transcribed = [record for record in spoken if "consistency" in record]
    rates = [record["speech_rate"] for record in transcribed if record.get("speech_rate") is not None]
    return {
        "rows_with_units": len(with_units),
        "rows_with_audio": len(spoken),
        "rows_transcribed": len(transcribed),
        "mean_units": _mean([record["num_units"] for record in with_units]),
        "mean_audio_seconds": _mean([record["audio_seconds"] for record in spoken]),
        "consistency_metric": "cer" if language == "zh" else "wer",
        "consistency": corpus_error_rate(record["consistency"] for record in transcribed),
        "mean_speech_rate": _mean(rates),
        "speech_rate_unit": "chars/s" if language == "zh" else "words/s",
    }


def _number(value: float | None, digits: int = 2, missing: str = "–") -> str:
    return missing if value is None else f"{value:.{digits}f}"


def _table_columns(summaries: list[BenchmarkSummary]) -> list[tuple[str, str]]:
    """(name, title) of the report columns: Table 2's, then any other benchmark of the run."""
    names = list(TABLE2_BENCHMARKS) + [s.name for s in summaries if s.name not in TABLE2_BENCHMARKS]
    return [(name, BENCHMARKS[name].title) for name in names]


def _table_rows(summaries: list[BenchmarkSummary], model_name: str, missing: str = "–") -> list[list[str]]:
    values = {summary.name: summary.value for summary in summaries}
    rows = [
        [label, *(paper.get(name) for name, _ in _table_columns(summaries))] for label, paper in PAPER_TABLE2.items()
    ]
    rows.append([f"{model_name} (this run)", *(values.get(name) for name, _ in _table_columns(summaries))])
    return [[row[0]] + [_number(value, missing=missing) for value in row[1:]] for row in rows]


def format_report(summaries: list[BenchmarkSummary], model_name: str) -> str:
    """The Markdown report: Table 2, rows and failures per benchmark, and the spoken answers' metrics."""
    columns = _table_columns(summaries)
    lines = ["# OpenS2S evaluation", "", "## Table 2: speech in, text out", ""]
    lines.append("| Model | " + " | ".join(title for _, title in columns) + " |")
    lines.append("|---|" + "---:|" * len(columns))
    lines += ["| " + " | ".join(row) + " |" for row in _table_rows(summaries, model_name)]
    lines += ["", "Scales: AlpacaEval, CommonEval, WildVoice: GPT score 1-5; IFEval: 0-100 (mean of prompt- and "]
    lines += ["instruction-level, strict and loose accuracy); UnderEmotion: URO-Bench 0-100. '–': not run.", ""]
    lines += [
        "## Rows",
        "",
        "| Benchmark | score | scale | rows | answered | scored | failed |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for s in summaries:
        counts = f"{s.rows} | {s.answered} | {s.scored} | {s.failed}"
        lines.append(f"| {s.title} | {_number(s.value)} | {SCALES[s.scorer]} | {counts} |")
    for s in summaries:
        if s.details.get("ifeval"):
            accuracy = s.details["ifeval"]
            lines.append(
                f"\n{s.title}: prompt strict {_number(accuracy['prompt_strict'], 4)}, instruction strict "
                f"{_number(accuracy['instruction_strict'], 4)}, prompt loose {_number(accuracy['prompt_loose'], 4)}, "
                f"instruction loose {_number(accuracy['instruction_loose'], 4)}"
            )
        for reason, count in s.details.get("failure_reasons", {}).items():
            lines.append(f"\n{s.title}: {count} failed: {reason}")
    lines += _protocol_lines(summaries)
    spoken = [s for s in summaries if s.speech]
    if spoken:
        lines += ["", "## Spoken answers", "", "| Benchmark | with units | with audio | transcribed | mean units |"]
        lines[-1] += " mean duration (s) | text-speech WER/CER | speech rate |"
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|")
        for s in spoken:
            m = s.speech
            lines.append(
                f"| {s.title} | {m['rows_with_units']} | {m['rows_with_audio']} | {m['rows_transcribed']} | "
                f"{_number(m['mean_units'], 1)} | {_number(m['mean_audio_seconds'])} | "
                f"{m['consistency_metric'].upper()} {_number(m['consistency'], 4)} | "
                f"{_number(m['mean_speech_rate'])} {m['speech_rate_unit']} |"
            )
    return "\n".join(lines) + "\n"


def _protocol_lines(summaries: list[BenchmarkSummary]) -> list[str]:
    """The protocol table: per column, what was scored how, and how failed rows were counted."""
    lines = [
        "",
        "## Protocol",
        "",
        "| Benchmark | subset | judge input | judge | rows with a failure: how counted |",
        "|---|---|---|---|---|",
    ]
    for s in summaries:
        p = s.protocol
        judge_input = p.get("judge_input", "–") + (f" ({'; '.join(p['asr'])})" if p.get("asr") else "")
        failures = "; ".join(f"{count}: {how}" for how, count in p.get("failures", {}).items()) or "none"
        lines.append(f"| {s.title} | {p.get('subset', '–')} | {judge_input} | {p.get('judge', '–')} | {failures} |")
    lines += ["", "Failed rows are counted as each benchmark's code counts them unless the run says `exclude`."]
    return lines


def write_report(summaries: list[BenchmarkSummary], output_dir: Path, model_name: str) -> Path:
    """Write `report.md`, `report.csv` (Table 2 layout) and `summary.json` into `output_dir`; returns the
    Markdown path."""
    output_dir = Path(output_dir)
    markdown = output_dir / "report.md"
    markdown.write_text(format_report(summaries, model_name), encoding="utf-8")
    with (output_dir / "report.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model"] + [title for _, title in _table_columns(summaries)])
        writer.writerows(_table_rows(summaries, model_name, missing=""))
    summary = {"model": model_name, "benchmarks": [asdict(s) for s in summaries]}
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
    logger.info("report written to %s", markdown)
    return markdown
