"""The `push` stage and the dataset card: what was built, how, from what, and how many rows each stage kept.

The card (`README.md`) states the backends (LLM, voice cloning, instruct-TTS, speech tokenizer), the per-stage
counts and failure reasons from the manifests, the label distributions, the columns, how to load the rows for
training, and the paper to cite. With `repo_id` the dataset and its card go to the Hub (`push_to_hub`); without, they
are saved to `WORKDIR/push/` (`dataset/` from `save_to_disk`, and `README.md`).
"""

import json
import logging
import shutil
import time
from collections import Counter
from pathlib import Path

from opens2s.dataset_scripts.config import STAGES, PipelineConfig


__all__ = ["build_card", "run_push"]

logger = logging.getLogger(__name__)

# Work-folder paths that mean nothing once the dataset leaves the work folder.
_LOCAL_COLUMNS = ("audio_file", "response_audio_file", "seed_audio_file")

_COLUMNS_DOC = """| column | meaning |
|---|---|
| `id`, `seed_id` | row id; the seed clip it was made from |
| `speaker`, `language`, `emotion`, `age`, `gender` | the seed speaker and its labels (the user's voice) |
| `instruction` | what the user says (the text of `audio`) |
| `audio` | the user turn: `instruction` spoken in the seed speaker's voice |
| `response`, `tone` | the empathetic reply and the tone it is spoken with |
| `response_audio` | the reply spoken in the one reply voice |
| `speech_units`, `num_units` | the reply audio as speech units `<\\|audio_k\\|>` (12.5 per second) |
| `seed_transcript`, `duration`, `response_duration` | the seed clip's words; seconds of audio |"""

_CITATION = """@article{wang2025opens2s,
  title   = {OpenS2S: Advancing Fully Open-Source End-to-End Empathetic Large Speech Language Model},
  author  = {Wang, Chen and Peng, Tianyu and Yang, Wen and Bai, Yinan and Wang, Guangfu and Lin, Jun and Jia, Lanpeng
             and Wu, Lingxiang and Wang, Jinqiao and Zong, Chengqing and Zhang, Jiajun},
  journal = {arXiv preprint arXiv:2507.05177},
  year    = {2025}
}"""


