"""Training rows for OpenS2S: the original jsonl format, `datasets` (Hub ids or local), and the stage-1 rows.

Rows come in three shapes, all turned into what the collators read:

- conversations, `{"messages": [{"role": ..., "content": [{"text", "audio", "speech_units", "spk_emb"}, ...]}]}`
  (the original OpenS2S jsonl format);
- flat rows of a `datasets` table: `audio` (an `Audio` column, a path, or `{"array", "sampling_rate"}`; anything
  `opens2s.processing.load_audio` reads), optional
  `instruction` (user text before the audio), `response` (the answer), optional `speech_units` and `spk_emb`;
- text-to-units rows for stage 2a: `text` (or `response`) and `speech_units`.

Speech units are strings of unit tokens (`"<|audio_12|><|audio_5|>"`, as the original stores them) or lists of unit
indices; lists are stored as strings. Rows that cannot be used are skipped and reported in one warning by count and
reason (missing or unreadable audio, empty text, units out of range, ...), never dropped silently.
"""

import io
import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from transformers.utils import logging

from opens2s.modeling_opens2s.streaming_opens2s import SpeakerEmbeddingError, check_speaker_embedding
from opens2s.processing.audio_io import MAX_AUDIO_SECONDS, AudioError, check_audio, load_audio
from opens2s.processing.prompt_format import parse_unit_string, unit_string


__all__ = [
    "ALIGN_EMOTION_INSTRUCTION",
    "ALIGN_INSTRUCTION",
    "ITEM_KEYS",
    "alignment_prompt",
    "build_alignment_rows",
    "load_original_jsonl",
    "load_training_dataset",
    "row_messages",
]

logger = logging.get_logger(__name__)

ITEM_KEYS = ("text", "audio", "speech_units", "spk_emb")


def _resolve(path_text: str, roots: list[Path]) -> Path | None:
    path = Path(path_text)
    candidates = [path] if path.is_absolute() else [root / path for root in roots]
    return next((candidate for candidate in candidates if candidate.is_file()), None)


def _check_audio(value: Any, roots: list[Path], options: dict) -> tuple[Any, str | None]:
    """The audio value with a resolved absolute path, or the reason it cannot be used. Files and bytes are checked
    from their header by [`check_audio`] (readable, not empty, rate and length within the limits), and float files
    (the only kind that can hold NaN) are scanned block by block for non-finite samples; in-memory arrays are read
    by [`load_audio`]."""
    if isinstance(value, dict) and value.get("bytes") is None and value.get("array") is None and value.get("path"):
        value = value["path"]
    if isinstance(value, (str, Path)):
        path = _resolve(str(value), roots)
        if path is None:
            return None, "missing audio file"
        value = str(path.resolve())
    if not options["check_files"]:
        return value, None
    limits = {"max_seconds": options["max_audio_seconds"]}
    try:
        if isinstance(value, dict) and value.get("array") is not None:
            load_audio(value, **limits)
        else:
            check_audio(value, **limits)
            if _has_nonfinite_samples(value):
                return None, "NaN or Inf samples"
    except AudioError as error:
        return None, error.reason
    return value, None


def _has_nonfinite_samples(value: str | dict) -> bool:
    """Whether a float-coded file (path or `{"bytes"}`, already checked by `check_audio`) holds NaN or Inf; integer
    and compressed codings cannot. Read in blocks, so memory stays small whatever the length."""
    import soundfile

    source = value if isinstance(value, str) else io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"]
    with soundfile.SoundFile(source) as handle:
        if handle.subtype not in ("FLOAT", "DOUBLE"):
            return False
        return any(not np.isfinite(block).all() for block in handle.blocks(blocksize=1 << 16, dtype="float32"))


