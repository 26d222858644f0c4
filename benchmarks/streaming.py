"""Streaming speech-to-speech: our one-loop `model.stream` against the original per-chunk `generate()` schedule.

Run from the repository root (nothing is downloaded; the model has random weights):

    python -m benchmarks.streaming --size mid                  # CPU default (fp32), ~16 s a side on a 2-core CPU
    python -m benchmarks.streaming --size tiny                 # smoke run, seconds
    python -m benchmarks.streaming --size full --device cuda   # lent GPU: bf16, Qwen3-8B + Qwen3-1.7B shapes

Other options: `--text-tokens 64 --units 160 --repeats 1 --dtype float32|bfloat16 --seed 0 --threads N`.

Both sides run one model on one prompt: random ids around one audio (`opens2s.EXAMPLE_WAV`, 3.97 s -> 25 placeholders)
ending in the position whose hidden state is the decoder's first row (`<|im_tts_start|>`); greedy,
EOS ids suppressed, so each side writes exactly `--text-tokens` text ids and `--units` decoder ids.

* ours: `model.stream(...)`; a token is delivered when its event reaches this loop.
* original: CASIA-LM/OpenS2S `OmniSpeechModel.generate(units_gen=True)` re-implemented on our modules: per step
  one LLM `generate()` (prompt embeddings + every text token so far, the previous call's cache, so HF feeds only
  the uncached tail; `max_new_tokens=min(M, left)`, `output_hidden_states=True` for the rows) and one decoder
  `generate()` (`[speaker slot] + rows + units + ...`, its own cache, `min(N, left)` units; the whole remaining
  budget once the text has ended). Tokens are delivered when their call returns, except the flush call's units,
  which it streams. A recording streamer in every call gives when each token was computed.

Printed: the sizes; `ids match: ...` (an `AssertionError` names the first difference otherwise); one table with, per
side, total seconds, ms per text token (LLM time incl. prefill / text ids), ms per unit (decoder time / unit ids),
seconds to the first text token and the first unit delivered (`dlv`) and computed (`cmp`), then original / ours.
With `--repeats k` each figure is the median of k alternating runs; one short warm-up run per side comes first.

Sizes (`SIZES`): `mid` is a Qwen3 LLM 1024 x 12 layers (16/8 heads, vocab 32,768), a Qwen3 decoder 768 x 8 (12/4
heads, vocab 20,480) and a Whisper-tiny-sized audio encoder (384 x 4 layers); `full` has the real encoder shape
(1280 x 32) and a decoder vocabulary of Qwen3's 151,936 + 16,384 units. `full` is built directly on the GPU (the
constructor runs under `torch.device("cuda")` with bf16 as default dtype: ~21 GB, no CPU copy); building on `meta`
then `to_empty()` would leave the rotary `inv_freq` buffers uninitialised.

Dynamic caches only: `stream()` owns its `DynamicCache` and has no cache option, so a static cache on one side only
would not compare like with like.
"""

import argparse
import copy
import statistics
import time
from dataclasses import dataclass, field

import soundfile
import torch
from transformers import GenerationConfig
from transformers.generation.streamers import BaseStreamer
from transformers.utils import logging as hf_logging

from opens2s.modeling_opens2s.audio_lengths_opens2s import audio_embedding_lengths
from opens2s.modeling_opens2s.configuration_opens2s import OpenS2SConfig
from opens2s.modeling_opens2s.feature_extraction_opens2s import OpenS2SFeatureExtractor
from opens2s.modeling_opens2s.modeling_opens2s import OpenS2SForConditionalGeneration
from opens2s.processing.chat import EXAMPLE_WAV


__all__ = ["SIZES", "Run", "build_model", "check_budgets", "check_same_ids", "main", "run_original", "run_ours"]


def _lm(hidden: int, layers: int, heads: int, kv_heads: int, inter: int, vocab: int, head_dim: int) -> dict:
    return {
        "model_type": "qwen3", "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": kv_heads, "intermediate_size": inter, "vocab_size": vocab, "head_dim": head_dim,
        "max_position_embeddings": 4096, "rms_norm_eps": 1e-6, "sliding_window": None, "tie_word_embeddings": False,
    }  # fmt: skip


