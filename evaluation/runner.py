"""The evaluation run: answer every benchmark row (speech in -> text out, or speech in -> speech out), score the
answers, and write the report. Resumable: every stage appends one JSON line per row, and a re-run skips the rows
already there.

Layout of `output_dir`:

    run.json                      the settings that answers and scores depend on (a re-run must match them)
    <benchmark>/responses.jsonl   one answer per row: id, prompt, response (+ units, audio seconds, ASR, WER/CER)
    <benchmark>/scores.jsonl      one score per row: status ("ok"/"failed"), score, reason, judge outputs / checks
    <benchmark>/audio/<id>.wav    spoken answers (speech mode with save_audio)
    report.md, report.csv, summary.json

A row whose generation fails (unreadable audio, ...) is written with its `error` and scored as failed; a row whose
score fails (judge output without a score, endpoint down) is written as failed with the reason. Neither stops the
run; `retry_failed` scores the failed rows again.
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

from opens2s.evaluation.benchmarks import TABLE2_BENCHMARKS, BenchmarkSpec, get_benchmark, load_benchmark
from opens2s.evaluation.ifeval import evaluate_ifeval_row
from opens2s.evaluation.judges import JudgeConfig, judge_row
from opens2s.evaluation.speech_metrics import ASRFunction, speech_rate, text_speech_consistency
from opens2s.processing.audio_io import load_audio
from opens2s.processing.chat import conversation_inputs


__all__ = ["EvalConfig", "generate_responses", "read_jsonl", "run_evaluation", "score_responses"]

logger = logging.getLogger(__name__)

RESPONSES_FILE, SCORES_FILE, RUN_FILE = "responses.jsonl", "scores.jsonl", "run.json"
MODES = ("text", "speech")
# Settings that change answers or scores: a re-run into the same folder must keep them.
_RUN_KEYS = ("model", "mode", "max_new_tokens", "speech_max_new_tokens", "greedy", "seed", "speech_prompt")
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
        mode (`str`, *optional*, defaults to `"text"`): `"text"` (speech in -> text out, what Table 2 scores,
            batched) or `"speech"` (also the spoken answer: units, audio, ASR, WER/CER, speech rate; row by row).
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
        judge_input (`str`, *optional*, defaults to `"text"`): judge the text answer, or `"asr"` the transcript of
            the spoken answer (URO-Bench's own protocol; speech mode only).
        asr_model (`str`, *optional*, defaults to `"openai/whisper-large-v3"`): Whisper checkpoint of speech mode.
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
    judge_input: str = "text"
    asr_model: str = "openai/whisper-large-v3"
    asr_batch_size: int = 8
    save_audio: bool = False
    retry_failed: bool = False

    def validate(self) -> list[BenchmarkSpec]:
        """Check the settings; returns the benchmarks' specs. Raises `ValueError` with what to change."""
        specs = [get_benchmark(name) for name in self.benchmarks]
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.judge_input not in ("text", "asr") or (self.judge_input == "asr" and self.mode != "speech"):
            raise ValueError("judge_input must be 'text', or 'asr' in speech mode")
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
        settings["judge_input"] = self.judge_input
        return settings


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
    for index, transcript in zip(spoken, transcripts, strict=True):
        record = records[index]
        record["asr"] = transcript
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
    if config.mode == "text":
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
    batch_size = config.batch_size if config.mode == "text" else max(1, config.asr_batch_size)
    with _open_for_append(path) as out, tqdm(total=len(todo), desc=f"{spec.name}: answers", unit="row") as bar:
        for start in range(0, len(todo), batch_size):
            rows = dataset.select(todo[start : start + batch_size]).to_list()
            for record in _answer_rows(speech_model, rows, spec, config, asr, folder):
                _write(out, record)
                done[record["id"]] = record
            bar.update(len(rows))
    return done


# ---------------------------------------------------------------- scoring
def _score_row(spec: BenchmarkSpec, row: dict, response: dict, config: EvalConfig, client) -> dict:
    record = {"id": row["id"], "prompt": row["prompt"], "response": response.get("response")}
    if "error" in response:
        return record | {"status": "failed", "score": None, "reason": f"generation failed: {response['error']}"}
    answer = response.get("asr") if config.judge_input == "asr" else response["response"]
    if answer is None:
        return record | {"status": "failed", "score": None, "reason": "no ASR transcript of the spoken answer"}
    if spec.scorer == "ifeval":
        result = evaluate_ifeval_row(answer, row["instruction_id_list"], json.loads(row["kwargs"]), row["prompt"])
        if all(value is None for value in result.strict):
            reason = "; ".join(f"{key}: {value}" for key, value in result.unsupported.items())
            return record | {"status": "failed", "score": None, "reason": reason, "ifeval": result.to_dict()}
        followed_all = all(value for value in result.strict if value is not None)
        reason = "; ".join(f"{key}: {value}" for key, value in result.unsupported.items()) or None
        return record | {"status": "ok", "score": 100.0 * followed_all, "reason": reason, "ifeval": result.to_dict()}
    return record | judge_row(client, config.judge, spec.scorer, row, answer)


def score_responses(dataset, spec: BenchmarkSpec, folder: Path, responses: dict, config: EvalConfig, client=None):
    """Score the answered rows of `dataset` not yet in `folder/scores.jsonl` (failed ones too with
    `retry_failed`); judge requests run `config.judge_workers` at a time. Returns all scores by id."""
    path = folder / SCORES_FILE
    done = read_jsonl(path)
    if config.retry_failed:
        done = {row_id: record for row_id, record in done.items() if record.get("status") == "ok"}
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


def run_evaluation(config: EvalConfig, speech_model=None, asr: ASRFunction | None = None) -> list:
    """Answer, score and report every benchmark of `config`; returns the [`BenchmarkSummary`] list (also written as
    `report.md`, `report.csv`, `summary.json`).

    Args:
        config ([`EvalConfig`]): what to run.
        speech_model ([`SpeechModel`], *optional*): an already loaded model (default: load `config.model`).
        asr ([`ASRFunction`], *optional*): the transcriber of speech mode (default: [`WhisperASR`] of
            `config.asr_model`, built when the model speaks).
    """
    from opens2s.evaluation.report import summarize_benchmark, write_report

    specs = config.validate()
    _check_run_settings(config)
    if speech_model is None:
        from opens2s.processing.chat import load_speech_model

        speech_model = load_speech_model(config.model, config.device, config.dtype, token2wav=config.token2wav)
    if config.mode == "speech" and asr is None and speech_model.speaks:
        from opens2s.evaluation.speech_metrics import WhisperASR

        asr_dtype = "float32" if torch.device(config.device).type == "cpu" else "float16"
        asr = WhisperASR(config.asr_model, config.device, asr_dtype, batch_size=config.asr_batch_size)
    summaries = []
    for spec in specs:
        dataset = load_benchmark(spec, config.sources.get(spec.suite), limit=config.limit)
        folder = config.output_dir / spec.name
        responses = generate_responses(speech_model, dataset, spec, folder, config, asr)
        scores = score_responses(dataset, spec, folder, responses, config)
        ids = dataset["id"]
        summaries.append(summarize_benchmark(spec, _select(responses, ids), _select(scores, ids)))
    write_report(summaries, config.output_dir, model_name=config.model_name or config.model or "tiny random model")
    return summaries


def _select(records: dict[str, dict], ids: Iterable[str]) -> list[dict]:
    return [records[row_id] for row_id in ids if row_id in records]
