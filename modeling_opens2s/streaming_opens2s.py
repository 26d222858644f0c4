"""Streaming speech-to-speech generation for OpenS2S: one KV-cached loop that drives the LLM and the speech decoder.

The schedule is the original `OmniSpeechModel.generate(units_gen=True)` (CASIA-LM/OpenS2S,
`src/modeling_omnispeech.py`), without its repeated `generate()` calls:

1. The prompt (text + audio frames, ending in `<|im_tts_start|>`) is prefilled once into the LLM's cache.
2. Per interleaving step the LLM writes up to `M = config.text_span` tokens, one forward of one position per token.
   Token `k` of the answer is predicted from the LLM hidden state at prompt position `P - 1 + k`; that same hidden
   state, projected (`model.project_hidden_states`), is row `k` handed to the speech decoder. So every step hands
   over exactly as many rows as it wrote tokens: the one at `<|im_tts_start|>` first, never the one of the last token.
3. The speech decoder reads `[speaker slot] + rows + units + rows + units ...` through its own cache and writes up to
   `N = config.speech_span` tokens per step (fewer when its budget runs out). A speech EOS inside a step ends that
   step only; the next step carries on after it (original behaviour, kept for parity with released weights).
4. When the text has ended (text EOS or text budget) the decoder flushes: it writes until its EOS or its budget.

Two behaviours of the original are fixed: the speaker embedding is honoured (the original always used zeros, which
`speaker_embedding=None` still gives), and exhausting the speech budget no longer cuts the text short (the decoder
simply stops while the LLM goes on). Events are delivered per token, as soon as each token exists.

With a token2wav decoder (`token2wav=`, or one attached with `model.attach_token2wav()`), every unit goes into a
token2wav stream as it is generated and [`AudioChunk`] events carry the audio as soon as a chunk is final (block
streaming: the engine renders a ready chunk after the step's forwards, batched with other conversations' chunks).

Every event has a `kind` (`"text"`, `"units"`, `"audio"`, `"done"`): with `trust_remote_code=True` the event classes
come from the model folder's copy of this module, so `isinstance` against `opens2s`'s classes is False; match on
`event.kind` instead.
"""

import copy
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from transformers import GenerationConfig
from transformers.cache_utils import DynamicCache
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    SuppressTokensLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.utils import cached_file

from .modeling_token2wav_streaming import BlockStream
from .processing_opens2s import find_unit_tokens


__all__ = [
    "AudioChunk",
    "ChunkRecord",
    "Done",
    "IncrementalDetokenizer",
    "SpeakerEmbeddingError",
    "SpeechUnits",
    "StreamStats",
    "TextDelta",
    "check_speaker_embedding",
    "check_stream_inputs",
    "load_generation_config_file",
    "speech_generation_config_of",
    "unit_token_range",
]

logger = logging.getLogger(__name__)

# Budget used when a generation config leaves `max_new_tokens` unset (the original's fallback for both LMs).
DEFAULT_MAX_NEW_TOKENS = 512
SPEECH_GENERATION_CONFIG_NAME = "speech_generation_config.json"
_HUB_KWARGS = ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision", "subfolder")
# Generation-config fields this loop does not implement; a value other than the default only logs a warning.
_UNSUPPORTED_FIELDS = ("no_repeat_ngram_size", "bad_words_ids", "min_new_tokens", "sequence_bias", "typical_p")
# Speaker encoders (CAM++ 512-d, x-vector 192-d) give values of order 1: a unit-variance 512-d vector has norm ~23.
# A norm above this is unscaled or corrupt data; far above it the decoder's LayerNorm overflows and it stops at once.
MAX_SPEAKER_EMBEDDING_NORM = 1000.0


# ---------------------------------------------------------------------------------------------------------- events
@dataclass
class TextDelta:
    """New text from the LLM: one event per generated token, yielded as soon as the token exists.

    Args:
        token_ids (`list[int]`): the LLM token ids of this step, as generated (a text EOS id is included, as the
            original's `sequences` does).
        text (`str` or `None`): the newly decodable text; `""` while a multi-byte character is still incomplete (it
            arrives whole with a later delta) or for skipped special tokens; `None` when no tokenizer was given.
    """

    kind: ClassVar[str] = "text"
    token_ids: list[int]
    text: str | None


@dataclass
class SpeechUnits:
    """New speech decoder tokens: one event per generated token.

    Args:
        token_ids (`list[int]`): speech decoder ids exactly as generated, including a speech EOS id and any non-unit
            id the decoder produced (their concatenation over a stream equals the original's `units`).
        units (`list[int]` or `None`): unit indices `0..K-1` of those ids that are `<|audio_k|>` tokens, i.e. what a
            vocoder consumes; a speech EOS is never a unit. `None` when no unit tokenizer / processor was given.
    """

    kind: ClassVar[str] = "units"
    token_ids: list[int]
    units: list[int] | None


@dataclass
class AudioChunk:
    """Synthesised speech: `pcm` of shape `(num_samples,)`, float32 in [-1, 1] at `sample_rate` Hz (22.05 kHz for
    the released decoder), on the CPU. Consecutive chunks play back to back."""

    kind: ClassVar[str] = "audio"
    pcm: np.ndarray
    sample_rate: int


