"""IFEval through its reference implementation: a differential test of `opens2s.evaluation.ifeval` (with the
VoiceBench loader's kwargs handling) against lm-eval's own `process_results` and aggregation, on cases made here for
every instruction id (passing, failing and edge answers); the seeding of the reference's randomness; and the message
when NLTK's punkt_tab data is missing.

Needs lm-eval (`pip install -e ".[test]"`) and punkt_tab (`python tests/eval_references/install_punkt_tab.py` or
`python -m nltk.downloader punkt_tab`): without them these tests skip, except under CI (`$CI` set), where .ci/run
installs both and a missing one fails."""

import json
import os
import random

import pytest
from datasets import Dataset

from opens2s.evaluation.benchmarks import load_benchmark
from opens2s.evaluation.ifeval import (
    PUNKT_INSTALL,
    check_ifeval_reference,
    evaluate_ifeval_row,
    ifeval_accuracy,
    voicebench_response,
)


def _reference_missing() -> str | None:
    try:
        check_ifeval_reference()
    except (ImportError, LookupError) as error:
        return str(error)
    return None


MISSING = _reference_missing()
requires_reference = pytest.mark.skipif(
    MISSING is not None and not os.environ.get("CI"), reason=f"IFEval reference checker unavailable: {MISSING}"
)

