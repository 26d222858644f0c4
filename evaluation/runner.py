"""The evaluation run: answer every benchmark row (speech in -> text out, or speech in -> speech out), score the
answers, and write the report. Resumable: every stage appends one JSON line per row, and a re-run skips the rows
already there.

Layout of `output_dir`:

    run.json                      the settings that answers and scores depend on (a re-run must match them)
    <benchmark>/responses.jsonl   one answer per row: id, prompt, response (+ units, audio seconds, ASR, WER/CER)
    <benchmark>/scores.jsonl      one score per row: status ("ok"/"failed"), score, reason, judge outputs / checks
    <benchmark>/audio/<id>.wav    spoken answers (speech mode with save_audio)
    report.md, report.csv, summary.json

A row whose generation fails (unreadable audio, ...) is written with its `error`; a judge sample that fails (output
without a score, endpoint down) is recorded with the reason. Neither stops the run. How they count follows each
benchmark's own code by default (`failed_rows="reference"`): VoiceBench scores a failed generation as an empty answer
(judged as such; for IFEval it follows no instruction), URO-Bench scores a failed generation, a missing transcript and
a failed judge sample 0, all in the denominator; `failed_rows="exclude"` leaves them out of the means instead. Every
score record says what failed (`failure`) and how it was counted (`counted_as`); `retry_failed` scores the rows with
a failure again.
"""

import copy
import json
import logging
import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from opens2s.evaluation.benchmarks import (
    DEFAULT_SOURCES,
    TABLE2_BENCHMARKS,
    BenchmarkSpec,
    get_benchmark,
    load_benchmark,
)
from opens2s.evaluation.ifeval import check_ifeval_reference, evaluate_ifeval_row
from opens2s.evaluation.judges import FAILED_ROWS, JUDGE_PARSINGS, JudgeConfig, judge_row
from opens2s.evaluation.speech_metrics import ASRFunction, speech_rate, text_speech_consistency
from opens2s.processing.audio_io import load_audio
from opens2s.processing.chat import conversation_inputs


__all__ = ["EvalConfig", "generate_responses", "read_jsonl", "run_evaluation", "score_responses"]

logger = logging.getLogger(__name__)

RESPONSES_FILE, SCORES_FILE, RUN_FILE = "responses.jsonl", "scores.jsonl", "run.json"
MODES = ("text", "speech")
JUDGE_INPUTS = ("reference", "text", "asr")
# The judge input of each suite's own protocol: VoiceBench judges the text answer, URO-Bench the ASR transcript of
# the spoken answer (`asr_for_eval.py`, then `mark.py --answer asr_text.jsonl`).
REFERENCE_JUDGE_INPUTS = {"voicebench": "text", "uro-bench": "asr"}
# Settings that change answers or scores: a re-run into the same folder must keep them.
_RUN_KEYS = (
    "model",
    "mode",
    "max_new_tokens",
    "speech_max_new_tokens",
    "greedy",
    "seed",
    "speech_prompt",
    "judge_input",
    "failed_rows",
)
_GENERATION_ERRORS = (ValueError, RuntimeError, OSError)