@dataclass
class ChunkRecord:
    """One interleaving step of one LM: `stage` is `"text"` or `"speech"`, `budget` the most tokens it could write
    (the original's per-call `max_new_tokens`), `num_tokens` how many it wrote."""

    stage: str
    budget: int
    num_tokens: int


@dataclass
class StreamStats:
    """Counts and timings of one stream; times are seconds since the stream started.

    Args:
        num_text_tokens (`int`): LLM tokens generated (a text EOS included).
        num_speech_tokens (`int`): speech decoder tokens generated (EOS and non-unit ids included).
        num_units (`int` or `None`): unit tokens among them (`None` without a unit vocabulary).
        time_to_first_text (`float` or `None`): when the first [`TextDelta`] was yielded.
        time_to_first_units (`float` or `None`): when the first [`SpeechUnits`] holding a unit was yielded (any
            decoder token when the unit vocabulary is unknown).
        time_to_first_audio (`float` or `None`): when the first [`AudioChunk`] was yielded (`None` without vocoder).
        audio_seconds (`float`): duration of all [`AudioChunk`]s.
        stage_seconds (`dict[str, float]`): time spent in `audio_encoder`, `text_prefill`, `text_decode`,
            `speech_decode`, `detokenize` and `token2wav` (the consumer's time between events is not counted), and
            with `compile=True` `compile`: the first compiled step of each new shape (compilation included).
        total_seconds (`float`): from the start of the stream to the [`Done`] event.
        text_stop_reason (`str`): `"eos"` or `"max_new_tokens"`.
        speech_stop_reason (`str`): `"eos"` (the flush met a speech EOS) or `"max_new_tokens"` (budget spent).
        chunks (`list[ChunkRecord]`): every interleaving step, in order (the schedule).
        conditioning (`torch.FloatTensor` of shape `(num_rows, decoder_hidden)`, *optional*): the rows handed to the
            speech decoder (after the speaker slot), when the stream was called with `output_conditioning=True`.
    """

    num_text_tokens: int = 0
    num_speech_tokens: int = 0
    num_units: int | None = None
    time_to_first_text: float | None = None
    time_to_first_units: float | None = None
    time_to_first_audio: float | None = None
    audio_seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    total_seconds: float = 0.0
    text_stop_reason: str = ""
    speech_stop_reason: str = ""
    chunks: list[ChunkRecord] = field(default_factory=list)
    conditioning: torch.Tensor | None = None


@dataclass
class Done:
    """The last event of every stream."""

    kind: ClassVar[str] = "done"
    stats: StreamStats


# ---------------------------------------------------------------------------------------------------------- helpers
def unit_token_range(source) -> tuple[int, int]:
    """`(offset, num_units)` of the speech unit tokens: unit `k` is decoder id `offset + k`.

    Args:
        source: an `OpenS2SProcessor` (uses its `unit_token_offset` / `num_units`) or the speech decoder's tokenizer
            (its `<|audio_k|>` tokens, which must have contiguous ids starting at `<|audio_0|>`).
    """
    if hasattr(source, "unit_token_offset") and hasattr(source, "num_units"):
        return int(source.unit_token_offset), int(source.num_units)
    return find_unit_tokens(source)


class IncrementalDetokenizer:
    """Turns token ids, pushed one at a time, into text deltas that never split a character.

    Byte-level BPE may spread one UTF-8 character over several tokens; decoding a prefix then ends in U+FFFD. Such
    bytes stay buffered until a later token completes them (or until [`flush`]). Only a short window of recent
    tokens is decoded per push, so the cost per token stays flat.
    """

    def __init__(self, tokenizer, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.token_ids: list[int] = []
        self.prefix_offset = 0  # start of the decoding window (kept one step back for context)
        self.read_offset = 0  # tokens before this index have been emitted

    def _decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(
            token_ids, skip_special_tokens=self.skip_special_tokens, clean_up_tokenization_spaces=False
        )

    def push(self, token_id: int) -> str:
        """Add one token; return the text that became complete (possibly `""`)."""
        self.token_ids.append(int(token_id))
        emitted = self._decode(self.token_ids[self.prefix_offset : self.read_offset])
        window = self._decode(self.token_ids[self.prefix_offset :])
        if len(window) <= len(emitted) or window.endswith("\ufffd"):
            return ""
        self.prefix_offset, self.read_offset = self.read_offset, len(self.token_ids)
        return window[len(emitted) :]

    def flush(self) -> str:
        """Return whatever is still buffered (an incomplete character comes out as U+FFFD) and reset the window."""
        emitted = self._decode(self.token_ids[self.prefix_offset : self.read_offset])
        window = self._decode(self.token_ids[self.prefix_offset :])
        self.prefix_offset = self.read_offset = len(self.token_ids)
        return window[len(emitted) :]


class _StageClock:
    """Wall-clock seconds per named stage, and the time since the stream started."""

    def __init__(self):
        self.start = time.perf_counter()
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str):
        begin = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - begin

    def add(self, stage: str, seconds: float) -> None:
        """Count `seconds` of work done elsewhere (the engine's batched forwards) in `stage`."""
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


