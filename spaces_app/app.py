"""The OpenS2S Gradio app: ask by microphone or file, read the answer as it is written, hear it as it is spoken.

Runs as a Hugging Face Space (this file is the Space's `app_file`) and locally (`python -m opens2s.spaces_app`,
`opens2s space`). The model is loaded once at start-up (bf16 on CUDA); every answer is one `model.stream` event
iterator from `opens2s.processing.chat.stream_reply`, the same one the `opens2s chat` CLI consumes, so there is no
second generation code path here. The handler turns its events into UI updates:

- `TextDelta` -> the assistant message grows in the chat;
- `SpeechUnits` -> a unit counter in the status line (every `UNIT_UPDATE_EVERY` units);
- `AudioChunk` -> one 16-bit wav chunk into the autoplaying `gr.Audio(streaming=True)`; chunks are already
  cross-faded by the token2wav block stream, and Gradio encodes all chunks of an answer with one persistent AAC
  encoder (ffmpeg), so chunk seams do not click. int16 keeps the levels (Gradio peak-normalises float arrays per
  chunk, which would make the loudness jump at every seam);
- `Done` -> the latency figures (first text / units / audio, audio seconds, real-time factor) under the answer.

Voices: "default (zeros)" is the original's all-zero speaker embedding; every `*.safetensors` in the model folder's
`speakers/` (or `--speakers DIR`) holding a `speaker_embedding` tensor of `config.speaker_embedding_dim` values (and
optionally `token2wav_speaker_embedding`, the decoder's 192-value x-vector) is offered under its file name.
"""

try:  # ZeroGPU: `spaces` must come before torch initialises CUDA; absent (and not needed) off Hugging Face.
    import spaces
except ImportError:
    spaces = None

import argparse
import copy
import io
import logging
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import numpy as np
import torch

from opens2s.processing.audio_io import load_audio
from opens2s.processing.chat import SpeechModel, load_speech_model, stream_reply
from opens2s.processing.voices import find_speakers, load_voice


__all__ = [
    "DEFAULT_VOICE",
    "OpenS2SSpace",
    "Turn",
    "build_demo",
    "chat_messages",
    "find_speakers",
    "format_latency",
    "gpu",
    "run",
    "wav_bytes",
]

logger = logging.getLogger(__name__)

DEFAULT_VOICE = "default (zeros)"
# Status-line refreshes while units stream: the decoder writes them 8 at a time (the original's M:N = 4:8 schedule).
UNIT_UPDATE_EVERY = 8
# Seconds a ZeroGPU call may hold the GPU (one answer of the 8B model with a 512-token budget fits comfortably).
GPU_SECONDS = 120


def gpu(function: Callable) -> Callable:
    """`spaces.GPU` when the `spaces` package is installed (a ZeroGPU Space lends the function a GPU per call;
    elsewhere it is a no-op); `function` unchanged otherwise."""
    return spaces.GPU(duration=GPU_SECONDS)(function) if spaces is not None else function


def wav_bytes(pcm: np.ndarray, sample_rate: int) -> bytes:
    """A mono 16-bit PCM wav file in memory, from float samples in [-1, 1] (clipped) of shape `(num_samples,)`."""
    samples = (np.clip(pcm, -1.0, 1.0) * 32767.0).round().astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(sample_rate)
        writer.writeframes(samples.tobytes())
    return buffer.getvalue()


def format_latency(stats) -> str:
    """One line of a stream's `Done.stats`: time to first text / units / audio (seconds since the request), the
    spoken seconds and the real-time factor (compute seconds per audio second; < 1 is faster than real time)."""

    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f} s"

    parts = [
        f"first text {seconds(stats.time_to_first_text)}",
        f"first units {seconds(stats.time_to_first_units)}",
        f"first audio {seconds(stats.time_to_first_audio)}",
    ]
    if stats.audio_seconds > 0:
        parts.append(
            f"{stats.audio_seconds:.2f} s of audio in {stats.total_seconds:.2f} s "
            f"(RTF {stats.total_seconds / stats.audio_seconds:.2f})"
        )
    else:
        parts.append(f"total {stats.total_seconds:.2f} s")
    return " · ".join(parts)


