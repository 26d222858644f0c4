"""Prompt templates of the LLM stages and the parsing of the LLM's JSON answers.

Templates are text files, one per task and language: `prompts/instructions.en.txt`, `prompts/responses.zh.txt`, ...
Each has a `=== system ===` section and a `=== user ===` section; `$name` placeholders (Python `string.Template`)
are filled per row:

| task | placeholders |
|---|---|
| `instructions` | `$emotion`, `$age`, `$gender` (in the template's language), `$transcript`, `$num_instructions` |
| `responses` | `$emotion`, `$age`, `$gender`, `$instruction`, `$tones` (the allowed reply tones) |

Copy the folder, edit it (or add `instructions.fr.txt` / `responses.fr.txt` for a new language) and pass
`--prompts-dir`. The LLM answers with one JSON object; [`parse_instructions`] and [`parse_response`] accept it inside
code fences or after a `<think>` block, and raise [`MalformedReply`] (with the reason the stage records) otherwise.
"""

import functools
import json
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opens2s.dataset_scripts.labels import display_label


__all__ = [
    "PROMPTS_DIR",
    "MalformedReply",
    "PromptTemplate",
    "dedup_key",
    "label_values",
    "load_prompt",
    "parse_instructions",
    "parse_json_reply",
    "parse_response",
    "prompt_languages",
]

PROMPTS_DIR = Path(__file__).parent / "prompts"
_SECTION = re.compile(r"^=== (system|user) ===[ \t]*$", re.MULTILINE)
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)
# Leading list markers an LLM may put before each instruction ("1. ", "- ", "• ").
_MARKER = re.compile(r"^\s*(?:\d+[.)、]|[-*•])\s*")


class MalformedReply(ValueError):
    """An LLM answer the stage cannot use; `reason` is the failure reason recorded for the row."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class PromptTemplate:
    """One task's prompt in one language: a system message and a user message with `$placeholders`."""

    name: str
    system: str
    user: str

    def render(self, **values) -> list[dict[str, str]]:
        """Chat messages with every placeholder filled; raises `KeyError` naming a missing value."""
        messages = [{"role": "user", "content": string.Template(self.user).substitute(values)}]
        if self.system:
            messages.insert(0, {"role": "system", "content": string.Template(self.system).substitute(values)})
        return messages


def _template_path(task: str, language: str, prompts_dir: str | Path | None) -> Path:
    for folder in ([Path(prompts_dir)] if prompts_dir else []) + [PROMPTS_DIR]:
        path = folder / f"{task}.{language}.txt"
        if path.is_file():
            return path
    raise FileNotFoundError(f"no {task} prompt template for language {language!r} (looked for {task}.{language}.txt)")


def load_prompt(task: str, language: str, prompts_dir: str | Path | None = None) -> PromptTemplate:
    """The `task` template (`"instructions"` or `"responses"`) of `language`, from `prompts_dir` when it has one,
    else the shipped one."""
    path = _template_path(task, language, prompts_dir)
    return _read_template(path, path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _read_template(path: Path, modified: int) -> PromptTemplate:
    """Parsed once per file version (`modified` is the file's mtime, part of the cache key)."""
    parts = _SECTION.split(path.read_text(encoding="utf-8"))
    sections = {parts[i]: parts[i + 1].strip() for i in range(1, len(parts) - 1, 2)}
    if not sections.get("user"):
        raise ValueError(f"{path}: no '=== user ===' section")
    return PromptTemplate(name=path.name, system=sections.get("system", ""), user=sections["user"])


def prompt_languages(prompts_dir: str | Path | None = None) -> set[str]:
    """Languages that have both templates (shipped or in `prompts_dir`)."""
    found: dict[str, set[str]] = {}
    for folder in [PROMPTS_DIR] + ([Path(prompts_dir)] if prompts_dir else []):
        for path in folder.glob("*.*.txt"):
            task, language = path.name.split(".")[:2]
            found.setdefault(language, set()).add(task)
    return {language for language, tasks in found.items() if {"instructions", "responses"} <= tasks}


def label_values(row: dict, language: str) -> dict[str, str]:
    """`emotion`, `age` and `gender` of a row as they read in a `language` prompt."""
    return {key: display_label(row[key], language) for key in ("emotion", "age", "gender")}


def parse_json_reply(text: str | None) -> Any:
    """The JSON value of an LLM answer: the whole text, else a fenced block, else the outermost `{...}` or `[...]`.

    Raises [`MalformedReply`] with reason `"empty LLM output"` or `"malformed JSON from LLM"`.
    """
    text = _THINK.sub("", text or "").strip()
    if not text:
        raise MalformedReply("empty LLM output")
    candidates = [text] + _FENCE.findall(text)
    for opening, closing in ("{}", "[]"):
        start, end = text.find(opening), text.rfind(closing)
        if 0 <= start < end:
            candidates.append(text[start : end + 1])
    for candidate in candidates:
        try:
            return json.loads(candidate)
        except json.JSONDecodeError:
            continue
    raise MalformedReply("malformed JSON from LLM", text[:200])


def _clean(text: Any) -> str:
    return _MARKER.sub("", str(text)).strip().strip('"“”').strip() if isinstance(text, (str, int, float)) else ""


def parse_instructions(text: str | None, limit: int) -> list[str]:
    """At most `limit` non-empty instructions of an answer `{"instructions": [...]}` (a bare list is accepted too,
    and items may be `{"instruction": ...}` objects). Raises [`MalformedReply`]."""
    value = parse_json_reply(text)
    if isinstance(value, dict):
        value = value.get("instructions")
    if not isinstance(value, list):
        raise MalformedReply("malformed JSON from LLM", "no 'instructions' list")
    items = [_clean(item.get("instruction") if isinstance(item, dict) else item) for item in value]
    items = [item for item in items if item]
    if not items:
        raise MalformedReply("empty LLM output", "no non-empty instruction")
    return items[:limit]


def parse_response(text: str | None) -> tuple[str, str]:
    """`(response, tone)` of an answer `{"response": ..., "tone": ...}`. Raises [`MalformedReply`]."""
    value = parse_json_reply(text)
    if not isinstance(value, dict) or "response" not in value:
        raise MalformedReply("malformed JSON from LLM", "no 'response' field")
    response = _clean(value["response"])
    if not response:
        raise MalformedReply("empty LLM output", "empty 'response'")
    tone = value.get("tone")
    return response, tone if isinstance(tone, str) else ""


def dedup_key(text: str) -> str:
    """What two instructions must share to count as duplicates: case-folded letters and digits (any script)."""
    return re.sub(r"[\W_]+", "", text.casefold())