@dataclass
class _DecodeSettings:
    """How one LM picks its tokens: budget, EOS ids, logits processors (incl. warpers) and greedy vs sampling."""

    budget: int
    eos_ids: frozenset[int]
    processors: LogitsProcessorList
    do_sample: bool


def _generation_value(config: GenerationConfig, name: str):
    """A field of `config`, or transformers' own default for it when unset (e.g. `top_k=50` when sampling)."""
    value = getattr(config, name, None)
    if value is None:
        defaults = getattr(GenerationConfig, "_get_default_generation_params", dict)()
        value = defaults.get(name)
    return value


def _eos_ids(config: GenerationConfig, fallback) -> frozenset[int]:
    eos = config.eos_token_id if config.eos_token_id is not None else fallback
    if eos is None:
        return frozenset()
    return frozenset([int(eos)] if isinstance(eos, int) else [int(token) for token in eos])


def _decode_settings(
    config: GenerationConfig, fallback_eos, extra: LogitsProcessorList | None, device, budget: int | None = None
) -> _DecodeSettings:
    """Processors in the order transformers' `generate` applies them; warpers only when sampling. `budget`, when
    given, replaces `config.max_new_tokens` (the config itself is not changed)."""
    if (_generation_value(config, "num_beams") or 1) > 1:
        raise ValueError("stream decodes greedily or by sampling: beam search (num_beams > 1) is not supported")
    for name in _UNSUPPORTED_FIELDS:
        value = getattr(config, name, None)
        if value not in (None, 0, 1.0, []):
            logger.warning("stream ignores generation config field %s=%r", name, value)
    if budget is None:
        budget = config.max_new_tokens if config.max_new_tokens is not None else DEFAULT_MAX_NEW_TOKENS
    processors = LogitsProcessorList()
    penalty = _generation_value(config, "repetition_penalty")
    if penalty is not None and penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(penalty))
    if config.suppress_tokens:
        processors.append(SuppressTokensLogitsProcessor(config.suppress_tokens, device=device))
    processors.extend(extra or [])
    do_sample = bool(_generation_value(config, "do_sample"))
    if do_sample:
        temperature = _generation_value(config, "temperature")
        top_k = _generation_value(config, "top_k")
        top_p = _generation_value(config, "top_p")
        min_p = _generation_value(config, "min_p")
        if temperature is not None and temperature != 1.0:
            processors.append(TemperatureLogitsWarper(temperature))
        if top_k:
            processors.append(TopKLogitsWarper(top_k=top_k))
        if top_p is not None and top_p < 1.0:
            processors.append(TopPLogitsWarper(top_p=top_p))
        if min_p is not None:
            processors.append(MinPLogitsWarper(min_p=min_p))
    return _DecodeSettings(int(budget), _eos_ids(config, fallback_eos), processors, do_sample)


def _pick(logits: torch.Tensor, history: torch.Tensor, settings: _DecodeSettings, generator) -> torch.Tensor:
    """Next token `(1, 1)` from last-position logits `(1, vocab)`; `history` `(1, n)` holds this LM's ids so far."""
    scores = settings.processors(history, logits.float())
    if settings.do_sample:
        return torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1, generator=generator)
    return scores.argmax(dim=-1, keepdim=True)


def load_generation_config_file(
    name_or_path: str | os.PathLike, file_name: str, assumed: str, **hub_kwargs
) -> GenerationConfig | None:
    """Read one generation config file of a model folder or Hub repo, or `None` (with a warning saying `assumed`)
    when the folder has none.

    Raises:
        `ValueError` naming the file when it exists but cannot be read (not JSON, or values `GenerationConfig`
        refuses): a corrupt file is never replaced by defaults, which would silently change the ids generated.
    """
    hub_kwargs = {key: value for key, value in hub_kwargs.items() if key in _HUB_KWARGS and value is not None}
    try:
        path = cached_file(
            str(name_or_path),
            file_name,
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
            **hub_kwargs,
        )
    except OSError:  # not a folder and not a repo the Hub has (or can reach): nothing to read
        path = None
    if path is None:
        logger.warning("%s has no %s: %s", name_or_path, file_name, assumed)
        return None
    try:
        return GenerationConfig.from_pretrained(os.path.dirname(path), config_file_name=os.path.basename(path))
    except (OSError, ValueError, TypeError) as error:
        raise ValueError(f"{path} is corrupt ({error}); fix it, or delete it to use defaults ({assumed})") from error


def speech_generation_config_of(model) -> GenerationConfig:
    """`model.speech_generation_config` if set, else the folder's `speech_generation_config.json` (then cached on
    the model next to `model.generation_config`), else only the decoder's EOS (with a warning, also cached).

    Raises:
        `ValueError` when the folder's `speech_generation_config.json` is corrupt.
    """
    config = getattr(model, "speech_generation_config", None)
    if config is not None:
        return config
    eos = model.config.speech_decoder_config.eos_token_id
    assumed = f"the speech decoder decodes greedily until its EOS {eos}, without suppress_tokens"
    if model.config.name_or_path:
        config = load_generation_config_file(model.config.name_or_path, SPEECH_GENERATION_CONFIG_NAME, assumed)
    model.speech_generation_config = config if config is not None else GenerationConfig(eos_token_id=eos)
    return model.speech_generation_config