@dataclass
class EvalConfig:
    """Settings of an evaluation run.

    Args:
        output_dir (`Path`): where answers, scores and the report go (created; re-used to resume).
        benchmarks (`tuple[str, ...]`, *optional*): benchmark names; defaults to the paper's Table 2.
        model (`str`, *optional*): converted OpenS2S folder or Hub id; `None` is the tiny random model.
        model_name (`str`, *optional*): the report's row label (default: `model`).
        token2wav (`str`, *optional*): token2wav folder or Hub id (default: `model`'s `token2wav/` when present).
        device (`str`, *optional*, defaults to `"cpu"`) / dtype (`str`, *optional*, defaults to `"float32"`).
        mode (`str`, *optional*, defaults to `"text"`): `"text"` (speech in -> text out, batched; what VoiceBench
            scores) or `"speech"` (also the spoken answer: units, audio, ASR, WER/CER, speech rate; row by row).
            A benchmark judged on the ASR of the spoken answer (UnderEmotion by default) is answered in speech mode
            whatever this says.
        batch_size (`int`, *optional*, defaults to 1): rows per `generate` call in text mode. Larger batches are
            faster but left-pad shorter audios, which moves their answers slightly (the audio adapter's convolutions
            see encoder frames past the end of a shorter audio); 1 gives each row's unbatched answer.
        limit (`int`, *optional*): only the first `limit` rows of each benchmark.
        max_new_tokens (`int`, *optional*): text budget (default: the model's generation config).
        speech_max_new_tokens (`int`, *optional*): speech-unit budget (default: the speech generation config).
        greedy (`bool`, *optional*, defaults to `True`): greedy text decoding (reproducible); `False` uses the
            model's generation config (sampling seeded with `seed` per batch).
        seed (`int`, *optional*, defaults to 0): seed of sampling and of the voice, reset for every row.
        speech_prompt (`bool`, *optional*, defaults to `True`): end the prompt with `<|im_tts_start|>` in text mode
            too, so the text is the one the model writes when it also speaks.
        sources (`dict[str, str]`, *optional*): per suite (`"voicebench"`, `"uro-bench"`) a Hub id or local mirror.
        judge ([`JudgeConfig`], *optional*): the LLM judge; required by judge-scored benchmarks.
        judge_workers (`int`, *optional*, defaults to 4): judge requests in flight.
        judge_input (`str`, *optional*, defaults to `"reference"`): what the judge reads: `"reference"` is each
            benchmark's own choice (VoiceBench: the text answer; URO-Bench UnderEmotion: the ASR transcript of the
            spoken answer); `"text"` or `"asr"` force one for all.
        failed_rows (`str`, *optional*, defaults to `"reference"`): how failed generations and judge samples count:
            as each benchmark's code counts them, or `"exclude"`: left out of the means (see the module docstring).
        asr_model (`str`, *optional*, defaults to `"openai/whisper-large-v3"`): Whisper checkpoint of the ASR
            (URO-Bench's; Chinese uses paraformer-zh where it can be loaded, see [`UroBenchASR`]).
        asr_batch_size (`int`, *optional*, defaults to 8): waveforms per ASR forward pass.
        save_audio (`bool`, *optional*, defaults to `False`): write spoken answers as wav files.
        retry_failed (`bool`, *optional*, defaults to `False`): score rows that failed before again.
    """

    output_dir: Path
    benchmarks: tuple[str, ...] = TABLE2_BENCHMARKS
    model: str | None = None
    model_name: str | None = None
    token2wav: str | None = None
    device: str = "cpu"
    dtype: str = "float32"
    mode: str = "text"
    batch_size: int = 1
    limit: int | None = None
    max_new_tokens: int | None = None
    speech_max_new_tokens: int | None = None
    greedy: bool = True
    seed: int = 0
    speech_prompt: bool = True
    sources: dict[str, str] = field(default_factory=dict)
    judge: JudgeConfig | None = None
    judge_workers: int = 4
    judge_input: str = "reference"
    failed_rows: str = "reference"
    asr_model: str = "openai/whisper-large-v3"
    asr_batch_size: int = 8
    save_audio: bool = False
    retry_failed: bool = False

    def validate(self) -> list[BenchmarkSpec]:
        """Check the settings; returns the benchmarks' specs. Raises `ValueError` with what to change."""
        specs = [get_benchmark(name) for name in self.benchmarks]
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.judge_input not in JUDGE_INPUTS:
            raise ValueError(f"judge_input must be one of {JUDGE_INPUTS}, got {self.judge_input!r}")
        if self.failed_rows not in FAILED_ROWS:
            raise ValueError(f"failed_rows must be one of {FAILED_ROWS}, got {self.failed_rows!r}")
        if self.judge is not None and self.judge.parsing not in JUDGE_PARSINGS:
            raise ValueError(f"judge parsing must be one of {JUDGE_PARSINGS}, got {self.judge.parsing!r}")
        counts = (self.batch_size, self.limit or 1, self.judge_workers, self.judge.samples if self.judge else 1)
        if min(counts) < 1:
            raise ValueError("batch_size, limit, judge_workers and judge samples must be >= 1")
        judged = [spec.name for spec in specs if spec.scorer in ("open", "underemotion")]
        if judged and self.judge is None:
            raise ValueError(
                f"{', '.join(judged)} need an LLM judge: pass --judge-base-url or set $OPENS2S_JUDGE_BASE_URL "
                "(model: $OPENS2S_JUDGE_MODEL, key: $OPENS2S_JUDGE_API_KEY or $OPENAI_API_KEY)"
            )
        return specs

    def run_settings(self) -> dict:
        """The settings recorded in `run.json`."""
        settings = {key: getattr(self, key) for key in _RUN_KEYS}
        settings["judge_model"] = self.judge.model if self.judge else None
        settings["judge_samples"] = self.judge.samples if self.judge else None
        settings["judge_parsing"] = self.judge.parsing if self.judge else None
        return settings

    def judge_input_of(self, spec: BenchmarkSpec) -> str:
        """`"text"` or `"asr"`: what the judge (or the IFEval checker) reads for `spec`."""
        return REFERENCE_JUDGE_INPUTS[spec.suite] if self.judge_input == "reference" else self.judge_input

    def speech_output(self, spec: BenchmarkSpec) -> bool:
        """Whether `spec`'s rows are answered in speech (speech mode, or a judge that reads the ASR transcript)."""
        return self.mode == "speech" or self.judge_input_of(spec) == "asr"


