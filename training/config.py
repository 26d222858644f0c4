"""Configuration of [`OpenS2STrainer`]: TRL's `SFTConfig` plus the OpenS2S stage, loss weights and LoRA switch."""

from dataclasses import dataclass, field
from typing import Any

from transformers.utils import is_torch_bf16_gpu_available
from trl import SFTConfig

from opens2s.processing.prompt_format import DEFAULT_SYSTEM_PROMPT, PROMPT_LAYOUTS
from opens2s.training.stages import STAGE_PRESETS


__all__ = ["OpenS2SSFTConfig"]


@dataclass
class OpenS2SSFTConfig(SFTConfig):
    r"""
    Configuration class for [`OpenS2STrainer`].

    It adds the OpenS2S training stage, the weights of the two losses and LoRA on the LLM to [`~trl.SFTConfig`]; see
    that class and [`~transformers.TrainingArguments`] for everything else (precision, gradient accumulation and
    checkpointing, resuming, saving, logging).

    Parameters:
        > Parameters that choose the training stage

        stage (`str`, *optional*, defaults to `"sft"`):
            Name of a preset of [`STAGE_PRESETS`]: `"align"` (paper stage 1, only the adapter trains),
            `"speech_pretrain_text"` (stage 2a, the speech decoder learns text -> units), `"speech_pretrain"`
            (stage 2b, LLM hidden states -> units), `"sft"` (stage 3, all but the audio encoder).

        > Parameters that control the loss

        text_loss_weight (`float`, *optional*):
            Weight of the LLM cross-entropy in the total loss. Written into `model.config.text_loss_weight` (and so
            saved with the model); `None` keeps the model's value.
        speech_loss_weight (`float`, *optional*):
            Weight of the speech-unit cross-entropy, written into `model.config.speech_loss_weight`; `None` keeps the
            model's value. Stage 2a trains on the unit loss alone and ignores both weights.

        > Parameters that control the data

        system_prompt (`str`, *optional*, defaults to `"You are a helpful assistant."`):
            System turn put before every conversation by the collator (the original training prompt).
        prompt_layout (`str`, *optional*, defaults to `"inference"`):
            How the collator lays out and tokenises a conversation: `"inference"` exactly as the processor's chat
            template does at inference (`<think>\n\n</think>\n\n` after every assistant header), `"original"` as
            the original OpenS2S training did (`<think></think>`, each piece tokenised on its own; reproduces the
            original's losses, but trains on other ids than the model is prompted with).

        > Parameters that control LoRA

        lora (`bool`, *optional*, defaults to `False`):
            Train LoRA adapters on the LLM instead of the LLM itself (stages that train the LLM only); the stage's
            other trainable parts train fully and are saved with the adapter (`modules_to_save`). The trainer then
            uses [`build_lora_config`] with its defaults unless a `peft_config` is passed; the training script builds
            it from TRL's `ModelConfig` (`--lora_r`, `--lora_alpha`, `--lora_dropout`, `--lora_target_modules`).
        merge_lora (`bool`, *optional*, defaults to `True`):
            With `lora`, the training script also writes the merged full model to `<output_dir>/merged`.

    > [!NOTE]
    > These parameters have default values different from [`~trl.SFTConfig`]:
    > - `remove_unused_columns`: `False` (the collator reads the raw `messages` / audio columns).
    > - `dataset_kwargs`: `{"skip_prepare_dataset": True}` (no text-only tokenisation by TRL; the collator does it).
    > - `max_length`: `None` (rows are never truncated: cutting an audio placeholder run would break the batch).
    > - `bf16`: chosen from the hardware when neither `bf16` nor `fp16` is given: `True` on an accelerator that
    >   supports bf16 (and without `use_cpu`), else `False` (fp32). SFTConfig's `True` everywhere fails on a CPU.
    """

    stage: str = field(
        default="sft",
        metadata={"help": "Training stage preset.", "choices": list(STAGE_PRESETS)},
    )
    text_loss_weight: float | None = field(
        default=None,
        metadata={"help": "Weight of the text loss (written into model.config); None keeps the model's value."},
    )
    speech_loss_weight: float | None = field(
        default=None,
        metadata={"help": "Weight of the speech-unit loss (written into model.config); None keeps the model's value."},
    )
    system_prompt: str = field(
        default=DEFAULT_SYSTEM_PROMPT,
        metadata={"help": "System turn of every training conversation."},
    )
    prompt_layout: str = field(
        default="inference",
        metadata={
            "help": "Training prompt layout: 'inference' (the chat template's) or 'original' (the original OpenS2S "
            "training layout).",
            "choices": list(PROMPT_LAYOUTS),
        },
    )
    lora: bool = field(default=False, metadata={"help": "Train LoRA adapters on the LLM instead of the LLM itself."})
    merge_lora: bool = field(
        default=True, metadata={"help": "With --lora, also save the merged model to <output_dir>/merged."}
    )

    # Defaults that differ from SFTConfig.
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep the raw columns: the OpenS2S collator reads them."}
    )
    dataset_kwargs: dict[str, Any] | str | None = field(
        default_factory=lambda: {"skip_prepare_dataset": True},
        metadata={"help": "Dataset preparation options; OpenS2S skips TRL's text-only preparation."},
    )
    max_length: int | None = field(
        default=None, metadata={"help": "Unused: OpenS2S rows are not truncated (audio placeholders must stay whole)."}
    )
    bf16: bool | None = field(
        default=None,
        metadata={
            "help": "bf16 mixed precision. Default: on when the accelerator supports bf16 (not with --use_cpu) and "
            "--fp16 is not set; otherwise fp32."
        },
    )

    def __post_init__(self):
        if self.bf16 is None:
            self.bf16 = not self.fp16 and not self.use_cpu and is_torch_bf16_gpu_available()
        super().__post_init__()
        if self.stage not in STAGE_PRESETS:
            raise ValueError(f"unknown stage {self.stage!r}; choose one of {', '.join(STAGE_PRESETS)}")
        if self.prompt_layout not in PROMPT_LAYOUTS:
            raise ValueError(
                f"unknown prompt_layout {self.prompt_layout!r}; choose one of {', '.join(PROMPT_LAYOUTS)}"
            )
        for name in ("text_loss_weight", "speech_loss_weight"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
