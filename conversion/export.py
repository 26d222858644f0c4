"""Writing model folders that load anywhere: the flat remote-code files next to the weights.

The converters and the tiny-model builder call these; nothing here converts original checkpoints.
"""

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from opens2s.conversion.checksums import write_checksums
from opens2s.modeling_opens2s.modeling_token2wav import OpenS2SToken2Wav


__all__ = [
    "REMOTE_CODE_DIR",
    "REMOTE_CODE_FILES",
    "TOKEN2WAV_REMOTE_CODE_FILES",
    "export_remote_code",
    "save_token2wav",
    "staged_output",
]

logger = logging.getLogger(__name__)

# The remote-code folder of the installed package (`modeling_opens2s/` in the source tree).
REMOTE_CODE_DIR = Path(__file__).resolve().parents[1] / "modeling_opens2s"
REMOTE_CODE_FILES = [
    "configuration_opens2s.py",
    "modeling_opens2s.py",
    "audio_lengths_opens2s.py",
    "audio_opens2s.py",
    "prompt_format_opens2s.py",
    "interleave_opens2s.py",
    "feature_extraction_opens2s.py",
    "processing_opens2s.py",
    "streaming_opens2s.py",
    "engine_opens2s.py",
    "packed_forward_opens2s.py",
    "side_worker_opens2s.py",
    "fast_path_opens2s.py",
    "saving_opens2s.py",
]
# The token2wav decoder's files: a standalone token2wav folder holds these; an OpenS2S folder holds both lists
# (`modeling_opens2s.py` imports the decoder lazily, but transformers copies every relative import).
TOKEN2WAV_REMOTE_CODE_FILES = [
    "configuration_token2wav.py",
    "modeling_token2wav.py",
    "modeling_token2wav_streaming.py",
    "modeling_token2wav_flow_encoder.py",
    "modeling_token2wav_flow.py",
    "modeling_token2wav_hift.py",
]


def _copy_remote_code(names: list[str], dst: Path) -> None:
    for name in names:
        shutil.copyfile(REMOTE_CODE_DIR / name, dst / name)


def export_remote_code(dst: str | Path) -> None:
    """Copy the flat remote-code modules next to a saved model so `trust_remote_code=True` loads it anywhere."""
    _copy_remote_code(REMOTE_CODE_FILES + TOKEN2WAV_REMOTE_CODE_FILES, Path(dst))


def save_token2wav(model: OpenS2SToken2Wav, dst: str | Path) -> None:
    """Save `model` as a standalone token2wav folder: safetensors, `config.json` with its `auto_map`, and the remote
    code, so `AutoModel.from_pretrained(dst, trust_remote_code=True)` loads it without opens2s installed."""
    dst = Path(dst)
    model.config.architectures = ["OpenS2SToken2Wav"]
    model.config.auto_map = {
        "AutoConfig": "configuration_token2wav.OpenS2SToken2WavConfig",
        "AutoModel": "modeling_token2wav.OpenS2SToken2Wav",
    }
    dst.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dst)
    _copy_remote_code(TOKEN2WAV_REMOTE_CODE_FILES, dst)


def _partial_prefix(dst: Path) -> str:
    return f".{dst.name}.partial-"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _clear_leftovers(dst: Path) -> None:
    """Remove the staging folders of earlier writes of `dst` whose process is gone (killed mid-way); refuse while one
    is still running."""
    prefix = _partial_prefix(dst)
    for leftover in sorted(dst.parent.glob(prefix + "*")):
        pid_text = leftover.name[len(prefix) :].split("-", 1)[0]
        pid = int(pid_text) if pid_text.isdigit() else None
        if pid is not None and pid != os.getpid() and _process_alive(pid):
            raise FileExistsError(
                f"{leftover} belongs to a write of {dst} that is still running (process {pid}); wait for it to finish"
            )
        logger.warning("removing %s: an incomplete write of %s left by an interrupted run", leftover, dst)
        shutil.rmtree(leftover, ignore_errors=True)


@contextmanager
def staged_output(dst: str | Path) -> Iterator[Path]:
    """Write a new folder `dst` whole or not at all.

    Yields a fresh staging folder next to `dst` (`.NAME.partial-PID-XXXX`, same file system); when the block ends
    without an error, `checksums.sha256` is written into it and it is renamed to `dst`; on an error it is removed. A
    staging folder left by a killed run is removed the next time `dst` is written (the write starts afresh).

    Raises:
        `FileExistsError`: when `dst` exists and is not an empty folder, or another process is writing it.
    """
    dst = Path(dst)
    if dst.exists() and not (dst.is_dir() and not any(dst.iterdir())):
        raise FileExistsError(f"{dst} exists and is not an empty folder")
    dst.parent.mkdir(parents=True, exist_ok=True)
    _clear_leftovers(dst)
    staging = Path(tempfile.mkdtemp(prefix=f"{_partial_prefix(dst)}{os.getpid()}-", dir=dst.parent))
    try:
        yield staging
        write_checksums(staging)
        if dst.exists():
            dst.rmdir()  # empty (checked above); a file appearing meanwhile makes this fail, not get lost
        staging.rename(dst)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