def _encoder(d_model: int, layers: int, heads: int, ffn: int) -> dict:
    return {
        "model_type": "qwen2_audio_encoder", "d_model": d_model, "encoder_layers": layers,
        "encoder_attention_heads": heads, "encoder_ffn_dim": ffn, "num_mel_bins": 128, "max_source_positions": 1500,
    }  # fmt: skip


# Audio encoders: tiny toy; mid Whisper-tiny-sized (384 x 4 layers); full the real Qwen2-Audio/Whisper-large one.
# The full decoder vocabulary is Qwen3's plus 16,384 unit tokens, as the OpenS2S speech decoder tokenizer.
SIZES = {  # (LLM, speech decoder, audio encoder, adapter inner dim)
    "tiny": (_lm(64, 2, 4, 2, 128, 512, 16), _lm(48, 2, 4, 2, 96, 320, 12), _encoder(32, 2, 4, 64), 48),
    "mid": (
        _lm(1024, 12, 16, 8, 3072, 32768, 64), _lm(768, 8, 12, 4, 2048, 20480, 64), _encoder(384, 4, 6, 1536), 512,
    ),
    "full": (
        _lm(4096, 36, 32, 8, 12288, 151936, 128), _lm(2048, 28, 16, 8, 6144, 151936 + 16384, 128),
        _encoder(1280, 32, 20, 5120), 2048,
    ),
}  # fmt: skip


@dataclass
class Run:
    """One generation: ids, and seconds since the call for every token delivered / computed, plus stage times."""

    text_ids: list[int] = field(default_factory=list)
    unit_ids: list[int] = field(default_factory=list)
    text_delivered: list[float] = field(default_factory=list)
    text_computed: list[float] = field(default_factory=list)
    unit_delivered: list[float] = field(default_factory=list)
    unit_computed: list[float] = field(default_factory=list)
    text_seconds: float = 0.0  # LLM work (prefill + decode)
    speech_seconds: float = 0.0  # speech decoder work (projection + decode)
    total_seconds: float = 0.0


def build_model(size: str, device: str, dtype: torch.dtype, seed: int = 0) -> OpenS2SForConditionalGeneration:
    """A random-weight model of `size`, allocated and initialised directly on `device` in `dtype` (no download,
    no CPU copy: the constructor runs under a `torch.device` context with `dtype` as the default dtype)."""
    text, decoder, audio, adapter_inner_dim = SIZES[size]
    config = OpenS2SConfig(
        audio_config=audio,
        text_config=text,
        speech_decoder_config=decoder,
        adapter_inner_dim=adapter_inner_dim,
        audio_token_id=text["vocab_size"] - 1,
        dtype=str(dtype).removeprefix("torch."),
    )
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = OpenS2SForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def special_ids(model: OpenS2SForConditionalGeneration) -> tuple[int, int, int]:
    """The LLM ids this benchmark reserves: `<|im_tts_start|>` (V - 2), the text EOS (V - 3) and, for the speech
    decoder, its EOS (last id); the audio placeholder is V - 1 (`config.audio_token_id`)."""
    text_vocab = model.config.text_config.vocab_size
    return text_vocab - 2, text_vocab - 3, model.config.speech_decoder_config.vocab_size - 1


def build_inputs(model: OpenS2SForConditionalGeneration, seed: int = 0) -> dict[str, torch.Tensor]:
    """Features of the example wav and a prompt `[10 random ids, placeholders, 12 random ids, <|im_tts_start|>]`
    with one placeholder per adapter frame (100 mel frames/s -> 6.25 positions/s), as the processor builds it."""
    wave, sampling_rate = soundfile.read(EXAMPLE_WAV, dtype="float32")
    features = OpenS2SFeatureExtractor()(wave, sampling_rate=sampling_rate, return_tensors="pt")
    mask = features["attention_mask"]
    num_positions = int(audio_embedding_lengths(mask.sum(-1), len(model.config.adapter_conv_kernel_sizes))[0])
    tts_start, text_eos, _ = special_ids(model)
    random_ids = torch.randint(0, text_eos, (22,), generator=torch.Generator().manual_seed(seed)).tolist()
    prompt = random_ids[:10] + [model.config.audio_token_id] * num_positions + random_ids[10:] + [tts_start]
    return {
        "input_ids": torch.tensor([prompt], device=model.device),
        "input_features": features["input_features"].to(model.device),
        "feature_attention_mask": mask.to(model.device),
    }


