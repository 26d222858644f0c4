"""What an OpenS2S folder needs besides weights and configs: the speech parts and a model card.

`OpenS2SForConditionalGeneration.save_pretrained` (so also `Trainer.save_model` and `push_to_hub`) calls
[`save_speech_parts`] on its staging folder, and the converter calls [`write_model_card`], so every saved folder
speaks like the one it came from and opens on the Hub with a card.
"""

import logging
import os
import shutil
import tempfile
from pathlib import Path


__all__ = [
    "LICENSE",
    "ORIGINAL_REPO",
    "TOKEN2WAV_SUBFOLDER",
    "publish_folder",
    "save_speech_parts",
    "staging_folder",
    "write_model_card",
]

logger = logging.getLogger(__name__)

# Subfolder of an OpenS2S folder (or Hub repo) that holds the token2wav decoder.
TOKEN2WAV_SUBFOLDER = "token2wav"
# The released model (CASIA-LM/OpenS2S, Apache-2.0) that converted folders derive from.
ORIGINAL_REPO = "CASIA-LM/OpenS2S"
LICENSE = "apache-2.0"

MODEL_CARD = """---
library_name: transformers
pipeline_tag: any-to-any
license: {license}
tags:
- opens2s
- speech-to-speech
- empathetic
- audio-text-to-text
- custom_code
{base_model}---

# {name}

OpenS2S ([arXiv 2507.05177](https://arxiv.org/abs/2507.05177)) is an empathetic speech-to-speech model: it hears a
spoken question (words and paralinguistic cues such as emotion, age and gender), answers in text, and speaks the
answer with a fitting tone, streaming. A Qwen2-Audio encoder and an adapter feed a Qwen3 LLM; a second Qwen3 LM (the
speech decoder) turns the LLM's hidden states into speech units, and the token2wav decoder in `token2wav/` turns the
units into a 22.05 kHz waveform.

## Load it

```python
from transformers import AutoModelForMultimodalLM, AutoProcessor

model = AutoModelForMultimodalLM.from_pretrained("{repo}", trust_remote_code=True)
processor = AutoProcessor.from_pretrained("{repo}", trust_remote_code=True)
```

## Make it speak

```python
model.attach_token2wav()  # the decoder in token2wav/
inputs = processor.apply_chat_template(
    [{{"role": "user", "content": [{{"type": "audio", "path": "question.wav"}}]}}], return_tensors="pt"
)
output = model.generate(**inputs, processor=processor)  # text ids, speech units and audio
answer = processor.batch_decode(output.sequences[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]
audio, sampling_rate = output.audio_values[0].numpy(), output.sampling_rate
```

`model.stream(**inputs, processor=processor)` yields the text and the audio as they are made (events with a
`kind`: `"text"`, `"units"`, `"audio"`, `"done"`); `model.generate(**inputs, return_speech=False)` is the
text-only, batched `GenerationMixin.generate`.
"""


def write_model_card(folder: str | Path, repo: str | None = None, base_model: str | None = None) -> Path:
    """Write `README.md` (Hub model card with front matter) into `folder`, unless one is there already.

    Args:
        folder (`str` or `Path`): the model folder.
        repo (`str`, *optional*): the Hub id the usage snippets load; defaults to the folder's name.
        base_model (`str`, *optional*): the Hub id this model was converted or fine-tuned from.
    """
    card = Path(folder) / "README.md"
    if card.exists():
        return card
    repo = repo or Path(folder).resolve().name
    front_base = f"base_model: {base_model}\n" if base_model else ""
    card.write_text(
        MODEL_CARD.format(license=LICENSE, base_model=front_base, name=repo.split("/")[-1], repo=repo),
        encoding="utf-8",
    )
    return card


def _token2wav_source(model) -> Path | None:
    """The local `token2wav/` folder next to the weights `model` was loaded from, if any."""
    if not model.config.name_or_path:  # built in code, never loaded
        return None
    source = Path(model.config.name_or_path) / TOKEN2WAV_SUBFOLDER
    return source if (source / "config.json").exists() else None


