"""Convert an original OpenS2S checkpoint (`OmniSpeechModel` layout) into a transformers remote-code folder.

Source layout (CASIA-LM/OpenS2S): `config.json` of `OmniSpeechModel`, safetensors (sharded or not) with the prefixes
`audio_encoder_model.`, `audio_adapter.`, `llm_model.`, `tts_lm_model.`, `llm2tts.`, `llm_ln.`; the LLM tokenizer
and `generation_config.json` at the root; `tts/` with the unit tokenizer and its generation config; `audio/` with
the feature-extractor config. Tensors are streamed shard by shard, so the model is never held twice in memory.
"""

import json
import logging
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoTokenizer, GenerationConfig

from opens2s.conversion.checksums import write_checksums
from opens2s.conversion.convert_original_token2wav import (
    check_original_token2wav_folder,
    load_original_decoder_config,
    write_token2wav,
)
from opens2s.conversion.export import export_remote_code, staged_output
from opens2s.modeling_opens2s.configuration_opens2s import OpenS2SConfig, parse_interleave_strategy
from opens2s.modeling_opens2s.feature_extraction_opens2s import OpenS2SFeatureExtractor
from opens2s.modeling_opens2s.modeling_opens2s import TOKEN2WAV_SUBFOLDER
from opens2s.modeling_opens2s.processing_opens2s import OpenS2SProcessor, find_unit_tokens
from opens2s.modeling_opens2s.saving_opens2s import ORIGINAL_REPO, write_model_card
from opens2s.modeling_opens2s.streaming_opens2s import SPEECH_GENERATION_CONFIG_NAME


__all__ = [
    "SPEECH_GENERATION_CONFIG_NAME",
    "convert_original_checkpoint",
    "units_only_generation_config",
]

logger = logging.getLogger(__name__)

AUDIO_TOKEN = "<|im_audio|>"
MARKER_TOKENS = ["<|im_audio_start|>", "<|im_audio_end|>", "<|im_tts_start|>", "<|im_tts_end|>"]
# Original key prefix -> ours (checked in order; the first match wins).
KEY_PREFIXES = [
    ("audio_encoder_model.", "audio_encoder."),
    ("audio_adapter.subsampler.conv_layers.", "audio_adapter.conv_layers."),
    ("audio_adapter.", "audio_adapter."),
    ("llm_model.", "language_model."),
    ("tts_lm_model.spk2tts.", "speaker_projection."),
    ("tts_lm_model.spk_ln.", "speaker_norm."),
    ("tts_lm_model.", "speech_decoder."),
    ("llm2tts.", "hidden_projection."),
    ("llm_ln.", "hidden_norm."),
]
ORIGINAL_CONFIG_KEYS = {"audio_encoder_config", "llm_config", "tts_lm_config", "interleave_strategy"}


def rename_key(key: str) -> str:
    for old, new in KEY_PREFIXES:
        if key.startswith(old):
            return new + key[len(old) :]
    raise KeyError(f"unexpected tensor {key!r}: not part of an OpenS2S (OmniSpeechModel) checkpoint")


def _clean_sub_config(sub_config: dict) -> dict:
    """Drop private keys; an absent `tie_word_embeddings` means False for Qwen3 (the original writes diffs only)."""
    cleaned = {k: v for k, v in sub_config.items() if not k.startswith("_")}
    if cleaned.get("model_type") == "qwen3":
        cleaned.setdefault("tie_word_embeddings", False)
    return cleaned


def convert_config(original: dict, audio_token_id: int) -> OpenS2SConfig:
    """Map an `OmniSpeechConfig` dict onto [`OpenS2SConfig`]."""
    missing = ORIGINAL_CONFIG_KEYS - original.keys()
    if missing:
        raise ValueError(f"not an OpenS2S (OmniSpeechModel) config.json: missing {sorted(missing)}")
    if original.get("lora_config"):
        raise ValueError("the checkpoint still holds a LoRA adapter; merge it (OmniSpeechModel.merge_lora) first")
    text_span, speech_span = parse_interleave_strategy(original["interleave_strategy"])
    return OpenS2SConfig(
        audio_config=_clean_sub_config(original["audio_encoder_config"]),
        text_config=_clean_sub_config(original["llm_config"]),
        speech_decoder_config=_clean_sub_config(original["tts_lm_config"]),
        adapter_conv_kernel_sizes=[int(k) for k in str(original.get("conv_kernel_sizes", "5,5")).split(",")],
        adapter_inner_dim=int(original.get("adapter_inner_dim", 512)),
        text_span=text_span,
        speech_span=speech_span,
        audio_token_id=audio_token_id,
        dtype=original.get("torch_dtype") or original.get("dtype"),
    )