def generation_configs(model, text_tokens: int, units: int) -> tuple[GenerationConfig, GenerationConfig]:
    """Greedy configs with fixed budgets whose EOS ids are suppressed: each LM writes exactly its budget."""
    _, text_eos, unit_eos = special_ids(model)
    return tuple(
        GenerationConfig(
            do_sample=False, max_new_tokens=budget, eos_token_id=[eos], pad_token_id=eos, suppress_tokens=[eos]
        )
        for eos, budget in ((text_eos, text_tokens), (unit_eos, units))
    )


def _synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work, so `perf_counter` brackets finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_ours(model, inputs: dict, text_config: GenerationConfig, speech_config: GenerationConfig) -> Run:
    """`model.stream` to the end; every token is delivered as its event arrives here."""
    run = Run()
    _synchronize(model.device)
    start = time.perf_counter()
    stream = model.stream(
        **inputs, generation_config=text_config, speech_generation_config=speech_config, token2wav=False
    )
    for event in stream:
        now = time.perf_counter() - start
        if event.kind == "text":
            run.text_ids += event.token_ids
            run.text_delivered += [now] * len(event.token_ids)
        elif event.kind == "units":
            run.unit_ids += event.token_ids
            run.unit_delivered += [now] * len(event.token_ids)
        elif event.kind == "done":
            seconds = event.stats.stage_seconds
            run.text_seconds = seconds.get("text_prefill", 0.0) + seconds.get("text_decode", 0.0)
            run.speech_seconds = seconds.get("speech_decode", 0.0)
    _synchronize(model.device)
    run.total_seconds = time.perf_counter() - start
    run.text_computed, run.unit_computed = list(run.text_delivered), list(run.unit_delivered)  # yielded at once
    return run


class _TimeRecorder(BaseStreamer):
    """A streamer that notes when `generate()` produced each token (the empty prompt `put` is skipped)."""

    def __init__(self, start: float):
        self.start = start
        self.times: list[float] = []

    def put(self, value: torch.Tensor) -> None:
        self.times += [time.perf_counter() - self.start] * value.numel()

    def end(self) -> None:
        pass