# ---------------------------------------------------------------- jsonl
def read_jsonl(path: Path) -> dict[str, dict]:
    """Records of a results file by `id` (a later line wins); a torn or invalid line is skipped with a warning."""
    records = {}
    if not path.is_file():
        return records
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                records[str(record["id"])] = record
            except (ValueError, KeyError, TypeError):
                logger.warning("%s:%d: skipping an unreadable line (interrupted write?)", path, number)
    return records


def _open_for_append(path: Path):
    """Open `path` to append lines, first cutting a torn last line (a run killed mid-write) so that it is redone."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file() and path.stat().st_size:
        data = path.read_bytes()
        if not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            logger.warning("%s: dropping a torn last line (%d bytes)", path, len(data) - cut)
            with path.open("r+b") as handle:
                handle.truncate(cut)
    return path.open("a", encoding="utf-8")


def _write(handle, record: dict) -> None:
    handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    handle.flush()


# ---------------------------------------------------------------- generation
def _decoding_config(model, config: EvalConfig):
    """The model's text generation config, or for a greedy run over a sampling model a copy that decodes greedily
    (the budgets go to `generate` directly, not through a copy)."""
    if not config.greedy or not model.generation_config.do_sample:
        return model.generation_config
    greedy = copy.deepcopy(model.generation_config)
    greedy.do_sample = False
    return greedy


def _eos_ids(generation_config) -> set[int]:
    eos = generation_config.eos_token_id
    return set(eos if isinstance(eos, list) else [] if eos is None else [eos])


def _answer_text(speech_model, waveforms: list, config: EvalConfig) -> list[dict]:
    """Batched speech in -> text out with `GenerationMixin.generate` (left padding)."""
    model, processor = speech_model.model, speech_model.processor
    generation_config = _decoding_config(model, config)
    inputs = conversation_inputs(processor, list(waveforms), speech_output=config.speech_prompt).to(model.device)
    budget = {"max_new_tokens": config.max_new_tokens} if config.max_new_tokens is not None else {}
    if not config.greedy:
        torch.manual_seed(config.seed)
    with torch.inference_mode():
        output = model.generate(
            **inputs,
            return_speech=False,
            generation_config=generation_config,
            pad_token_id=processor.tokenizer.pad_token_id,
            **budget,
        )
    new_ids = output[:, inputs["input_ids"].shape[1] :].tolist()
    eos, pad = _eos_ids(generation_config), processor.tokenizer.pad_token_id
    answers = []
    for ids in new_ids:
        ended = next((i for i, token in enumerate(ids) if token in eos), None)
        ids = ids[: ended + 1] if ended is not None else [token for token in ids if token != pad]
        answers.append(
            {
                "response": processor.tokenizer.decode(ids, skip_special_tokens=True).strip(),
                "num_text_tokens": len(ids),
                "text_stop_reason": "eos" if ended is not None else "max_new_tokens",
            }
        )
    return answers


def _answer_speech(speech_model, waveform, config: EvalConfig) -> tuple[dict, object, int | None]:
    """One row, speech in -> text + units (+ audio with a token2wav decoder); returns (record, audio, rate)."""
    model, processor = speech_model.model, speech_model.processor
    inputs = conversation_inputs(processor, waveform, speech_output=True).to(model.device)
    with torch.inference_mode():
        output = model.generate(
            **inputs,
            processor=processor,
            generation_config=_decoding_config(model, config),
            max_new_tokens=config.max_new_tokens,
            speech_max_new_tokens=config.speech_max_new_tokens,
            generator=torch.Generator(device=model.device).manual_seed(config.seed),
            token2wav_generator=torch.Generator().manual_seed(config.seed),
        )
    prompt_length = inputs["input_ids"].shape[1]
    text = processor.tokenizer.decode(output.sequences[0, prompt_length:], skip_special_tokens=True).strip()
    stats = output.stats
    record = {
        "response": text,
        "num_text_tokens": stats.num_text_tokens,
        "text_stop_reason": stats.text_stop_reason,
        "num_units": int(output.unit_sequences.shape[-1]),
        "speech_stop_reason": stats.speech_stop_reason,
    }
    if output.audio_values is None:
        record["speech_note"] = "no token2wav decoder: units only, no audio"
        return record, None, None
    audio = output.audio_values[0].float().cpu().numpy()
    record["audio_seconds"] = len(audio) / output.sampling_rate
    return record, audio, output.sampling_rate


def _add_speech_metrics(records: list[dict], audios: list, rate: int | None, spec: BenchmarkSpec, asr, folder, config):
    """ASR of a batch's spoken answers (one call), then WER/CER against the text answer and the speech rate."""
    spoken = [index for index, audio in enumerate(audios) if audio is not None]
    if not spoken:
        return
    if config.save_audio:
        import soundfile

        (folder / "audio").mkdir(parents=True, exist_ok=True)
        for index in spoken:
            path = folder / "audio" / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', records[index]['id'])}.wav"
            soundfile.write(path, audios[index], rate)
            records[index]["audio_path"] = str(path)
    try:
        transcripts = asr([audios[index] for index in spoken], rate, spec.language)
    except _GENERATION_ERRORS as error:
        logger.warning("%s: ASR failed for a batch: %s", spec.name, error)
        for index in spoken:
            records[index]["asr_error"] = str(error)
        return
    system = asr.system(spec.language) if hasattr(asr, "system") else type(asr).__name__
    for index, transcript in zip(spoken, transcripts, strict=True):
        record = records[index]
        record["asr"] = transcript
        record["asr_system"] = system
        record["consistency"] = text_speech_consistency(record["response"], transcript, spec.language)
        record["speech_rate"] = speech_rate(transcript, record["audio_seconds"], spec.language)


