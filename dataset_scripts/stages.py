"""The stages of the data-construction pipeline (paper section 3.2), each a resumable step from one dataset to the
next (see `runner.py` for parts, failures, manifests and resuming):

| stage | reads | adds | backend |
|---|---|---|---|
| `seed` | csv / jsonl / datasets folder / Hub id | checked labels, 16 kHz seed clip | — |
| `instructions` | `seed` | `instruction` (several per seed, deduplicated) | LLM |
| `user_speech` | `instructions` | `audio`: the instruction in the seed speaker's voice | voice cloning |
| `responses` | `user_speech` | `response`, `tone` | LLM |
| `response_speech` | `responses` | `response_audio`: the reply in the one reply voice, with the tone | instruct-TTS |
| `units` | `response_speech` | `speech_units` of the reply; training rows + `train.jsonl` | speech tokenizer |
| `push` | `units` | the dataset with a card, on the Hub or in `WORKDIR/push/` | — |

Every stage function is `stage(source, backends, config) -> datasets.Dataset` (`seed` takes no source). Audio files
live under `WORKDIR/audio/<stage>/<id>.wav`; stage datasets carry them both as `Audio` columns (bytes embedded, so a
stage folder is self-contained) and as `*_file` paths relative to the work folder.
"""

import hashlib
import io
import logging
import math
import re
from pathlib import Path

import numpy as np

from opens2s.dataset_scripts.config import PipelineConfig
from opens2s.dataset_scripts.labels import (
    TONES,
    LabelError,
    normalize_age,
    normalize_emotion,
    normalize_gender,
    normalize_tone,
)
from opens2s.dataset_scripts.prompting import (
    MalformedReply,
    dedup_key,
    label_values,
    load_prompt,
    parse_instructions,
    parse_response,
    prompt_languages,
)
from opens2s.dataset_scripts.runner import Failure, StageRunner, map_rows, write_atomic
from opens2s.dataset_scripts.seeds import read_seed_source
from opens2s.processing.audio_io import TARGET_SAMPLING_RATE, AudioError, check_audio, load_audio
from opens2s.processing.prompt_format import unit_string


__all__ = [
    "RowFailure",
    "STAGE_FUNCTIONS",
    "features_of",
    "run_instructions",
    "run_response_speech",
    "run_responses",
    "run_seed",
    "run_units",
    "run_user_speech",
]

logger = logging.getLogger(__name__)

SEED_COLUMNS = ("id", "speaker", "language", "emotion", "age", "gender", "transcript")
INSTRUCTION_COLUMNS = ("id", "seed_id", "speaker", "language", "emotion", "age", "gender", "instruction")
INSTRUCTION_COLUMNS += ("seed_transcript", "seed_audio_file")
# Audio files an earlier stage wrote (paths relative to the work folder), checked again by every later stage.
STAGE_AUDIO_COLUMNS = ("seed_audio_file", "audio_file", "response_audio_file")


class RowFailure(Exception):
    """A row that cannot be used; `reason` is what the manifest counts, `detail` what the failures file says."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


def _failure(row_id: str, source_id: str, error: Exception) -> Failure:
    """The recorded reason of an exception raised while processing a row."""
    from opens2s.dataset_scripts.tts import TTSError
    from opens2s.processing.chat_completions import ChatCompletionsError

    if isinstance(error, (RowFailure, MalformedReply)):
        return Failure(row_id, source_id, error.reason, error.detail)
    if isinstance(error, LabelError):
        return Failure(row_id, source_id, f"unknown {error.kind} label", str(error))
    if isinstance(error, ChatCompletionsError):
        return Failure(row_id, source_id, "llm error", str(error)[:500])
    if isinstance(error, TTSError):
        return Failure(row_id, source_id, "tts error", str(error)[:500])
    return Failure(row_id, source_id, "unexpected error", f"{type(error).__name__}: {error}"[:500])


def features_of(stage: str):
    """The `datasets.Features` of a stage's output."""
    from datasets import Audio, Features, Value

    text, audio = Value("string"), Audio(decode=False)
    columns = {name: text for name in SEED_COLUMNS}
    columns |= {"audio": audio, "audio_file": text, "duration": Value("float32")}
    if stage == "seed":
        return Features(columns)
    columns = {name: text for name in INSTRUCTION_COLUMNS}
    if stage == "instructions":
        return Features(columns)
    columns |= {"audio": audio, "audio_file": text, "duration": Value("float32")}
    if stage == "user_speech":
        return Features(columns)
    columns |= {"response": text, "tone": text}
    if stage == "responses":
        return Features(columns)
    columns |= {"response_audio": audio, "response_audio_file": text, "response_duration": Value("float32")}
    if stage == "response_speech":
        return Features(columns)
    if stage == "units":
        return Features(columns | {"speech_units": text, "num_units": Value("int32")})
    raise ValueError(f"unknown stage {stage!r}")


