"""A tiny, randomly initialised OpenS2S folder built in code: the default model of tests, demos and the CLI.

It has the real architecture and file layout (remote code, processor, both tokenizers, both generation configs,
the token2wav decoder in `token2wav/`) with toy sizes: a 2-layer Qwen2-Audio encoder, a 2-layer Qwen3 LLM over a
~400-token byte-level BPE, a 2-layer Qwen3 speech decoder over 64 speech units, and a narrow flow + HiFT decoder.
It speaks nonsense, but every code path runs on CPU in seconds, and the build is deterministic for a given seed.
Nothing is downloaded.
"""

import os
import shutil
import tempfile
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import GenerationConfig, PreTrainedTokenizerFast
from transformers.utils import logging

from opens2s.conversion.checksums import write_checksums
from opens2s.conversion.export import export_remote_code, save_token2wav
from opens2s.modeling_opens2s.configuration_opens2s import OpenS2SConfig
from opens2s.modeling_opens2s.configuration_token2wav import OpenS2SToken2WavConfig
from opens2s.modeling_opens2s.feature_extraction_opens2s import OpenS2SFeatureExtractor
from opens2s.modeling_opens2s.modeling_opens2s import TOKEN2WAV_SUBFOLDER, OpenS2SForConditionalGeneration
from opens2s.modeling_opens2s.processing_opens2s import OpenS2SProcessor
from opens2s.modeling_opens2s.streaming_opens2s import SPEECH_GENERATION_CONFIG_NAME


__all__ = [
    "TINY_MODEL_DIR",
    "TINY_SPEECH_TOKENIZER_CONFIG",
    "build_llm_tokenizer",
    "build_tiny_config",
    "build_tiny_model",
    "build_tiny_speech_tokenizer",
    "build_tiny_token2wav_config",
    "build_unit_tokenizer",
    "tiny_model_path",
]

logger = logging.get_logger(__name__)

# Bump the folder name whenever the build changes, so caches of an older build are not reused.
TINY_MODEL_DIR = Path(os.environ.get("OPENS2S_CACHE", "~/.cache/opens2s")).expanduser() / "tiny-v24"

# The BPE training text. Changing it changes the vocabulary, hence every weight shape: bump TINY_MODEL_DIR.
CORPUS = (
    "I failed my exam today and I feel really sad. What should I do?",
    "I'm so sorry you're going through this. It's okay to feel sad after a hard day.",
    "One exam does not define you, and you are not alone.",
    "Take a deep breath, rest a little, and talk to someone you trust.",
    "That sounds really hard. I'm here for you, and I'm listening.",
    "I am so happy for you! Congratulations on your new job.",
    "It sounds like you had a long day. How are you feeling now?",
    "Thank you for sharing that with me. Your feelings are valid.",
    "Would you like to tell me more about what happened?",
    "Let's make a small plan together for the next exam.",
)
LLM_BPE_VOCAB_SIZE = 384
UNIT_BPE_VOCAB_SIZE = 272
NUM_UNITS = 64
PAD_TOKEN, BOS_TOKEN, EOS_TOKEN = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
THINK_TOKENS = ("<think>", "</think>")
OPENS2S_TOKENS = ("<|im_audio_start|>", "<|im_audio_end|>", "<|im_tts_start|>", "<|im_tts_end|>", "<|im_audio|>")


