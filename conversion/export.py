"""Writing model folders that load anywhere: the flat remote-code files next to the weights.

The converters and the tiny-model builder call these; nothing here converts original checkpoints.
"""

import shutil
from pathlib import Path

from opens2s.modeling_opens2s.modeling_token2wav import OpenS2SToken2Wav


__all__ = [
    "REMOTE_CODE_DIR",
    "REMOTE_CODE_FILES",
    "TOKEN2WAV_REMOTE_CODE_FILES",
    "export_remote_code",
    "save_token2wav",
]

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
