"""Reading training conversations in the original OpenS2S jsonl format."""

import json
import logging
from collections import Counter
from pathlib import Path


__all__ = ["load_original_jsonl", "ITEM_KEYS"]

logger = logging.getLogger(__name__)

ITEM_KEYS = ("text", "audio", "speech_units", "spk_emb")


def _resolve(path_text: str, roots: list[Path]) -> Path | None:
    path = Path(path_text)
    candidates = [path] if path.is_absolute() else [root / path for root in roots]
    return next((candidate for candidate in candidates if candidate.is_file()), None)


def _check_row(messages: list, roots: list[Path]) -> tuple[list | None, str | None]:
    """Return the row with absolute paths, or `None` and the reason it cannot be used."""
    if not isinstance(messages, list) or not messages:
        return None, "no messages"
    fixed = []
    for message in messages:
        role, content = message.get("role"), message.get("content")
        if role not in ("user", "assistant", "system"):
            return None, f"unknown role {role!r}"
        if not isinstance(content, list):
            return None, "content is not a list of items"
        items = []
        for item in content:
            item = {key: item.get(key) or "" for key in ITEM_KEYS}
            for key in ("audio", "spk_emb"):
                if item[key]:
                    path = _resolve(item[key], roots)
                    if path is None:
                        return None, f"missing {key} file"
                    item[key] = str(path.resolve())
            if item["audio"] and role != "user":
                return None, "audio input outside a user turn"
            if item["speech_units"] and (role != "assistant" or not item["text"]):
                return None, "speech units without assistant text"
            items.append(item)
        if not any(item["text"] or item["audio"] for item in items):
            return None, "empty message"
        fixed.append({"role": role, "content": items})
    return fixed, None


def load_original_jsonl(path: str | Path, audio_root: str | Path | None = None):
    """Load an original OpenS2S jsonl file as a `datasets.Dataset` with one `messages` column.

    Each line is `{"messages": [{"role": ..., "content": [{"text", "audio", "speech_units", "spk_emb"}, ...]}]}`.
    Relative audio and speaker-embedding paths are resolved against `audio_root` when given, else against the
    file's folder, then its parent folder (the data root of the original layout, where `inputs/a.wav` lives
    beside `inputs/train.jsonl`), and made absolute. Rows that cannot
    be used (missing files, empty messages, units without text, ...) are skipped and reported by count and reason
    in one warning, never dropped silently.
    """
    import datasets

    path = Path(path)
    roots = [Path(audio_root)] if audio_root is not None else [path.parent, path.parent.parent]
    rows, reasons = [], Counter()
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                reasons["invalid json"] += 1
                continue
            messages, reason = _check_row(record.get("messages"), roots)
            if reason:
                reasons[reason] += 1
                logger.debug("%s:%d skipped: %s", path, line_number, reason)
                continue
            rows.append({"messages": messages})
    if reasons:
        summary = ", ".join(f"{count} {reason}" for reason, count in reasons.most_common())
        logger.warning("%s: skipped %d of %d rows (%s)", path, sum(reasons.values()), len(rows) + sum(reasons.values()), summary)
    if not rows:
        raise ValueError(f"{path} holds no usable rows")
    return datasets.Dataset.from_list(rows)
