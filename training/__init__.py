"""Training OpenS2S with the Trainer/TRL API: data loading and the collator (trl/datasets load lazily)."""

from .collator import DEFAULT_SYSTEM_PROMPT, OpenS2SDataCollator
from .data import load_original_jsonl


__all__ = ["OpenS2SDataCollator", "load_original_jsonl", "DEFAULT_SYSTEM_PROMPT"]