# ---------------------------------------------------------------------------------------------------- helpers
def _metadata_rows(dataset) -> list[dict]:
    """The rows of a stage dataset without reading its audio bytes: each `Audio` column `x` holds the path of
    column `x_file` instead (relative to the work folder; the merge embeds the bytes again)."""
    import datasets

    audio = [name for name, feature in dataset.features.items() if isinstance(feature, datasets.Audio)]
    rows = dataset.remove_columns(audio).to_list()
    for row in rows:
        row.update({name: row.get(f"{name}_file") for name in audio})
    return rows


def _row_seed(config: PipelineConfig, row_id: str) -> int:
    """A per-row sampling seed: reproducible replies, different rows differ."""
    return int(hashlib.sha1(f"{config.seed}:{row_id}".encode()).hexdigest()[:8], 16)


def _progress(stage: str, total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=stage, unit="row", disable=total == 0)


def _workers(backend, wanted: int) -> int:
    limit = getattr(backend, "max_workers", None)
    return min(wanted, limit) if limit else wanted


def _safe_name(row_id: str) -> str:
    """A file name for a row id; ids that had to be changed (or shortened) get a hash, so names stay unique."""
    name = re.sub(r"[^\w.-]+", "_", row_id)[:100].lstrip(".")
    return name if name == row_id else f"{name}-{hashlib.sha1(row_id.encode()).hexdigest()[:8]}"


def _write_wav(config: PipelineConfig, stage: str, row_id: str, waveform, rate: int) -> tuple[str, float]:
    """Write a stage's audio file (16-bit PCM, atomically); returns `(path relative to the work folder, seconds)`."""
    import soundfile

    waveform = np.asarray(waveform, dtype=np.float32).reshape(-1)
    if waveform.size == 0 or not np.any(waveform):
        raise RowFailure("empty audio", "no samples" if waveform.size == 0 else "silence only")
    if not np.isfinite(waveform).all():
        raise RowFailure("empty audio", "NaN or Inf samples")
    relative = Path("audio") / stage / f"{_safe_name(row_id)}.wav"
    buffer = io.BytesIO()
    soundfile.write(buffer, np.clip(waveform, -1.0, 1.0), rate, subtype="PCM_16", format="WAV")
    write_atomic(config.workdir / relative, buffer.getvalue())
    return relative.as_posix(), waveform.size / rate


def _stage_audio_problem(row: dict, config: PipelineConfig) -> RowFailure | None:
    """Why an audio file an earlier stage wrote for this row can no longer be used (removed, or changed into
    something unreadable, empty or of a broken rate since that stage counted it done), or `None`. Header only; its
    length is the business of the stage that reads it (no limits here)."""
    for column in STAGE_AUDIO_COLUMNS:
        if row.get(column):
            try:
                check_audio(str(config.workdir / row[column]), max_seconds=None, min_samples=1)
            except (AudioError, OSError) as error:
                return RowFailure("corrupt stage audio", f"{column} {row[column]}: {error}"[:300])
    return None


def _commit_results(runner: StageRunner, batch: list[dict], results: list, make_row) -> None:
    """Commit a chunk of 1:1 results: `make_row(row, result)` for successes, the reason for exceptions."""
    rows, done, failures = [], [], []
    for row, result in zip(batch, results, strict=True):
        if isinstance(result, Exception):
            failures.append(_failure(row["id"], row["id"], result))
        else:
            rows.append(make_row(row, result))
            done.append(row["id"])
    runner.commit(rows, done, failures)