def _check_speaker_file(path: Path, dim: int | None) -> str | None:
    """The reason a `.npy` speaker embedding cannot be used, or `None`: it must be a plain numeric array (no pickled
    objects) of `dim` finite values with a sane norm ([`check_speaker_embedding`]). Its size is read from the header
    before any values are."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return "unreadable spk_emb file"
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "fiu":
        return "unreadable spk_emb file"
    if dim is not None and array.size != dim:
        return "spk_emb of the wrong size"
    try:
        check_speaker_embedding(np.array(array), array.size, str(path))
    except SpeakerEmbeddingError as error:
        return f"spk_emb {error.reason}"
    return None


def _check_units(units: Any, num_units: int | None) -> tuple[str | None, str | None]:
    """Units as a string of unit tokens, or the reason they cannot be used."""
    try:
        indices = parse_unit_string(units)
    except (TypeError, ValueError):
        return None, "speech units not in <|audio_k|> form"
    if not indices:
        return None, "empty speech units"
    if num_units is not None and any(unit < 0 or unit >= num_units for unit in indices):
        return None, "speech units out of range"
    return units if isinstance(units, str) else unit_string(indices), None


# ---------------------------------------------------------------- row checks
def _item_type_error(item: Any) -> str | None:
    """The reason an item's fields have the wrong types (a string where an object is due, units as a number, ...)."""
    if not isinstance(item, dict):
        return "content item is not an object"
    for key in ("text", "spk_emb"):
        if item.get(key) is not None and not isinstance(item[key], str):
            return f"{key} is not a string"
    if item.get("audio") is not None and not isinstance(item["audio"], (str, dict)):
        return "audio is not a path or an audio value"
    if item.get("speech_units") is not None and not isinstance(item["speech_units"], (str, list)):
        return "speech units not in <|audio_k|> form"
    return None


def _check_item(item: Any, role: str, roots: list[Path], options: dict) -> tuple[dict | None, str | None]:
    reason = _item_type_error(item)
    if reason:
        return None, reason
    item = {key: item.get(key) or "" for key in ITEM_KEYS}
    if len(item["audio"]) > 0:
        if role != "user":
            return None, "audio input outside a user turn"
        item["audio"], reason = _check_audio(item["audio"], roots, options)
        if reason:
            return None, reason
    if item["spk_emb"]:
        path = _resolve(item["spk_emb"], roots)
        if path is None:
            return None, "missing spk_emb file"
        reason = _check_speaker_file(path, options["speaker_embedding_dim"]) if options["check_files"] else None
        if reason:
            return None, reason
        item["spk_emb"] = str(path.resolve())
    if len(item["speech_units"]) > 0:
        if role != "assistant" or not item["text"]:
            return None, "speech units without assistant text"
        item["speech_units"], reason = _check_units(item["speech_units"], options["num_units"])
        if reason:
            return None, reason
    return item, None


def _check_row(messages: list, roots: list[Path], options: dict) -> tuple[list | None, str | None]:
    """Return the row with absolute paths and unit strings, or `None` and the reason it cannot be used."""
    if not isinstance(messages, list) or not messages:
        return None, "no messages"
    fixed = []
    for message in messages:
        if not isinstance(message, dict):
            return None, "message is not an object"
        role, content = message.get("role"), message.get("content")
        if role not in ("user", "assistant", "system"):
            return None, f"unknown role {role!r}"
        if not isinstance(content, list):
            return None, "content is not a list of items"
        items = []
        for item in content:
            item, reason = _check_item(item, role, roots, options)
            if reason:
                return None, reason
            items.append(item)
        if not any(item["text"] or len(item["audio"]) for item in items):
            return None, "empty message"
        fixed.append({"role": role, "content": items})
    if not any(message["role"] == "assistant" and any(i["text"] for i in message["content"]) for message in fixed):
        return None, "no assistant text"
    return fixed, None


def row_messages(row: dict) -> list:
    """The messages of a conversation row, or those of a flat row (`audio`, `instruction`, `response`, ...)."""
    if row.get("messages") is not None:
        return row["messages"]
    user = [{"text": row.get("instruction") or ""}, {"audio": row.get("audio") or ""}]
    answer = {
        "text": row.get("response") or "",
        "speech_units": row.get("speech_units"),
        "spk_emb": row.get("spk_emb"),
    }
    return [{"role": "user", "content": user}, {"role": "assistant", "content": [answer]}]