@dataclass
class Turn:
    """One question and answer of a conversation (what the app keeps in its per-session `gr.State`).

    Args:
        question (`np.ndarray` of shape `(num_samples,)`): the spoken question, mono float32 at 16 kHz; fed back to
            the model with every later question.
        question_path (`str`): the recorded or uploaded file, shown in the chat.
        reply (`str`): the answer's text so far (a stopped answer keeps what was written).
        latency (`str`): the answer's latency figures, once it is complete.
    """

    question: np.ndarray
    question_path: str
    reply: str = ""
    latency: str = ""


def chat_messages(turns: list[Turn]) -> list[dict]:
    """The `gr.Chatbot` messages of a conversation: each question as an audio file, each answer as text with its
    latency figures in italics underneath."""
    messages = []
    for turn in turns:
        messages.append({"role": "user", "content": {"path": turn.question_path}})
        reply = turn.reply or "…"
        if turn.latency:
            reply += f"\n\n*{turn.latency}*"
        messages.append({"role": "assistant", "content": reply})
    return messages


class OpenS2SSpace:
    """The app's state shared by all sessions (the model, loaded once; its voices; the budgets) and its handler.

    Args:
        speech_model ([`SpeechModel`]): from `opens2s.processing.chat.load_speech_model`.
        speakers (`dict[str, Path]`, *optional*): voice files by name (see [`find_speakers`]).
        max_new_tokens (`int`, *optional*): text budget per answer; default the model's generation config.
        max_units (`int`, *optional*): speech unit budget per answer; default the speech generation config.
        max_history_turns (`int`, *optional*, defaults to 4): earlier turns fed back with a question (each costs
            its audio's 6.25 tokens per second plus the answer's text in the prompt).
        seed (`int`, *optional*): seed of every answer's sampling and voice noise (tests); default random.
    """

    def __init__(
        self,
        speech_model: SpeechModel,
        speakers: dict[str, Path] | None = None,
        max_new_tokens: int | None = None,
        max_units: int | None = None,
        max_history_turns: int = 4,
        seed: int | None = None,
    ):
        self.speech_model = speech_model
        self.max_new_tokens, self.max_units = max_new_tokens, max_units
        self.max_history_turns, self.seed = max_history_turns, seed
        dim = speech_model.model.config.speaker_embedding_dim
        self.voices: dict[str, dict[str, torch.Tensor]] = {DEFAULT_VOICE: {}}
        for name, path in (speakers or {}).items():
            if (voice := load_voice(path, dim)) is not None:
                self.voices[name] = voice

    def default_sampling(self) -> tuple[float, float]:
        """`(temperature, top_p)` of the model's generation config (temperature 0 when it decodes greedily)."""
        config = self.speech_model.model.generation_config
        temperature = float(config.temperature or 1.0) if config.do_sample else 0.0
        return temperature, float(config.top_p or 1.0)

    def stream_options(self, temperature: float, top_p: float) -> dict:
        """`model.stream` keyword arguments of one answer: the app's text and unit budgets (passed as they are), and
        the LLM's generation config with the UI's sampling (temperature 0 = greedy), a copy so that the model's own
        config stays untouched."""
        text = copy.deepcopy(self.speech_model.model.generation_config)
        text.do_sample = temperature > 0
        if text.do_sample:
            text.temperature, text.top_p = float(temperature), float(top_p)
        return {
            "generation_config": text,
            "max_new_tokens": self.max_new_tokens,
            "speech_max_new_tokens": self.max_units,
        }

    def read_question(self, audio: str | None) -> np.ndarray:
        """The question as mono float32 at 16 kHz, or a `gr.Error` the UI shows (no stack trace) saying what is
        wrong with it."""
        if audio is None:
            raise gr.Error("Record or upload a spoken question first.", print_exception=False)
        try:
            extractor = self.speech_model.processor.feature_extractor
            waveform = load_audio(
                audio, target_sampling_rate=extractor.sampling_rate, max_seconds=extractor.max_audio_seconds
            )
        except (OSError, ValueError) as error:
            raise gr.Error(f"Could not read this audio: {error}", print_exception=False) from None
        return waveform

    def respond(
        self, audio: str | None, turns: list[Turn], voice: str, temperature: float, top_p: float
    ) -> Iterator[tuple[list[dict], bytes | None, str, list[Turn]]]:
        """Answer one spoken question of a conversation, streaming.

        Args:
            audio (`str`): path of the recorded or uploaded question (`None` when there is none).
            turns (`list[Turn]`): the conversation so far (the session's `gr.State`); not modified.
            voice (`str`): a key of `self.voices`.
            temperature (`float`): text sampling temperature; 0 decodes greedily.
            top_p (`float`): text nucleus sampling mass.

        Yields:
            `(chat_messages, audio_chunk, status, turns)`: the chat with the answer so far; the next 16-bit wav
            chunk of the spoken answer or `None`; a status line (progress, then the latency figures); and the
            conversation including this turn (a stopped answer stays in it with the text written so far).
        """
        turn = Turn(self.read_question(audio), str(audio))
        kept = turns[-self.max_history_turns :] if self.max_history_turns > 0 else []
        history = [(earlier.question, earlier.reply) for earlier in kept]
        turns = [*turns, turn]
        options = self.stream_options(temperature, top_p)
        events = None
        try:
            events = stream_reply(
                self.speech_model,
                turn.question,
                seed=self.seed,
                history=history,
                **options,
                **self.voices.get(voice, {}),
            )
            yield chat_messages(turns), None, "Listening…", turns
            yield from self._updates(events, turn, turns)
        except ValueError as error:  # a question the processor refuses (too short, too long, ...)
            raise gr.Error(f"Could not answer this audio: {error}", print_exception=False) from None
        finally:
            if events is not None:
                events.close()  # a Stop (Gradio closes this generator) ends the model's stream here too

    def _updates(self, events, turn: Turn, turns: list[Turn]) -> Iterator[tuple]:
        """UI updates from the stream's events (see the module docstring)."""
        num_units, audio_seconds = 0, 0.0
        for event in events:
            chunk = None
            if event.kind == "text":
                if not event.text:
                    continue
                turn.reply += event.text
            elif event.kind == "units":
                num_units += len(event.units or ())
                if not event.units or num_units % UNIT_UPDATE_EVERY:
                    continue
            elif event.kind == "audio":
                chunk = wav_bytes(event.pcm, event.sample_rate)
                audio_seconds += event.pcm.shape[0] / event.sample_rate
            elif event.kind == "done":
                turn.latency = format_latency(event.stats)
                yield chat_messages(turns), None, turn.latency, turns
                return
            status = f"Answering… {num_units} speech units, {audio_seconds:.1f} s of audio"
            yield chat_messages(turns), chunk, status, turns