def _run_one_to_one(stage: str, source, config: PipelineConfig, work, make_row, workers, abort=(), info=None):
    """A stage with one output per input row: `work(row) -> result` on the pending rows, chunk by chunk, on
    `workers()` threads (a callable, so that a stage with nothing to do builds no backend)."""
    runner = StageRunner(stage, config, abort_reasons=abort)
    rows = _metadata_rows(source)
    ids = [row["id"] for row in rows]
    pending = runner.pending(ids)
    workers = workers() if pending else 1

    def checked_work(row: dict):
        problem = _stage_audio_problem(row, config)
        if problem is not None:
            raise problem
        return work(row)

    with _progress(stage, len(pending)) as progress:
        for chunk in runner.chunks(pending):
            batch = [rows[position] for position in chunk]
            _commit_results(runner, batch, map_rows(checked_work, batch, workers, progress), make_row)
    return runner.finish(ids, features_of(stage), info=info)


# ---------------------------------------------------------------------------------------------------- seed
def _check_seed(row: dict, config: PipelineConfig, languages: set[str]) -> dict:
    """Labels, transcript, language and audio of one seed row; writes its 16 kHz clip. Raises on a bad row."""
    if row.get("_error"):
        raise RowFailure("invalid seed row", row["_error"])
    if not str(row.get("emotion") or "").strip():
        raise RowFailure("missing emotion label")
    labels = {
        "emotion": normalize_emotion(row.get("emotion")),
        "age": normalize_age(row.get("age")),
        "gender": normalize_gender(row.get("gender")),
    }
    transcript = str(row.get("transcript") or "").strip()
    if not transcript:
        raise RowFailure("empty transcript")
    language = str(row.get("language") or config.language).strip().lower().replace("_", "-").split("-")[0]
    if language not in languages:
        raise RowFailure("unsupported language", f"{language!r} has no prompt templates ({sorted(languages)})")
    waveform = _read_seed_audio(row.get("audio"), config)
    relative, seconds = _write_wav(config, "seed", row["id"], waveform, TARGET_SAMPLING_RATE)
    speaker = str(row.get("speaker") or "").strip() or row["id"]
    out = {"id": row["id"], "speaker": speaker, "language": language, "transcript": transcript, **labels}
    return out | {"audio": relative, "audio_file": relative, "duration": seconds}


def _read_seed_audio(value, config: PipelineConfig) -> np.ndarray:
    """A seed's audio (anything [`load_audio`] reads: a path, an undecoded or decoded `datasets.Audio` value) as
    16 kHz mono float32, within the configured seed durations (checked from the header before decoding)."""
    if isinstance(value, dict) and value.get("bytes") is None and value.get("array") is None:
        value = value.get("path")
    if value is None or (isinstance(value, str) and not value.strip()):
        raise RowFailure("missing audio file", "no audio given")
    try:
        return load_audio(
            value,
            max_seconds=config.max_seed_seconds,
            min_samples=math.ceil(config.min_seed_seconds * TARGET_SAMPLING_RATE),
        )
    except OSError as error:  # missing file, or a folder
        raise RowFailure("missing audio file", str(error)) from error
    except AudioError as error:
        reason = error.reason if error.reason in ("audio too short", "audio too long") else "unreadable audio"
        raise RowFailure(reason, str(error)[:300]) from error


def run_seed(backends, config: PipelineConfig):
    """Stage 1: ingest the annotated seed audio (`config.seed_data`), normalise and check labels, transcript,
    language and audio (readable, `min_seed_seconds`-`max_seed_seconds`), and store each clip at 16 kHz."""
    if not config.seed_data:
        raise ValueError("the seed stage needs --seed-data (a csv/jsonl file, a datasets folder or a Hub dataset id)")
    source = read_seed_source(config)
    runner = StageRunner("seed", config)
    languages = prompt_languages(config.prompts_dir)
    pending = runner.pending(source.ids)
    with _progress("seed", len(pending)) as progress:
        for chunk in runner.chunks(pending):
            batch = source.rows(chunk)
            results = map_rows(lambda row: _check_seed(row, config, languages), batch, 1, progress)
            _commit_results(runner, batch, results, lambda row, result: result)
    return runner.finish(source.ids, features_of("seed"), info={"seed_data": str(config.seed_data)})


# ---------------------------------------------------------------------------------------------------- LLM stages
def _instruction_reply(row: dict, backends, config: PipelineConfig) -> list[str]:
    prompt = load_prompt("instructions", row["language"], config.prompts_dir)
    messages = prompt.render(
        **label_values(row, row["language"]), transcript=row["transcript"], num_instructions=config.num_instructions
    )
    reply = backends.llm.complete(
        messages,
        temperature=config.instruction_temperature,
        max_tokens=config.llm_max_tokens,
        seed=_row_seed(config, row["id"]),
    )
    return parse_instructions(reply, limit=config.num_instructions)