class _LMState:
    """One conversation's place in one causal LM: its own `DynamicCache`, the prompt's left-padding mask (batch of
    one) extended by one per fed position, and the next position id (counted over real tokens only, as
    transformers' `generate` does). The engine (`engine_opens2s.py`) runs the forwards; this only keeps the state."""

    def __init__(self, causal_lm, attention_mask: torch.Tensor | None = None, reserve: int = 0):
        self.causal_lm = causal_lm
        self.cache: DynamicCache | None = DynamicCache(config=causal_lm.config)
        self.attention_mask = attention_mask
        self.next_position = 0
        self.written = 0  # cache positions fed so far (left padding included)
        # For the engine's static caches (`compile=True`): positions this LM may take after its first forward at
        # most (from the budgets), the cache length that leaves room for them, and the conversation's slot.
        self.reserve, self.capacity, self.slot = reserve, 0, None

    def advance(self, length: int) -> tuple[torch.Tensor | None, torch.LongTensor]:
        """Attention mask `(1, past + length)` (or `None`: no padding) and position ids `(1, length)` of `length`
        new positions; the state moves past them."""
        device = self.device
        self.written += length
        if self.attention_mask is not None and self.next_position == 0:
            position_ids = (self.attention_mask.long().cumsum(-1) - 1).clamp(min=0)
            self.next_position = int(position_ids[0, -1]) + 1
            return self.attention_mask, position_ids.to(device)
        if self.attention_mask is not None:
            new = torch.ones(1, length, dtype=self.attention_mask.dtype, device=self.attention_mask.device)
            self.attention_mask = torch.cat([self.attention_mask, new], dim=-1)
        position_ids = torch.arange(length, device=device)[None] + self.next_position
        self.next_position += length
        return self.attention_mask, position_ids

    @property
    def device(self) -> torch.device:
        return self.causal_lm.lm_head.weight.device

    def embed(self, token_ids: torch.Tensor) -> torch.Tensor:
        embeddings = self.causal_lm.get_input_embeddings()
        return embeddings(token_ids.to(embeddings.weight.device))

    def release(self) -> None:
        """Drop the key/value cache (the conversation is over or cancelled)."""
        self.cache = None
        self.attention_mask = None


@dataclass
class _Feed:
    """A forward the interleaver asks the engine for: `inputs_embeds` `(1, n, hidden)` new positions of one LM.

    The engine fills `hidden` (final-norm hidden states `(1, n, hidden)`) and `logits` (next-token logits
    `(1, vocab)`) before resuming the conversation; `stage` names the clock the forward's time is counted in.
    """

    state: _LMState
    inputs_embeds: torch.Tensor
    stage: str
    hidden: torch.Tensor | None = None
    logits: torch.Tensor | None = None


class _SideWork:
    """Work of one conversation that needs no other conversation's rows (compute-bound, not batched with the LM
    steps): the engine runs it in its loop, or beside it on its side worker, then resumes the conversation. `run`
    fills the results and `seconds`; it touches nothing but this request's own objects."""

    stage: ClassVar[str]
    seconds: float = 0.0

    def run(self) -> None:
        begin = time.perf_counter()
        self._run()
        self.seconds = time.perf_counter() - begin

    def _run(self) -> None:
        raise NotImplementedError


class _Encode(_SideWork):
    """The prompt's input embeddings (the audio encoder and the adapter): `inputs_embeds` `(1, length, hidden)`."""

    stage = "audio_encoder"

    def __init__(self, model, input_ids, input_features, feature_attention_mask):
        self.model, self.inputs = model, (input_ids, input_features, feature_attention_mask)
        self.inputs_embeds: torch.Tensor | None = None

    def _run(self) -> None:
        self.inputs_embeds = self.model.embed_inputs(*self.inputs)
        self.inputs = None


class _FinishAudio(_SideWork):
    """The token2wav session's last audio (`finish()`): `waveform` `(1, samples)`."""

    stage = "token2wav"

    def __init__(self, audio_stream):
        self.audio_stream = audio_stream
        self.waveform: torch.Tensor | None = None

    def _run(self) -> None:
        self.waveform = self.audio_stream.finish()


