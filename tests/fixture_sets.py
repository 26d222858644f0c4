"""Locating the parity fixture sets built with the original OpenS2S code (`../shared/fixtures/reference_*`)."""

import json
import os
from pathlib import Path

import pytest


FIXTURES_DIR = Path(os.environ.get("OPENS2S_FIXTURES", Path(__file__).resolve().parents[2] / "shared" / "fixtures"))


def reference_sets() -> list:
    """One `pytest.param` per fixture set folder holding a manifest; empty when the fixtures are not present."""
    folders = sorted(FIXTURES_DIR.glob("reference_*")) if FIXTURES_DIR.is_dir() else []
    return [pytest.param(folder, id=folder.name) for folder in folders if (folder / "manifest.json").is_file()]


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


requires_reference = pytest.mark.skipif(not reference_sets(), reason=f"no reference_* fixture sets in {FIXTURES_DIR}")


def token2wav_sets() -> list:
    """One `pytest.param` per `token2wav_*` fixture folder holding a manifest; empty when none is present."""
    folders = sorted(FIXTURES_DIR.glob("token2wav_*")) if FIXTURES_DIR.is_dir() else []
    return [pytest.param(folder, id=folder.name) for folder in folders if (folder / "manifest.json").is_file()]


def recorded_calls(manifest: dict) -> list[tuple[str, dict]]:
    """`(tensor prefix, call info)` per token2wav call: a tag holds one call or a list of streaming calls `callK`."""
    calls = []
    for tag, info in manifest["calls"].items():
        if isinstance(info, dict):
            calls.append((tag, info))
        else:
            calls.extend((f"{tag}/call{k}", call) for k, call in enumerate(info))
    return calls


requires_token2wav = pytest.mark.skipif(not token2wav_sets(), reason=f"no token2wav_* fixture sets in {FIXTURES_DIR}")