def run_instructions(source, backends, config: PipelineConfig):
    """Stage 2: the LLM writes `num_instructions` paralinguistic-sensitive instructions per seed (prompt templates
    `instructions.<lang>.txt`), whose best answer depends on the speaker's emotion, age and gender. Instructions that
    repeat one already kept (same letters and digits, any seed) are dropped as `"duplicate instruction"`."""
    runner = StageRunner("instructions", config, source_key="seed_id", abort_reasons=("llm error",))
    seeds = _metadata_rows(source)
    ids = [row["id"] for row in seeds]
    seen = {dedup_key(row["instruction"]) for row in runner.finished_rows()}
    pending = runner.pending(ids)
    workers = _workers(backends.llm, config.llm_workers) if pending else 1
    with _progress("instructions", len(pending)) as progress:
        for chunk in runner.chunks(pending):
            batch = [seeds[position] for position in chunk]
            results = map_rows(lambda row: _instruction_reply(row, backends, config), batch, workers, progress)
            rows, done, failures = [], [], []
            for seed, result in zip(batch, results, strict=True):
                if isinstance(result, Exception):
                    failures.append(_failure(seed["id"], seed["id"], result))
                    continue
                done.append(seed["id"])
                for number, text in enumerate(result):
                    row_id, key = f"{seed['id']}-q{number}", dedup_key(text)
                    if key in seen:
                        failures.append(Failure(row_id, seed["id"], "duplicate instruction", text))
                        continue
                    seen.add(key)
                    rows.append(_instruction_row(seed, row_id, text))
            runner.commit(rows, done, failures)
    return runner.finish(ids, features_of("instructions"), info=_llm_info(config))


def _instruction_row(seed: dict, row_id: str, text: str) -> dict:
    labels = {key: seed[key] for key in ("speaker", "language", "emotion", "age", "gender")}
    return {"id": row_id, "seed_id": seed["id"], **labels, "instruction": text} | {
        "seed_transcript": seed["transcript"],
        "seed_audio_file": seed["audio_file"],
    }


def _llm_info(config: PipelineConfig) -> dict:
    return {"llm": config.llm, "llm_model": config.llm_model}


def _response_reply(row: dict, backends, config: PipelineConfig) -> tuple[str, str]:
    prompt = load_prompt("responses", row["language"], config.prompts_dir)
    messages = prompt.render(
        **label_values(row, row["language"]), instruction=row["instruction"], tones=", ".join(TONES)
    )
    reply = backends.llm.complete(
        messages,
        temperature=config.response_temperature,
        max_tokens=config.llm_max_tokens,
        seed=_row_seed(config, row["id"]),
    )
    response, tone = parse_response(reply)
    return response, normalize_tone(tone)


def run_responses(source, backends, config: PipelineConfig):
    """Stage 4: the LLM writes a concise empathetic reply to each instruction, knowing how the user sounds, and
    the tone to say it in (one of `labels.TONES`; another answer is an `"unknown tone label"` failure)."""
    return _run_one_to_one(
        "responses",
        source,
        config,
        lambda row: _response_reply(row, backends, config),
        lambda row, result: row | {"response": result[0], "tone": result[1]},
        lambda: _workers(backends.llm, config.llm_workers),
        abort=("llm error",),
        info=_llm_info(config),
    )


# ---------------------------------------------------------------------------------------------------- speech
def _user_speech(row: dict, backends, config: PipelineConfig) -> tuple[str, float]:
    waveform, rate = backends.user_tts.clone(
        row["instruction"],
        reference_audio=str(config.workdir / row["seed_audio_file"]),
        reference_text=row["seed_transcript"],
        language=row["language"],
        emotion=row["emotion"],
        age=row["age"],
        gender=row["gender"],
        speaker=row["speaker"],
    )
    return _write_wav(config, "user_speech", row["id"], waveform, rate)


def run_user_speech(source, backends, config: PipelineConfig):
    """Stage 3: speak each instruction in the voice of its seed speaker (voice cloning from the seed clip, which
    matches the instruction's emotion, age and gender by construction)."""
    return _run_one_to_one(
        "user_speech",
        source,
        config,
        lambda row: _user_speech(row, backends, config),
        lambda row, result: row | {"audio": result[0], "audio_file": result[0], "duration": result[1]},
        lambda: _workers(backends.user_tts, config.tts_workers),
        abort=("tts error",),
        info={"tts": config.tts},
    )


