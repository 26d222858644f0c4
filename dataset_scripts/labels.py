"""Paralinguistic labels of the data pipeline: the canonical emotion, age and gender names, their accepted spellings
(corpus abbreviations, other languages, numeric ages), the reply tones, and their names in each prompt language.

Seed corpora label the same thing many ways (`"ang"`, `"anger"`, `"Angry"`, `"生气"`); the pipeline keeps one canonical
English name per class so that prompts, the dataset card and the TTS mappings see a closed set:

| class | canonical names |
|---|---|
| emotion | neutral, happy, sad, angry, fearful, disgusted, surprised |
| age | child (< 13), teenager (13-19), adult (20-59), elderly (60+); numbers are bucketed |
| gender | female, male |
| tone (of the reply) | neutral, cheerful, excited, gentle, soothing, sympathetic, encouraging, calm, serious |

An empty age or gender is kept as `"unknown"` (the prompts say so); an empty emotion, or any label outside the table
and its aliases, is an error ([`LabelError`]) that the seed stage records as the row's failure reason.
"""

import math


__all__ = [
    "AGES",
    "EMOTIONS",
    "GENDERS",
    "LabelError",
    "TONES",
    "UNKNOWN",
    "display_label",
    "normalize_age",
    "normalize_emotion",
    "normalize_gender",
    "normalize_tone",
]

EMOTIONS = ("neutral", "happy", "sad", "angry", "fearful", "disgusted", "surprised")
AGES = ("child", "teenager", "adult", "elderly")
GENDERS = ("female", "male")
TONES = ("neutral", "cheerful", "excited", "gentle", "soothing", "sympathetic", "encouraging", "calm", "serious")
UNKNOWN = "unknown"

# Abbreviations of common emotional corpora (IEMOCAP, CREMA-D, RAVDESS, MELD, ESD, CASIA) and Chinese names.
_EMOTION_ALIASES = {
    "neu": "neutral",
    "calm": "neutral",
    "中性": "neutral",
    "平静": "neutral",
    "hap": "happy",
    "happiness": "happy",
    "joy": "happy",
    "joyful": "happy",
    "exc": "happy",
    "excited": "happy",
    "开心": "happy",
    "高兴": "happy",
    "快乐": "happy",
    "sadness": "sad",
    "伤心": "sad",
    "悲伤": "sad",
    "难过": "sad",
    "ang": "angry",
    "anger": "angry",
    "生气": "angry",
    "愤怒": "angry",
    "fea": "fearful",
    "fear": "fearful",
    "afraid": "fearful",
    "害怕": "fearful",
    "恐惧": "fearful",
    "dis": "disgusted",
    "disgust": "disgusted",
    "厌恶": "disgusted",
    "sur": "surprised",
    "surprise": "surprised",
    "惊讶": "surprised",
    "吃惊": "surprised",
}
_AGE_ALIASES = {
    "kid": "child",
    "children": "child",
    "儿童": "child",
    "孩子": "child",
    "teen": "teenager",
    "teens": "teenager",
    "adolescent": "teenager",
    "青少年": "teenager",
    "young": "adult",
    "young adult": "adult",
    "youth": "adult",
    "middle-aged": "adult",
    "middle aged": "adult",
    "青年": "adult",
    "成年": "adult",
    "成年人": "adult",
    "中年": "adult",
    "old": "elderly",
    "senior": "elderly",
    "elder": "elderly",
    "老年": "elderly",
    "老人": "elderly",
}
_GENDER_ALIASES = {
    "f": "female",
    "woman": "female",
    "girl": "female",
    "女": "female",
    "女性": "female",
    "m": "male",
    "man": "male",
    "boy": "male",
    "男": "male",
    "男性": "male",
}

# How the labels read inside a prompt of each language (English uses the canonical names).
_DISPLAY = {
    "zh": {
        "neutral": "平静",
        "happy": "开心",
        "sad": "伤心",
        "angry": "生气",
        "fearful": "害怕",
        "disgusted": "厌恶",
        "surprised": "惊讶",
        "child": "儿童",
        "teenager": "青少年",
        "adult": "成年人",
        "elderly": "老年人",
        "female": "女性",
        "male": "男性",
        "unknown": "未知",
    }
}


class LabelError(ValueError):
    """A label outside the canonical set and its aliases; `kind` is `"emotion"`, `"age"`, `"gender"` or `"tone"`."""

    def __init__(self, kind: str, value):
        super().__init__(f"unknown {kind} label {value!r}")
        self.kind = kind


def _key(value) -> str:
    return "" if value is None else str(value).strip().casefold().replace("_", " ")


def normalize_emotion(value) -> str:
    """The canonical emotion of a seed label (`"ANG"` -> `"angry"`). Raises [`LabelError`] for an unknown or empty
    one: the emotion is what the pipeline is about, so it is required."""
    key = _key(value)
    label = key if key in EMOTIONS else _EMOTION_ALIASES.get(key)
    if label is None:
        raise LabelError("emotion", value)
    return label


def normalize_age(value) -> str:
    """The canonical age group of a label or of an age in years (`34` -> `"adult"`); empty -> `"unknown"`."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if math.isnan(value) or value < 0:
            raise LabelError("age", value)
        return _age_group(value)
    key = _key(value)
    if not key or key == UNKNOWN:
        return UNKNOWN
    if key.replace(".", "", 1).isdigit():
        return _age_group(float(key))
    label = key if key in AGES else _AGE_ALIASES.get(key)
    if label is None:
        raise LabelError("age", value)
    return label


def _age_group(years: float) -> str:
    return "child" if years < 13 else "teenager" if years < 20 else "adult" if years < 60 else "elderly"


def normalize_gender(value) -> str:
    """The canonical gender of a label (`"F"` -> `"female"`); empty -> `"unknown"`."""
    key = _key(value)
    if not key or key == UNKNOWN:
        return UNKNOWN
    label = key if key in GENDERS else _GENDER_ALIASES.get(key)
    if label is None:
        raise LabelError("gender", value)
    return label


def normalize_tone(value) -> str:
    """The reply tone an LLM chose, checked against [`TONES`] (case and surrounding spaces ignored)."""
    key = _key(value).strip(" .")
    if key not in TONES:
        raise LabelError("tone", value)
    return key


def display_label(label: str, language: str) -> str:
    """How a canonical label reads in a prompt of `language` (`("sad", "zh")` -> `"伤心"`); English keeps it."""
    return _DISPLAY.get(language, {}).get(label, label)
