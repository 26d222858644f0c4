"""Locating the parity fixture sets built with the original OpenS2S code.

A set is a folder named `reference_*` (the model: training batch and streaming generation) or `token2wav_*` (the
speech decoder and the speech tokenizer) holding a `manifest.json`. The sets are looked up in two places:

1. `tests/fixtures/` in this repository (set A: `reference_a`, `token2wav_a`), so a fresh clone checks parity;
2. the folder named by `$OPENS2S_FIXTURES` when it is set, else `../shared/fixtures` next to the repository root when
   it exists: it adds further sets (`reference_b`, ...). A set name found in both places is taken once, from
   `tests/fixtures/`.
"""

import json
import os
from pathlib import Path

import pytest


__all__ = [
    "FIXTURE_ROOTS",
    "collapse_audio",
    "fixture_folders",
    "load_manifest",
    "recorded_calls",
    "reference_sets",
    "requires_reference",
    "requires_token2wav",
    "token2wav_sets",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
REPO_FIXTURES = REPO_ROOT / "tests" / "fixtures"
OUTSIDE_FIXTURES = Path(os.environ.get("OPENS2S_FIXTURES") or REPO_ROOT.parent / "shared" / "fixtures")
FIXTURE_ROOTS = (REPO_FIXTURES, OUTSIDE_FIXTURES)  # earlier roots win on a set name found in both


def fixture_folders(prefix: str) -> list[Path]:
    """Set folders named `<prefix>*` holding a manifest, one per name (the first root's copy wins), sorted by name."""
    found = {}
    for root in FIXTURE_ROOTS:
        if root.is_dir():
            for folder in sorted(root.glob(f"{prefix}*")):
                if (folder / "manifest.json").is_file():
                    found.setdefault(folder.name, folder)
    return [found[name] for name in sorted(found)]


def reference_sets() -> list:
    """One `pytest.param` per `reference_*` fixture set (id = folder name)."""
    return [pytest.param(folder, id=folder.name) for folder in fixture_folders("reference_")]


def token2wav_sets() -> list:
    """One `pytest.param` per `token2wav_*` fixture set (id = folder name)."""
    return [pytest.param(folder, id=folder.name) for folder in fixture_folders("token2wav_")]


def load_manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def collapse_audio(ids: list[int], audio_token_id: int, placeholder: int = -200) -> list[int]:
    """Our expanded audio runs -> the original's single -200 placeholder per audio."""
    collapsed = []
    for token in ids:
        if token == audio_token_id:
            if collapsed and collapsed[-1] == placeholder:
                continue
            token = placeholder
        collapsed.append(token)
    return collapsed


def recorded_calls(manifest: dict) -> list[tuple[str, dict]]:
    """`(tensor prefix, call info)` per token2wav call: a tag holds one call or a list of streaming calls `callK`."""
    calls = []
    for tag, info in manifest["calls"].items():
        if isinstance(info, dict):
            calls.append((tag, info))
        else:
            calls.extend((f"{tag}/call{k}", call) for k, call in enumerate(info))
    return calls


# Set A is committed in tests/fixtures/, so these skip only in a checkout that lost it (and say where they looked).
_ROOTS_TEXT = " or ".join(str(root) for root in FIXTURE_ROOTS)
requires_reference = pytest.mark.skipif(not reference_sets(), reason=f"no reference_* fixture sets in {_ROOTS_TEXT}")
requires_token2wav = pytest.mark.skipif(not token2wav_sets(), reason=f"no token2wav_* fixture sets in {_ROOTS_TEXT}")
