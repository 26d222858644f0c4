"""Pluggable backends of the pipeline, chosen by name: the LLM, the two speech synthesisers, the speech tokenizer.

    from opens2s.dataset_scripts.backends import register_llm_backend

    class MyLLM:
        def complete(self, messages: list[dict], **params) -> str: ...

    register_llm_backend("mine", lambda config: MyLLM())   # then: opens2s data all --llm mine ...

LLM backends (`complete(messages, temperature=, max_tokens=, seed=) -> str`):

- `"openai"`: any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, TGI, ollama, llama.cpp server) through
  [`ChatCompletionsClient`]: retries with exponential backoff, a request-rate limit shared by the workers;
- `"transformers"`: a local chat model (`AutoModelForCausalLM` + its chat template), [`TransformersLLM`].

Speech backends (see `tts.py`): `"cosyvoice2"`, `"espeak"`, and `"auto"` (CosyVoice2 when its package imports, else
espeak-ng). Backends load on first use, so a stage that needs none of them loads none.
"""

import importlib.util
import logging
from collections.abc import Callable
from typing import Any, Protocol

from opens2s.dataset_scripts.config import PipelineConfig


__all__ = [
    "Backends",
    "LLM_BACKENDS",
    "LLMBackend",
    "OpenAICompatibleLLM",
    "SpeechBackend",
    "TTS_BACKENDS",
    "TransformersLLM",
    "build_llm_backend",
    "build_tts_backend",
    "register_llm_backend",
    "register_tts_backend",
]

logger = logging.getLogger(__name__)


class LLMBackend(Protocol):
    """What the LLM stages call. `params` are `temperature`, `max_tokens`, `seed` (and `response_format`)."""

    def complete(self, messages: list[dict], **params) -> str: ...


class SpeechBackend(Protocol):
    """What the speech stages call; both return `(waveform, sampling_rate)`. See `tts.py`."""

    def clone(self, text: str, *, reference_audio: str, reference_text: str, **labels) -> tuple[Any, int]: ...

    def instruct(self, text: str, *, tone: str, language: str) -> tuple[Any, int]: ...


class OpenAICompatibleLLM:
    """An OpenAI-compatible endpoint through [`ChatCompletionsClient`] (retries, backoff, rate limit).

    Args:
        client ([`ChatCompletionsClient`]): the configured client.
        json_mode (`bool`, *optional*, defaults to `False`): ask for `response_format={"type": "json_object"}`.
    """

    max_workers = None  # HTTP: the stage's llm_workers threads share the client's rate limit

    def __init__(self, client, json_mode: bool = False):
        self.client, self.json_mode = client, json_mode

    def complete(self, messages: list[dict], **params) -> str:
        if self.json_mode:
            params.setdefault("response_format", {"type": "json_object"})
        return self.client.complete(messages, **params)


class TransformersLLM:
    """A local `transformers` chat model: the tokenizer's chat template, `generate`, the new tokens decoded.

    Args:
        model (`str` or `PreTrainedModel`): a model id / folder (loaded with `AutoModelForCausalLM`), or a model.
        tokenizer (`PreTrainedTokenizerBase`, *optional*): needed when `model` is a model object.
        device (`str`, *optional*, defaults to `"cpu"`): where an id / folder is loaded.
        dtype (`str`, *optional*, defaults to `"auto"`): dtype of a loaded model.
        chat_template_kwargs (`dict`, *optional*): extra chat template values; defaults to
            `{"enable_thinking": False}` (Qwen3 answers without a thinking block; templates ignore unknown keys).
    """

    max_workers = 1  # one model: rows run one at a time

    def __init__(self, model, tokenizer=None, device: str = "cpu", dtype: str = "auto", chat_template_kwargs=None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if isinstance(model, str):
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(model)
            model = AutoModelForCausalLM.from_pretrained(model, dtype=dtype).to(device)
        if tokenizer is None:
            raise ValueError("TransformersLLM needs the tokenizer of a model object")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.chat_template_kwargs = (
            {"enable_thinking": False} if chat_template_kwargs is None else chat_template_kwargs
        )

    def complete(
        self, messages: list[dict], temperature: float = 0.0, max_tokens: int = 512, seed: int | None = None, **_
    ) -> str:
        """Greedy when `temperature == 0`, else sampling seeded with `seed` (reproducible per row)."""
        import torch

        inputs = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True, **self.chat_template_kwargs
        ).to(self.model.device)
        sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            if seed is not None:
                torch.manual_seed(seed)
            output = self.model.generate(
                **inputs, max_new_tokens=max_tokens, pad_token_id=self.tokenizer.pad_token_id, **sampling
            )
        return self.tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def _openai(config: PipelineConfig) -> OpenAICompatibleLLM:
    from opens2s.processing.chat_completions import ChatCompletionsClient

    if not config.llm_model:
        raise ValueError("the openai LLM backend needs --llm-model (the model name the endpoint serves)")
    client = ChatCompletionsClient(
        base_url=config.llm_base_url,
        model=config.llm_model,
        api_key=config.llm_api_key,
        timeout=config.llm_timeout,
        max_retries=config.llm_max_retries,
        backoff=config.llm_backoff,
        requests_per_second=config.requests_per_second,
    )
    return OpenAICompatibleLLM(client, json_mode=config.llm_json_mode)


