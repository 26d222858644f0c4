"""Settings of the data pipeline: one dataclass, saved in the work folder, and its command-line form.

Importing this module is cheap (standard library only): `opens2s --help` builds the `data` parser from it.
"""

import argparse
import json
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any


__all__ = ["CONFIG_FILE", "STAGES", "PipelineConfig", "add_config_arguments", "config_from_arguments"]

# The stages in pipeline order; each reads the output of the one before it.
STAGES = ("seed", "instructions", "user_speech", "responses", "response_speech", "units", "push")
CONFIG_FILE = "config.json"
# Never written to the work folder.
_SECRET_FIELDS = ("llm_api_key",)


@dataclass
class PipelineConfig:
    r"""
    Settings of the data-construction pipeline (paper section 3.2). Every field is a `--flag` of `opens2s data`.

    Parameters:
        > Work folder and seed data

        workdir (`Path`): folder of every stage's output, audio files, manifests and this config.
        seed_data (`str`, *optional*): the annotated seed audio: a `.csv` / `.jsonl` / `.json` file (columns `audio`,
            `transcript`, `emotion`, `age`, `gender`, optional `id`, `speaker`, `language`), a `save_to_disk` folder,
            or a Hub dataset id. Needed by the `seed` stage only.
        seed_split (`str`, *optional*, defaults to `"train"`): split of a Hub or folder dataset.
        seed_config (`str`, *optional*): configuration name of a Hub dataset.
        audio_root (`str`, *optional*): folder that relative audio paths of a csv/jsonl file are relative to
            (default: the file's folder).
        language (`str`, *optional*, defaults to `"en"`): language of seed rows without a `language` column; a
            language needs prompt templates (`en` and `zh` ship).
        min_seed_seconds / max_seed_seconds (`float`, *optional*, defaults to 0.5 / 30): usable seed clip lengths.

        > LLM (instructions and replies)

        llm (`str`, *optional*, defaults to `"openai"`): backend name: `"openai"` (any OpenAI-compatible
            chat-completions endpoint: OpenAI, vLLM, TGI, ollama, llama.cpp), `"transformers"` (a local model), or a
            name registered with `register_llm_backend`.
        llm_model (`str`, *optional*): the model the endpoint serves, or the transformers model id / folder.
        llm_base_url (`str`, *optional*, defaults to `"http://127.0.0.1:8000/v1"`): endpoint of the `openai` backend.
        llm_api_key (`str`, *optional*): bearer token (default `$OPENAI_API_KEY`); never saved in the work folder.
        llm_timeout, llm_max_retries, llm_backoff: per-request timeout (s), retries and first backoff (s, doubled).
        requests_per_second (`float`, *optional*): request-rate limit of the `openai` backend (all workers).
        llm_workers (`int`, *optional*, defaults to 4): concurrent requests (the `transformers` backend uses 1).
        llm_json_mode (`bool`, *optional*, defaults to `False`): send `response_format={"type": "json_object"}`.
        llm_max_tokens (`int`, *optional*, defaults to 1024): reply budget per request.
        instruction_temperature / response_temperature (`float`, *optional*, defaults to 0.9 / 0.7): sampling.
        num_instructions (`int`, *optional*, defaults to 3): instructions written per seed (before dedup).
        prompts_dir (`str`, *optional*): folder of `instructions.<lang>.txt` / `responses.<lang>.txt` templates that
            replace the shipped ones (see `dataset_scripts/prompts/`).

        > Speech

        tts (`str`, *optional*, defaults to `"auto"`): voice-cloning backend of the user speech: `"cosyvoice2"`,
            `"espeak"` (the built-in fallback, espeak-ng's CLI) or `"auto"` (CosyVoice2 when its package imports and
            `cosyvoice_model` is a folder, else espeak-ng with a warning).
        response_tts (`str`, *optional*): instruct-TTS backend of the replies (default: as `tts`).
        response_voice (`str`, *optional*): the one reply voice: an espeak-ng variant (default `"f3"`), or for
            CosyVoice2 a prompt wav (required there).
        cosyvoice_model (`str`, *optional*, defaults to `"pretrained_models/CosyVoice2-0.5B"`): CosyVoice2 folder.
        tts_workers (`int`, *optional*, defaults to 2): concurrent syntheses (espeak-ng runs as a subprocess).
        speech_tokenizer (`str`, *optional*, defaults to `"THUDM/glm-4-voice-tokenizer"`): speech tokenizer (units).
        units_batch_size (`int`, *optional*, defaults to 16): audios encoded per forward pass.
        device (`str`, *optional*, defaults to `"cpu"`): device of the speech tokenizer and a local LLM.

        > Resuming and output

        chunk_size (`int`, *optional*, defaults to 64): rows per committed part; a kill loses at most one part.
        retry_failed (`bool`, *optional*, defaults to `True`): a re-run retries rows that failed before.
        max_consecutive_failures (`int`, *optional*, defaults to 50): stop a stage when this many backend calls
            in a row fail (an endpoint down); finished rows are kept and a re-run continues.
        repo_id (`str`, *optional*): Hub dataset repo of the `push` stage (else it saves to `WORKDIR/push/dataset`).
        private (`bool`, *optional*, defaults to `False`): create the Hub repo private.
        seed (`int`, *optional*, defaults to 0): base of the per-row sampling seeds (reproducible replies).
    """

    workdir: Path = field(metadata={"help": "work folder: stage outputs, audio, manifests, config.json"})
    seed_data: str | None = field(default=None, metadata={"help": "seed csv/jsonl file, datasets folder or Hub id"})
    seed_split: str = field(default="train", metadata={"help": "split of a Hub/folder seed dataset"})
    seed_config: str | None = field(default=None, metadata={"help": "configuration of a Hub seed dataset"})
    audio_root: str | None = field(default=None, metadata={"help": "root of relative seed audio paths"})
    language: str = field(default="en", metadata={"help": "language of seed rows without a language column"})
    min_seed_seconds: float = field(default=0.5, metadata={"help": "shortest usable seed clip (s)"})
    max_seed_seconds: float = field(default=30.0, metadata={"help": "longest usable seed clip (s)"})
    llm: str = field(default="openai", metadata={"help": "LLM backend: openai, transformers or a registered name"})
    llm_model: str | None = field(default=None, metadata={"help": "model served by the endpoint / local model id"})
    llm_base_url: str = field(default="http://127.0.0.1:8000/v1", metadata={"help": "OpenAI-compatible base URL"})
    llm_api_key: str | None = field(default=None, metadata={"help": "bearer token (default $OPENAI_API_KEY)"})
    llm_timeout: float = field(default=120.0, metadata={"help": "seconds per LLM request"})
    llm_max_retries: int = field(default=5, metadata={"help": "retries of a failed LLM request"})
    llm_backoff: float = field(default=1.0, metadata={"help": "first retry wait (s), doubled each retry"})
    requests_per_second: float | None = field(default=None, metadata={"help": "LLM request-rate limit"})
    llm_workers: int = field(default=4, metadata={"help": "concurrent LLM requests"})
    llm_json_mode: bool = field(default=False, metadata={"help": "ask the endpoint for a JSON object reply"})
    llm_max_tokens: int = field(default=1024, metadata={"help": "LLM reply budget (tokens)"})
    instruction_temperature: float = field(default=0.9, metadata={"help": "sampling temperature of instructions"})
    response_temperature: float = field(default=0.7, metadata={"help": "sampling temperature of replies"})
    num_instructions: int = field(default=3, metadata={"help": "instructions per seed (before dedup)"})
    prompts_dir: str | None = field(default=None, metadata={"help": "folder of prompt templates to use instead"})
    tts: str = field(default="auto", metadata={"help": "voice cloning backend: auto, cosyvoice2, espeak"})
    response_tts: str | None = field(default=None, metadata={"help": "instruct-TTS backend (default: --tts)"})
    response_voice: str | None = field(default=None, metadata={"help": "reply voice (espeak variant / prompt wav)"})
    cosyvoice_model: str = field(
        default="pretrained_models/CosyVoice2-0.5B", metadata={"help": "CosyVoice2 model folder"}
    )
    tts_workers: int = field(default=2, metadata={"help": "concurrent speech syntheses"})
    speech_tokenizer: str = field(default="THUDM/glm-4-voice-tokenizer", metadata={"help": "speech tokenizer"})
    units_batch_size: int = field(default=16, metadata={"help": "audios per speech tokenizer forward pass"})
    device: str = field(default="cpu", metadata={"help": "device of the speech tokenizer and a local LLM"})
    chunk_size: int = field(default=64, metadata={"help": "rows per committed part (resume granularity)"})
    retry_failed: bool = field(default=True, metadata={"help": "retry rows that failed in an earlier run"})
    max_consecutive_failures: int = field(default=50, metadata={"help": "stop after this many failed calls in a row"})
    repo_id: str | None = field(default=None, metadata={"help": "Hub dataset repo of the push stage"})
    private: bool = field(default=False, metadata={"help": "create the Hub repo private"})
    seed: int = field(default=0, metadata={"help": "base of the per-row sampling seeds"})

    def __post_init__(self):
        self.workdir = Path(self.workdir)
        for name in ("num_instructions", "chunk_size", "llm_workers", "tts_workers", "units_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.min_seed_seconds > self.max_seed_seconds:
            raise ValueError("min_seed_seconds must not exceed max_seed_seconds")

    def to_dict(self, secrets: bool = False) -> dict[str, Any]:
        """JSON-ready values; the API key is left out unless `secrets=True`."""
        values = asdict(self)
        values["workdir"] = str(self.workdir)
        if not secrets:
            for name in _SECRET_FIELDS:
                values.pop(name)
        return values

    def save(self) -> Path:
        """Write the settings (without secrets) to `workdir/config.json`, so that a re-run can omit them."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        path = self.workdir / CONFIG_FILE
        temporary = path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        temporary.replace(path)
        return path

    @classmethod
    def load(cls, workdir: str | Path, **overrides) -> "PipelineConfig":
        """The settings saved in `workdir/config.json` (if any), updated with `overrides`."""
        path = Path(workdir) / CONFIG_FILE
        values = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        known = {f.name for f in fields(cls)}
        values = {key: value for key, value in values.items() if key in known}
        return cls(**{**values, **overrides, "workdir": Path(workdir)})


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _base_type(annotation) -> type:
    """`int` of `int`, `str` of `str | None`."""
    return next((arg for arg in typing.get_args(annotation) if arg is not type(None)), annotation)


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One `--flag` per [`PipelineConfig`] field (`--workdir` required). Flags left out keep the value saved in
    `WORKDIR/config.json` by an earlier run, then the `--config` file's, then the default."""
    parser.add_argument("--config", type=Path, help="JSON file of settings (flags given here win)")
    for spec in fields(PipelineConfig):
        kind = _base_type(spec.type)
        help_text = spec.metadata.get("help", "")
        if spec.default is not MISSING and spec.default is not None:
            help_text += f" (default: {spec.default})"
        if spec.name == "workdir":
            parser.add_argument(_flag(spec.name), type=Path, required=True, help=help_text)
        elif kind is bool:
            parser.add_argument(
                _flag(spec.name), type=_parse_bool, nargs="?", const=True, default=argparse.SUPPRESS, help=help_text
            )
        else:
            cast = kind if kind in (int, float) else str
            parser.add_argument(_flag(spec.name), type=cast, default=argparse.SUPPRESS, help=help_text)


def config_from_arguments(args: argparse.Namespace) -> PipelineConfig:
    """Settings from parsed arguments: saved `config.json` < `--config` file < flags given."""
    names = {spec.name for spec in fields(PipelineConfig)}
    overrides = {}
    if getattr(args, "config", None) is not None:
        overrides.update(json.loads(Path(args.config).read_text(encoding="utf-8")))
        unknown = set(overrides) - names
        if unknown:
            raise ValueError(f"{args.config}: unknown settings {sorted(unknown)}")
    overrides.update({name: value for name, value in vars(args).items() if name in names and name != "workdir"})
    return PipelineConfig.load(args.workdir, **overrides)