def _header(space: OpenS2SSpace) -> str:
    text = (
        "# OpenS2S\nEmpathetic speech-to-speech: ask by **microphone** (the answer starts when you stop recording) "
        "or **upload** a file and press *Ask*. The text streams into the chat and the voice plays as it is produced; "
        "earlier turns are remembered until *New conversation*."
    )
    if space.speech_model.is_tiny:
        text += (
            "\n\n**This is the tiny random test model**: its answers are noise. Run with `--model` (or set the "
            "`OPENS2S_MODEL` variable of the Space) for a real checkpoint."
        )
    return text


def build_demo(space: OpenS2SSpace, concurrency_limit: int = 2, max_queue_size: int | None = 32) -> gr.Blocks:
    """The app's `gr.Blocks`, with its queue configured.

    Args:
        space ([`OpenS2SSpace`]): the loaded model and the handler.
        concurrency_limit (`int`, *optional*, defaults to 2): answers generated at the same time (all sessions
            together); further requests wait in the queue.
        max_queue_size (`int`, *optional*, defaults to 32): requests that may wait; more are refused.
    """
    from opens2s.processing.chat import EXAMPLE_WAV

    temperature_default, top_p_default = space.default_sampling()
    with gr.Blocks(title="OpenS2S") as demo:
        gr.Markdown(_header(space))
        state = gr.State([])
        with gr.Row():
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(label="Conversation", height=420, elem_id="chat")
                reply_audio = gr.Audio(
                    label="Spoken answer", streaming=True, autoplay=True, interactive=False, elem_id="reply-audio"
                )
                status = gr.Markdown(elem_id="status")
            with gr.Column(scale=2):
                question = gr.Audio(
                    sources=["microphone", "upload"], type="filepath", label="Your question", elem_id="question"
                )
                with gr.Row():
                    ask_button = gr.Button("Ask", variant="primary", elem_id="ask")
                    stop_button = gr.Button("Stop", variant="stop", elem_id="stop")
                    clear_button = gr.Button("New conversation", elem_id="clear")
                voice = gr.Dropdown(
                    list(space.voices),
                    value=DEFAULT_VOICE,
                    label="Voice",
                    info="speaker embeddings found with the model (speakers/*.safetensors)",
                    interactive=len(space.voices) > 1,
                )
                with gr.Accordion("Sampling", open=False):
                    temperature = gr.Slider(0.0, 1.5, value=temperature_default, step=0.05, label="Temperature")
                    top_p = gr.Slider(0.05, 1.0, value=top_p_default, step=0.05, label="Top-p")
                    gr.Markdown("Text sampling; temperature 0 decodes greedily. The voice keeps its own settings.")
                gr.Examples([[str(EXAMPLE_WAV)]], inputs=[question], label="Example question")

        respond = gpu(space.respond)
        inputs, outputs = [question, state, voice, temperature, top_p], [chatbot, reply_audio, status, state]
        limits = {"concurrency_id": "answer", "concurrency_limit": concurrency_limit}
        asked = ask_button.click(respond, inputs, outputs, api_name="answer", **limits)
        spoken = question.stop_recording(respond, inputs, outputs, api_visibility="private", **limits)
        for answer in (asked, spoken):
            answer.success(lambda: None, None, question, queue=False, api_visibility="private")
        stop_button.click(
            lambda: "Stopped.", None, status, cancels=[asked, spoken], queue=False, api_visibility="private"
        )
        clear_button.click(
            lambda: ([], None, "", []),
            None,
            [chatbot, reply_audio, status, state],
            cancels=[asked, spoken],
            queue=False,
            api_visibility="private",
        )
    demo.queue(default_concurrency_limit=concurrency_limit, max_size=max_queue_size)
    return demo