def _conversation_rows(record: dict, roots: list[Path], options: dict) -> tuple[list[dict], str | None]:
    messages, reason = _check_row(row_messages(record), roots, options)
    return ([{"messages": messages}], None) if messages else ([], reason)


def _text_to_units_rows(record: dict, roots: list[Path], options: dict) -> tuple[list[dict], str | None]:
    """One `{"text", "speech_units"}` row per spoken answer (of a conversation, or the record itself)."""
    if record.get("messages") is None:
        text = record.get("text") or record.get("response") or ""
        if not isinstance(text, str) or not text.strip():
            return [], "empty text"
        if not record.get("speech_units"):
            return [], "no speech units"
        units, reason = _check_units(record["speech_units"], options["num_units"])
        return ([{"text": text.strip(), "speech_units": units}], None) if units else ([], reason)
    messages, reason = _check_row(record["messages"], roots, {**options, "check_files": False})
    if reason:
        return [], reason
    rows = [
        {"text": item["text"], "speech_units": item["speech_units"]}
        for message in messages
        for item in message["content"]
        if item["speech_units"]
    ]
    return (rows, None) if rows else ([], "no speech units")


_ROW_BUILDERS = {"conversation": _conversation_rows, "text_to_units": _text_to_units_rows}


class _Report:
    """Counts rows and the reasons rows were skipped; logs one warning line at the end."""

    def __init__(self, source: Any):
        self.source, self.total, self.reasons = source, 0, Counter()

    def skip(self, reason: str, where: str = "") -> None:
        self.reasons[reason] += 1
        logger.debug("%s%s skipped: %s", self.source, where, reason)

    def finish(self, kept: int) -> None:
        if self.reasons:
            summary = ", ".join(f"{count} {reason}" for reason, count in self.reasons.most_common())
            logger.warning(
                "%s: skipped %d of %d rows (%s)", self.source, sum(self.reasons.values()), self.total, summary
            )
        if kept == 0:
            raise ValueError(f"{self.source} holds no usable rows")


# ---------------------------------------------------------------- loaders
def load_original_jsonl(
    path: str | Path,
    audio_root: str | Path | None = None,
    num_units: int | None = None,
    row_format: str = "conversation",
    speaker_embedding_dim: int | None = 512,
    max_audio_seconds: float | None = MAX_AUDIO_SECONDS,
):
    """Load an original OpenS2S jsonl file as a `datasets.Dataset` with one `messages` column.

    Each line is `{"messages": [{"role": ..., "content": [{"text", "audio", "speech_units", "spk_emb"}, ...]}]}`
    (or a flat row, see the module docstring). Relative audio and speaker-embedding paths are resolved against
    `audio_root` when given, else against the file's folder, then its parent folder (the data root of the original
    layout, where `inputs/a.wav` lives beside `inputs/train.jsonl`), and made absolute. Rows that cannot be used
    (missing or unreadable files, empty messages, units without text or out of `[0, num_units)`, ...) are skipped and
    reported by count and reason in one warning, never dropped silently. Audio is checked from its header (rate at
    least 4000 Hz, at least one 10 ms frame, at most `max_audio_seconds`), float-coded audio for NaN/Inf samples,
    speaker embeddings for `speaker_embedding_dim` finite values of a sane norm; a message, item or field of the
    wrong type is a bad row too.

    With `row_format="text_to_units"` (stage 2a) the dataset has `text` and `speech_units` columns instead: one row
    per spoken answer.
    """
    import datasets

    path = Path(path)
    roots = [Path(audio_root)] if audio_root is not None else [path.parent, path.parent.parent]
    build, options = _ROW_BUILDERS[row_format], _options(num_units, speaker_embedding_dim, max_audio_seconds)
    report, rows = _Report(path), []
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            report.total += 1
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                report.skip("invalid json", f":{line_number}")
                continue
            new_rows, reason = build(record, roots, options) if isinstance(record, dict) else ([], "not an object")
            if reason:
                report.skip(reason, f":{line_number}")
            rows += new_rows
    report.finish(len(rows))
    return datasets.Dataset.from_list(rows)


