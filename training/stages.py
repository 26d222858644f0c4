"""The OpenS2S training stages (arXiv 2507.05177, section 2.2) as data: which parts train, on which rows.

A stage is a [`StagePreset`]: the top-level parts of [`OpenS2SForConditionalGeneration`] that train (every other
parameter is frozen), the row layout its collator builds, and whether LoRA on the LLM makes sense. The trainer looks
the preset up by name in [`STAGE_PRESETS`] and applies it with [`apply_stage`]; nothing branches on a stage name.

| preset | paper | trains | rows |
|---|---|---|---|
| `align` | 1 (BLSP-Emo alignment) | `audio_adapter` | speech in, the LLM's own continuation out (text loss) |
| `speech_pretrain_text` | 2a | `speech_decoder` alone, as a causal LM | decoder-BPE text prefix, then units |
| `speech_pretrain` | 2b | projection + speaker slot + `speech_decoder` | LLM hidden states -> units, interleaved M:N |
| `sft` | 3 | all but `audio_encoder` | speech-to-speech and text-to-speech conversations |
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING

from transformers.utils import logging


if TYPE_CHECKING:  # torch is not imported at module level: the opens2s CLI reads the presets for --help
    from torch import nn


__all__ = [
    "DEFAULT_LORA_TARGET_MODULES",
    "STAGE_PRESETS",
    "StagePreset",
    "apply_stage",
    "build_lora_config",
    "get_stage",
    "trainable_parts",
]

logger = logging.get_logger(__name__)

# The LLM projections the original adds LoRA to (`lora_target_modules` of its train.py).
DEFAULT_LORA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
LLM_PART = "language_model"
SPEECH_HEAD_PARTS = ("hidden_projection", "hidden_norm", "speaker_projection", "speaker_norm")


@dataclass(frozen=True)
class StagePreset:
    r"""
    One training stage.

    Args:
        name (`str`): the key in [`STAGE_PRESETS`] (the value of `--stage`).
        paper_stage (`str`): the stage of the paper's section 2.2 it implements.
        description (`str`): one line for logs and `--help`.
        trainable (`tuple[str, ...]`):
            Parts of the model (see [`OpenS2SForConditionalGeneration.parts`]) whose parameters train; the rest is
            frozen.
        model_part (`str`, *optional*):
            Part the trainer trains *on its own* (its own forward and loss, its own checkpoints); `None` trains the
            whole model through [`OpenS2SForConditionalGeneration.forward`].
        row_format (`str`, *optional*, defaults to `"conversation"`):
            `"conversation"` (rows of messages, [`OpenS2SDataCollator`]) or `"text_to_units"` (rows of text and the
            units that speak it, [`OpenS2STextToUnitsCollator`]).
        use_speech_units (`bool`, *optional*, defaults to `True`):
            Whether spoken answers keep their units (speech loss); `False` turns them into plain assistant text.
    """

    name: str
    paper_stage: str
    description: str
    trainable: tuple[str, ...]
    model_part: str | None = None
    row_format: str = "conversation"
    use_speech_units: bool = True

    @property
    def trains_llm(self) -> bool:
        """Whether the LLM trains in this stage (LoRA on the LLM is only offered then)."""
        return LLM_PART in self.trainable


STAGE_PRESETS: dict[str, StagePreset] = {
    preset.name: preset
    for preset in (
        StagePreset(
            name="align",
            paper_stage="1",
            description="speech understanding pre-training (BLSP-Emo alignment): only the audio adapter trains",
            trainable=("audio_adapter",),
            use_speech_units=False,
        ),
        StagePreset(
            name="speech_pretrain_text",
            paper_stage="2a",
            description="speech generation pre-training, text prefix: the speech decoder learns text -> units",
            trainable=("speech_decoder",),
            model_part="speech_decoder",
            row_format="text_to_units",
        ),
        StagePreset(
            name="speech_pretrain",
            paper_stage="2b",
            description="speech generation pre-training: LLM hidden states -> units (interleaved); LLM frozen",
            trainable=(*SPEECH_HEAD_PARTS, "speech_decoder"),
        ),
        StagePreset(
            name="sft",
            paper_stage="3",
            description="empathetic instruction fine-tuning: all but the audio encoder train (text + unit loss)",
            trainable=("audio_adapter", LLM_PART, *SPEECH_HEAD_PARTS, "speech_decoder"),
        ),
    )
}


def get_stage(name: str) -> StagePreset:
    """The preset called `name`; a `ValueError` lists the valid names."""
    if name not in STAGE_PRESETS:
        raise ValueError(f"unknown stage {name!r}; choose one of {', '.join(STAGE_PRESETS)}")
    return STAGE_PRESETS[name]


def apply_stage(model: "nn.Module", preset: StagePreset) -> "nn.Module":
    """Freeze every parameter of `model` outside `preset.trainable`, unfreeze the rest, and return the module the
    trainer trains: `model` itself, or its `preset.model_part` part (the speech decoder in stage 2a).

    The module returned shares its parameters with `model`, so training it updates `model` in place.
    """
    parts = model.parts()
    unknown = [part for part in (*preset.trainable, preset.model_part or ()) if part and part not in parts]
    if unknown:
        raise ValueError(f"stage {preset.name!r} names parts the model lacks: {unknown}; it has {list(parts)}")
    model.requires_grad_(False)
    for name in preset.trainable:
        for module in parts[name]:
            module.requires_grad_(True)
    counts = trainable_parts(model)
    summary = ", ".join(f"{part} {trained:,}/{total:,}" for part, (trained, total) in counts.items())
    logger.info(
        "Stage %s (paper stage %s): trainable parameters per part: %s", preset.name, preset.paper_stage, summary
    )
    if preset.model_part is None:
        return model
    (part,) = parts[preset.model_part]
    return part


def trainable_parts(model: "nn.Module") -> dict[str, tuple[int, int]]:
    """`{part name: (trainable parameters, all parameters)}` for every part of `model` (`model.parts()`)."""
    counts = {}
    for name, modules in model.parts().items():
        parameters = [p for module in modules for p in module.parameters()]
        counts[name] = (sum(p.numel() for p in parameters if p.requires_grad), sum(p.numel() for p in parameters))
    return counts


def build_lora_config(
    preset: StagePreset,
    r: int = 16,
    lora_alpha: int = 16,
    lora_dropout: float = 0.05,
    target_modules: list[str] | tuple[str, ...] | None = None,
):
    """A `peft.LoraConfig` that puts LoRA on the LLM only and trains the stage's other parts fully.

    LoRA goes on the LLM's `target_modules` (default [`DEFAULT_LORA_TARGET_MODULES`]), matched with a regular
    expression under `language_model.` (the LLM is `model.language_model`) so that the speech decoder's layers of the
    same names stay out. The stage's other trainable parts go to `modules_to_save`: the adapter file then holds
    everything the stage trained, and `merge_and_unload()` gives a complete model. Only stages that train the LLM
    accept LoRA.
    """
    from peft import LoraConfig

    if not preset.trains_llm:
        raise ValueError(
            f"LoRA adapts the LLM, which stage {preset.name!r} keeps frozen; use it with a stage that trains it"
        )
    names = "|".join(target_modules or DEFAULT_LORA_TARGET_MODULES)
    return LoraConfig(
        r=r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=rf"(.*\.)?{LLM_PART}\..*\.({names})",
        modules_to_save=[part for part in preset.trainable if part != LLM_PART],
        bias="none",
    )