# ---------------------------------------------------------------------------------------------------------- schedule
class _Interleaver:
    """The state of one conversation: both LMs' cache states, what each generated, budgets, and the event timings.

    [`run`] is the conversation's schedule written as a generator: it yields events for the caller and requests for
    the engine: [`_Feed`] (a forward, run together with the other conversations' forwards) and [`_SideWork`] (the
    prompt's encoding, the last token2wav chunk: run in the engine's loop or beside it); the engine resumes the
    conversation once a request has its results. Sampling (`_pick`), detokenizing and token2wav chunks that the
    engine does not render itself happen here, per conversation.
    """

    def __init__(
        self,
        model,
        text_settings: _DecodeSettings,
        speech_settings: _DecodeSettings,
        speaker_slot: torch.Tensor,
        prompt_mask: torch.Tensor | None,
        unit_range: tuple[int, int] | None,
        detok: IncrementalDetokenizer | None,
        generator: torch.Generator | None,
        output_conditioning: bool,
        audio_stream=None,
        sample_rate: int | None = None,
    ):
        self.model = model
        self.audio_stream, self.sample_rate = audio_stream, sample_rate  # a token2wav session, or None
        # Positions after the first forward: the text budget for the LLM; for the decoder, one row per text token
        # and one position per decoder token.
        self.text = _LMState(model.language_model, prompt_mask, reserve=text_settings.budget)
        self.speech = _LMState(model.speech_decoder, reserve=text_settings.budget + speech_settings.budget)
        self.text_settings, self.speech_settings = text_settings, speech_settings
        self.speaker_slot = speaker_slot  # `(1, 1, decoder_hidden)`, the decoder's first position
        self.unit_range, self.detok, self.generator = unit_range, detok, generator
        self.clock = _StageClock()
        self.stats = StreamStats(num_units=0 if unit_range is not None else None)
        self.conditioning: list[torch.Tensor] | None = [] if output_conditioning else None
        # Ids generated so far per LM (for repetition penalties), on the device of that LM's head.
        self.text_history = torch.empty(1, 0, dtype=torch.long, device=self.text.device)
        self.speech_history = torch.empty(1, 0, dtype=torch.long, device=self.speech.device)
        self.text_left, self.speech_left = text_settings.budget, speech_settings.budget
        self.text_finished = False
        self.pending_text: torch.Tensor | None = None  # last text token, not yet fed to the LLM
        self.pending_unit: torch.Tensor | None = None  # last decoder token, not yet fed to the decoder
        self.hidden: torch.Tensor | None = None  # LLM hidden state `(1, 1, h)` that predicts the next text token
        self.logits: torch.Tensor | None = None
        self.chunk_rows: torch.Tensor | None = None  # this step's LLM hidden states `(1, n, h)`

    # ---- stages
    def _feed(self, state: _LMState, inputs_embeds: torch.Tensor, stage: str):
        """Ask the engine for one forward; returns `(hidden, logits)` once it has run."""
        request = _Feed(state, inputs_embeds, stage)
        yield request
        return request.hidden, request.logits

    def _side(self, request: _SideWork):
        """Ask the engine to run `request` (in its loop or beside it); its time counts in `request.stage`."""
        yield request
        self.clock.add(request.stage, request.seconds)

    def prefill(self, input_ids, input_features, feature_attention_mask):
        encode = _Encode(self.model, input_ids, input_features, feature_attention_mask)
        yield from self._side(encode)
        hidden, self.logits = yield from self._feed(self.text, encode.inputs_embeds, "text_prefill")
        self.hidden = hidden[:, -1:]  # at `<|im_tts_start|>`: conditioning row 0

    def text_chunk(self):
        """Up to `text_span` tokens, one [`TextDelta`] each; leaves their hidden states in `self.chunk_rows`."""
        budget = min(self.model.config.text_span, self.text_left)
        rows, finished = [], False
        while len(rows) < budget and not finished:
            if self.pending_text is not None:
                self.hidden, self.logits = yield from self._feed(
                    self.text, self.text.embed(self.pending_text), "text_decode"
                )
            with self.clock("text_decode"):
                token = _pick(self.logits, self.text_history, self.text_settings, self.generator)
                token_id = int(token)
            rows.append(self.hidden)
            self.text_history = torch.cat([self.text_history, token], dim=-1)
            self.pending_text = token
            self.text_left -= 1
            is_eos = token_id in self.text_settings.eos_ids
            finished = is_eos or self.text_left < 1
            if finished:
                self.stats.text_stop_reason = "eos" if is_eos else "max_new_tokens"
            yield TextDelta([token_id], self._detokenize(token_id, finished))
        self.stats.chunks.append(ChunkRecord("text", budget, len(rows)))
        self.chunk_rows = torch.cat(rows, dim=1)
        self.text_finished = finished

    def speech_chunk(self, flush: bool):
        """Feed this step's rows to the decoder and write `min(speech_span, left)` tokens, or the whole remaining
        budget when `flush`; stop the step at a speech EOS."""
        budget = self.speech_left if flush else min(self.model.config.speech_span, self.speech_left)
        with self.clock("speech_decode"):
            rows = self.model.project_hidden_states(self.chunk_rows)
            if self.conditioning is not None:
                self.conditioning.append(rows[0])
            head = self.speaker_slot if self.pending_unit is None else self.speech.embed(self.pending_unit)
        inputs_embeds = torch.cat([head, rows.to(head.device, head.dtype)], dim=1)
        _, logits = yield from self._feed(self.speech, inputs_embeds, "speech_decode")
        written = 0
        while written < budget:
            if written > 0:
                _, logits = yield from self._feed(self.speech, self.speech.embed(self.pending_unit), "speech_decode")
            with self.clock("speech_decode"):
                token = _pick(logits, self.speech_history, self.speech_settings, self.generator)
                token_id = int(token)
            self.speech_history = torch.cat([self.speech_history, token], dim=-1)
            self.pending_unit = token
            self.speech_left -= 1
            written += 1
            event = self._speech_event(token_id)
            yield event
            if self.audio_stream is not None and event.units:
                if self.renders_apart:
                    self.audio_stream.add(event.units)  # the engine renders ready chunks, batched across conversations
                else:
                    yield from self._audio(self._push_units(event.units))
            if token_id in self.speech_settings.eos_ids:
                if flush:
                    self.stats.speech_stop_reason = "eos"
                break
        self.stats.chunks.append(ChunkRecord("speech", budget, written))
        if self.speech_left < 1:
            self.stats.speech_stop_reason = self.stats.speech_stop_reason or "max_new_tokens"

    # ---- events
    def _detokenize(self, token_id: int, finished: bool) -> str | None:
        if self.stats.time_to_first_text is None:
            self.stats.time_to_first_text = self.clock.elapsed()
        self.stats.num_text_tokens += 1
        if self.detok is None:
            return None
        with self.clock("detokenize"):
            text = self.detok.push(token_id)
            return text + self.detok.flush() if finished else text

    def _speech_event(self, token_id: int) -> SpeechUnits:
        self.stats.num_speech_tokens += 1
        units = None
        if self.unit_range is not None:
            offset, count = self.unit_range
            is_unit = 0 <= token_id - offset < count and token_id not in self.speech_settings.eos_ids
            units = [token_id - offset] if is_unit else []
            self.stats.num_units += len(units)
        if self.stats.time_to_first_units is None and (units is None or units):
            self.stats.time_to_first_units = self.clock.elapsed()
        return SpeechUnits([token_id], units)

    @property
    def renders_apart(self) -> bool:
        """Whether the engine renders this conversation's ready token2wav chunks ([`BlockStream`]: batched with
        other conversations' chunks of the same shape); the original schedule's session renders inside `push`."""
        return isinstance(self.audio_stream, BlockStream)

    def audio_events(self, waveform: torch.Tensor, seconds: float, stage: str = "token2wav") -> list:
        """The events of a chunk the engine rendered for this conversation in `seconds` (counted in `stage`)."""
        self.clock.add(stage, seconds)
        return list(self._audio(waveform))

    def _audio(self, waveform: torch.Tensor):
        """An [`AudioChunk`] for a non-empty waveform `(1, samples)` from the token2wav session."""
        if waveform.shape[-1] == 0:
            return
        if self.stats.time_to_first_audio is None:
            self.stats.time_to_first_audio = self.clock.elapsed()
        pcm = waveform[0].float().cpu().numpy()
        self.stats.audio_seconds += pcm.shape[0] / self.sample_rate
        yield AudioChunk(pcm, self.sample_rate)

    def _push_units(self, units: list[int]) -> torch.Tensor:
        with self.clock("token2wav"):
            return self.audio_stream.push(units)

    def run(self, input_ids, input_features, feature_attention_mask):
        """The whole conversation: prefill, interleaved text/speech steps, the flush, then [`Done`]; yields events
        and requests (see the class docstring)."""
        yield from self.prefill(input_ids, input_features, feature_attention_mask)
        while not self.text_finished:
            yield from self.text_chunk()
            # Fixed OB-LLM-4 (docs/original_behaviour.md): with the speech budget spent only the decoder stops.
            if self.speech_left >= 1:
                yield from self.speech_chunk(flush=self.text_finished)
        if not self.stats.speech_stop_reason:
            self.stats.speech_stop_reason = "max_new_tokens"
        if self.audio_stream is not None:
            finish = _FinishAudio(self.audio_stream)
            yield from self._side(finish)
            yield from self._audio(finish.waveform)
        yield self.done()

    def done(self, stop_reason: str | None = None) -> Done:
        """The [`Done`] event; `stop_reason` (e.g. `"cancelled"`) fills the stop reasons not yet set."""
        if stop_reason is not None:
            self.stats.text_stop_reason = self.stats.text_stop_reason or stop_reason
            self.stats.speech_stop_reason = self.stats.speech_stop_reason or stop_reason
        self.stats.stage_seconds = dict(self.clock.seconds)
        if self.conditioning is not None:
            self.stats.conditioning = torch.cat(self.conditioning, dim=0) if self.conditioning else None
        self.stats.total_seconds = self.clock.elapsed()
        return Done(self.stats)

    def release(self) -> None:
        """Free the conversation's memory at once: both LMs' caches and the token2wav session."""
        self.text.release()
        self.speech.release()
        self.audio_stream = None
        self.chunk_rows = self.hidden = self.logits = None