def _answer_rows(speech_model, rows: list[dict], spec: BenchmarkSpec, config: EvalConfig, asr, folder) -> list[dict]:
    """Answers of a batch of rows; a row that fails carries `error` instead."""
    sampling_rate = speech_model.processor.feature_extractor.sampling_rate
    records, waveforms = [], []
    for row in rows:
        records.append({"id": row["id"], "prompt": row["prompt"]})
        try:
            waveforms.append(load_audio(row["audio"], target_sampling_rate=sampling_rate))
        except _GENERATION_ERRORS as error:
            records[-1]["error"] = f"audio: {error}"
            waveforms.append(None)
    ready = [index for index, wave in enumerate(waveforms) if wave is not None]
    if not config.speech_output(spec):
        groups = [ready] if len(ready) > 1 else [[index] for index in ready]
        for group in groups:
            try:
                answers = _answer_text(speech_model, [waveforms[index] for index in group], config)
            except _GENERATION_ERRORS as error:
                if len(group) > 1:  # find the bad row: one at a time
                    groups.extend([index] for index in group)
                    continue
                records[group[0]]["error"] = f"generation: {error}"
                continue
            for index, answer in zip(group, answers, strict=True):
                records[index].update(answer)
        return records
    audios, rate = [None] * len(records), None
    for index in ready:
        try:
            answer, audios[index], rate = _answer_speech(speech_model, waveforms[index], config)
            records[index].update(answer)
        except _GENERATION_ERRORS as error:
            records[index]["error"] = f"generation: {error}"
    if asr is not None:
        _add_speech_metrics(records, audios, rate, spec, asr, folder, config)
    return records