def _device_and_dtype(device: str, dtype: str) -> tuple[str, str]:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        dtype = "bfloat16" if torch.device(device).type == "cuda" else "float32"
    return device, dtype


def run(args: argparse.Namespace) -> int:
    """Load the model once, build the app and serve it until interrupted (the options of
    `opens2s.spaces_app.add_arguments`)."""
    from opens2s.processing.chat import EXAMPLE_WAV

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device, dtype = _device_and_dtype(args.device, args.dtype)
    logger.info("loading %s on %s (%s)", args.model or "the tiny random model", device, dtype)
    speech_model = load_speech_model(
        args.model,
        device=device,
        dtype=dtype,
        token2wav=args.token2wav,
        trust_remote_code=args.trust_remote_code,
        verify=args.verify,
    )
    space = OpenS2SSpace(
        speech_model,
        speakers=find_speakers(args.model, args.speakers),
        max_new_tokens=args.max_new_tokens,
        max_units=args.max_units,
        max_history_turns=args.max_history_turns,
        seed=args.seed,
    )
    demo = build_demo(space, concurrency_limit=args.concurrency_limit, max_queue_size=args.max_queue_size)
    demo.launch(
        server_name=args.host, server_port=args.port, share=args.share, allowed_paths=[str(EXAMPLE_WAV.parent)]
    )
    return 0


if __name__ == "__main__":  # the Space runs `python app.py`
    from opens2s.spaces_app import main

    raise SystemExit(main())
