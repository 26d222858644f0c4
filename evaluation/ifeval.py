"""IFEval's rule-based instruction checks (our own implementation) and its strict / loose accuracies.

The instruction ids, their arguments and what each check accepts follow the IFEval paper (Zhou et al., 2023,
"Instruction-Following Evaluation for Large Language Models") and its reference checker, as VoiceBench ships it
(github.com/MatthewCYM/VoiceBench `src/evaluator/ifeval.py` and `instruction_following_eval/`). The code here is ours.

Scoring (VoiceBench `IFEvaluator`): each prompt is checked *strictly* (the answer as is) and *loosely* (an
instruction counts as followed when any of 8 variants passes: the answer, without its first line, without its last
line, without both, and each of those with every `*` removed). An empty answer follows nothing. Four accuracies:
prompt-level (all of a prompt's instructions followed) and instruction-level, strict and loose; VoiceBench's IFEval
score is their mean, x100.

Where we differ from the reference checker (it needs nltk data downloads):
- sentences are counted with a regex splitter (`.`, `!`, `?` and runs of them, followed by space or the end; a few
  common abbreviations do not end a sentence) instead of nltk's punkt model;
- `change_case:capital_word_frequency` tokenises words with a regex (`\\w+` joined by `-` or `'`) instead of nltk's
  `word_tokenize`;
- language checks (`language:response_language`, `change_case:english_capital`, `change_case:english_lowercase`)
  use `langdetect` (as the reference does) when it is installed (`pip install opens2s[eval]`); without it they are
  *unsupported*: left out of the accuracies, with the reason recorded. Unknown instruction ids and missing arguments
  are unsupported the same way.
"""

import collections
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field


__all__ = [
    "INSTRUCTION_CHECKS",
    "IFEvalResult",
    "UnsupportedInstruction",
    "check_instruction",
    "evaluate_ifeval_row",
    "ifeval_accuracy",
    "loose_variants",
]

logger = logging.getLogger(__name__)

