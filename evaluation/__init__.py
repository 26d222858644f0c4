"""Evaluation of OpenS2S on the benchmarks of the paper's Table 2 (VoiceBench, URO-Bench UnderEmotion), with the
benchmarks' own protocols (subsets, judge prompts, parsing, failure accounting; IFEval through lm-eval's reference
checker), and of its spoken answers (ASR consistency, duration, speech rate); `opens2s eval` runs it.

`import opens2s.evaluation` is cheap: every name below loads on first use (datasets, jiwer and the model only then).
"""

from typing import TYPE_CHECKING

from transformers.utils import _LazyModule


_import_structure = {
    "benchmarks": [
        "BENCHMARKS",
        "DEFAULT_SOURCES",
        "TABLE2_BENCHMARKS",
        "BenchmarkSpec",
        "get_benchmark",
        "load_benchmark",
    ],
    "ifeval": ["IFEVAL_SEED", "check_ifeval_reference", "evaluate_ifeval_row", "ifeval_accuracy"],
    "judges": ["JudgeConfig", "JudgeScore", "build_judge_messages", "judge_row", "parse_judge_score"],
    "report": ["PAPER_TABLE2", "BenchmarkSummary", "format_report", "summarize_benchmark", "write_report"],
    "runner": ["EvalConfig", "generate_responses", "read_jsonl", "run_evaluation", "score_responses"],
    "speech_metrics": [
        "ParaformerASR",
        "UroBenchASR",
        "WhisperASR",
        "corpus_error_rate",
        "normalize_text",
        "speech_rate",
        "text_speech_consistency",
    ],
}

if TYPE_CHECKING:
    from opens2s.evaluation.benchmarks import (
        BENCHMARKS,
        DEFAULT_SOURCES,
        TABLE2_BENCHMARKS,
        BenchmarkSpec,
        get_benchmark,
        load_benchmark,
    )
    from opens2s.evaluation.ifeval import IFEVAL_SEED, check_ifeval_reference, evaluate_ifeval_row, ifeval_accuracy
    from opens2s.evaluation.judges import JudgeConfig, JudgeScore, build_judge_messages, judge_row, parse_judge_score
    from opens2s.evaluation.report import (
        PAPER_TABLE2,
        BenchmarkSummary,
        format_report,
        summarize_benchmark,
        write_report,
    )
    from opens2s.evaluation.runner import EvalConfig, generate_responses, read_jsonl, run_evaluation, score_responses
    from opens2s.evaluation.speech_metrics import (
        ParaformerASR,
        UroBenchASR,
        WhisperASR,
        corpus_error_rate,
        normalize_text,
        speech_rate,
        text_speech_consistency,
    )
else:
    import sys

    sys.modules[__name__] = _LazyModule(__name__, __file__, _import_structure, module_spec=__spec__)
