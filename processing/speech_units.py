"""Speech units for data pipelines: audio files -> units with a progress bar, and a `datasets.map` function.

Both call [`OpenS2SSpeechTokenizer.encode`]; files are read with [`load_audio`] (soundfile + soxr, mono, 16 kHz).

    from opens2s.modeling_opens2s import OpenS2SSpeechTokenizer
    from opens2s.processing.speech_units import add_speech_units

    tokenizer = OpenS2SSpeechTokenizer.from_pretrained("THUDM/glm-4-voice-tokenizer")
    dataset = dataset.map(add_speech_units, batched=True, batch_size=16, fn_kwargs={"tokenizer": tokenizer})
"""

import io
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from opens2s.modeling_opens2s.feature_extraction_speech_tokenizer import load_waveform
from opens2s.processing.audio_io import TARGET_SAMPLING_RATE, load_audio


__all__ = ["add_speech_units", "encode_files"]


def encode_files(
    paths: Sequence[str | Path], tokenizer, batch_size: int = 16, show_progress: bool = True
) -> Iterator[tuple[str | Path, list[int]]]:
    """Yield `(path, units)` for every file, in order, reading and encoding `batch_size` files at a time.

    Args:
        paths (`Sequence[str | Path]`): audio files (any format and rate libsndfile reads; stereo is averaged).
        tokenizer ([`OpenS2SSpeechTokenizer`]): the speech tokenizer.
        batch_size (`int`, *optional*, defaults to 16): files read at once, and 30 s segments per forward pass.
        show_progress (`bool`, *optional*, defaults to `True`): a tqdm bar over files.

    Raises:
        `FileNotFoundError` / `ValueError` naming a missing, unreadable, empty or too short file.
    """
    from tqdm.auto import tqdm

    with tqdm(total=len(paths), desc="speech units", unit="file", disable=not show_progress) as progress:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            audios = [_checked(path, tokenizer) for path in chunk]
            units = tokenizer.encode(audios, sampling_rate=TARGET_SAMPLING_RATE, batch_size=batch_size)
            yield from zip(chunk, units, strict=True)
            progress.update(len(chunk))


def _checked(path: str | Path, tokenizer) -> np.ndarray:
    """Read one file and apply the tokenizer's input checks, so that an error names the file."""
    waveform = load_audio(path)
    try:
        return load_waveform(waveform, TARGET_SAMPLING_RATE, tokenizer.feature_extractor)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error


def _as_audio(value: Any) -> Any:
    """One value of a dataset's audio column -> what `tokenizer.encode` takes (array, `(array, rate)` or dict)."""
    if isinstance(value, (str, Path)):
        return load_audio(value)
    if isinstance(value, dict) and value.get("array") is not None:
        return {"array": np.asarray(value["array"], dtype=np.float32), "sampling_rate": value.get("sampling_rate")}
    if isinstance(value, dict) and value.get("bytes") is not None:  # `datasets.Audio(decode=False)`
        import soundfile

        array, rate = soundfile.read(io.BytesIO(value["bytes"]), dtype="float32", always_2d=True)
        return array.T, rate
    if isinstance(value, dict) and value.get("path") is not None:
        return load_audio(value["path"])
    if hasattr(value, "get_all_samples"):  # a torchcodec `AudioDecoder`, as `datasets.Audio` decodes since 4.0
        samples = value.get_all_samples()
        return samples.data.numpy(), samples.sample_rate
    return value


def add_speech_units(
    batch: dict[str, list],
    tokenizer,
    audio_column: str = "audio",
    units_column: str = "units",
    batch_size: int = 16,
) -> dict[str, list[list[int]]]:
    """`datasets.Dataset.map(..., batched=True)` function adding the speech units of every row's audio.

    Args:
        batch (`dict[str, list]`): a batch of rows (use `batched=True`).
        tokenizer ([`OpenS2SSpeechTokenizer`]): pass it through `fn_kwargs={"tokenizer": tokenizer}`.
        audio_column (`str`, *optional*, defaults to `"audio"`): holds paths, 16 kHz float arrays, decoded
            `datasets.Audio` values (`{"array", "sampling_rate"}` dicts or torchcodec decoders) or undecoded ones
            (`{"bytes", "path"}`).
        units_column (`str`, *optional*, defaults to `"units"`): the new column, a list of unit ids per row.
        batch_size (`int`, *optional*, defaults to 16): 30 s segments per forward pass.

    Returns:
        `dict[str, list[list[int]]]`: `{units_column: units of every row}`.
    """
    audios = [_as_audio(value) for value in batch[audio_column]]
    return {units_column: tokenizer.encode(audios, sampling_rate=TARGET_SAMPLING_RATE, batch_size=batch_size)}