def _source_shards(src: Path) -> list[Path]:
    index = src / "model.safetensors.index.json"
    if index.exists():
        return [src / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    shards = [src / "model.safetensors"] if (src / "model.safetensors").exists() else []
    if not shards:
        raise FileNotFoundError(f"no *.safetensors weights in {src} (.bin checkpoints are not supported)")
    return shards


class _ShardWriter:
    """Collects tensors and writes `model-XXXXX.safetensors` files of at most `max_shard_bytes` each."""

    def __init__(self, dst: Path, max_shard_bytes: int):
        self.dst, self.max_shard_bytes = dst, max_shard_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.files: list[tuple[str, list[str]]] = []
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor):
        size = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + size > self.max_shard_bytes:
            self.flush()
        self.pending[name] = tensor.contiguous()
        self.pending_bytes += size
        self.total_bytes += size

    def flush(self):
        if not self.pending:
            return
        name = f"model-{len(self.files) + 1:05d}.safetensors"
        save_file(self.pending, str(self.dst / name), metadata={"format": "pt"})
        self.files.append((name, list(self.pending)))
        self.pending, self.pending_bytes = {}, 0

    def finish(self):
        self.flush()
        if len(self.files) == 1:
            (self.dst / self.files[0][0]).rename(self.dst / "model.safetensors")
            return
        total = len(self.files)
        weight_map = {}
        for index, (name, keys) in enumerate(self.files, start=1):
            final = f"model-{index:05d}-of-{total:05d}.safetensors"
            (self.dst / name).rename(self.dst / final)
            weight_map.update({key: final for key in keys})
        index_data = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
        (self.dst / "model.safetensors.index.json").write_text(json.dumps(index_data, indent=2, sort_keys=True))


def _expected_keys(config: OpenS2SConfig) -> dict[str, tuple[int, ...]]:
    from opens2s.modeling_opens2s.modeling_opens2s import OpenS2SForConditionalGeneration, checkpoint_key

    with torch.device("meta"):
        model = OpenS2SForConditionalGeneration(config)
    # Checkpoint names, as `save_pretrained` writes them (see CHECKPOINT_KEY_PREFIXES).
    return {checkpoint_key(name): tuple(tensor.shape) for name, tensor in model.state_dict().items()}


def convert_weights(src: Path, dst: Path, config: OpenS2SConfig, max_shard_bytes: int) -> None:
    """Rename and copy every tensor, one source shard at a time; check names and shapes against the model."""
    expected = _expected_keys(config)
    writer = _ShardWriter(dst, max_shard_bytes)
    seen: dict[str, torch.Tensor] = {}
    embeddings: dict[str, torch.Tensor] = {}
    unexpected, mismatched = [], []
    for shard in _source_shards(src):
        with safe_open(str(shard), framework="pt") as handle:
            for key in handle.keys():
                try:
                    name = rename_key(key)
                except KeyError:
                    unexpected.append(key)
                    continue
                if name not in expected:
                    unexpected.append(key)
                    continue
                tensor = handle.get_tensor(key)
                if tuple(tensor.shape) != expected[name]:
                    mismatched.append(f"{key}: {tuple(tensor.shape)} != {expected[name]}")
                    continue
                if name.endswith("embed_tokens.weight"):
                    embeddings[name] = tensor
                seen[name] = True
                writer.add(name, tensor)
    for lm in ("language_model", "speech_decoder"):
        head, embed = f"{lm}.lm_head.weight", f"{lm}.model.embed_tokens.weight"
        if head not in seen and embed in embeddings:
            # The original drops a tied lm_head on save; we keep it explicit.
            logger.warning("%s missing: writing a copy of %s (tied embeddings)", head, embed)
            writer.add(head, embeddings[embed].clone())
            seen[head] = True
    missing = sorted(set(expected) - set(seen))
    if unexpected or missing or mismatched:
        raise ValueError(
            f"{src} is not a complete OpenS2S checkpoint for its config.json: missing {missing[:10]}"
            f"{' ...' if len(missing) > 10 else ''}; unexpected {unexpected[:10]}; wrong shapes {mismatched[:10]}"
        )
    writer.finish()