LESS_THAN, AT_LEAST = "less than", "at least"
CONSTRAINED_RESPONSES = ("My answer is yes.", "My answer is no.", "My answer is maybe.")
_ABBREVIATIONS = ("mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "inc", "ltd")
_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*(?=\s|$)")
_WORD = re.compile(r"\w+")
_CAPITAL_WORD = re.compile(r"\w+(?:['-]\w+)*")


class UnsupportedInstruction(ValueError):
    """An instruction we cannot check (unknown id, missing argument, language detection unavailable)."""


def _compare(count: int, relation: str, threshold: int) -> bool:
    if relation == LESS_THAN:
        return count < threshold
    if relation == AT_LEAST:
        return count >= threshold
    raise UnsupportedInstruction(f"relation must be {LESS_THAN!r} or {AT_LEAST!r}, got {relation!r}")


def _arg(kwargs: dict, name: str):
    value = kwargs.get(name)
    if value is None:
        raise UnsupportedInstruction(f"missing argument {name!r}")
    return value


def count_sentences(text: str) -> int:
    """Sentences in `text`: pieces ended by `.`, `!` or `?` before a space or the end (abbreviations such as
    "Dr." or "e.g." do not end one), plus a trailing piece without end mark."""
    count, start = 0, 0
    for match in _SENTENCE_END.finditer(text):
        piece = text[start : match.end()]
        last_word = re.findall(r"[\w.]+$", text[start : match.start()])
        if match.group().startswith(".") and last_word and last_word[0].lower().rstrip(".") in _ABBREVIATIONS:
            continue
        if _WORD.search(piece):
            count += 1
        start = match.end()
    return count + (1 if _WORD.search(text[start:]) else 0)


def _detect_language(text: str) -> str | None:
    """ISO 639-1 code from langdetect (seeded: deterministic), `None` when it finds no features (the reference
    counts that as followed); raises [`UnsupportedInstruction`] when langdetect is not installed."""
    try:
        import langdetect
    except ImportError:
        raise UnsupportedInstruction("language detection needs langdetect: pip install opens2s[eval]") from None
    langdetect.DetectorFactory.seed = 0
    try:
        return langdetect.detect(text)
    except langdetect.LangDetectException:
        return None


# ---------------------------------------------------------------- the checks: (response, kwargs, prompt) -> bool
def _keywords_existence(text, kwargs, prompt):
    return all(re.search(keyword, text, flags=re.IGNORECASE) for keyword in _arg(kwargs, "keywords"))


def _keywords_frequency(text, kwargs, prompt):
    count = len(re.findall(_arg(kwargs, "keyword"), text, flags=re.IGNORECASE))
    return _compare(count, _arg(kwargs, "relation"), int(_arg(kwargs, "frequency")))


def _forbidden_words(text, kwargs, prompt):
    return not any(re.search(rf"\b{word}\b", text, flags=re.IGNORECASE) for word in _arg(kwargs, "forbidden_words"))


def _letter_frequency(text, kwargs, prompt):
    count = collections.Counter(text.lower())[_arg(kwargs, "letter").lower()]
    return _compare(count, _arg(kwargs, "let_relation"), int(_arg(kwargs, "let_frequency")))


def _response_language(text, kwargs, prompt):
    language = _detect_language(text)
    return language is None or language == _arg(kwargs, "language")


def _number_sentences(text, kwargs, prompt):
    return _compare(count_sentences(text), _arg(kwargs, "relation"), int(_arg(kwargs, "num_sentences")))


def _number_paragraphs(text, kwargs, prompt):
    """Paragraphs separated by the markdown divider `***`; an empty paragraph inside fails."""
    paragraphs = re.split(r"\s?\*\*\*\s?", text)
    count = len(paragraphs)
    for index, paragraph in enumerate(paragraphs):
        if not paragraph.strip():
            if index in (0, len(paragraphs) - 1):
                count -= 1
            else:
                return False
    return count == int(_arg(kwargs, "num_paragraphs"))


def _number_words(text, kwargs, prompt):
    return _compare(len(_WORD.findall(text)), _arg(kwargs, "relation"), int(_arg(kwargs, "num_words")))


def _nth_paragraph_first_word(text, kwargs, prompt):
    """Paragraphs separated by blank lines: their count must match, and the n-th starts with `first_word`."""
    paragraphs = text.split("\n\n")
    count = sum(1 for paragraph in paragraphs if paragraph.strip())
    nth = int(_arg(kwargs, "nth_paragraph"))
    if nth > count or not paragraphs[nth - 1].strip():
        return False
    word = paragraphs[nth - 1].split()[0].lstrip("'\"")
    first = re.split(r"[.,?!'\"]", word, maxsplit=1)[0].lower()
    return count == int(_arg(kwargs, "num_paragraphs")) and first == str(_arg(kwargs, "first_word")).lower()


def _number_placeholders(text, kwargs, prompt):
    return len(re.findall(r"\[.*?\]", text)) >= int(_arg(kwargs, "num_placeholders"))


def _postscript(text, kwargs, prompt):
    marker = str(_arg(kwargs, "postscript_marker"))
    if marker == "P.P.S":
        pattern = r"\s*p\.\s?p\.\s?s.*$"
    elif marker == "P.S.":
        pattern = r"\s*p\.\s?s\..*$"
    else:
        pattern = r"\s*" + marker.lower() + r".*$"
    return bool(re.findall(pattern, text.lower(), flags=re.MULTILINE))


def _number_bullet_lists(text, kwargs, prompt):
    """Markdown bullets: lines starting with `* ` (not `**`) or `-`; the count must match exactly."""
    stars = re.findall(r"^\s*\*[^\*].*$", text, flags=re.MULTILINE)
    dashes = re.findall(r"^\s*-.*$", text, flags=re.MULTILINE)
    return len(stars) + len(dashes) == int(_arg(kwargs, "num_bullets"))


def _constrained_response(text, kwargs, prompt):
    return any(option in text.strip() for option in CONSTRAINED_RESPONSES)


def _number_highlighted_sections(text, kwargs, prompt):
    """`*highlighted*` spans (and `**bold**` ones, counted again as the reference does) that are not empty."""
    singles = [span for span in re.findall(r"\*[^\n\*]*\*", text) if span.strip("*").strip()]
    doubles = [span for span in re.findall(r"\*\*[^\n\*]*\*\*", text) if span[2:-2].strip()]
    return len(singles) + len(doubles) >= int(_arg(kwargs, "num_highlights"))


def _multiple_sections(text, kwargs, prompt):
    splitter = re.escape(str(_arg(kwargs, "section_spliter")).strip())
    sections = re.split(rf"\s?{splitter}\s?\d+\s?", text)
    return len(sections) - 1 >= int(_arg(kwargs, "num_sections"))


def _json_format(text, kwargs, prompt):
    value = text.strip()
    for prefix in ("```json", "```Json", "```JSON", "```"):
        value = value.removeprefix(prefix)
    value = value.removesuffix("```").strip()
    try:
        json.loads(value)
    except ValueError:
        return False
    return True


def _title(text, kwargs, prompt):
    return any(title.strip("<>").strip() for title in re.findall(r"<<[^\n]+>>", text))


def _two_responses(text, kwargs, prompt):
    """Two different answers separated by `******` (empty pieces only at the ends)."""
    pieces = text.split("******")
    answers = []
    for index, piece in enumerate(pieces):
        if piece.strip():
            answers.append(piece.strip())
        elif index not in (0, len(pieces) - 1):
            return False
    return len(answers) == 2 and answers[0] != answers[1]


def _repeat_prompt(text, kwargs, prompt):
    return text.strip().lower().startswith(str(_arg(kwargs, "prompt_to_repeat")).strip().lower())


def _end_checker(text, kwargs, prompt):
    return text.strip().strip('"').lower().endswith(str(_arg(kwargs, "end_phrase")).strip().lower())


def _capital_word_frequency(text, kwargs, prompt):
    count = sum(1 for word in _CAPITAL_WORD.findall(text) if word.isupper())
    return _compare(count, _arg(kwargs, "capital_relation"), int(_arg(kwargs, "capital_frequency")))


def _english_capital(text, kwargs, prompt):
    language = _detect_language(text)
    return text.isupper() and language in (None, "en")


def _english_lowercase(text, kwargs, prompt):
    language = _detect_language(text)
    return text.islower() and language in (None, "en")


def _no_comma(text, kwargs, prompt):
    return "," not in text


def _quotation(text, kwargs, prompt):
    value = text.strip()
    return len(value) > 1 and value[0] == '"' and value[-1] == '"'


INSTRUCTION_CHECKS: dict[str, Callable[[str, dict, str], bool]] = {
    "keywords:existence": _keywords_existence,
    "keywords:frequency": _keywords_frequency,
    "keywords:forbidden_words": _forbidden_words,
    "keywords:letter_frequency": _letter_frequency,
    "language:response_language": _response_language,
    "length_constraints:number_sentences": _number_sentences,
    "length_constraints:number_paragraphs": _number_paragraphs,
    "length_constraints:number_words": _number_words,
    "length_constraints:nth_paragraph_first_word": _nth_paragraph_first_word,
    "detectable_content:number_placeholders": _number_placeholders,
    "detectable_content:postscript": _postscript,
    "detectable_format:number_bullet_lists": _number_bullet_lists,
    "detectable_format:constrained_response": _constrained_response,
    "detectable_format:number_highlighted_sections": _number_highlighted_sections,
    "detectable_format:multiple_sections": _multiple_sections,
    "detectable_format:json_format": _json_format,
    "detectable_format:title": _title,
    "combination:two_responses": _two_responses,
    "combination:repeat_prompt": _repeat_prompt,
    "startend:end_checker": _end_checker,
    "change_case:capital_word_frequency": _capital_word_frequency,
    "change_case:english_capital": _english_capital,
    "change_case:english_lowercase": _english_lowercase,
    "punctuation:no_comma": _no_comma,
    "startend:quotation": _quotation,
}


def check_instruction(instruction_id: str, response: str, kwargs: dict | None = None, prompt: str = "") -> bool:
    """Whether `response` follows one instruction (strictly: the response as is).

    Args:
        instruction_id (`str`): an IFEval id such as `"length_constraints:number_words"`.
        response (`str`): the model's answer; an empty one follows nothing.
        kwargs (`dict`, *optional*): the instruction's arguments (`None` values are ignored).
        prompt (`str`, *optional*): the prompt (unused by the current checks; kept for the reference's signature).

    Raises:
        [`UnsupportedInstruction`]: unknown id, a missing argument, or language detection unavailable.
    """
    check = INSTRUCTION_CHECKS.get(instruction_id)
    if check is None:
        raise UnsupportedInstruction(f"unknown instruction id {instruction_id!r}")
    kwargs = {key: value for key, value in (kwargs or {}).items() if value is not None}
    return bool(response.strip()) and check(response, kwargs, prompt)


def loose_variants(response: str) -> list[str]:
    """The 8 answers of IFEval's loose check: as is, without the first / last / both lines, each also without `*`."""
    lines = response.split("\n")
    trimmed = [response, "\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
    return trimmed + [variant.replace("*", "") for variant in trimmed]


@dataclass
class IFEvalResult:
    """The checks of one prompt: per instruction `True`/`False`, or `None` when unsupported (see `unsupported`)."""

    instruction_id_list: list[str]
    strict: list[bool | None]
    loose: list[bool | None]
    unsupported: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "instruction_id_list": self.instruction_id_list,
            "strict": self.strict,
            "loose": self.loose,
            "unsupported": self.unsupported,
        }


def evaluate_ifeval_row(response: str, instruction_id_list: list[str], kwargs_list: list[dict], prompt: str = ""):
    """Strict and loose checks of one answer against all its instructions; returns an [`IFEvalResult`]."""
    if len(kwargs_list) != len(instruction_id_list):
        raise ValueError(f"{len(instruction_id_list)} instructions but {len(kwargs_list)} kwargs")
    strict, loose, unsupported = [], [], {}
    variants = loose_variants(response)
    for instruction_id, kwargs in zip(instruction_id_list, kwargs_list, strict=True):
        try:
            strict.append(check_instruction(instruction_id, response, kwargs, prompt))
            loose.append(any(check_instruction(instruction_id, variant, kwargs, prompt) for variant in variants))
        except UnsupportedInstruction as error:
            strict.append(None)
            loose.append(None)
            unsupported[instruction_id] = str(error)
    return IFEvalResult(list(instruction_id_list), strict, loose, unsupported)


def ifeval_accuracy(results: list[IFEvalResult | dict]) -> dict[str, float | int | None]:
    """IFEval's four accuracies (fractions), VoiceBench's `score` (their mean x100), and `unsupported` (instructions
    left out). A prompt with an unsupported instruction is left out of the prompt-level accuracies; an accuracy
    with nothing to count is `None`."""
    totals = {"strict": [0, 0, 0, 0], "loose": [0, 0, 0, 0]}  # prompts ok, prompts, instructions ok, instructions
    unsupported = 0
    for result in results:
        result = result if isinstance(result, dict) else result.to_dict()
        unsupported += sum(1 for value in result["strict"] if value is None)
        for mode in ("strict", "loose"):
            checked = [value for value in result[mode] if value is not None]
            counts = totals[mode]
            if len(checked) == len(result[mode]) and checked:
                counts[0] += all(checked)
                counts[1] += 1
            counts[2] += sum(checked)
            counts[3] += len(checked)
    scores = {}
    for mode, (prompts_ok, prompts, instructions_ok, instructions) in totals.items():
        scores[f"prompt_{mode}"] = prompts_ok / prompts if prompts else None
        scores[f"instruction_{mode}"] = instructions_ok / instructions if instructions else None
    parts = [scores[key] for key in ("prompt_strict", "instruction_strict", "prompt_loose", "instruction_loose")]
    scores["score"] = None if None in parts else 100 * sum(parts) / len(parts)
    scores["unsupported"] = unsupported
    return scores
