"""LLM-judge scoring through any OpenAI-compatible chat-completions endpoint, with the benchmarks' own judge prompts,
score parsing and failure accounting.

Protocols (read from the benchmarks' public code; the prompt texts are theirs, byte for byte, checked by a test against
copies in `tests/eval_references/`):
- VoiceBench open-ended QA (`alpacaeval_full`, `alpacaeval`, `commoneval`, `wildvoice`),
  github.com/MatthewCYM/VoiceBench `api_judge.py` (`meta_prompt_open`) and `src/evaluator/open.py`: system prompt
  "You are a helpful assistant who tries to help answer the user's question.", judge `gpt-4o-mini`,
  `temperature=0.5`, `top_p=0.95`, `max_tokens=1024`, `n=3`. Each answer is read as `float(answer)`, else the
  integer of its first `[[n]]`; every value counts, in range or not; the benchmark score is the mean of all answers
  of all rows. An answer that is neither stops VoiceBench's script: here that sample is failed and left out (the
  report counts it).
- URO-Bench UnderEmotion (github.com/Ruiqi-Yan/URO-Bench `metrics/mark_gpt.py`, mode `ue`): system prompt "You are a
  helpful assistant.", the same judge and sampling, `prompt_ue` (indented as the source, then `.strip()`). An answer
  `""` or `" "` scores `[0, 0, 0]`; a failed request scores `[0, 0, 0]`; each answer is read as `int(answer)`, every
  value counts; row score = mean of its answers, benchmark score = sum of row scores x 20 / all rows. An answer
  `int()` cannot read stops URO-Bench's script: here it counts 0, as a failed request does.

Named deviations (never the default):
- `parsing="lenient"`: our former parser: also `**4**`, `4/5`, `Score: 4`; answers outside 1-5 are failed samples.
- `failed_rows="exclude"` (`judge_row`'s argument): failed samples are left out of a row's mean (URO-Bench counts
  them 0) and a row without a valid answer is failed, left out of the benchmark's mean.

Not reproducible: `n=3` becomes 3 requests of one answer each ([`ChatCompletionsClient`] returns one choice): the
same sampling distribution, but one failed request fails one sample where URO-Bench's single `n=3` request fails all
three. `JudgeConfig.samples` sets the count.
"""

import logging
import math
import os
import re
from dataclasses import dataclass, field

from opens2s.processing.chat_completions import ChatCompletionsClient, ChatCompletionsError


__all__ = [
    "FAILED_ROWS",
    "JUDGE_PARAMS",
    "JUDGE_PARSINGS",
    "UNDEREMOTION_PROMPT",
    "UNDEREMOTION_SYSTEM_PROMPT",
    "VOICEBENCH_OPEN_PROMPT",
    "VOICEBENCH_SYSTEM_PROMPT",
    "JudgeConfig",
    "JudgeScore",
    "build_judge_messages",
    "judge_row",
    "parse_judge_score",
]

logger = logging.getLogger(__name__)

# Sampling of both protocols' judge requests (`n=3` is `JudgeConfig.samples`).
JUDGE_PARAMS = {"temperature": 0.5, "top_p": 0.95, "max_tokens": 1024, "frequency_penalty": 0, "presence_penalty": 0}
MIN_SCORE, MAX_SCORE = 1, 5
# URO-Bench reports the mean row score x 20 (0-100 for scores in 1-5).
UNDEREMOTION_SCALE = 20.0

VOICEBENCH_SYSTEM_PROMPT = "You are a helpful assistant who tries to help answer the user's question."
VOICEBENCH_OPEN_PROMPT = """
I need your help to evaluate the performance of several models in the speech interaction scenario. The models will receive a speech input from the user, which they need to understand and respond to with a speech output.
Your task is to rate the model’s responses based on the provided user input transcription [Instruction] and the model’s output transcription [Response].

Please evaluate the response on a scale of 1 to 5:
1 point: The response is largely irrelevant, incorrect, or fails to address the user’s query. It may be off-topic or provide incorrect information.
2 points: The response is somewhat relevant but lacks accuracy or completeness. It may only partially answer the user’s question or include extraneous information.
3 points: The response is relevant and mostly accurate, but it may lack conciseness or include unnecessary details that don’t contribute to the main point.
4 points: The response is relevant, accurate, and concise, providing a clear answer to the user’s question without unnecessary elaboration.
5 points: The response is exceptionally relevant, accurate, and to the point. It directly addresses the user’s query in a highly effective and efficient manner, providing exactly the information needed.

Below are the transcription of user’s instruction and models’ response:
### [Instruction]: {prompt}
### [Response]: {response}

After evaluating, please output the score only without anything else.
You don’t need to provide any explanations.
"""  # noqa: E501

