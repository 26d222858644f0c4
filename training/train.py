# /// script
# requires-python = ">=3.10"
# dependencies = [
#     "opens2s[train]",
# ]
# ///
"""Train OpenS2S: one stage of the paper's section 2.2 (arXiv 2507.05177) per run.

One process (CPU or one GPU):

    python -m opens2s.training.train \\
        --stage sft \\
        --model_name_or_path path/to/opens2s-folder \\
        --dataset_name data/train.jsonl \\
        --output_dir opens2s-sft \\
        --per_device_train_batch_size 4 --gradient_accumulation_steps 16 --learning_rate 2e-5 --bf16

Several GPUs (pick `multi_gpu_ddp`, `deepspeed_zero2`, `deepspeed_zero3` or `fsdp` in `training/accelerate_configs/`):

    accelerate launch --config_file training/accelerate_configs/multi_gpu_ddp.yaml -m opens2s.training.train \\
        --stage sft --model_name_or_path path/to/opens2s-folder --dataset_name data/train.jsonl \\
        --output_dir opens2s-sft --bf16 --gradient_accumulation_steps 16

CPU, two processes (gloo), as the tests run it (`--cpu --num_processes 2` starts only ONE process in accelerate
1.15: its simple launcher forks several only through mpirun):

    accelerate launch --multi_gpu --num_processes 2 -m opens2s.training.train --stage sft ... --use_cpu --bf16 False

The same through the CLI: `opens2s train --stage sft --model FOLDER --data data/train.jsonl [--lora] [-- ARGS...]`.

Stages: `align` (1), `speech_pretrain_text` (2a), `speech_pretrain` (2b), `sft` (3); see `opens2s.training.stages`.
`--dataset_name` is a jsonl file in the original format, a `save_to_disk` folder, or a Hub id / local folder that
`datasets.load_dataset` reads (`--dataset_config`, `--dataset_train_split`); relative audio paths resolve against
`--audio_root`. The model folder loads with the installed opens2s classes, after a check against its
`checksums.sha256` when it has one (`--verify_checksums False` skips it); `--trust_remote_code` runs the folder's own
code instead. `--lora` (or `--use_peft`) trains LoRA on the LLM with `--lora_r/--lora_alpha/--lora_dropout/
--lora_target_modules`; `--resume_from_checkpoint` continues from a checkpoint folder (or `True`: the latest one in
`--output_dir`). Everything else is [`~trl.SFTConfig`] / [`~transformers.TrainingArguments`].

Output in `--output_dir`: the trained OpenS2S folder (weights, config, processor, remote code, speech generation
config), loadable with `AutoModel.from_pretrained(dir, trust_remote_code=True)`. With `--lora`: the adapter (with the
stage's fully trained parts) and, unless `--merge_lora False`, the merged model in `merged/`. Stage 2a also leaves the
trained decoder alone in `speech_decoder/`. The token2wav decoder is not copied: attach it with
`model.attach_token2wav("path/to/opens2s-folder/token2wav")`.
"""

import functools
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path


__all__ = ["build_peft_config", "main", "parse_arguments", "resolve_resume_checkpoint", "save_trained_model"]

logger = logging.getLogger(__name__)

ACCELERATE_CONFIGS = Path(__file__).parent / "accelerate_configs"


@functools.cache
def _script_arguments_class():
    """TRL's `ScriptArguments` plus `audio_root`; defined on first use so that importing this module (the opens2s CLI
    does) does not import trl."""
    from trl import ScriptArguments

    @dataclass
    class OpenS2SScriptArguments(ScriptArguments):
        """TRL's script arguments plus `audio_root`, the folder relative audio and speaker-embedding paths are in, and
        `verify_checksums`."""

        audio_root: str | None = field(
            default=None,
            metadata={"help": "Folder relative audio paths are relative to (default: next to the jsonl file)."},
        )
        verify_checksums: bool = field(
            default=True,
            metadata={"help": "Check a local model folder against its checksums.sha256 before loading it."},
        )

    return OpenS2SScriptArguments


def parse_arguments(argv: list[str] | None = None):
    """`(script_args, training_args, model_args)` from `argv` (default `sys.argv[1:]`) and an optional `--config`."""
    from trl import ModelConfig, TrlParser

    from opens2s.training.config import OpenS2SSFTConfig

    parser = TrlParser((_script_arguments_class(), OpenS2SSFTConfig, ModelConfig))
    return parser.parse_args_and_config(args=argv)