def _transformers(config: PipelineConfig) -> TransformersLLM:
    if not config.llm_model:
        raise ValueError("the transformers LLM backend needs --llm-model (a Hub id or a local folder)")
    return TransformersLLM(config.llm_model, device=config.device)


LLM_BACKENDS: dict[str, Callable[[PipelineConfig], LLMBackend]] = {"openai": _openai, "transformers": _transformers}


def _espeak(config: PipelineConfig, role: str):
    from pathlib import Path

    from opens2s.dataset_scripts.tts import EspeakTTS

    voice = config.response_voice if role == "response" else None
    return EspeakTTS(response_voice=None if voice and Path(voice).suffix else voice)  # a .wav is CosyVoice's


def _cosyvoice2(config: PipelineConfig, role: str):
    from opens2s.dataset_scripts.tts import CosyVoice2TTS

    return CosyVoice2TTS(config.cosyvoice_model, response_voice=config.response_voice if role == "response" else None)


def _auto(config: PipelineConfig, role: str):
    """CosyVoice2 when its package imports, its model folder exists and (for replies) a reply voice is given; else
    espeak-ng, with a warning saying why."""
    from pathlib import Path

    if importlib.util.find_spec("cosyvoice") is None:
        reason = "cosyvoice is not installed"
    elif not Path(config.cosyvoice_model).is_dir():
        reason = f"no CosyVoice2 model folder at {config.cosyvoice_model} (--cosyvoice-model)"
    elif role == "response" and not config.response_voice:
        reason = "no reply voice prompt (--response-voice PROMPT.wav)"
    else:
        return _cosyvoice2(config, role)
    logger.warning(
        "%s: the %s speech uses espeak-ng, which imitates the labels but does not clone voices", reason, role
    )
    return _espeak(config, role)


# A speech factory takes the config and the role, "user" (voice cloning) or "response" (instruct-TTS).
TTS_BACKENDS: dict[str, Callable[[PipelineConfig, str], SpeechBackend]] = {
    "auto": _auto,
    "espeak": _espeak,
    "cosyvoice2": _cosyvoice2,
}


def register_llm_backend(name: str, factory: Callable[[PipelineConfig], LLMBackend]) -> None:
    """Make `factory(config) -> backend` available as `--llm name` (replaces an entry of the same name)."""
    LLM_BACKENDS[name] = factory


def register_tts_backend(name: str, factory: Callable[[PipelineConfig, str], SpeechBackend]) -> None:
    """Make `factory(config, role) -> backend` available as `--tts name` / `--response-tts name`."""
    TTS_BACKENDS[name] = factory


def build_llm_backend(config: PipelineConfig) -> LLMBackend:
    """The LLM backend named by `config.llm`."""
    if config.llm not in LLM_BACKENDS:
        raise ValueError(f"unknown LLM backend {config.llm!r}; known: {sorted(LLM_BACKENDS)}")
    return LLM_BACKENDS[config.llm](config)


def build_tts_backend(config: PipelineConfig, role: str) -> SpeechBackend:
    """The speech backend of `role` (`"user"`: `config.tts`; `"response"`: `config.response_tts or config.tts`)."""
    name = config.tts if role == "user" else config.response_tts or config.tts
    if name not in TTS_BACKENDS:
        raise ValueError(f"unknown TTS backend {name!r}; known: {sorted(TTS_BACKENDS)}")
    return TTS_BACKENDS[name](config, role)


class Backends:
    """The backends of one pipeline run, each built from the config on first use, or given ready-made.

    Args:
        config ([`PipelineConfig`]): names and settings of the backends.
        llm (`LLMBackend`, *optional*): use this LLM instead of `config.llm`.
        user_tts / response_tts (`SpeechBackend`, *optional*): use these speech backends.
        speech_tokenizer ([`OpenS2SSpeechTokenizer`], *optional*): use this tokenizer instead of loading
            `config.speech_tokenizer`.
    """

    def __init__(self, config: PipelineConfig, llm=None, user_tts=None, response_tts=None, speech_tokenizer=None):
        self.config = config
        self._built = {"llm": llm, "user_tts": user_tts, "response_tts": response_tts, "tokenizer": speech_tokenizer}

    def _get(self, key: str, build: Callable[[], Any]):
        if self._built[key] is None:
            self._built[key] = build()
        return self._built[key]

    @property
    def llm(self) -> LLMBackend:
        return self._get("llm", lambda: build_llm_backend(self.config))

    @property
    def user_tts(self) -> SpeechBackend:
        return self._get("user_tts", lambda: build_tts_backend(self.config, "user"))

    @property
    def response_tts(self) -> SpeechBackend:
        return self._get("response_tts", lambda: build_tts_backend(self.config, "response"))

    @property
    def speech_tokenizer(self):
        return self._get("tokenizer", self._load_tokenizer)

    def _load_tokenizer(self):
        from opens2s.modeling_opens2s.modeling_speech_tokenizer import OpenS2SSpeechTokenizer

        tokenizer = OpenS2SSpeechTokenizer.from_pretrained(self.config.speech_tokenizer)
        return tokenizer.to(self.config.device).eval()