FRENCH = "Bonjour, je suis très content de vous voir aujourd'hui. Comment allez-vous? Il fait beau ce matin."
# Answers every case is also checked with: an empty answer follows nothing.
EDGE_ANSWERS = ("", "   \n")
# (instruction ids, kwargs per instruction, prompt, answers): for every id, answers that pass, that fail, and edges
# (markdown asterisks, a preamble or postscript line that only loose scoring forgives, abbreviations, unicode).
CASES = [
    (["keywords:existence"], [{"keywords": ["bread", "oven"]}], "", ["Put the Bread in the oven.", "Put bread in."]),
    (
        ["keywords:frequency"],
        [{"keyword": " Tea ", "frequency": 2, "relation": "at least"}],
        "",
        ["Tea, tea!", "Tea.", "Teatime and tea."],
    ),
    (["keywords:forbidden_words"], [{"forbidden_words": ["sad"]}], "", ["I am so glad.", "It is Sad.", "sadness"]),
    (
        ["keywords:letter_frequency"],
        [{"letter": "z", "let_frequency": 2, "let_relation": "at least"}],
        "",
        ["Zz top", "zero", "Z*z*"],
    ),
    (
        ["language:response_language"],
        [{"language": "fr"}],
        "",
        [FRENCH, "I am speaking English today, friends.", "42"],
    ),
    (
        ["length_constraints:number_sentences"],
        [{"num_sentences": 2, "relation": "less than"}],
        "",
        ["One sentence.", "Dr. Smith came. He left. Bye.", "It costs 3.5 euros, e.g. today.", "Hi!!! Really?!"],
    ),
    (
        ["length_constraints:number_paragraphs"],
        [{"num_paragraphs": 2}],
        "",
        ["First.\n***\nSecond.", "First.\n***\n***\nSecond.", "One.", "* * *\nFirst.\n***\nSecond."],
    ),
    (
        ["length_constraints:number_words"],
        [{"num_words": 5, "relation": "less than"}],
        "",
        ["One two three.", "one two three four five six", "don't-stop me now", "数 字 五 六 七"],
    ),
    (
        ["length_constraints:nth_paragraph_first_word"],
        [{"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "then"}],
        "",
        ["First this.\n\nThen, that.", "First.\n\nNow that.", 'First.\n\n"Then" that.', "First.\n\n\n\nThen."],
    ),
    (
        ["detectable_content:number_placeholders"],
        [{"num_placeholders": 2}],
        "",
        ["At [address] on [date].", "At [address].", "[a][b]", "[ ] and []"],
    ),
    (
        ["detectable_content:postscript"],
        [{"postscript_marker": "P.S."}],
        "",
        ["Hello.\nP.S. See you.", "Hello.", "Hello.\np.s. lower case", "Hello. P.S. inline"],
    ),
    (
        ["detectable_format:number_bullet_lists"],
        [{"num_bullets": 2}],
        "",
        ["* one\n* two", "* one\n- two\n- three", "- a\n- b", "Intro:\n* one\n* two\nBye"],
    ),
    (
        ["detectable_format:constrained_response"],
        [{}],
        "",
        ["My answer is yes.", "Maybe.", "Well... My answer is no.", "**My answer is maybe.**"],
    ),
    (
        ["detectable_format:number_highlighted_sections"],
        [{"num_highlights": 2}],
        "",
        ["*one* and *two*", "*one* and ** **", "**one** and **two**", "*a*"],
    ),
    (
        ["detectable_format:multiple_sections"],
        [{"section_spliter": "Section", "num_sections": 2}],
        "",
        ["Section 1\na\nSection 2\nb", "Section 1\na", "SECTION 1\na\nSECTION 2\nb", "Sections\nSection 1\nSection 2"],
    ),
    (
        ["detectable_format:json_format"],
        [{}],
        "",
        ['```json\n{"a": 1}\n```', "{'a': 1}", '{"a": [1, 2]}', 'Here:\n```JSON\n{"a": 1}\n```'],
    ),
    (
        ["detectable_format:title"],
        [{}],
        "",
        ["<<My Day>>\nIt was fine.", "My Day\nIt was fine.", "<<>> empty title", "<< >>"],
    ),
    (
        ["combination:two_responses"],
        [{}],
        "",
        ["Yes.\n******\nNo.", "Yes.\n******\nYes.", "Yes.******No.******Maybe.", "******\nNo."],
    ),
    (
        ["combination:repeat_prompt"],
        [{"prompt_to_repeat": "Say hi."}],
        "Say hi. Then greet me.",
        ["say hi. Hi!", "Hi!", " Say hi.", "Sure!\nSay hi. Hi."],
    ),
    (
        ["startend:end_checker"],
        [{"end_phrase": "Any other questions?"}],
        "",
        [
            "Done. Any other questions?",
            "Any other questions? Done.",
            "**Done. Any other questions?**",
            "any other questions?  ",
        ],
    ),
    (
        ["change_case:capital_word_frequency"],
        [{"capital_frequency": 2, "capital_relation": "at least"}],
        "",
        ["NO WAY", "No way", "U.S.A. IS BIG", "AI-BASED tools"],
    ),
    (
        ["change_case:english_capital"],
        [{}],
        "",
        ["THIS IS ALL CAPITAL ENGLISH TEXT FOR YOU.", "This is not capital at all.", "123", "C'EST EN FRANÇAIS ICI."],
    ),
    (
        ["change_case:english_lowercase"],
        [{}],
        "",
        ["this is all lower case english text for you.", "This Is Not.", "ceci est en français et en minuscules."],
    ),
    (["punctuation:no_comma"], [{}], "", ["No commas here.", "Well, no.", "Full-width，comma"]),
    (["startend:quotation"], [{}], "", ['"Wrapped."', "Not wrapped.", 'Sure, here it is:\n"All quoted."', '"']),
    (
        ["punctuation:no_comma", "startend:end_checker", "keywords:existence"],
        [{}, {"end_phrase": "Bye."}, {"keywords": ["bread"]}],
        "",
        ["I like bread. Bye.", "I like bread, so. Bye.", "**Bread**. Bye.", "Bread.\nBye.\nP.S. later"],
    ),
]


def voicebench_rows(root):
    """The cases as the Hub's VoiceBench `ifeval` subset stores them (a parquet mirror: `kwargs` one struct per
    instruction with every argument field of the subset, `None` where unused, as Arrow stores the union), loaded by our
    loader. Returns the raw rows (what lm-eval's `process_results` reads) and the loaded dataset."""
    fields = sorted({name for _, kwargs, _, _ in CASES for item in kwargs for name in item})
    raw = [
        {
            "key": index,
            "prompt": prompt or f"prompt {index}",
            "instruction_id_list": ids,
            "kwargs": [{name: item.get(name) for name in fields} for item in kwargs],
        }
        for index, (ids, kwargs, prompt, _) in enumerate(CASES)
    ]
    (root / "ifeval").mkdir()
    audio = {"audio": {"bytes": b"", "path": "unused.wav"}}
    Dataset.from_list([row | audio for row in raw]).to_parquet(root / "ifeval" / "test-00000-of-00001.parquet")
    return raw, load_benchmark("ifeval", root)


@requires_reference
def test_ifeval_scoring_equals_lm_eval_reference_on_every_instruction(tmp_path):
    from langdetect import DetectorFactory
    from lm_eval.tasks.ifeval import instructions_registry, utils

    raw, rows = voicebench_rows(tmp_path)
    assert {id_ for ids, _, _, _ in CASES for id_ in ids} == set(instructions_registry.INSTRUCTION_DICT)
    ours, theirs, checked = [], [], {}
    for doc, row, (_, _, _, answers) in zip(raw, rows, CASES, strict=True):
        for answer in [*answers, *EDGE_ANSWERS]:
            result = evaluate_ifeval_row(answer, row["instruction_id_list"], json.loads(row["kwargs"]), row["prompt"])
            DetectorFactory.seed = 0  # the reference's only randomness on these cases: language detection
            reference = utils.process_results(doc, [answer])
            assert result["strict"] == reference["inst_level_strict_acc"], (doc["instruction_id_list"], answer)
            assert result["loose"] == reference["inst_level_loose_acc"], (doc["instruction_id_list"], answer)
            assert all(result["strict"]) == reference["prompt_level_strict_acc"]
            ours.append(result)
            theirs.append(reference)
            for id_, followed in zip(doc["instruction_id_list"], result["strict"] + result["loose"], strict=False):
                checked.setdefault(id_, set()).add(followed)
    # The cases exercise both outcomes of every checker.
    assert all(outcomes == {True, False} for outcomes in checked.values()), checked
    accuracy = ifeval_accuracy(ours)
    for level, key in (("prompt_level", "prompt"), ("inst_level", "instruction")):
        for mode in ("strict", "loose"):
            values = [reference[f"{level}_{mode}_acc"] for reference in theirs]
            expected = utils.agg_inst_level_acc(values) if level == "inst_level" else sum(values) / len(values)
            assert accuracy[f"{key}_{mode}"] == pytest.approx(expected, abs=1e-12)
    assert accuracy["score"] == pytest.approx(25 * sum(accuracy[k] for k in accuracy if k != "score"))


@requires_reference
def test_reference_randomness_is_seeded_and_global_state_restored():
    from langdetect import DetectorFactory

    # `letter` is not an ASCII letter: the reference draws a random one; falsy `num_highlights` is drawn too.
    ids = ["keywords:letter_frequency", "detectable_format:number_highlighted_sections"]
    kwargs = [{"letter": "#", "let_frequency": 3, "let_relation": "at least"}, {"num_highlights": 0}]
    answer = "The quick brown fox *jumps* over the lazy dog, the quick brown fox.\n" * 3
    random.seed(1234)
    before = random.getstate()
    first = evaluate_ifeval_row(answer, ids, kwargs)
    assert random.getstate() == before and DetectorFactory.seed == 0  # langdetect's default seed is 0
    for state in (1, 99, 2024):
        random.seed(state)
        assert evaluate_ifeval_row(answer, ids, kwargs) == first
    # The same as the reference with `random.seed(0)` before its strict and before its loose check.
    from lm_eval.tasks.ifeval import utils

    example = utils.InputExample(key=0, instruction_id_list=ids, prompt="", kwargs=kwargs)
    random.seed(0)
    strict = utils.test_instruction_following_strict(example, answer).follow_instruction_list
    random.seed(0)
    loose = utils.test_instruction_following_loose(example, answer).follow_instruction_list
    assert first == {"instruction_id_list": ids, "strict": strict, "loose": loose}


def test_missing_punkt_says_how_to_install_it(monkeypatch):
    nltk = pytest.importorskip("nltk")

    def not_found(resource, *args, **kwargs):
        raise LookupError(resource)

    monkeypatch.setattr(nltk.data, "find", not_found)
    with pytest.raises(LookupError, match="python -m nltk.downloader punkt_tab"):
        check_ifeval_reference()
    assert PUNKT_INSTALL == "python -m nltk.downloader punkt_tab"


def test_voicebench_response_cleanup():
    assert voicebench_response("<2> Hello there.<|user|>") == "Hello there."
    assert voicebench_response("Hello <1>") == "Hello <1>"


def test_ifeval_accuracy_is_voicebenchs_final():
    results = [{"strict": [True, False], "loose": [True, True]}, {"strict": [True], "loose": [True]}]
    accuracy = ifeval_accuracy(results)
    assert accuracy["prompt_strict"] == 0.5 and accuracy["instruction_strict"] == pytest.approx(2 / 3)
    assert accuracy["prompt_loose"] == 1.0 and accuracy["instruction_loose"] == 1.0
    assert accuracy["score"] == pytest.approx(100 * (0.5 + 2 / 3 + 1 + 1) / 4)
    assert ifeval_accuracy([])["score"] is None