def build_peft_config(training_args, model_args, preset):
    """The stage's LoRA config from `ModelConfig`'s LoRA fields, or `None` without `--lora` / `--use_peft`."""
    from opens2s.training.stages import build_lora_config

    if not (training_args.lora or model_args.use_peft):
        return None
    training_args.lora = True
    return build_lora_config(
        preset, model_args.lora_r, model_args.lora_alpha, model_args.lora_dropout, model_args.lora_target_modules
    )


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, train the stage, save the result; returns the exit status."""
    import transformers

    from opens2s.processing.loading import load_opens2s_model, load_opens2s_processor, verify_model_folder
    from opens2s.training.data import load_training_dataset
    from opens2s.training.stages import get_stage
    from opens2s.training.trainer import OpenS2STrainer

    script_args, training_args, model_args = parse_arguments(argv)
    log_level = training_args.get_process_log_level()  # --log_level / --log_level_replica (default: warning)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    # With the default (passive) level the main process still shows our own lines: stage, precision, parameters.
    passive_main = training_args.log_level == "passive" and training_args.should_log
    logging.getLogger("opens2s").setLevel(logging.INFO if passive_main else log_level)
    transformers.utils.logging.set_verbosity(log_level)
    if not model_args.model_name_or_path or not script_args.dataset_name:
        raise ValueError("--model_name_or_path (opens2s train: --model) and --dataset_name (--data) are required")
    resume_from = resolve_resume_checkpoint(training_args.resume_from_checkpoint, training_args.output_dir)
    precision = "bf16 mixed" if training_args.bf16 else "fp16 mixed" if training_args.fp16 else "fp32"
    logger.info(
        "Training on %s in %s precision (default: bf16 where the accelerator supports it, else fp32; --bf16 / --fp16 "
        "choose)",
        training_args.device,
        precision,
    )
    preset = get_stage(training_args.stage)
    source = model_args.model_name_or_path
    if script_args.verify_checksums:
        verify_model_folder(source)
    # The installed classes unless --trust_remote_code: the folder's own files run only when asked for.
    load_kwargs = {"trust_remote_code": training_args.trust_remote_code, "revision": model_args.model_revision}
    processor = load_opens2s_processor(source, **load_kwargs)
    model = load_opens2s_model(
        source, dtype=model_args.dtype, attn_implementation=model_args.attn_implementation, **load_kwargs
    )
    dataset = load_training_dataset(
        script_args.dataset_name,
        audio_root=script_args.audio_root,
        num_units=processor.num_units,
        row_format=preset.row_format,
        split=script_args.dataset_train_split,
        dataset_config=script_args.dataset_config,
        speaker_embedding_dim=model.config.speaker_embedding_dim,
        max_audio_seconds=processor.feature_extractor.max_audio_seconds,
    )
    trainer = OpenS2STrainer(
        model,
        args=training_args,
        train_dataset=dataset,
        processing_class=processor,
        peft_config=build_peft_config(training_args, model_args, preset),
    )
    result = trainer.train(resume_from_checkpoint=resume_from)
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    save_trained_model(trainer, training_args.output_dir, processor)
    return 0


def resolve_resume_checkpoint(value: str | None, output_dir: str | Path) -> str | None:
    """The checkpoint folder `--resume_from_checkpoint VALUE` names: `True` (any case) is the latest
    `checkpoint-*` folder in `output_dir` (a `ValueError` when there is none), `False` is none, anything else a
    folder as given."""
    from transformers.trainer_utils import get_last_checkpoint

    if value is None or value.lower() == "false":
        return None
    if value.lower() != "true":
        return value
    latest = get_last_checkpoint(str(output_dir)) if Path(output_dir).is_dir() else None
    if latest is None:
        raise ValueError(f"--resume_from_checkpoint True: no checkpoint-* folder in --output_dir {output_dir}")
    logger.info("Resuming from the latest checkpoint, %s", latest)
    return latest


def save_trained_model(trainer, output_dir: str | Path, processor) -> Path:
    """Write the result of `trainer` to `output_dir` as an OpenS2S folder that `AutoModel` loads.

    The trained module goes through `trainer.save_model` (which gathers DeepSpeed / FSDP shards): the full model,
    the LoRA adapter (then, with `args.merge_lora`, the merged model in `merged/`), or the speech decoder of stage 2a
    (in `speech_decoder/`, then put back into the full model saved in `output_dir`). The speech generation config of
    the source folder is copied along.
    """
    output_dir = Path(output_dir)
    full_model = trainer.opens2s_model
    if trainer.stage.model_part:
        part_dir = output_dir / trainer.stage.model_part
        trainer.save_model(str(part_dir))
        if trainer.accelerator.is_main_process:
            from safetensors.torch import load_file

            part = getattr(full_model, trainer.stage.model_part)
            state = {}
            for shard in sorted(part_dir.glob("*.safetensors")):
                state.update(load_file(shard))
            part.load_state_dict(state)
            _save_folder(full_model, processor, output_dir)
    else:
        trainer.save_model(str(output_dir))
        if trainer.accelerator.is_main_process:
            if trainer.args.lora and trainer.args.merge_lora:
                merged = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
                _save_folder(merged, processor, output_dir / "merged")
            _save_speech_generation_config(full_model, output_dir)
    trainer.accelerator.wait_for_everyone()
    return output_dir


def _save_folder(model, processor, output_dir: Path) -> None:
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    _save_speech_generation_config(model, output_dir)
    logger.info("Saved the trained OpenS2S model to %s", output_dir)


def _save_speech_generation_config(model, output_dir: Path) -> None:
    from transformers import GenerationConfig

    from opens2s.conversion.convert_original_opens2s import SPEECH_GENERATION_CONFIG_NAME

    try:
        config = GenerationConfig.from_pretrained(model.name_or_path, config_file_name=SPEECH_GENERATION_CONFIG_NAME)
    except (OSError, ValueError):
        logger.warning("%s has no %s to copy", model.name_or_path, SPEECH_GENERATION_CONFIG_NAME)
        return
    config.save_pretrained(output_dir, config_file_name=SPEECH_GENERATION_CONFIG_NAME)


if __name__ == "__main__":
    sys.exit(main())