def load_training_dataset(
    data,
    audio_root: str | Path | None = None,
    num_units: int | None = None,
    row_format: str = "conversation",
    split: str = "train",
    dataset_config: str | None = None,
    speaker_embedding_dim: int | None = 512,
    max_audio_seconds: float | None = MAX_AUDIO_SECONDS,
):
    """Load training rows from a jsonl file, a `datasets` folder (`save_to_disk`), a Hub id or a `Dataset`.

    Args:
        data (`str`, `Path` or `datasets.Dataset`): a `.jsonl` / `.json` file in the original format, a folder saved
            with `save_to_disk`, a Hub dataset id or a local folder of data files (`datasets.load_dataset`), or a
            loaded `Dataset`.
        audio_root (`str`, *optional*): folder that relative audio / speaker-embedding paths are relative to
            (default: the jsonl file's folder and its parent, a local dataset folder, else the working directory).
        num_units (`int`, *optional*): size of the unit codebook (`processor.num_units`); rows with units outside
            `[0, num_units)` are skipped. Not checked when `None`.
        row_format (`str`, *optional*, defaults to `"conversation"`): the stage's layout, `"conversation"` or
            `"text_to_units"` (stage 2a).
        split (`str`, *optional*, defaults to `"train"`): split of a Hub or folder dataset.
        dataset_config (`str`, *optional*): configuration name of a Hub dataset.
        speaker_embedding_dim (`int`, *optional*, defaults to 512): values per `spk_emb` file
            (`model.config.speaker_embedding_dim`); rows whose file holds another number are skipped.
        max_audio_seconds (`float`, *optional*, defaults to 600): longest audio kept
            (`processor.feature_extractor.max_audio_seconds`).

    Returns:
        `datasets.Dataset` whose rows the stage's collator reads. `datasets` tables keep their columns (an `Audio`
        column stays undecoded, so no audio backend is needed; the collator decodes it per batch) and are checked
        row by row; bad rows are skipped and reported by count and reason in one warning.
    """
    import datasets

    if row_format not in _ROW_BUILDERS:
        raise ValueError(f"row_format must be one of {list(_ROW_BUILDERS)}, got {row_format!r}")
    if isinstance(data, (str, Path)) and Path(data).is_file():
        return load_original_jsonl(
            data,
            audio_root,
            num_units,
            row_format,
            speaker_embedding_dim=speaker_embedding_dim,
            max_audio_seconds=max_audio_seconds,
        )
    if isinstance(data, datasets.Dataset):
        dataset, source = data, "dataset"
    elif Path(data).is_dir() and (Path(data) / "dataset_info.json").is_file():
        dataset, source = datasets.load_from_disk(str(data)), str(data)
    else:
        dataset, source = datasets.load_dataset(str(data), dataset_config, split=split), str(data)
    for name, feature in dataset.features.items():
        if isinstance(feature, datasets.Audio) and feature.decode:
            dataset = dataset.cast_column(name, datasets.Audio(decode=False))
    if audio_root is not None:
        roots = [Path(audio_root)]
    else:  # paths in a local dataset folder are relative to it; a Hub dataset should carry an `Audio` column
        roots = [Path(data), Path.cwd()] if isinstance(data, (str, Path)) and Path(data).is_dir() else [Path.cwd()]
    options = _options(num_units, speaker_embedding_dim, max_audio_seconds)
    return _checked_table(dataset, source, roots, options, row_format)