UNDEREMOTION_SYSTEM_PROMPT = "You are a helpful assistant."
UNDEREMOTION_PROMPT = """I need your help to evaluate the performance of several models in the speech interaction scenario. The models will receive a speech input from the user, which they need to understand and respond to with a speech output.
    The speaker will express strong emotion in the input speech. I expect the model to detect and empathize with the user's emotional tone.
    Your task is to rate the model’s responses based on the provided user input transcription [Instruction], the speaker's emotion [Emotion], the model’s output transcription [Response], and some suggested answers [Reference].
    The model's response doesn't necessarily have to be identical to the suggested answer, as long as it detects and empathizes with the user's emotional tone.

    Please evaluate the response on a scale of 1 to 5, based on how well the model detects and empathizes with the user's emotional tone:
    1 point: The response fails to recognize or acknowledge the user's emotional tone. It may provide a neutral or unrelated reply that does not show any empathy or understanding of the user's feelings.
    2 points: The response somewhat acknowledges the emotional tone but fails to properly empathize or respond in a way that aligns with the user's emotions. It may be overly neutral or provide a response that seems disconnected from the user's mood.
    3 points: The response recognizes the emotional tone and provides a somewhat empathetic reply. While the response might not be fully aligned with the user’s emotional state, it still attempts to connect and offer a suitable response, though it may lack depth or precision.
    4 points: The response effectively recognizes the emotional tone and responds with empathy. The model addresses the user's emotional state in a relevant and compassionate manner, offering a response that resonates with the user's mood.
    5 points: The response excellently detects the emotional tone and empathizes with the user in a highly appropriate and thoughtful manner. It provides a response that aligns deeply with the user’s emotional state, offering not only empathy but also a meaningful, supportive reply that feels genuine and understanding.

    Below are the transcription of user’s instruction, the speaker's emotion, models’ response, and the suggested answer:
    ### [Instruction]
    {question}

    ### [Emotion]
    {emotion}

    ### [Response]
    {answer}

    ### [Reference]
    {reference}

    After evaluating, please output the score only without anything else.
    You don’t need to provide any explanations."""  # noqa: E501

JUDGE_PARSINGS = ("reference", "lenient")
FAILED_ROWS = ("reference", "exclude")
# URO-Bench scores these answers [0, 0, 0] (`if item["answer"] == "" or item["answer"] == " "`).
URO_EMPTY_ANSWERS = ("", " ")
_VOICEBENCH_RATING = re.compile(r"\[\[(\d+)\]\]")  # VoiceBench `extract_rating`
_NUMBER = r"(\d+(?:\.\d+)?)"
# The lenient parser: tried in order on the stripped answer; the first that matches gives the score.
_LENIENT_PATTERNS = (
    re.compile(rf"^{_NUMBER}(?:\s*/\s*5)?\.?$"),  # "4", "4.", "4/5", "4.5"
    re.compile(rf"\[\[{_NUMBER}\]\]"),  # "[[4]]"
    re.compile(rf"\b(?:score|rating)\b\s*(?:is|:|=)?\s*{_NUMBER}(?:\s*/\s*5)?", re.IGNORECASE),  # "Score: 4"
)


@dataclass(frozen=True)
class JudgeScore:
    """One parsed judge answer: `value`, or `None` with the `reason` it could not be used."""

    value: float | None
    reason: str | None = None


