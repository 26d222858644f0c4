"""Speech units for data pipelines: audio files -> units with a progress bar, and a `datasets.map` function.

Both call [`OpenS2SSpeechTokenizer.encode`], which reads every audio with [`load_audio`] (paths, bytes, arrays,
`datasets.Audio` values and torchcodec decoders; soundfile + soxr, mono, 16 kHz).

    from opens2s.modeling_opens2s import OpenS2SSpeechTokenizer
    from opens2s.processing.speech_units import add_speech_units

    tokenizer = OpenS2SSpeechTokenizer.from_pretrained("THUDM/glm-4-voice-tokenizer")
    dataset = dataset.map(add_speech_units, batched=True, batch_size=16, fn_kwargs={"tokenizer": tokenizer})
"""

from collections.abc import Iterator, Sequence
from pathlib import Path


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
        `FileNotFoundError` / `ValueError` naming a missing, unreadable, empty or too short file (by its path).
    """
    from tqdm.auto import tqdm

    with tqdm(total=len(paths), desc="speech units", unit="file", disable=not show_progress) as progress:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            units = tokenizer.encode([str(path) for path in chunk], batch_size=batch_size)
            yield from zip(chunk, units, strict=True)
            progress.update(len(chunk))


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
            (`{"bytes", "path"}`): anything [`load_audio`] reads.
        units_column (`str`, *optional*, defaults to `"units"`): the new column, a list of unit ids per row.
        batch_size (`int`, *optional*, defaults to 16): 30 s segments per forward pass.

    Returns:
        `dict[str, list[list[int]]]`: `{units_column: units of every row}`.
    """
    return {units_column: tokenizer.encode(list(batch[audio_column]), batch_size=batch_size)}