def generate_responses(speech_model, dataset, spec: BenchmarkSpec, folder: Path, config: EvalConfig, asr=None):
    """Answer the rows of `dataset` not yet in `folder/responses.jsonl`; returns all answers by id.

    Args:
        speech_model ([`SpeechModel`]): from `opens2s.processing.chat.load_speech_model`.
        dataset ([`datasets.Dataset`]): a benchmark in the normalised schema ([`load_benchmark`]).
        spec ([`BenchmarkSpec`]): its spec.
        folder (`Path`): the benchmark's output folder.
        config ([`EvalConfig`]): mode, batch size, budgets, seed.
        asr ([`ASRFunction`], *optional*): transcribes spoken answers (speech mode).
    """
    path = folder / RESPONSES_FILE
    done = read_jsonl(path)
    todo = [index for index, row_id in enumerate(dataset["id"]) if row_id not in done]
    if not todo:
        return done
    batch_size = max(1, config.asr_batch_size) if config.speech_output(spec) else config.batch_size
    with _open_for_append(path) as out, tqdm(total=len(todo), desc=f"{spec.name}: answers", unit="row") as bar:
        for start in range(0, len(todo), batch_size):
            rows = dataset.select(todo[start : start + batch_size]).to_list()
            for record in _answer_rows(speech_model, rows, spec, config, asr, folder):
                _write(out, record)
                done[record["id"]] = record
            bar.update(len(rows))
    return done


# ---------------------------------------------------------------- scoring
# How a failed generation (or a missing transcript) counts under each suite's own code, per scorer.
_REFERENCE_FAILURE_COUNTS = {
    "open": "judged as an empty answer (VoiceBench)",
    "ifeval": "an empty answer: no instruction followed (VoiceBench)",
    "underemotion": "0 (URO-Bench)",
}


def _answer_failure(response: dict, judge_input: str) -> str | None:
    if "error" in response:
        return f"generation failed: {response['error']}"
    if judge_input == "asr" and response.get("asr") is None:
        why = response.get("asr_error") or response.get("speech_note") or "no spoken answer"
        return f"no ASR transcript of the spoken answer ({why})"
    return None