# ---------------------------------------------------------------------------------------------------------- public
def _resolve_tokenizers(processor, tokenizer, unit_tokenizer):
    """LLM tokenizer and `(offset, count)` of the unit tokens from whatever was given (a processor serves both)."""
    if processor is None and tokenizer is not None and hasattr(tokenizer, "unit_token_offset"):
        processor, tokenizer = tokenizer, None
    if processor is not None:
        tokenizer = tokenizer if tokenizer is not None else processor.tokenizer
        unit_tokenizer = unit_tokenizer if unit_tokenizer is not None else processor
    return tokenizer, unit_token_range(unit_tokenizer) if unit_tokenizer is not None else None


def _prompt_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """Keep the mask only when it pads something (left padding); a full mask runs like no mask, as the original."""
    if attention_mask is None or bool(attention_mask.all()):
        return None
    if bool(attention_mask[0, -1] == 0):
        raise ValueError("stream needs left padding: the last prompt position must be a real token")
    return attention_mask.to(input_ids.device)


# Generation arguments only `GenerationMixin.generate` (the text path) implements.
_TEXT_PATH_ONLY = ("assistant_model", "penalty_alpha", "num_beam_groups", "constraints", "force_words_ids")


def _text_path_only(name: str, value) -> bool:
    if name in ("num_beams", "num_return_sequences"):
        return value is not None and int(value) > 1
    return name in _TEXT_PATH_ONLY and value is not None