def _options(num_units: int | None, speaker_embedding_dim: int | None, max_audio_seconds: float | None) -> dict:
    return {
        "num_units": num_units,
        "speaker_embedding_dim": speaker_embedding_dim,
        "max_audio_seconds": max_audio_seconds,
        "check_files": True,
    }


def _checked_table(dataset, source: str, roots: list[Path], options: dict, row_format: str):
    """Skip and report the bad rows of a `datasets` table; conversations are normalised lazily on access."""
    import datasets

    build = _ROW_BUILDERS[row_format]
    report, keep, rows = _Report(source), [], []
    for index, record in enumerate(dataset):
        report.total += 1
        new_rows, reason = build(record, roots, options)
        if reason:
            report.skip(reason, f"[{index}]")
            continue
        keep.append(index)
        rows += new_rows
    report.finish(len(keep))
    if row_format == "text_to_units":
        return datasets.Dataset.from_list(rows)
    light = {**options, "check_files": False}

    def normalise(batch: dict[str, list]) -> dict[str, list]:
        records = [dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)]
        return {"messages": [_conversation_rows(record, roots, light)[0][0]["messages"] for record in records]}

    return dataset.select(keep).with_transform(normalise)


# ---------------------------------------------------------------- stage 1 (alignment) rows
# Wording modelled on BLSP-Emo (arXiv 2406.03872, section 3): the LLM continues the transcript (ASR data), or the
# transcript said with an emotion (SER data); the speech model must give the same continuation from the speech alone.
ALIGN_INSTRUCTION = "Continue the following sentence in a coherent style: "
ALIGN_EMOTION_INSTRUCTION = "Continue the following sentence based on the conveyed emotion tone in a coherent style: "
_ALIGN_TEXT_EMOTION_INSTRUCTION = (
    "Continue the following sentence that reflects a '{emotion}' emotion tone in a coherent style: "
)


def alignment_prompt(transcript: str, emotion: str | None = None) -> str:
    """The text prompt an LLM continues offline to make the stage-1 target of one utterance.

    Stage 1 (BLSP-Emo behaviour alignment) needs, per utterance, the LLM's own continuation of its transcript (ASR
    data) or of its transcript said with an emotion (SER data, `emotion` such as `"sad"`). Running the LLM on these
    prompts (its chat template, greedy decoding, a length cap) is out of scope here; feed each prompt to the text LLM
    you align to, then pass the continuations to [`build_alignment_rows`].
    """
    if emotion:
        return _ALIGN_TEXT_EMOTION_INSTRUCTION.format(emotion=emotion) + transcript
    return ALIGN_INSTRUCTION + transcript


def build_alignment_rows(samples: Iterable[dict]) -> list[dict]:
    """Stage-1 training rows: speech in, the LLM's continuation of its transcript out (text loss only).

    Args:
        samples (`Iterable[dict]`): one dict per utterance with `audio` (path or audio value), `continuation` (the
            LLM's answer to [`alignment_prompt`] of the transcript) and, for emotion (SER) data, `emotion`.

    Returns:
        `list[dict]`: `{"messages": ...}` rows: the user turn is the instruction (the emotion-aware one when the
        sample has an emotion label) followed by the audio, the assistant turn the continuation. Samples without
        audio or continuation are skipped and reported by count and reason in one warning.
    """
    report, rows = _Report("alignment samples"), []
    for index, sample in enumerate(samples):
        report.total += 1
        continuation, audio = (sample.get("continuation") or "").strip(), sample.get("audio")
        if audio is None or (isinstance(audio, str) and not audio):
            report.skip("no audio", f"[{index}]")
            continue
        if not continuation:
            report.skip("empty continuation", f"[{index}]")
            continue
        instruction = ALIGN_EMOTION_INSTRUCTION if sample.get("emotion") else ALIGN_INSTRUCTION
        user = [{"text": instruction}, {"audio": audio}]
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": user},
                    {"role": "assistant", "content": [{"text": continuation}]},
                ]
            }
        )
    report.finish(len(rows))
    return rows
