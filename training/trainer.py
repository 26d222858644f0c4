"""[`OpenS2STrainer`]: TRL's `SFTTrainer` on interleaved speech/text conversations."""

import dataclasses

import torch
from transformers import AutoModel, AutoProcessor, PreTrainedModel, TrainingArguments
from transformers.utils import logging
from trl import SFTTrainer
from trl.trainer.utils import get_config_model_id

from opens2s.training.collator import build_collator
from opens2s.training.config import OpenS2SSFTConfig
from opens2s.training.stages import apply_stage, build_lora_config, get_stage


__all__ = ["OpenS2STrainer"]

logger = logging.get_logger(__name__)


class OpenS2STrainer(SFTTrainer):
    r"""
    Trainer for OpenS2S (arXiv 2507.05177): text cross-entropy + speech-unit cross-entropy on interleaved
    conversations, one training stage of the paper's section 2.2 per run.

    The only change w.r.t. [`~trl.SFTTrainer`] is `compute_loss`: it runs `model(**inputs)` (the full OpenS2S forward:
    audio encoder, adapter, LLM, interleaved speech decoder) and returns the model's own `loss` =
    `text_loss_weight * text_loss + speech_loss_weight * speech_loss`, logging `text_loss` and `speech_loss` averaged
    over processes. It never uses the fused LM head that `SFTTrainer` installs (that path would skip the audio encoder
    and the speech decoder). Everything else (optimiser, schedules, precision, gradient accumulation and
    checkpointing, saving, resuming, PEFT, distributed training) is inherited unchanged.

    `__init__` only fills in what SFTTrainer cannot know:

    - the stage preset of `args.stage` freezes the parts that do not train ([`apply_stage`]); for stage 2a
      (`speech_pretrain_text`) the trainer trains the speech decoder alone, as the causal LM it is, with the unit
      tokenizer as its processing class (its checkpoints are speech-decoder folders; `trainer.opens2s_model` is the
      full model, updated in place);
    - the default collator is the stage's ([`build_collator`]), the default processor the model's own;
    - `args.lora` builds the LoRA config of the stage ([`build_lora_config`]) when no `peft_config` is passed;
    - `args.text_loss_weight` / `args.speech_loss_weight`, when set, are written into `model.config`.

    With gradient accumulation the text and speech losses are sums over the micro-batch divided by the target counts
    of the whole optimiser step (`num_items_in_batch` as `Trainer` counts it for `labels`, and
    `num_speech_items_in_batch` for the units, counted here), so accumulating micro-batches gives the loss and the
    gradient of the full batch; without accumulation each is the plain mean over its targets, as in the original.

    Args:
        model (`str` or [`PreTrainedModel`]): an OpenS2S model, or a folder / Hub id loaded with `AutoModel` (with
            `args.trust_remote_code` and `args.model_init_kwargs`).
        args ([`OpenS2SSFTConfig`], *optional*): defaults to `OpenS2SSFTConfig("<model name>-OpenS2S")`. A parent
            config (`trl.SFTConfig`, `transformers.TrainingArguments`) is converted, with the default stage (`sft`).
        data_collator (`Callable`, *optional*): defaults to the stage's collator built on `processing_class`.
        processing_class ([`OpenS2SProcessor`], *optional*): defaults to `AutoProcessor` of the model's folder.
        peft_config ([`~peft.PeftConfig`], *optional*): LoRA config; defaults to the stage's when `args.lora`.
        kwargs: the other [`~trl.SFTTrainer`] arguments (`train_dataset`, `eval_dataset`, `callbacks`, ...).
    """

    _tag_names = ["trl", "opens2s"]
    _name = "OpenS2S"

    def __init__(
        self,
        model: "str | PreTrainedModel",
        args: OpenS2SSFTConfig | None = None,
        data_collator=None,
        processing_class=None,
        peft_config=None,
        **kwargs,
    ):
        if args is None:
            model_name = model if isinstance(model, str) else get_config_model_id(model.config)
            args = OpenS2SSFTConfig(f"{model_name.split('/')[-1]}-OpenS2S")
        elif isinstance(args, TrainingArguments) and not isinstance(args, OpenS2SSFTConfig):
            args = _as_opens2s_config(args)
        if isinstance(model, str):
            init_kwargs = {"trust_remote_code": args.trust_remote_code, **(args.model_init_kwargs or {})}
            model = AutoModel.from_pretrained(model, **init_kwargs)
        if processing_class is None:
            source = get_config_model_id(model.config)
            processing_class = AutoProcessor.from_pretrained(source, trust_remote_code=args.trust_remote_code)
        preset = get_stage(args.stage)
        for name in ("text_loss_weight", "speech_loss_weight"):
            if getattr(args, name) is not None:
                setattr(model.config, name, getattr(args, name))
        if peft_config is None and args.lora:
            peft_config = build_lora_config(preset)
        elif peft_config is not None and not preset.trains_llm:
            raise ValueError(f"stage {args.stage!r} keeps the LLM frozen: a peft_config has nothing to adapt")
        if data_collator is None:
            data_collator = build_collator(
                processing_class,
                preset.row_format,
                system_prompt=args.system_prompt,
                prompt_layout=args.prompt_layout,
                speaker_embedding_dim=model.config.speaker_embedding_dim,
                use_speech_units=preset.use_speech_units,
            )
        self.opens2s_model = model
        self.stage = preset
        trained = apply_stage(model, preset)
        super().__init__(
            trained,
            args=args,
            data_collator=data_collator,
            processing_class=processing_class if trained is model else processing_class.unit_tokenizer,
            peft_config=peft_config,
            **kwargs,
        )

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """`Trainer.get_batch_samples`, plus the speech targets of the step's micro-batches written into each one as
        `num_speech_items_in_batch` (the speech counterpart of `num_items_in_batch`)."""
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        if num_items_in_batch is not None and self.model_accepts_loss_kwargs:
            # Every process joins the gather, with 0 for micro-batches without spoken answers: a process that
            # skipped it would leave the others waiting in it (and itself in DDP's next collective).
            total = torch.zeros((), dtype=torch.long, device=device)
            for batch in batch_samples:
                if "speech_units_mask" in batch:
                    total = total + batch["speech_units_mask"].sum().to(device)
            if self.args.average_tokens_across_devices and self.args.world_size > 1:
                total = self.accelerator.gather(total).sum()
            for batch in batch_samples:
                if "speech_units_mask" in batch:
                    batch["num_speech_items_in_batch"] = total
        return batch_samples, num_items_in_batch

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        if num_items_in_batch is not None and self.model_accepts_loss_kwargs:
            inputs = {**inputs, "num_items_in_batch": num_items_in_batch}
        else:
            inputs = {key: value for key, value in inputs.items() if key != "num_speech_items_in_batch"}
        outputs = model(**inputs, use_cache=False)
        if outputs.get("loss") is None:
            raise ValueError("the batch has neither `labels` nor `speech_units`: there is no loss to train on")
        text_loss, speech_loss = outputs.get("text_loss"), outputs.get("speech_loss")
        if text_loss is None and speech_loss is None:
            # Stage 2a trains the speech decoder alone: a causal LM over [text prefix, units], its loss the unit loss.
            speech_loss = outputs.loss
        elif "num_items_in_batch" in inputs:
            # Logged as means over this micro-batch's targets, whatever the accumulation.
            text_loss = _as_mean(text_loss, inputs["num_items_in_batch"], inputs["labels"][:, 1:].ne(-100).sum())
            speech_count = inputs.get("speech_units_mask")
            speech_loss = _as_mean(
                speech_loss,
                inputs.get("num_speech_items_in_batch"),
                None if speech_count is None else speech_count.sum(),
            )
        self._log_losses(mode, text_loss=text_loss, speech_loss=speech_loss)
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def _log_losses(self, mode: str, **losses: torch.Tensor | None) -> None:
        """Store each loss averaged over the processes that computed it, for `SFTTrainer.log`.

        Every process takes part in one fixed-size reduction per step, even for a loss it did not compute (a batch
        without spoken answers has no speech loss), so the collective never waits on a process that skipped it.
        """
        device = self.accelerator.device
        values = []
        for loss in losses.values():
            present = loss is not None
            values += [loss.detach().float() if present else torch.zeros((), device=device), float(present)]
        stacked = torch.stack([torch.as_tensor(value, dtype=torch.float32, device=device) for value in values])
        totals = self.accelerator.reduce(stacked, reduction="sum")
        for index, name in enumerate(losses):
            total, count = totals[2 * index], totals[2 * index + 1]
            if count > 0:
                self._metrics[mode][name].append((total / count).item())


def _as_mean(loss: torch.Tensor | None, step_items, micro_batch_items) -> torch.Tensor | None:
    """A loss summed over a micro-batch and divided by the step's target count, back as the micro-batch mean."""
    if loss is None or step_items is None or micro_batch_items is None or int(micro_batch_items) == 0:
        return loss
    return loss * step_items / micro_batch_items


def _as_opens2s_config(args: TrainingArguments) -> OpenS2SSFTConfig:
    """A parent config (`SFTConfig`, `TrainingArguments`) as an [`OpenS2SSFTConfig`]: the fields the user set (those
    that differ from the parent class's defaults) are kept; the rest, the stage included, take OpenS2S's defaults."""
    values = {"output_dir": args.output_dir}
    for field in dataclasses.fields(args):
        if not field.init:
            continue
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            default = dataclasses.MISSING
        value = getattr(args, field.name)  # not `to_dict()`: it masks every `*_token` field (eos_token included)
        if default is dataclasses.MISSING or value != default:
            values[field.name] = value
    return OpenS2SSFTConfig(**values)