def _llm_tokenizer(src: Path):
    tokenizer = AutoTokenizer.from_pretrained(str(src))
    absent = [
        token for token in MARKER_TOKENS if tokenizer.convert_tokens_to_ids(token) in (None, tokenizer.unk_token_id)
    ]
    if absent:
        raise ValueError(f"the LLM tokenizer in {src} lacks the OpenS2S markers {absent}")
    if AUDIO_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [AUDIO_TOKEN]}, replace_extra_special_tokens=False)
    return tokenizer


def _unit_tokenizer(src: Path, config: OpenS2SConfig, unit_tokenizer_base: str | None, num_units: int):
    """The speech decoder's tokenizer: `src/tts`, else `unit_tokenizer_base` + `<|audio_k|>` if it provably fits."""
    if (src / "tts" / "tokenizer_config.json").exists():
        return AutoTokenizer.from_pretrained(str(src / "tts"))
    hint = (
        f"{src} has no tts/ folder (the speech decoder's tokenizer). Supply the tts/ folder of the training run, or "
        "pass unit_tokenizer_base=<the base Qwen3 tokenizer the decoder was trained with> (CLI --unit-tokenizer-base)"
    )
    if unit_tokenizer_base is None:
        raise ValueError(hint)
    tokenizer = AutoTokenizer.from_pretrained(unit_tokenizer_base)
    base_size = len(tokenizer)
    tokenizer.add_tokens([f"<|audio_{k}|>" for k in range(num_units)], special_tokens=False)
    decoder = config.speech_decoder_config
    eos_id = decoder.eos_token_id[0] if isinstance(decoder.eos_token_id, list) else decoder.eos_token_id
    if len(tokenizer) != decoder.vocab_size or eos_id is None or eos_id >= base_size:
        raise ValueError(
            f"{hint}. The base tokenizer ({base_size} ids) + {num_units} unit tokens = {len(tokenizer)} ids does not "
            f"match the speech decoder (vocab_size {decoder.vocab_size}, eos id {eos_id})."
        )
    return tokenizer


def _check_token2wav_vocabulary(token2wav: Path, unit_tokenizer) -> None:
    vocab_size = load_original_decoder_config(token2wav / "config.yaml").vocab_size
    _, num_units = find_unit_tokens(unit_tokenizer)
    if num_units > vocab_size:
        raise ValueError(
            f"the speech decoder writes {num_units} units but the token2wav decoder in {token2wav} knows only "
            f"{vocab_size}: they do not belong together"
        )


def units_only_generation_config(
    speech_config: GenerationConfig, config: OpenS2SConfig, processor: OpenS2SProcessor
) -> GenerationConfig:
    """A copy of `speech_config` whose `suppress_tokens` hold every speech decoder id that is neither a
    `<|audio_k|>` unit nor an EOS id (a list of ~150k ids for the released decoder: JSON has no ranges)."""
    eos = (
        speech_config.eos_token_id
        if speech_config.eos_token_id is not None
        else config.speech_decoder_config.eos_token_id
    )
    eos = {eos} if isinstance(eos, int) else set(eos or [])
    units = range(processor.unit_token_offset, processor.unit_token_offset + processor.num_units)
    allowed = eos | set(units)
    speech_config = GenerationConfig(**speech_config.to_dict())
    speech_config.suppress_tokens = [
        token for token in range(config.speech_decoder_config.vocab_size) if token not in allowed
    ]
    return speech_config