def parse_judge_score(text: str | None, scorer: str = "open", parsing: str = "reference") -> JudgeScore:
    """Read a score from one judge answer; never raises.

    Args:
        text (`str`, *optional*): the judge's answer (`None` when the endpoint returned no content).
        scorer (`str`, *optional*, defaults to `"open"`): `"open"` (VoiceBench: `float(text)`, else the first
            `[[n]]`) or `"underemotion"` (URO-Bench: `int(text)`). Any value counts, 0 and 10 included.
        parsing (`str`, *optional*, defaults to `"reference"`): the benchmark's own parser, or `"lenient"`: a bare
            number, `**4**`, `4/5`, `[[4]]` or `Score: 4`, in 1-5 only.

    Returns:
        [`JudgeScore`]: the value, or `None` and why.
    """
    if parsing not in JUDGE_PARSINGS:
        raise ValueError(f"parsing must be one of {JUDGE_PARSINGS}, got {parsing!r}")
    if text is None:
        return JudgeScore(None, "no judge output")
    if parsing == "lenient":
        return _parse_lenient(text)
    if scorer == "underemotion":
        try:
            return JudgeScore(float(int(text)))
        except ValueError:
            return JudgeScore(None, f"not an integer (URO-Bench reads int(answer)): {_clip(text)}")
    try:
        return JudgeScore(float(text))
    except ValueError:
        match = _VOICEBENCH_RATING.search(text)
        if match:
            return JudgeScore(float(int(match.group(1))))
        return JudgeScore(None, f"neither a number nor [[n]] (VoiceBench): {_clip(text)}")


def _parse_lenient(text: str) -> JudgeScore:
    if not text.strip():
        return JudgeScore(None, "empty judge output")
    stripped = text.strip().strip("*_` ").strip()
    for pattern in _LENIENT_PATTERNS:
        match = pattern.search(stripped)
        if match:
            value = float(match.group(1))
            if not MIN_SCORE <= value <= MAX_SCORE:
                return JudgeScore(None, f"score {match.group(1)} outside {MIN_SCORE}-{MAX_SCORE}: {_clip(text)}")
            return JudgeScore(value)
    return JudgeScore(None, f"no score in judge output: {_clip(text)}")


def _clip(text: str, width: int = 120) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= width else flat[: width - 3] + "...")


@dataclass
class JudgeConfig:
    """Where and how to ask the judge.

    Args:
        base_url (`str`): the OpenAI-compatible endpoint, e.g. `"https://api.openai.com/v1"`.
        model (`str`, *optional*, defaults to `"gpt-4o-mini"`): the judge of both protocols.
        api_key (`str`, *optional*): bearer token; [`from_env`] reads `$OPENS2S_JUDGE_API_KEY`, then
            `$OPENAI_API_KEY`.
        samples (`int`, *optional*, defaults to 3): answers per row (the protocols' `n=3`).
        params (`dict`, *optional*): request parameters; defaults to [`JUDGE_PARAMS`].
        timeout (`float`, *optional*, defaults to 120): seconds per request.
        max_retries (`int`, *optional*, defaults to 5): retries of a failed request (rate limits, server errors).
        requests_per_second (`float`, *optional*): rate limit shared by all judge threads.
        parsing (`str`, *optional*, defaults to `"reference"`): how answers are read (see [`parse_judge_score`]).
    """

    base_url: str
    model: str = "gpt-4o-mini"
    api_key: str | None = None
    samples: int = 3
    params: dict = field(default_factory=lambda: dict(JUDGE_PARAMS))
    timeout: float = 120.0
    max_retries: int = 5
    requests_per_second: float | None = None
    parsing: str = "reference"

    @classmethod
    def from_env(cls, base_url: str | None = None, model: str | None = None, **kwargs) -> "JudgeConfig | None":
        """A config from arguments, else `$OPENS2S_JUDGE_BASE_URL` / `$OPENS2S_JUDGE_MODEL` /
        `$OPENS2S_JUDGE_API_KEY` (or `$OPENAI_API_KEY`); `None` when no base URL is known."""
        base_url = base_url or os.environ.get("OPENS2S_JUDGE_BASE_URL")
        if not base_url:
            return None
        model = model or os.environ.get("OPENS2S_JUDGE_MODEL") or cls.model
        api_key = os.environ.get("OPENS2S_JUDGE_API_KEY") or os.environ.get("OPENAI_API_KEY")
        return cls(base_url=base_url, model=model, api_key=api_key, **kwargs)

    def client(self) -> ChatCompletionsClient:
        """The chat-completions client of this judge (thread-safe; one per run)."""
        return ChatCompletionsClient(
            self.base_url,
            self.model,
            api_key=self.api_key,
            timeout=self.timeout,
            max_retries=self.max_retries,
            requests_per_second=self.requests_per_second,
        )