def _apply_generation_kwargs(
    kwargs: dict, generation_config: GenerationConfig, speech_generation_config: GenerationConfig
) -> tuple[GenerationConfig, GenerationConfig]:
    """Route standard generation arguments: [`GenerationConfig`] fields update a copy of the LLM's config,
    `speech_`-prefixed ones a copy of the decoder's; what the speech path cannot do raises `ValueError`."""
    for name, value in kwargs.items():
        if _text_path_only(name.removeprefix("speech_"), value):
            raise ValueError(
                f"the speech path decodes greedily or by sampling and cannot use {name}={value!r}; "
                "for beam search, assisted or contrastive decoding call generate(..., return_speech=False) (text only)"
            )
    defaults = GenerationConfig()
    known = {name for name in kwargs if hasattr(defaults, name.removeprefix("speech_"))}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise TypeError(f"stream got unexpected arguments {unknown}")
    text_updates = {name: value for name, value in kwargs.items() if not name.startswith("speech_")}
    speech_updates = {name.removeprefix("speech_"): v for name, v in kwargs.items() if name.startswith("speech_")}
    if text_updates:
        generation_config = copy.deepcopy(generation_config)
        generation_config.update(**text_updates)
    if speech_updates:
        speech_generation_config = copy.deepcopy(speech_generation_config)
        speech_generation_config.update(**speech_updates)
    return generation_config, speech_generation_config