def convert_original_checkpoint(
    src: str | Path,
    dst: str | Path,
    max_shard_size: int = 5 * 1024**3,
    unit_tokenizer_base: str | None = None,
    num_units: int = 16384,
    token2wav: str | Path | None = None,
    units_only: bool = True,
) -> Path:
    """Convert the original OpenS2S folder `src` into a transformers folder `dst`.

    Args:
        src: folder in the `OmniSpeechModel` layout (see the module docstring).
        dst: output folder (must not exist or be empty). It is written whole or not at all: into a staging folder
            next to it, with `checksums.sha256`, renamed into place at the end; a run killed mid-way leaves only
            the staging folder, which the next conversion into `dst` removes.
        max_shard_size: largest safetensors shard in bytes.
        unit_tokenizer_base: only when `src/tts` is missing: base tokenizer to extend with `<|audio_k|>` tokens.
        num_units: speech unit codebook size used with `unit_tokenizer_base`.
        token2wav: the original `glm-4-voice-decoder` folder (`config.yaml`, `flow.pt`, `hift.pt`); converted into
            `dst/token2wav/`, so one folder (or Hub repo) speaks: `model.attach_token2wav()` finds it.
        units_only: write `suppress_tokens` into the speech generation config for every decoder id that is neither a
            unit nor the EOS, so sampling can only produce units (the original samples over the whole vocabulary and
            drops non-unit ids afterwards). `False` keeps the original's config as it is.

    Returns:
        The output folder, loadable with `AutoModel/AutoProcessor.from_pretrained(dst, trust_remote_code=True)`.
    """
    src, dst = Path(src), Path(dst)
    config_path = src / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{src} has no config.json: not an OpenS2S checkpoint folder")
    if token2wav is not None:
        token2wav = check_original_token2wav_folder(token2wav)
    # Staged: a folder that loads is a whole one (with its token2wav/ when asked for), never one cut short.
    with staged_output(dst) as staging:
        tokenizer = _llm_tokenizer(src)
        config = convert_config(json.loads(config_path.read_text()), tokenizer.convert_tokens_to_ids(AUDIO_TOKEN))
        unit_tokenizer = _unit_tokenizer(src, config, unit_tokenizer_base, num_units)
        if token2wav is not None:
            _check_token2wav_vocabulary(token2wav, unit_tokenizer)
        convert_weights(src, staging, config, max_shard_size)
        _write_configs_and_code(src, staging, config, tokenizer, unit_tokenizer, units_only, name=dst.resolve().name)
        if token2wav is not None:
            write_token2wav(token2wav, staging / TOKEN2WAV_SUBFOLDER)
            write_checksums(staging / TOKEN2WAV_SUBFOLDER)
    logger.info("converted %s -> %s", src, dst)
    return dst


def _write_configs_and_code(
    src: Path, dst: Path, config: OpenS2SConfig, tokenizer, unit_tokenizer, units_only: bool, name: str
) -> None:
    """Everything of a converted folder but the weights: config, processor, generation configs, code, and the model
    card (whose snippets load `name`)."""
    config.architectures = ["OpenS2SForConditionalGeneration"]
    config.auto_map = {
        "AutoConfig": "configuration_opens2s.OpenS2SConfig",
        "AutoModel": "modeling_opens2s.OpenS2SForConditionalGeneration",
        "AutoModelForMultimodalLM": "modeling_opens2s.OpenS2SForConditionalGeneration",
    }
    config.save_pretrained(dst)
    audio_dir = src / "audio"
    feature_extractor = (
        OpenS2SFeatureExtractor.from_pretrained(str(audio_dir))
        if (audio_dir / "preprocessor_config.json").exists()
        else OpenS2SFeatureExtractor()
    )
    processor = OpenS2SProcessor(
        feature_extractor, tokenizer, unit_tokenizer, num_adapter_convs=len(config.adapter_conv_kernel_sizes)
    )
    processor.save_pretrained(dst)
    if (src / "generation_config.json").exists():
        text_generation_config = GenerationConfig.from_pretrained(str(src))
        # `<|im_audio|>` is new (the original marked audio with -200): when its id falls inside the LM head (a padded
        # vocabulary), an answer could pick it and would then hold a placeholder with no audio behind it.
        if config.audio_token_id < config.text_config.vocab_size:
            suppressed = list(text_generation_config.suppress_tokens or [])
            text_generation_config.suppress_tokens = suppressed + [config.audio_token_id]
        text_generation_config.save_pretrained(dst)
    if (src / "tts" / "generation_config.json").exists():
        speech_config = GenerationConfig.from_pretrained(str(src / "tts"))
        if units_only:
            speech_config = units_only_generation_config(speech_config, config, processor)
        speech_config.save_pretrained(dst, config_file_name=SPEECH_GENERATION_CONFIG_NAME)
    export_remote_code(dst)
    write_model_card(dst, repo=name, base_model=ORIGINAL_REPO)