def _size_category(rows: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if rows < limit:
            return name
    return "n>1M"


def _manifests(workdir: Path) -> dict[str, dict]:
    found = {}
    for stage in STAGES[:-1]:
        path = workdir / stage / "manifest.json"
        if path.is_file():
            found[stage] = json.loads(path.read_text(encoding="utf-8"))
    return found


def _counts_table(manifests: dict[str, dict]) -> str:
    lines = ["| stage | inputs | rows out | failed inputs | failures by reason |", "|---|---|---|---|---|"]
    for stage, manifest in manifests.items():
        reasons = ", ".join(f"{reason}: {count}" for reason, count in manifest["failure_reasons"].items()) or "—"
        lines.append(
            f"| `{stage}` | {manifest['inputs']} | {manifest['outputs']} | {manifest['failed']} | {reasons} |"
        )
    return "\n".join(lines)


def _distribution(dataset, column: str) -> str:
    counts = Counter(dataset[column]) if column in dataset.column_names else Counter()
    return ", ".join(f"{label} {count}" for label, count in counts.most_common()) or "—"


def build_card(dataset, config: PipelineConfig):
    """The `huggingface_hub.DatasetCard` of the built dataset (its rows are the `units` stage output)."""
    from huggingface_hub import DatasetCard, DatasetCardData

    manifests = _manifests(config.workdir)
    languages = sorted(set(dataset["language"])) if len(dataset) else [config.language]
    data = DatasetCardData(
        language=languages,
        pretty_name="OpenS2S-style empathetic speech dialogues",
        task_categories=["audio-to-audio", "text-to-speech"],
        tags=["opens2s", "empathetic", "speech-to-speech", "synthetic", "paralinguistic"],
        size_categories=[_size_category(len(dataset))],
    )
    tts, response_tts = config.tts, config.response_tts or config.tts
    llm_model = f" `{config.llm_model}`" if config.llm_model else ""
    espeak_note = (
        "\n> **Note**: speech was made with the espeak-ng fallback, which imitates the seed labels with voice "
        "variants and prosody but does not clone voices: this data exercises the training code, not the "
        "paralinguistic skill."
        if "espeak" in (tts, response_tts) or "auto" in (tts, response_tts)
        else ""
    )
    body = f"""
# OpenS2S-style empathetic speech dialogues

Built with the `opens2s data` pipeline, following the data construction of OpenS2S (arXiv 2507.05177, section 3.2):
annotated seed speech (emotion, age, gender) -> an LLM writes instructions whose best answer depends on how the speaker
sounds -> voice cloning speaks them in the seed speaker's voice -> the LLM writes a concise empathetic reply and its
tone -> instruct-TTS speaks the reply in one voice with that tone -> the speech tokenizer turns the reply audio into
units. {len(dataset)} dialogues; built {time.strftime("%Y-%m-%d")}.
{espeak_note}

## How it was built

| part | backend |
|---|---|
| seed data | `{config.seed_data}` |
| LLM | `{config.llm}`{llm_model}, {config.num_instructions} instructions per seed |
| user speech (voice cloning) | `{tts}` |
| reply speech (instruct-TTS) | `{response_tts}` (voice `{config.response_voice or "default"}`) |
| speech units | `{config.speech_tokenizer}` |

{_counts_table(manifests)}

Failed rows are listed with their reason in each stage's `failures.jsonl` in the work folder.

## Labels

- emotion: {_distribution(dataset, "emotion")}
- age: {_distribution(dataset, "age")}
- gender: {_distribution(dataset, "gender")}
- reply tone: {_distribution(dataset, "tone")}

## Columns

{_COLUMNS_DOC}

## Use

```python
from opens2s.training.data import load_training_dataset

rows = load_training_dataset("REPO_OR_FOLDER")  # flat rows: audio in, response + speech_units out
```

The seed corpora's licenses apply to the voices in this data; check them before sharing it.

## Citation

```bibtex
{_CITATION}
```
"""
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n{body}")


def run_push(source, backends, config: PipelineConfig):
    """Stage 7: the `units` rows with decodable `Audio` columns and a card: `push_to_hub(config.repo_id)`, or
    `save_to_disk` into `WORKDIR/push/dataset` when no repo is given. Writes `WORKDIR/push/README.md` and a manifest
    either way; re-running it redoes it (it is idempotent)."""
    import datasets

    dataset = source.remove_columns([name for name in _LOCAL_COLUMNS if name in source.column_names])
    for name, feature in dataset.features.items():
        if isinstance(feature, datasets.Audio):
            dataset = dataset.cast_column(name, datasets.Audio())  # decoded on access (torchcodec), as on the Hub
    card = build_card(dataset, config)
    final = config.workdir / "push"
    temporary = config.workdir / ".push.tmp"
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    card.save(str(temporary / "README.md"))
    if config.repo_id:
        from huggingface_hub import create_repo

        # The card first: `push_to_hub` then adds the features and splits to its metadata and keeps the text.
        create_repo(config.repo_id, repo_type="dataset", private=config.private, exist_ok=True)
        card.push_to_hub(config.repo_id, repo_type="dataset", commit_message="dataset card")
        dataset.push_to_hub(config.repo_id, private=config.private, commit_message="opens2s data push")
    else:
        dataset.save_to_disk(str(temporary / "dataset"))
    manifest = {
        "stage": "push",
        "inputs": len(source),
        "outputs": len(dataset),
        "repo_id": config.repo_id,
        "saved_to": None if config.repo_id else str(final / "dataset"),
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (temporary / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    old = config.workdir / ".push.old"
    if final.exists():
        final.rename(old)
    temporary.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    logger.info("push: %d rows -> %s", len(dataset), config.repo_id or final / "dataset")
    return dataset