def _train_byte_level_bpe(vocab_size: int) -> Tokenizer:
    """A Qwen-style byte-level BPE (NFC, ByteLevel pre-tokenizer and decoder) trained on `CORPUS`."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    return tokenizer


def _added(tokens, special: bool) -> list[AddedToken]:
    return [AddedToken(token, special=special, normalized=False) for token in tokens]


def build_llm_tokenizer() -> PreTrainedTokenizerFast:
    """The tiny LLM tokenizer, laid out like OpenS2S's Qwen3 one: BPE ids first, then `<|endoftext|>` (pad),
    `<|im_start|>`, `<|im_end|>` (eos), `<think>`/`</think>` (plain added tokens, as in Qwen3), the four OpenS2S
    markers and the audio placeholder `<|im_audio|>` (the last id)."""
    backend = _train_byte_level_bpe(LLM_BPE_VOCAB_SIZE)
    backend.add_special_tokens(_added((PAD_TOKEN, BOS_TOKEN, EOS_TOKEN), special=True))
    backend.add_tokens(_added(THINK_TOKENS, special=False))
    backend.add_special_tokens(_added(OPENS2S_TOKENS, special=True))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        extra_special_tokens=[BOS_TOKEN, *OPENS2S_TOKENS],
    )


def build_unit_tokenizer() -> PreTrainedTokenizerFast:
    """The tiny speech decoder tokenizer: BPE ids, `<|endoftext|>` (pad), `<|im_start|>`, `<|im_end|>` (eos), then
    `<|audio_0|>` ... `<|audio_63|>` with contiguous ids (unit `k` is `<|audio_0|>` + k)."""
    backend = _train_byte_level_bpe(UNIT_BPE_VOCAB_SIZE)
    backend.add_special_tokens(_added((PAD_TOKEN, BOS_TOKEN, EOS_TOKEN), special=True))
    backend.add_tokens(_added((f"<|audio_{k}|>" for k in range(NUM_UNITS)), special=False))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN, extra_special_tokens=[BOS_TOKEN]
    )


def _qwen3_config(tokenizer: PreTrainedTokenizerFast, **sizes) -> dict:
    """A tiny Qwen3 config dict; `initializer_range=0.2` keeps random greedy decoding from repeating one token."""
    return {
        "model_type": "qwen3",
        "vocab_size": len(tokenizer),
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6,
        "initializer_range": 0.2,
        "tie_word_embeddings": False,
        "sliding_window": None,
        "bos_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        **sizes,
    }


def build_tiny_config(tokenizer: PreTrainedTokenizerFast, unit_tokenizer: PreTrainedTokenizerFast) -> OpenS2SConfig:
    """Tiny [`OpenS2SConfig`] (the sizes of the `reference_a` parity fixture) for the given tokenizers."""
    audio_config = {
        "model_type": "qwen2_audio_encoder",
        "d_model": 32,
        "encoder_layers": 2,
        "encoder_attention_heads": 4,
        "encoder_ffn_dim": 64,
        "num_mel_bins": 128,
        "max_source_positions": 1500,
    }
    config = OpenS2SConfig(
        audio_config=audio_config,
        text_config=_qwen3_config(tokenizer, hidden_size=64, intermediate_size=128, head_dim=16),
        speech_decoder_config=_qwen3_config(unit_tokenizer, hidden_size=48, intermediate_size=96, head_dim=12),
        adapter_conv_kernel_sizes=[5, 5],
        adapter_inner_dim=48,
        text_span=4,
        speech_span=8,
        audio_token_id=tokenizer.convert_tokens_to_ids(OPENS2S_TOKENS[-1]),
        dtype="float32",
    )
    config.architectures = ["OpenS2SForConditionalGeneration"]
    return config


def _text_generation_config(tokenizer: PreTrainedTokenizerFast) -> GenerationConfig:
    """Greedy text decoding that stops at `<|im_end|>` or `<|endoftext|>` and never writes the audio placeholder
    (random weights would; a placeholder in an answer has no audio features behind it)."""
    return GenerationConfig(
        do_sample=False,
        max_new_tokens=64,
        bos_token_id=tokenizer.pad_token_id,
        eos_token_id=[tokenizer.eos_token_id, tokenizer.pad_token_id],
        pad_token_id=tokenizer.pad_token_id,
        suppress_tokens=[tokenizer.convert_tokens_to_ids(OPENS2S_TOKENS[-1])],
    )


def _speech_generation_config(processor: OpenS2SProcessor) -> GenerationConfig:
    """Greedy unit decoding that stops at unit `<|im_end|>`; every other non-unit id is suppressed, so the random
    decoder only writes speech units."""
    unit_tokenizer = processor.unit_tokenizer
    eos_id = unit_tokenizer.eos_token_id
    units = range(processor.unit_token_offset, processor.unit_token_offset + processor.num_units)
    return GenerationConfig(
        do_sample=False,
        max_new_tokens=256,
        bos_token_id=unit_tokenizer.pad_token_id,
        eos_token_id=eos_id,
        pad_token_id=unit_tokenizer.pad_token_id,
        suppress_tokens=[i for i in range(len(unit_tokenizer)) if i != eos_id and i not in units],
    )


def build_tiny_model(output_dir: str | Path | None = None, seed: int = 0) -> Path:
    """Build the tiny OpenS2S folder in `output_dir` (default [`TINY_MODEL_DIR`]) and return its path.

    The folder loads with `AutoModel/AutoProcessor.from_pretrained(path, trust_remote_code=True)`; the same seed
    gives the same weights. `checksums.sha256` lists every file (see [`~opens2s.conversion.checksums`]). The
    caller's torch random state is left untouched.
    """
    dst = Path(output_dir) if output_dir is not None else TINY_MODEL_DIR
    dst.mkdir(parents=True, exist_ok=True)
    logger.info("Building the tiny OpenS2S model (seed %d) in %s", seed, dst)
    tokenizer, unit_tokenizer = build_llm_tokenizer(), build_unit_tokenizer()
    config = build_tiny_config(tokenizer, unit_tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = OpenS2SForConditionalGeneration(config)
    model.generation_config = _text_generation_config(tokenizer)
    model.save_pretrained(dst)
    processor = OpenS2SProcessor(
        OpenS2SFeatureExtractor(),
        tokenizer,
        unit_tokenizer,
        num_adapter_convs=len(config.adapter_conv_kernel_sizes),
    )
    processor.save_pretrained(dst)
    _speech_generation_config(processor).save_pretrained(dst, config_file_name=SPEECH_GENERATION_CONFIG_NAME)
    export_remote_code(dst)
    _build_tiny_token2wav(dst / TOKEN2WAV_SUBFOLDER, seed)
    write_checksums(dst)
    return dst


def build_tiny_token2wav_config(num_units: int = NUM_UNITS) -> OpenS2SToken2WavConfig:
    """The real token2wav architecture at toy width (the sizes of the parity fixture's decoder)."""
    return OpenS2SToken2WavConfig(
        flow_config={
            "vocab_size": num_units,
            "token_embedding_dim": 64,
            "encoder_hidden_size": 64,
            "encoder_num_heads": 4,
            "encoder_ffn_dim": 128,
            "encoder_num_layers": 2,
            "estimator_channels": [32, 32],
            "estimator_attention_head_dim": 16,
            "estimator_num_heads": 2,
            "estimator_num_blocks": 1,
            "estimator_num_mid_blocks": 2,
        },
        hift_config={"base_channels": 32, "f0_cond_channels": 32},
    )


def _build_tiny_token2wav(dst: Path, seed: int) -> None:
    from opens2s.modeling_opens2s.modeling_token2wav import OpenS2SToken2Wav

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = OpenS2SToken2Wav(build_tiny_token2wav_config())
    save_token2wav(model, dst)


def tiny_model_path() -> Path:
    """Path of the tiny model in [`TINY_MODEL_DIR`] (`$OPENS2S_CACHE/tiny-v24`), built there on first use.

    The build goes to a staging folder that is renamed into place, so concurrent first uses never see half a folder.
    """
    if (TINY_MODEL_DIR / "config.json").exists():
        return TINY_MODEL_DIR
    TINY_MODEL_DIR.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-build-", dir=TINY_MODEL_DIR.parent))
    try:
        build_tiny_model(staging)
        staging.rename(TINY_MODEL_DIR)
    except OSError:
        if not (TINY_MODEL_DIR / "config.json").exists():  # not "another process finished first"
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return TINY_MODEL_DIR


# The real speech tokenizer architecture at toy width: 80 mel bins; 16-dim, 2 heads, 2 layers; pooling (x4) after
# layer 1, so layer 2 runs at 12.5 Hz with block-causal blocks of 8 // 4 = 2 pooled frames; 32 codes.
TINY_SPEECH_TOKENIZER_CONFIG = {
    "num_mel_bins": 80,
    "d_model": 16,
    "encoder_attention_heads": 2,
    "encoder_ffn_dim": 32,
    "quantize_position": 2,
    "pooling_position": 1,
    "pooling_kernel_size": 4,
    "quantize_causal_block_size": 8,
    "quantize_vocab_size": 32,
}


def build_tiny_speech_tokenizer(seed: int = 0):
    """A tiny random [`OpenS2SSpeechTokenizer`] ([`TINY_SPEECH_TOKENIZER_CONFIG`]), for tests and demos."""
    from opens2s.modeling_opens2s.configuration_speech_tokenizer import OpenS2SSpeechTokenizerConfig
    from opens2s.modeling_opens2s.modeling_speech_tokenizer import OpenS2SSpeechTokenizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return OpenS2SSpeechTokenizer(OpenS2SSpeechTokenizerConfig(**TINY_SPEECH_TOKENIZER_CONFIG)).eval()