class _OriginalSchedule:
    """The original `generate(units_gen=True)` loop, batch 1, on our modules: one HF `generate()` per chunk."""

    def __init__(self, model, inputs: dict, text_config: GenerationConfig, speech_config: GenerationConfig):
        self.model = model
        self.inputs = inputs
        # The original mutates its configs' `max_new_tokens` before every call. It passes `return_dict_in_generate`
        # (and `output_hidden_states` to the LLM) as kwargs; transformers 5 wants them in the config.
        self.text_config, self.speech_config = copy.deepcopy(text_config), copy.deepcopy(speech_config)
        self.text_config.update(return_dict_in_generate=True, output_hidden_states=True)
        self.speech_config.update(return_dict_in_generate=True)
        self.start = 0.0
        self.text_left, self.units_left = text_config.max_new_tokens, speech_config.max_new_tokens
        self.text_cache = self.speech_cache = None
        self.run = Run()

    def text_chunk(self, inputs_embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """One LLM call; returns the grown embeddings, this chunk's rows `(1, n, llm_hidden)` and `finished`."""
        begin = time.perf_counter()
        recorder = _TimeRecorder(self.start)
        self.text_config.update(max_new_tokens=min(self.model.config.text_span, self.text_left))
        output = self.model.language_model.generate(
            inputs_embeds=inputs_embeds, generation_config=self.text_config, cache=self.text_cache, streamer=recorder
        )
        self.text_cache = output.cache
        new_ids = output.sequences
        self.text_left -= new_ids.shape[1]
        finished = new_ids[0, -1].item() in self.text_config.eos_token_id or self.text_left < 1
        # Step i's last-layer states: the whole prompt (first call) or the re-fed last token; its last position
        # predicts token i, so the rows are the prompt's last state and those of tokens 0..n-2 (original indexing).
        rows = torch.cat([step[-1][:, -1:] for step in output.hidden_states], dim=1)
        inputs_embeds = torch.cat([inputs_embeds, self.model.language_model.get_input_embeddings()(new_ids)], dim=1)
        delivered = time.perf_counter() - self.start
        self.run.text_ids += new_ids[0].tolist()
        self.run.text_delivered += [delivered] * new_ids.shape[1]
        self.run.text_computed += recorder.times
        self.run.text_seconds += time.perf_counter() - begin
        return inputs_embeds, rows, finished

    def speech_chunk(self, speech_embeds: list[torch.Tensor], rows: torch.Tensor, flush: bool) -> bool:
        """One decoder call (`min(N, left)` units, or all that are left when `flush`); False once out of budget."""
        budget = self.units_left if flush else min(self.model.config.speech_span, self.units_left)
        if budget < 1:
            return False  # the original leaves its loop here, text included (docs/original_behaviour.md#ob-llm-4)
        begin = time.perf_counter()
        recorder = _TimeRecorder(self.start)
        speech_embeds.append(self.model.project_hidden_states(rows))
        self.speech_config.update(max_new_tokens=budget)
        output = self.model.speech_decoder.generate(
            inputs_embeds=torch.cat(speech_embeds, dim=1), generation_config=self.speech_config,
            cache=self.speech_cache, streamer=recorder,
        )  # fmt: skip
        self.speech_cache = output.cache
        new_ids = output.sequences
        self.units_left -= new_ids.shape[1]
        speech_embeds.append(self.model.speech_decoder.get_input_embeddings()(new_ids))
        returned = time.perf_counter() - self.start
        self.run.unit_ids += new_ids[0].tolist()
        self.run.unit_computed += recorder.times
        # Only the flush call is given the units streamer; other chunks reach it after `generate()` returns.
        self.run.unit_delivered += recorder.times if flush else [returned] * new_ids.shape[1]
        self.run.speech_seconds += time.perf_counter() - begin
        return True

    def __call__(self) -> Run:
        _synchronize(self.model.device)
        self.start = time.perf_counter()
        with torch.no_grad():
            inputs_embeds = self.model.embed_inputs(**self.inputs)
            speech_embeds = [self.model.speaker_slot(None)[:, None]]  # zeros speaker, as the original always had
            finished = False
            while not finished:
                inputs_embeds, rows, finished = self.text_chunk(inputs_embeds)
                if not self.speech_chunk(speech_embeds, rows, flush=finished):
                    break
        _synchronize(self.model.device)
        self.run.total_seconds = time.perf_counter() - self.start
        return self.run


def run_original(model, inputs: dict, text_config: GenerationConfig, speech_config: GenerationConfig) -> Run:
    """The original per-chunk `generate()` schedule (see the module docstring)."""
    return _OriginalSchedule(model, inputs, text_config, speech_config)()


def check_budgets(text_tokens: int, units: int, text_span: int, speech_span: int) -> None:
    """Refuse budgets for which the original cuts the text short (its unit budget runs out before the last text
    chunk begins: docs/original_behaviour.md#ob-llm-4) while ours goes on: then the two could not produce the same
    ids."""
    least = speech_span * max(-(-text_tokens // text_span) - 2, 0) + 1
    if text_tokens < 1 or units < least:
        raise SystemExit(f"need --text-tokens >= 1 and --units >= {least} (for {text_tokens} text tokens)")


def _metrics(run: Run) -> dict[str, float]:
    """The table's columns for one run."""
    return {
        "total s": run.total_seconds,
        "ms/text": 1000 * run.text_seconds / len(run.text_ids),
        "ms/unit": 1000 * run.speech_seconds / len(run.unit_ids),
        "1st text dlv s": run.text_delivered[0],
        "1st unit dlv s": run.unit_delivered[0],
        "1st text cmp s": run.text_computed[0],
        "1st unit cmp s": run.unit_computed[0],
    }


def print_table(ours: list[Run], original: list[Run]) -> None:
    """Medians per side, and original / ours."""
    rows = {}
    for name, runs in (("ours", ours), ("original", original)):
        per_run = [_metrics(run) for run in runs]
        rows[name] = {key: statistics.median(m[key] for m in per_run) for key in per_run[0]}
    rows["original/ours"] = {key: rows["original"][key] / rows["ours"][key] for key in rows["ours"]}
    columns = list(rows["ours"])
    print(f"{'':<14}" + "".join(f"{column:>15}" for column in columns))
    for name, values in rows.items():
        suffix = "x" if name == "original/ours" else ""
        print(f"{name:<14}" + "".join(f"{values[column]:>14.3f}{suffix or ' '}" for column in columns))


def check_same_ids(ours: Run, original: Run, names: tuple[str, str] = ("ours", "original")) -> None:
    """Raise an `AssertionError` naming the first difference unless both runs wrote the same text and unit ids
    (`names`: what the two runs are called in the message)."""
    for what, a, b in (("text", ours.text_ids, original.text_ids), ("unit", ours.unit_ids, original.unit_ids)):
        if a != b:
            index = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
            raise AssertionError(f"{what} ids differ from position {index}: {names[0]} {a[index:][:8]}, {names[1]} "
                                 f"{b[index:][:8]} ({len(a)} vs {len(b)} ids)")  # fmt: skip


def _shape(config) -> str:
    """`hidden x layers (vocab V)` of an LM config."""
    return f"{config.hidden_size}x{config.num_hidden_layers} (vocab {config.vocab_size})"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="mid")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None, help="cuda for full, else cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None, help="bfloat16 for full, else fp32")
    parser.add_argument("--text-tokens", type=int, default=64)
    parser.add_argument("--units", type=int, default=160)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Parse the options, build the model, run both schedules, check the ids, print the table."""
    args = parse_args(argv)
    device = args.device or ("cuda" if args.size == "full" else "cpu")
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.size == "full" else "float32"))
    if args.threads:
        torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()  # per-call generate() notices would drown the table
    model = build_model(args.size, device, dtype, args.seed)
    check_budgets(args.text_tokens, args.units, model.config.text_span, model.config.speech_span)
    inputs = build_inputs(model, args.seed)
    config = model.config
    print(
        f"size {args.size} ({device}, {dtype}, {torch.get_num_threads()} threads): LLM {_shape(config.text_config)}, "
        f"decoder {_shape(config.speech_decoder_config)}, audio encoder {config.audio_config.d_model}x"
        f"{config.audio_config.encoder_layers}; prompt {inputs['input_ids'].shape[1]} ids; {args.text_tokens} text "
        f"ids, {args.units} units, {args.repeats} repeat(s)"
    )
    warm = generation_configs(model, 2 * model.config.text_span, 2 * model.config.speech_span)
    run_ours(model, inputs, *warm)
    run_original(model, inputs, *warm)
    configs = generation_configs(model, args.text_tokens, args.units)
    ours, original = [], []
    for _ in range(args.repeats):
        ours.append(run_ours(model, inputs, *configs))
        original.append(run_original(model, inputs, *configs))
        check_same_ids(ours[-1], original[-1])
        check_same_ids(ours[0], ours[-1])
    assert (len(ours[0].text_ids), len(ours[0].unit_ids)) == (args.text_tokens, args.units), "budgets not met"
    print(f"ids match: ours == original, {args.text_tokens} text ids and {args.units} unit ids")
    print_table(ours, original)


if __name__ == "__main__":
    main()