def _score_row(spec: BenchmarkSpec, row: dict, response: dict, config: EvalConfig, client) -> dict:
    record = {"id": row["id"], "prompt": row["prompt"], "response": response.get("response")}
    judge_input = config.judge_input_of(spec)
    failure = answer_failure = _answer_failure(response, judge_input)
    if failure is not None and config.failed_rows == "exclude":
        return record | {
            "status": "failed",
            "score": None,
            "reason": failure,
            "failure": failure,
            "counted_as": "left out",
        }
    if answer_failure is not None:
        answer = ""  # VoiceBench: the empty answer; URO-Bench: no audio file -> " " -> [0, 0, 0]
    else:
        answer = response["asr"] if judge_input == "asr" else response["response"]
    if spec.scorer == "ifeval":
        try:
            result = evaluate_ifeval_row(answer, row["instruction_id_list"], json.loads(row["kwargs"]), row["prompt"])
        except (KeyError, ValueError, TypeError) as error:  # an id or argument the reference checker rejects
            reason = f"IFEval reference checker: {type(error).__name__}: {error}"
            return record | {
                "status": "failed",
                "score": None,
                "reason": reason,
                "failure": reason,
                "counted_as": "left out",
            }
        scored = {"status": "ok", "score": 100.0 * all(result["strict"]), "reason": None, "ifeval": result}
    else:
        scored = judge_row(client, config.judge, spec.scorer, row, answer, config.failed_rows)
        if scored["failed_samples"]:
            samples = f"{scored['failed_samples']} of {config.judge.samples} judge samples failed: {scored['reason']}"
            failure = "; ".join(filter(None, [failure, samples]))
    if failure is None:
        return record | scored | {"failure": None}
    if scored["status"] != "ok":
        counted_as = "left out"
    else:
        counted = [_REFERENCE_FAILURE_COUNTS[spec.scorer] if answer_failure else None, scored.get("counted_as")]
        counted_as = "; ".join(filter(None, counted))
    return record | scored | {"failure": failure, "counted_as": counted_as}


def score_responses(dataset, spec: BenchmarkSpec, folder: Path, responses: dict, config: EvalConfig, client=None):
    """Score the answered rows of `dataset` not yet in `folder/scores.jsonl` (those with a failure too with
    `retry_failed`); judge requests run `config.judge_workers` at a time. Returns all scores by id."""
    path = folder / SCORES_FILE
    done = read_jsonl(path)
    if config.retry_failed:
        done = {
            row_id: record
            for row_id, record in done.items()
            if record.get("status") == "ok" and not record.get("failure")
        }
    meta = dataset.remove_columns("audio")
    todo = [row for row in meta.to_list() if row["id"] not in done and row["id"] in responses]
    if not todo:
        return done
    if client is None and spec.scorer != "ifeval":
        client = config.judge.client()
    workers = 1 if spec.scorer == "ifeval" else config.judge_workers
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        with _open_for_append(path) as out:
            futures = [pool.submit(_score_row, spec, row, responses[row["id"]], config, client) for row in todo]
            for future in tqdm(as_completed(futures), total=len(futures), desc=f"{spec.name}: scores", unit="row"):
                record = future.result()
                _write(out, record)
                done[record["id"]] = record
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)  # an interrupt must not wait for the queued requests
        raise
    pool.shutdown()
    return done


# ---------------------------------------------------------------- the run
def _check_run_settings(config: EvalConfig) -> None:
    path = config.output_dir / RUN_FILE
    settings = config.run_settings()
    if path.is_file():
        previous = json.loads(path.read_text())
        changed = {key: (previous.get(key), value) for key, value in settings.items() if previous.get(key) != value}
        if changed:
            details = ", ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in changed.items())
            raise ValueError(
                f"{config.output_dir} holds a run with other settings ({details}); use another output dir"
            )
    config.output_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=2))


