"""Voices found with a model: speaker embeddings stored as `speakers/*.safetensors`, by name.

A voice file holds a `speaker_embedding` tensor of `config.speaker_embedding_dim` values (projected into the speech
decoder's first position) and optionally `token2wav_speaker_embedding`, the decoder's 192-value x-vector. Used by the
Gradio app and the OpenAI-compatible server.
"""

import logging
from pathlib import Path

import torch


__all__ = ["SPEAKERS_SUBFOLDER", "find_speakers", "load_voice"]

logger = logging.getLogger(__name__)

SPEAKERS_SUBFOLDER = "speakers"


def find_speakers(name_or_path: str | Path | None, extra_dir: str | Path | None = None) -> dict[str, Path]:
    """Voice files by name: `speakers/*.safetensors` of a local model folder (or of a Hub repo, when it has any) and
    of `extra_dir`. The tiny default model (`name_or_path=None`) has none."""
    folders = []
    if name_or_path is not None:
        local = Path(name_or_path)
        folders.append(local / SPEAKERS_SUBFOLDER if local.is_dir() else _hub_speakers(str(name_or_path)))
    if extra_dir is not None:
        folders.append(Path(extra_dir))
    return {
        path.stem: path
        for folder in folders
        if folder is not None and folder.is_dir()
        for path in sorted(folder.glob("*.safetensors"))
    }


def _hub_speakers(repo_id: str) -> Path | None:
    """The `speakers/` folder of a Hub repo's snapshot (only those files are fetched); `None` when the Hub cannot
    be reached (voices are optional: the default voice remains)."""
    from huggingface_hub import snapshot_download

    try:
        snapshot = snapshot_download(repo_id, allow_patterns=[f"{SPEAKERS_SUBFOLDER}/*.safetensors"])
    except Exception as error:  # noqa: BLE001 - any Hub failure (offline, gated, missing) means "no extra voices"
        logger.warning("no voices from %s: %s", repo_id, error)
        return None
    return Path(snapshot) / SPEAKERS_SUBFOLDER


def load_voice(path: str | Path, speaker_embedding_dim: int) -> dict[str, torch.Tensor] | None:
    """The `model.stream` voice arguments stored in one voice file, or `None` (logged) when it does not fit.

    Returns:
        `{"speaker_embedding": (speaker_embedding_dim,)}` plus `"token2wav_speaker_embedding": (1, 192)` when the
        file has one, float32.
    """
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    embedding = tensors.get("speaker_embedding")
    if embedding is None or embedding.numel() != speaker_embedding_dim:
        logger.warning("skipping voice %s: it needs a speaker_embedding of %d values", path, speaker_embedding_dim)
        return None
    voice = {"speaker_embedding": embedding.reshape(-1).float()}
    if "token2wav_speaker_embedding" in tensors:
        voice["token2wav_speaker_embedding"] = tensors["token2wav_speaker_embedding"].reshape(1, -1).float()
    return voice