# What a saved OpenS2SProcessor consists of: the processor config (feature extractor inside), the LLM tokenizer, the
# chat template and the unit tokenizer's subfolder.
PROCESSOR_FILES = (
    "processor_config.json",
    "preprocessor_config.json",
    "chat_template.jinja",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
)
# The attribute name ProcessorMixin saves the second tokenizer under (a subfolder of that name).
UNIT_TOKENIZER_SUBFOLDER = "unit_tokenizer"


def _copy_processor(model, folder: Path) -> None:
    """Copy the processor files of the local folder `model` was loaded from, when it has them (the trainer saves its
    own). The files are copied, not loaded: loading would run the folder's processor code, which a model loaded with
    the installed classes never trusted."""
    source = Path(model.config.name_or_path)
    if (
        not model.config.name_or_path
        or not (source / "processor_config.json").exists()
        or (folder / "processor_config.json").exists()
    ):
        return
    for name in PROCESSOR_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, folder / name)
    if (source / UNIT_TOKENIZER_SUBFOLDER).is_dir():
        shutil.copytree(source / UNIT_TOKENIZER_SUBFOLDER, folder / UNIT_TOKENIZER_SUBFOLDER, dirs_exist_ok=True)
    # The processor's own code (`processor_config.json`'s auto_map points at it), from the classes running now, as
    # `ProcessorMixin.save_pretrained` would write it.
    from transformers.dynamic_module_utils import custom_object_save

    from .feature_extraction_opens2s import OpenS2SFeatureExtractor
    from .processing_opens2s import OpenS2SProcessor

    for processor_class in (OpenS2SProcessor, OpenS2SFeatureExtractor):
        custom_object_save(processor_class, folder)


def save_speech_parts(model, folder: str | Path) -> None:
    """Write the speech generation config, the token2wav decoder and a model card next to `model`'s weights.

    The token2wav decoder is the attached one ([`attach_token2wav`]) or, when none is attached, the `token2wav/`
    folder of the local folder the model was loaded from (copied as it is); a Hub-loaded model without an attached
    decoder is saved without one (a warning says so).
    """
    # Imported here: streaming imports this module's neighbours, not the other way round.
    from .streaming_opens2s import SPEECH_GENERATION_CONFIG_NAME, speech_generation_config_of

    folder = Path(folder)
    speech_generation_config_of(model).save_pretrained(folder, config_file_name=SPEECH_GENERATION_CONFIG_NAME)
    if model.token2wav is not None:
        model.token2wav.save_pretrained(folder / TOKEN2WAV_SUBFOLDER)
    elif (source := _token2wav_source(model)) is not None:
        shutil.copytree(source, folder / TOKEN2WAV_SUBFOLDER)
    else:
        # A model built in code has no decoder to lose; one loaded from elsewhere may have had one.
        log = logger.warning if model.config.name_or_path else logger.info
        log(
            "No token2wav decoder is attached and %r has no local token2wav/ folder: the saved folder writes speech "
            "units but cannot make audio until one is attached (model.attach_token2wav(...)) and saved.",
            model.config.name_or_path,
        )
    _copy_processor(model, folder)
    name = model.config.name_or_path
    base_model = name if name and not os.path.isdir(name) else None
    write_model_card(folder, base_model=base_model)


def publish_folder(staging: Path, target: Path) -> None:
    """Move the complete `staging` folder to `target`: renamed into place when `target` is new or empty, else file by
    file (each an atomic replace), so a reader sees every file either old or new, never half written."""
    if not target.exists() or (target.is_dir() and not any(target.iterdir())):
        if target.exists():
            target.rmdir()
        staging.rename(target)
        return
    for path in sorted(staging.rglob("*")):
        destination = target / path.relative_to(staging)
        if path.is_dir():
            destination.mkdir(parents=True, exist_ok=True)
        else:
            os.replace(path, destination)
    shutil.rmtree(staging, ignore_errors=True)


def staging_folder(target: Path) -> Path:
    """A new empty folder next to `target` (same file system, so renames are atomic)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.saving-", dir=target.parent))