def build_judge_messages(scorer: str, row: dict, answer: str) -> list[dict]:
    """The judge conversation of one row: `scorer` is `"open"` (VoiceBench) or `"underemotion"` (URO-Bench);
    `row` holds `prompt` (and `emotion`, `reference` for UnderEmotion); `answer` is the model's answer."""
    if scorer == "open":
        # str.replace, as VoiceBench does: braces in the texts are left alone.
        text = VOICEBENCH_OPEN_PROMPT.replace("{prompt}", row["prompt"]).replace("{response}", answer)
        return [{"role": "system", "content": VOICEBENCH_SYSTEM_PROMPT}, {"role": "user", "content": text}]
    if scorer == "underemotion":
        text = (
            UNDEREMOTION_PROMPT.replace("{question}", row["prompt"])
            .replace("{answer}", answer)
            .replace("{reference}", row.get("reference") or "")
            .replace("{emotion}", row.get("emotion") or "")
        )
        return [{"role": "system", "content": UNDEREMOTION_SYSTEM_PROMPT}, {"role": "user", "content": text}]
    raise ValueError(f"no LLM-judge prompt for scorer {scorer!r}")


def judge_row(
    client, config: JudgeConfig, scorer: str, row: dict, answer: str, failed_rows: str = "reference"
) -> dict:
    """Score one answer with `config.samples` judge requests; never raises for a bad answer or a failed endpoint.

    Args:
        client: a [`ChatCompletionsClient`] (anything with its `complete(messages, **params) -> str`).
        config ([`JudgeConfig`]): samples, request parameters and parsing.
        scorer (`str`): `"open"` or `"underemotion"`.
        row (`dict`): the benchmark row (`prompt`, `emotion`, `reference`).
        answer (`str`): the model's answer.
        failed_rows (`str`, *optional*, defaults to `"reference"`): `"reference"`: a failed sample of UnderEmotion
            counts 0 (URO-Bench), one of VoiceBench is left out (VoiceBench's script would stop); `"exclude"`: failed
            samples are left out of both.

    Returns:
        `dict` with `status` (`"ok"`, or `"failed"` when no sample counts), `score` (the row's score on the
        benchmark's scale: mean of the counted samples, x20 for UnderEmotion; `None` when failed), `judge_outputs`
        (raw answers), `judge_scores` (parsed values, `None` for failed samples), `failed_samples`, `reason` (why
        samples failed, or `None`) and `counted_as` (how failed samples were counted, or `None`).
    """
    if failed_rows not in FAILED_ROWS:
        raise ValueError(f"failed_rows must be one of {FAILED_ROWS}, got {failed_rows!r}")
    if scorer == "underemotion" and answer in URO_EMPTY_ANSWERS:
        return {
            "status": "ok",
            "score": 0.0,
            "judge_outputs": [],
            "judge_scores": [],
            "failed_samples": 0,
            "reason": "empty answer: 0 (URO-Bench)",
            "counted_as": None,
        }
    messages = build_judge_messages(scorer, row, answer)
    outputs, scores, reasons = [], [], []
    for _ in range(config.samples):
        try:
            output = client.complete(messages, **config.params)
        except ChatCompletionsError as error:
            outputs.append(None)
            scores.append(None)
            reasons.append(f"judge request failed: {error}")
            continue
        parsed = parse_judge_score(output, scorer, config.parsing)
        outputs.append(output)
        scores.append(parsed.value)
        if parsed.reason:
            reasons.append(parsed.reason)
    failed = sum(score is None for score in scores)
    zero_failed = scorer == "underemotion" and failed_rows == "reference"
    counted = (
        [0.0 if score is None else score for score in scores] if zero_failed else [s for s in scores if s is not None]
    )
    record = {
        "judge_outputs": outputs,
        "judge_scores": scores,
        "failed_samples": failed,
        "reason": "; ".join(dict.fromkeys(reasons)) or None,
        "counted_as": ("0 (URO-Bench)" if zero_failed else "left out") if failed else None,
    }
    if not counted:
        return {"status": "failed", "score": None} | record
    mean = math.fsum(counted) / len(counted)
    return {"status": "ok", "score": mean * UNDEREMOTION_SCALE if scorer == "underemotion" else mean} | record