def _response_speech(row: dict, backends, config: PipelineConfig) -> tuple[str, float]:
    waveform, rate = backends.response_tts.instruct(row["response"], tone=row["tone"], language=row["language"])
    return _write_wav(config, "response_speech", row["id"], waveform, rate)


def run_response_speech(source, backends, config: PipelineConfig):
    """Stage 5: speak each reply with instruct-TTS in one fixed voice, with the tone the LLM chose."""
    return _run_one_to_one(
        "response_speech",
        source,
        config,
        lambda row: _response_speech(row, backends, config),
        lambda row, result: (
            row | {"response_audio": result[0], "response_audio_file": result[0], "response_duration": result[1]}
        ),
        lambda: _workers(backends.response_tts, config.tts_workers),
        abort=("tts error",),
        info={"response_tts": config.response_tts or config.tts, "response_voice": config.response_voice},
    )


# ---------------------------------------------------------------------------------------------------- units
def _encode_units(batch: list[dict], tokenizer, config: PipelineConfig) -> list:
    """Units of each row's reply audio; a batch that fails is retried row by row so one bad file fails alone."""
    paths = [str(config.workdir / row["response_audio_file"]) for row in batch]
    try:
        return tokenizer.encode(paths, batch_size=config.units_batch_size)
    except Exception:  # noqa: BLE001 - isolate the bad rows below
        logger.debug("batch encode failed; encoding row by row", exc_info=True)
    results = []
    for path in paths:
        try:
            results.append(tokenizer.encode([path])[0])
        except Exception as error:  # noqa: BLE001 - recorded as the row's failure
            results.append(RowFailure("speech tokenizer error", f"{type(error).__name__}: {error}"[:300]))
    return results


def _training_row(row: dict, units: list[int]) -> dict:
    if not units:
        raise RowFailure("empty speech units")
    return row | {"speech_units": unit_string(units), "num_units": len(units)}


def _export_jsonl(folder: Path, rows: list[dict]) -> None:
    """`train.jsonl` in the original OpenS2S format (audio paths relative to the work folder, this file's parent)."""
    import json

    with (folder / "train.jsonl").open("w", encoding="utf-8") as handle:
        for row in rows:
            item = {"text": "", "audio": "", "speech_units": "", "spk_emb": ""}
            user = [item | {"audio": row["audio_file"]}]
            assistant = [item | {"text": row["response"], "speech_units": row["speech_units"]}]
            messages = [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
            handle.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")


def run_units(source, backends, config: PipelineConfig):
    """Stage 6: turn each reply's audio into speech units (the speech tokenizer, 12.5 units/s) and write the training
    rows: flat rows (`audio`, `response`, `speech_units`, ...) that `load_training_dataset` reads, and
    `units/train.jsonl` in the original `{"messages": [...]}` format that `load_original_jsonl` reads."""
    runner = StageRunner("units", config, abort_reasons=("speech tokenizer error",))
    rows = _metadata_rows(source)
    ids = [row["id"] for row in rows]
    pending = runner.pending(ids)
    with _progress("units", len(pending)) as progress:
        for chunk in runner.chunks(pending):
            batch = [rows[position] for position in chunk]
            problems = [_stage_audio_problem(row, config) for row in batch]
            readable = [row for row, problem in zip(batch, problems, strict=True) if problem is None]
            encoded = iter(_encode_units(readable, backends.speech_tokenizer, config) if readable else [])
            results = []
            for row, problem in zip(batch, problems, strict=True):
                units = problem if problem is not None else next(encoded)
                try:
                    results.append(units if isinstance(units, Exception) else _training_row(row, list(units)))
                except RowFailure as error:
                    results.append(error)
            progress.update(len(batch))
            _commit_results(runner, batch, results, lambda row, result: result)
    info = {"speech_tokenizer": config.speech_tokenizer}
    return runner.finish(ids, features_of("units"), write_extra=_export_jsonl, info=info)


# Stage name -> function; `push` lives in `card.py` (it is not a row stage).
STAGE_FUNCTIONS = {
    "seed": run_seed,
    "instructions": run_instructions,
    "user_speech": run_user_speech,
    "responses": run_responses,
    "response_speech": run_response_speech,
    "units": run_units,
}