def _protocol(spec: BenchmarkSpec, config: EvalConfig, rows: int) -> dict:
    """What the report states about how `spec` was scored (the ASR used is read from the answers)."""
    from importlib.metadata import version

    judge_input = config.judge_input_of(spec)
    read = "the text answer" if judge_input == "text" else "the ASR transcript of the spoken answer"
    if judge_input != REFERENCE_JUDGE_INPUTS[spec.suite]:
        read += f" (NOT {spec.suite}'s own: {REFERENCE_JUDGE_INPUTS[spec.suite]})"
    if spec.scorer == "ifeval":
        judge = f"IFEval reference checker, lm-eval {version('lm_eval')} (random and langdetect seeded)"
    else:
        params = config.judge.params
        judge = (
            f"{config.judge.model}, {config.judge.samples} samples, temperature {params.get('temperature')}, "
            f"top_p {params.get('top_p')}, {config.judge.parsing} parsing"
        )
    source = config.sources.get(spec.suite) or DEFAULT_SOURCES[spec.suite]
    return {
        "subset": f"{source} {spec.subset} ({spec.split}, {rows} rows)",
        "judge_input": read,
        "judge": judge,
        "failed_rows": config.failed_rows,
    }


def _check_prerequisites(specs: list[BenchmarkSpec], config: EvalConfig, speech_model) -> None:
    """Stop before any answer when a benchmark cannot be scored by its protocol (`ValueError` saying why)."""
    if any(spec.scorer == "ifeval" for spec in specs):
        try:
            check_ifeval_reference()
        except (ImportError, LookupError) as error:
            raise ValueError(str(error)) from error
    heard = [spec.name for spec in specs if config.judge_input_of(spec) == "asr"]
    if heard and not speech_model.speaks:
        raise ValueError(
            f"{', '.join(heard)}: the judge reads the ASR transcript of the spoken answer, but the model has no "
            "token2wav decoder; pass --token2wav, or --judge-input text (not URO-Bench's protocol)"
        )


def run_evaluation(config: EvalConfig, speech_model=None, asr: ASRFunction | None = None) -> list:
    """Answer, score and report every benchmark of `config`; returns the [`BenchmarkSummary`] list (also written as
    `report.md`, `report.csv`, `summary.json`).

    Args:
        config ([`EvalConfig`]): what to run.
        speech_model ([`SpeechModel`], *optional*): an already loaded model (default: load `config.model`).
        asr ([`ASRFunction`], *optional*): the transcriber of spoken answers (default: [`UroBenchASR`] of
            `config.asr_model`, built when a benchmark is answered in speech and the model speaks).
    """
    from opens2s.evaluation.report import summarize_benchmark, write_report

    specs = config.validate()
    _check_run_settings(config)
    if speech_model is None:
        from opens2s.processing.chat import load_speech_model

        speech_model = load_speech_model(config.model, config.device, config.dtype, token2wav=config.token2wav)
    _check_prerequisites(specs, config, speech_model)
    if asr is None and speech_model.speaks and any(config.speech_output(spec) for spec in specs):
        from opens2s.evaluation.speech_metrics import UroBenchASR

        asr_dtype = "float32" if torch.device(config.device).type == "cpu" else "float16"
        asr = UroBenchASR(config.asr_model, config.device, asr_dtype, batch_size=config.asr_batch_size)
    summaries = []
    for spec in specs:
        dataset = load_benchmark(spec, config.sources.get(spec.suite), limit=config.limit)
        folder = config.output_dir / spec.name
        responses = generate_responses(speech_model, dataset, spec, folder, config, asr)
        scores = score_responses(dataset, spec, folder, responses, config)
        ids = dataset["id"]
        protocol = _protocol(spec, config, len(dataset))
        summaries.append(summarize_benchmark(spec, _select(responses, ids), _select(scores, ids), protocol))
    write_report(summaries, config.output_dir, model_name=config.model_name or config.model or "tiny random model")
    return summaries


def _select(records: dict[str, dict], ids: Iterable[str]) -> list[dict]:
    return [records[row_id] for row_id in ids if row_id in records]
