"""Reading the annotated seed audio of the `seed` stage: csv / jsonl / json files, `save_to_disk` folders, Hub ids.

Columns are matched by name, with common alternatives:

| column | also accepted |
|---|---|
| `audio`: a path (relative to the file or `--audio-root`) or an `Audio` column | `audio_path`, `path`, `wav` |
| `transcript` | `text`, `sentence`, `transcription` |
| `emotion` | `emotion_label`, `label` |
| `age` (a group or years) | `age_group` |
| `gender` | `sex` |
| `speaker` (optional) | `speaker_id`, `spk` |
| `language` (optional) | `lang`, `locale` |
| `id` (optional) | `utt_id`, `key` |

Rows without an `id` get a stable one from their content (`s` + 10 hex digits of a hash of path, transcript, labels
and speaker); a repeated id gets `-2`, `-3`, ... in file order. A line that is not valid JSON becomes a row that the
seed stage records as failed (`"invalid seed row"`), never a silent skip.
"""

import csv
import hashlib
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from opens2s.dataset_scripts.config import PipelineConfig


__all__ = ["SEED_COLUMN_ALIASES", "SeedSource", "read_seed_source"]

SEED_COLUMN_ALIASES = {
    "audio": ("audio", "audio_path", "path", "wav"),
    "transcript": ("transcript", "text", "sentence", "transcription"),
    "emotion": ("emotion", "emotion_label", "label"),
    "age": ("age", "age_group"),
    "gender": ("gender", "sex"),
    "speaker": ("speaker", "speaker_id", "spk"),
    "language": ("language", "lang", "locale"),
    "id": ("id", "utt_id", "key"),
}


@dataclass
class SeedSource:
    """The seed rows: their ids in source order, and a reader of the rows at some positions (canonical keys)."""

    ids: list[str]
    read: Callable[[list[int]], list[dict]]

    def rows(self, positions: list[int]) -> list[dict]:
        return [
            row | {"id": self.ids[position]} for position, row in zip(positions, self.read(positions), strict=True)
        ]


def _column_map(columns) -> dict[str, str]:
    """Canonical name -> the source's column name, for the canonical names the source has."""
    lowered = {str(column).strip().lower(): column for column in columns}
    found = {}
    for canonical, aliases in SEED_COLUMN_ALIASES.items():
        match = next((lowered[alias] for alias in aliases if alias in lowered), None)
        if match is not None:
            found[canonical] = match
    return found


def _canonical(record: dict, columns: dict[str, str]) -> dict:
    return {canonical: record.get(column) for canonical, column in columns.items()}


def _content_id(row: dict) -> str:
    audio = row.get("audio")
    audio = audio.get("path") if isinstance(audio, dict) else audio
    parts = [audio, row.get("transcript"), row.get("emotion"), row.get("age"), row.get("gender"), row.get("speaker")]
    return "s" + hashlib.sha1(json.dumps([str(part or "") for part in parts]).encode()).hexdigest()[:10]


def _assign_ids(rows: list[dict]) -> list[str]:
    """The given id of each row (else a content hash); repeats get `-2`, `-3`, ... in order."""
    seen: Counter = Counter()
    ids = []
    for row in rows:
        base = str(row["id"]).strip() if row.get("id") not in (None, "") else _content_id(row)
        seen[base] += 1
        ids.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    return ids


def _read_records(path: Path) -> list[dict]:
    """Records of a csv, jsonl or json file; an invalid jsonl line becomes `{"_error": ...}`."""
    if path.suffix.lower() == ".csv":
        with path.open(encoding="utf-8-sig", newline="") as handle:
            return list(csv.DictReader(handle))
    if path.suffix.lower() == ".json":
        value = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(value, list):
            raise ValueError(f"{path}: a .json seed file must hold a list of objects")
        return [record if isinstance(record, dict) else {"_error": "not an object"} for record in value]
    records = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                record = {"_error": f"line {number}: invalid JSON ({error.msg})", "id": f"line-{number}"}
            records.append(record if isinstance(record, dict) else {"_error": f"line {number}: not an object"})
    return records


def _file_source(path: Path, config: PipelineConfig) -> SeedSource:
    records = _read_records(path)
    columns = _column_map({key for record in records for key in record})
    if "audio" not in columns:
        raise ValueError(f"{path}: no audio column (one of {SEED_COLUMN_ALIASES['audio']})")
    root = Path(config.audio_root) if config.audio_root else path.parent
    rows = []
    for record in records:
        row = _canonical(record, columns) | ({"_error": record["_error"]} if "_error" in record else {})
        if isinstance(row.get("audio"), str) and row["audio"].strip():
            audio = Path(row["audio"].strip()).expanduser()
            row["audio"] = str(audio if audio.is_absolute() else (root / audio).resolve())
        rows.append(row)
    return SeedSource(_assign_ids(rows), lambda positions: [rows[position] for position in positions])


def _dataset_source(config: PipelineConfig) -> SeedSource:
    import datasets

    path = Path(config.seed_data)
    if path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()):
        dataset = datasets.load_from_disk(str(path))
        if isinstance(dataset, datasets.DatasetDict):
            dataset = dataset[config.seed_split]
    else:
        dataset = datasets.load_dataset(config.seed_data, config.seed_config, split=config.seed_split)
    columns = _column_map(dataset.column_names)
    if "audio" not in columns:
        raise ValueError(f"{config.seed_data}: no audio column (one of {SEED_COLUMN_ALIASES['audio']})")
    audio = columns["audio"]
    if isinstance(dataset.features[audio], datasets.Audio):
        dataset = dataset.cast_column(audio, datasets.Audio(decode=False))  # no decoder needed; we read the bytes
    metadata = [_canonical(record, columns) for record in dataset.remove_columns(audio).to_list()]

    def read(positions: list[int]) -> list[dict]:
        return [_canonical(record, columns) for record in dataset.select(positions).to_list()]

    return SeedSource(_assign_ids(metadata), read)


def read_seed_source(config: PipelineConfig) -> SeedSource:
    """The seed rows of `config.seed_data`: a `.csv` / `.jsonl` / `.json` file, a `save_to_disk` folder, or a Hub
    dataset id (`config.seed_config`, `config.seed_split`)."""
    path = Path(str(config.seed_data)).expanduser()
    if path.is_file():
        return _file_source(path, config)
    return _dataset_source(config)
