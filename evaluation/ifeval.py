"""IFEval scored by its reference implementation, as VoiceBench scores it: a thin adapter over lm-eval's
`lm_eval.tasks.ifeval` (Google's instruction checkers; VoiceBench's copy in `src/evaluator/instruction_following_eval/`
gives the same results).

What is VoiceBench's (github.com/MatthewCYM/VoiceBench `src/evaluator/ifeval.py`, `IFEvaluator`):
- the answer is cleaned first: a leading `<1>`, `<2>` or `<3>` and a trailing `<|user|>` are cut;
- each row is checked strictly (`test_instruction_following_strict`) and loosely (`..._loose`: an instruction counts
  as followed when any of 8 variants passes: the answer, without its first line, without its last line, without
  both, and each of those with every `*` removed); an empty answer follows nothing; argument values that are falsy
  (`None`, `0`, `""`) are dropped before the checker is built;
- four accuracies: prompt-level (all of a row's instructions followed) and instruction-level, strict and loose; the
  IFEval score is their mean, x100 here (VoiceBench's `final`).

The reference is not deterministic on its own; here every row is checked with both sources of randomness seeded, so a
run is repeatable (and the global states are restored afterwards):
- a checker whose argument is missing or falsy draws it with `random` (e.g. `keywords:letter_frequency` with a
  `letter` that is not an ASCII letter draws a random letter): `random.seed(IFEVAL_SEED)` before the strict and
  before the loose check, so both draw the same;
- `langdetect` (`language:response_language`, `change_case:english_capital`, `change_case:english_lowercase`) samples
  unless seeded: `langdetect.DetectorFactory.seed = IFEVAL_SEED`.

Needs `pip install "opens2s[eval]"` (lm-eval with its `ifeval` extra: nltk, langdetect, immutabledict) and NLTK's
`punkt_tab` data (`python -m nltk.downloader punkt_tab`); [`check_ifeval_reference`] says what is missing. The check
runs before lm-eval is imported, because importing its IFEval module otherwise tries to download punkt_tab itself.
"""

import contextlib
import logging
import math
import random
from collections.abc import Iterator


__all__ = ["IFEVAL_SEED", "check_ifeval_reference", "evaluate_ifeval_row", "ifeval_accuracy", "voicebench_response"]

logger = logging.getLogger(__name__)

IFEVAL_SEED = 0
PUNKT_INSTALL = "python -m nltk.downloader punkt_tab"
EVAL_INSTALL = 'pip install "opens2s[eval]"'


def check_ifeval_reference():
    """Import lm-eval's IFEval utilities, first checking what they need.

    Returns:
        the module `lm_eval.tasks.ifeval.utils`.

    Raises:
        `ImportError` (lm-eval, nltk or langdetect missing) or `LookupError` (NLTK's punkt_tab data missing), each
        saying how to install it.
    """
    try:
        import langdetect  # noqa: F401
        import nltk
    except ImportError as error:
        raise ImportError(f"IFEval's reference checker needs nltk and langdetect: {EVAL_INSTALL} ({error})") from error
    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
    except LookupError:
        raise LookupError(
            "IFEval's reference checker needs NLTK's punkt_tab data (sentence and word tokenisation); install it "
            f"with `{PUNKT_INSTALL}` (or set $NLTK_DATA to a folder holding tokenizers/punkt_tab)"
        ) from None
    try:
        from lm_eval.tasks.ifeval import utils
    except ImportError as error:
        raise ImportError(f"IFEval's reference checker is lm-eval's: {EVAL_INSTALL} ({error})") from error
    return utils


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed `random` and langdetect for one check; restore both afterwards."""
    from langdetect import DetectorFactory

    state, langdetect_seed = random.getstate(), DetectorFactory.seed
    random.seed(seed)
    DetectorFactory.seed = seed
    try:
        yield
    finally:
        random.setstate(state)
        DetectorFactory.seed = langdetect_seed


def voicebench_response(response: str) -> str:
    """The answer as VoiceBench's `read_prompt_to_response_dict` passes it on: a leading `<1>`/`<2>`/`<3>` and a
    trailing `<|user|>` cut (markers of models on its leaderboard)."""
    if response.startswith(("<1>", "<2>", "<3>")):
        response = response[3:].strip()
    if response.endswith("<|user|>"):
        response = response[:-8].strip()
    return response


def evaluate_ifeval_row(
    response: str, instruction_id_list: list[str], kwargs: list[dict], prompt: str = "", seed: int = IFEVAL_SEED
) -> dict:
    """Check one answer against its instructions, strictly and loosely, with the reference checker.

    Args:
        response (`str`): the model's answer (an empty answer follows nothing).
        instruction_id_list (`list[str]`): e.g. `["punctuation:no_comma"]`.
        kwargs (`list[dict]`): one argument dict per instruction (IFEval's `kwargs`).
        prompt (`str`, *optional*): the instruction text (`combination:repeat_prompt` checks it).
        seed (`int`, *optional*, defaults to `IFEVAL_SEED`): seed of the reference's random draws and langdetect.

    Returns:
        `dict` with `instruction_id_list`, `strict` and `loose` (one bool per instruction).

    Raises:
        `KeyError` for an instruction id the reference does not know, `ValueError`/`TypeError` for arguments it
        rejects; the errors of [`check_ifeval_reference`].
    """
    utils = check_ifeval_reference()
    example = utils.InputExample(key=0, instruction_id_list=instruction_id_list, prompt=prompt, kwargs=kwargs)
    response = voicebench_response(response)
    with _seeded(seed):
        strict = utils.test_instruction_following_strict(example, response)
    with _seeded(seed):
        loose = utils.test_instruction_following_loose(example, response)
    return {
        "instruction_id_list": list(instruction_id_list),
        "strict": list(strict.follow_instruction_list),
        "loose": list(loose.follow_instruction_list),
    }


def ifeval_accuracy(results: list[dict]) -> dict:
    """VoiceBench's four accuracies and their mean (x100) over rows checked by [`evaluate_ifeval_row`].

    Returns:
        `dict` with `prompt_strict`, `instruction_strict`, `prompt_loose`, `instruction_loose` (fractions) and
        `score` (their mean x100); `None` values when `results` is empty.
    """
    accuracy = {}
    for mode in ("strict", "loose"):
        followed = [result[mode] for result in results]
        instructions = [value for row in followed for value in row]
        accuracy[f"prompt_{mode}"] = sum(all(row) for row in followed) / len(followed) if followed else None
        accuracy[f"instruction_{mode}"] = sum(instructions) / len(instructions) if instructions else None
    values = [accuracy[key] for key in ("prompt_strict", "instruction_strict", "prompt_loose", "instruction_loose")]
    accuracy["score"] = None if None in values else 100.0 * math.fsum(values) / 4
    return accuracy