class SpeakerEmbeddingError(ValueError):
    """A `ValueError` about a speaker embedding; `reason` is a short fixed phrase (`"of the wrong size"`, `"not
    numbers"`, `"not finite"`, `"norm too large"`) for counting bad training rows, the message says the details."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def check_speaker_embedding(value, dim: int, name: str = "speaker_embedding") -> torch.Tensor:
    """One speaker embedding as a float32 `(dim,)` tensor, or a [`SpeakerEmbeddingError`] naming `name`, what was
    expected and what was given: it must hold `dim` finite numbers, with an L2 norm of at most
    `MAX_SPEAKER_EMBEDDING_NORM` (a NaN or huge voice makes the speech decoder stop at once: no units, no audio)."""
    try:
        tensor = torch.as_tensor(np.asarray(value) if isinstance(value, (list, tuple)) else value)
    except (TypeError, ValueError, RuntimeError) as error:
        raise SpeakerEmbeddingError(
            "not numbers", f"{name} must be {dim} numbers, got {type(value).__name__} ({error})"
        ) from None
    if not (tensor.is_floating_point() or tensor.dtype in (torch.int8, torch.int16, torch.int32, torch.int64)):
        raise SpeakerEmbeddingError("not numbers", f"{name} must be {dim} numbers, got dtype {tensor.dtype}")
    if tensor.numel() != dim or sum(size > 1 for size in tensor.shape) > 1:
        raise SpeakerEmbeddingError(
            "of the wrong size", f"{name} must be one vector of {dim} values, got shape {tuple(tensor.shape)}"
        )
    tensor = tensor.detach().float().reshape(dim)
    if not torch.isfinite(tensor).all():
        count = int((~torch.isfinite(tensor)).sum())
        raise SpeakerEmbeddingError("not finite", f"{name} must be finite, got {count} NaN/Inf values")
    norm = float(tensor.double().norm())
    if norm > MAX_SPEAKER_EMBEDDING_NORM:
        raise SpeakerEmbeddingError(
            "norm too large",
            f"{name} has an L2 norm of {norm:.3g}; speaker embeddings have norms of order 10 and at most "
            f"{MAX_SPEAKER_EMBEDDING_NORM:g} is accepted (unscaled or corrupt data?)",
        )
    return tensor


def check_stream_inputs(model, input_ids, speaker_embedding=None, token2wav=None, token2wav_speaker_embedding=None):
    """Check a conversation's prompt and voices before anything runs (so nothing fails after events went out).

    Returns:
        `input_ids` as a `(1, prompt_length)` LongTensor, `speaker_embedding` as `(speaker_embedding_dim,)` (or
        `None`), `token2wav_speaker_embedding` as `(1, token2wav's speaker_embedding_dim)` (or `None`).

    Raises:
        `ValueError` naming the argument, what was expected and what was given: `input_ids` not one non-empty row of
        integer ids within the LLM's vocabulary; a speaker embedding of the wrong size, not finite or of absurd norm
        (see [`check_speaker_embedding`]).
    """
    if not isinstance(input_ids, torch.Tensor):
        input_ids = torch.as_tensor(np.asarray(input_ids))
    if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
        raise ValueError(f"input_ids must be integer token ids, got dtype {input_ids.dtype}")
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError(
            "stream generates one conversation at a time: batch size must be 1 (input_ids of shape (1, "
            f"prompt_length)), got input_ids of shape {tuple(input_ids.shape)}"
        )
    if input_ids.shape[1] == 0:
        raise ValueError("input_ids is empty: the prompt needs at least one token (apply_chat_template's output)")
    vocab_size = model.get_input_embeddings().num_embeddings
    # The audio placeholder may lie outside the embedding table: its positions get audio frames, not embeddings.
    text_ids = (
        input_ids[input_ids != model.config.audio_token_id] if model.config.audio_token_id is not None else input_ids
    )
    if text_ids.numel() and (int(text_ids.min()) < 0 or int(text_ids.max()) >= vocab_size):
        raise ValueError(
            f"input_ids must lie in [0, {vocab_size}) (the LLM's vocabulary) or be the audio placeholder "
            f"{model.config.audio_token_id}, got ids from {int(text_ids.min())} to {int(text_ids.max())}"
        )
    if speaker_embedding is not None:
        speaker_embedding = check_speaker_embedding(speaker_embedding, model.config.speaker_embedding_dim)
    if token2wav_speaker_embedding is not None:
        name = "token2wav_speaker_embedding"
        if token2wav:
            dim = token2wav.config.flow_config.speaker_embedding_dim
            token2wav_speaker_embedding = check_speaker_embedding(token2wav_speaker_embedding, dim, name)[None]
        else:
            logger.warning("%s is ignored: no token2wav decoder is attached or given", name)
            token2wav_speaker_embedding = None
    return input_ids.long(), speaker_embedding, token2wav_speaker_embedding


@torch.no_grad()
def new_conversation(
    model,
    input_ids: torch.LongTensor,
    input_features: torch.Tensor | None = None,
    feature_attention_mask: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    generation_config: GenerationConfig | None = None,
    speech_generation_config: GenerationConfig | None = None,
    max_new_tokens: int | None = None,
    speech_max_new_tokens: int | None = None,
    speaker_embedding: torch.Tensor | np.ndarray | None = None,
    processor=None,
    tokenizer=None,
    unit_tokenizer=None,
    generator: torch.Generator | None = None,
    text_logits_processor: LogitsProcessorList | None = None,
    speech_logits_processor: LogitsProcessorList | None = None,
    skip_special_tokens: bool = True,
    output_conditioning: bool = False,
    token2wav=None,
    token2wav_mode: str = "blocks",
    token2wav_speaker_embedding: torch.Tensor | None = None,
    token2wav_generator: torch.Generator | None = None,
    token2wav_compile: bool = False,
    seed: int | None = None,
    **kwargs,
):
    """Check the arguments of one conversation (those of [`stream`]) and return its schedule, ready to run: a
    generator of events and [`_Feed`] requests, and the `_Interleaver` that holds its state."""
    if token2wav is None:
        token2wav = getattr(model, "token2wav", None)
    input_ids, speaker_embedding, token2wav_speaker_embedding = check_stream_inputs(
        model, input_ids, speaker_embedding, token2wav, token2wav_speaker_embedding
    )
    device = model.device
    input_ids = input_ids.to(device)
    if input_features is not None:
        input_features = input_features.to(device)
        feature_attention_mask = feature_attention_mask.to(device) if feature_attention_mask is not None else None
    generation_config = generation_config if generation_config is not None else model.generation_config
    if speech_generation_config is None:
        speech_generation_config = speech_generation_config_of(model)
    generation_config, speech_generation_config = _apply_generation_kwargs(
        kwargs, generation_config, speech_generation_config
    )
    text_settings = _decode_settings(
        generation_config, model.config.text_config.eos_token_id, text_logits_processor, device, max_new_tokens
    )
    speech_settings = _decode_settings(
        speech_generation_config,
        model.config.speech_decoder_config.eos_token_id,
        speech_logits_processor,
        device,
        speech_max_new_tokens,
    )
    if text_settings.budget < 1:
        raise ValueError(
            f"the text budget (generation_config.max_new_tokens) must be >= 1, got {text_settings.budget}"
        )
    if seed is not None:
        generator = generator if generator is not None else torch.Generator(device=device).manual_seed(seed)
        token2wav_generator = (
            token2wav_generator if token2wav_generator is not None else torch.Generator().manual_seed(seed)
        )
    tokenizer, unit_range = _resolve_tokenizers(processor, tokenizer, unit_tokenizer)
    audio_stream = None
    if token2wav:
        if unit_range is None:
            raise ValueError("streaming audio needs the unit vocabulary: pass processor= (or unit_tokenizer=)")
        audio_stream = token2wav.start_stream(
            mode=token2wav_mode,
            speaker_embedding=token2wav_speaker_embedding,
            generator=token2wav_generator,
            compile=token2wav_compile and token2wav_mode == "blocks",
        )
    detok = IncrementalDetokenizer(tokenizer, skip_special_tokens) if tokenizer is not None else None
    interleaver = _Interleaver(
        model,
        text_settings,
        speech_settings,
        speaker_slot=model.speaker_slot(speaker_embedding)[:, None],  # fixed OB-LLM-1: the voice is honoured
        prompt_mask=_prompt_mask(input_ids, attention_mask),
        unit_range=unit_range,
        detok=detok,
        generator=generator,
        output_conditioning=output_conditioning,
        audio_stream=audio_stream,
        sample_rate=token2wav.sampling_rate if token2wav else None,
    )
    return interleaver.run(input_ids, input_features, feature_attention_mask), interleaver
