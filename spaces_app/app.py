"""The OpenS2S Gradio app: ask by microphone or file, read the answer as it is written, hear it as it is spoken.

Runs as a Hugging Face Space (this file is the Space's `app_file`) and locally (`python -m opens2s.spaces_app`,
`opens2s space`). The model is loaded once at start-up (bf16 on CUDA) with one continuous-batching engine
(`model.engine`, its loop in a background thread) for every visitor: each answer is one conversation submitted to it,
so answers of several visitors are decoded together in one loop (no second generation code path here). A visitor
pressing Stop, starting a new conversation or leaving cancels their conversation at once; a full engine answers
"busy, try again". The handler turns the conversation's events (those of `model.stream`) into UI updates:

- `TextDelta` -> the assistant message grows in the chat;
- `SpeechUnits` -> a unit counter in the status line (every `UNIT_UPDATE_EVERY` units);
- `AudioChunk` -> one 16-bit wav chunk into the autoplaying `gr.Audio(streaming=True)`; chunks are already
  cross-faded by the token2wav block stream, and Gradio encodes all chunks of an answer with one persistent AAC
  encoder (ffmpeg), so chunk seams do not click. int16 keeps the levels (Gradio peak-normalises float arrays per
  chunk, which would make the loudness jump at every seam);
- `Done` -> the latency figures (first text / units / audio, audio seconds, real-time factor) under the answer.

Limits: an upload larger than `max_file_size` (default 20 MB) is refused by Gradio, a question longer than
`max_audio_seconds` (default 120 s) by the audio entry (from the file header, before decoding); a session keeps its
conversation as text plus the paths of its questions (no waveforms), and its uploads are deleted when it ends (tab
closed, or *New conversation*). Error messages name files by their base name only, never a server path.

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
import os
import re
import threading
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import numpy as np
import torch

from opens2s.processing.audio_io import load_audio
from opens2s.processing.chat import (
    SpeechModel,
    conversation_inputs,
    load_speech_model,
    resolve_device_and_dtype,
    seeded_stream_kwargs,
)
from opens2s.processing.voices import find_speakers, load_voice


__all__ = [
    "BUSY_MESSAGE",
    "DEFAULT_VOICE",
    "OpenS2SSpace",
    "Turn",
    "build_demo",
    "chat_messages",
    "find_speakers",
    "format_latency",
    "gpu",
    "run",
    "serve",
    "wav_bytes",
]

logger = logging.getLogger(__name__)

DEFAULT_VOICE = "default (zeros)"
# Status-line refreshes while units stream: the decoder writes them 8 at a time (the original's M:N = 4:8 schedule).
UNIT_UPDATE_EVERY = 8
# Seconds a ZeroGPU call may hold the GPU (one answer of the 8B model with a 512-token budget fits comfortably).
GPU_SECONDS = 120
DEFAULT_MAX_FILE_SIZE = 20 * 1024 * 1024  # bytes: a 16-bit 16 kHz mono wav of 10 minutes is 19.2 MB
DEFAULT_MAX_AUDIO_SECONDS = 120.0
BUSY_MESSAGE = "The Space is busy answering other visitors. Please try again in a moment."
# An absolute path in a message (`/tmp/gradio/ab12.../question.wav`): shown as its last part (`question.wav`).
_ABSOLUTE_PATH = re.compile(r"(?<![\w.])(?:/[^/\s'\"]+)+/([^/\s'\"]+)")


def _public(message: str) -> str:
    """`message` with every absolute path replaced by its file name: what visitors see names no server folder."""
    return _ABSOLUTE_PATH.sub(r"\1", message)


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

    The question is kept as its file, not its samples: a session's state stays a few hundred bytes per turn whatever
    the questions' length (the file is read again when the turn is fed back, and deleted when the session ends).

    Args:
        question_path (`str`): the recorded or uploaded file, shown in the chat and fed back to the model with every
            later question.
        reply (`str`): the answer's text so far (a stopped answer keeps what was written).
        latency (`str`): the answer's latency figures, once it is complete.
    """

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
    """The app's state shared by all sessions (the model, loaded once, and its one engine; its voices; the budgets
    and limits; the uploads of each live session) and its handlers.

    Args:
        speech_model ([`SpeechModel`]): from `opens2s.processing.chat.load_speech_model`.
        speakers (`dict[str, Path]`, *optional*): voice files by name (see [`find_speakers`]).
        max_new_tokens (`int`, *optional*): text budget per answer; default the model's generation config.
        max_units (`int`, *optional*): speech unit budget per answer; default the speech generation config.
        max_history_turns (`int`, *optional*, defaults to 4): earlier turns fed back with a question (each costs
            its audio's 6.25 tokens per second plus the answer's text in the prompt).
        seed (`int`, *optional*): seed of every answer's sampling and voice noise (tests); default random.
        max_active (`int`, *optional*, defaults to 4): answers the engine decodes together (all visitors).
        max_queued (`int`, *optional*, defaults to 4): answers that may wait inside the engine for a free row; a
            request beyond gets [`BUSY_MESSAGE`] (Gradio's own queue, in front, normally keeps it from filling).
        max_file_size (`int`, *optional*, defaults to 20 MB): largest question file in bytes (Gradio refuses larger
            uploads with it, see [`serve`]; the handler checks files given otherwise); `None` for no limit.
        max_audio_seconds (`float`, *optional*, defaults to 120): longest question in seconds, checked from the
            file header before anything is decoded; at most the feature extractor's own limit.
        upload_dir (`str` or `Path`, *optional*): where Gradio keeps uploads and recordings (default Gradio's:
            `$GRADIO_TEMP_DIR`, else the system temp folder's `gradio/`); only files inside it are ever deleted.
        compile (`bool`, *optional*, defaults to `False`): the engine's fast path (static caches and compiled decode
            steps, CUDA graphs on a GPU), for a Space with a GPU of its own; the first answers of each shape pay the
            compilation.
    """

    def __init__(
        self,
        speech_model: SpeechModel,
        speakers: dict[str, Path] | None = None,
        max_new_tokens: int | None = None,
        max_units: int | None = None,
        max_history_turns: int = 4,
        seed: int | None = None,
        max_active: int = 4,
        max_queued: int = 4,
        max_file_size: int | None = DEFAULT_MAX_FILE_SIZE,
        max_audio_seconds: float = DEFAULT_MAX_AUDIO_SECONDS,
        upload_dir: str | Path | None = None,
        compile: bool = False,
    ):
        self.speech_model = speech_model
        self.max_new_tokens, self.max_units = max_new_tokens, max_units
        self.max_history_turns, self.seed = max_history_turns, seed
        self.max_file_size = max_file_size
        extractor = speech_model.processor.feature_extractor
        self.max_audio_seconds = min(float(max_audio_seconds), float(extractor.max_audio_seconds))
        self.upload_dir = Path(upload_dir or gr.utils.get_upload_folder()).resolve()
        dim = speech_model.model.config.speaker_embedding_dim
        self.voices: dict[str, dict[str, torch.Tensor]] = {DEFAULT_VOICE: {}}
        for name, path in (speakers or {}).items():
            if (voice := load_voice(path, dim)) is not None:
                self.voices[name] = voice
        self.engine = speech_model.model.engine(
            processor=speech_model.processor, max_active=max_active, max_queued=max_queued, compile=compile
        )
        # ZeroGPU lends the GPU to each call in a worker process: there the call's own iteration drives the engine.
        if spaces is None:
            self.engine.start()
        self._uploads: dict[str, set[Path]] = {}  # session hash -> files of that session in `upload_dir`
        self._uploads_lock = threading.Lock()

    def close(self) -> None:
        """Stop the engine's background loop."""
        self.engine.stop()

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

    def read_question(self, audio: str | None) -> str:
        """Check the question file (size, then rate and length from its header, then its samples) and return its
        path, or raise a `gr.Error` the UI shows (no stack trace, no server path) saying what is wrong with it."""
        if audio is None:
            raise gr.Error("Record or upload a spoken question first.", print_exception=False)
        try:
            size = os.path.getsize(audio)
            if self.max_file_size is not None and size > self.max_file_size:
                raise ValueError(
                    f"the file is {size / 2**20:.1f} MB; the limit is {self.max_file_size / 2**20:.1f} MB"
                )
            load_audio(audio, max_seconds=self.max_audio_seconds)
        except (OSError, ValueError) as error:
            raise gr.Error(_public(f"Could not read this audio: {error}"), print_exception=False) from None
        return str(audio)

    def respond(
        self,
        audio: str | None,
        turns: list[Turn],
        voice: str,
        temperature: float,
        top_p: float,
        request: gr.Request | None = None,
    ) -> Iterator[tuple[list[dict], bytes | None, str, list[Turn]]]:
        """Answer one spoken question of a conversation, streaming: one conversation of the shared engine,
        cancelled when this generator is closed (Stop, New conversation, the visitor leaving).

        Args:
            audio (`str`): path of the recorded or uploaded question (`None` when there is none).
            turns (`list[Turn]`): the conversation so far (the session's `gr.State`); not modified.
            voice (`str`): a key of `self.voices`.
            temperature (`float`): text sampling temperature; 0 decodes greedily.
            top_p (`float`): text nucleus sampling mass.
            request (`gr.Request`, *optional*): given by Gradio; its session owns the question file.

        Yields:
            `(chat_messages, audio_chunk, status, turns)`: the chat with the answer so far; the next 16-bit wav
            chunk of the spoken answer or `None`; a status line (progress, then the latency figures); and the
            conversation including this turn (a stopped answer stays in it with the text written so far).
        """
        self.track_upload(audio, request)
        turn = Turn(self.read_question(audio))
        kept = turns[-self.max_history_turns :] if self.max_history_turns > 0 else []
        turns = [*turns, turn]
        conversation = None
        try:
            history = [(earlier.question_path, earlier.reply) for earlier in kept]
            inputs = conversation_inputs(self.speech_model.processor, turn.question_path, history)
            options = {**self.stream_options(temperature, top_p), **self.voices.get(voice, {})}
            conversation = self._submit(inputs, seeded_stream_kwargs(self.speech_model.model, self.seed, options))
            yield chat_messages(turns), None, "Listening…", turns
            yield from self._updates(conversation, turn, turns)
        except gr.Error:  # already worded for the visitor (a `ValueError` too)
            raise
        except (OSError, ValueError) as error:  # a question the processor refuses, an earlier question gone, ...
            raise gr.Error(_public(f"Could not answer this audio: {error}"), print_exception=False) from None
        finally:
            if conversation is not None:
                conversation.cancel()  # Stop (Gradio closes this generator) ends the conversation here; else a no-op

    def _submit(self, inputs: dict, stream_kwargs: dict):
        """One conversation of the engine, or [`BUSY_MESSAGE`] when it is full."""
        try:
            return self.engine.submit(inputs, **stream_kwargs)
        except RuntimeError as error:  # a remote-code model has its own EngineFull class: matched by name
            if type(error).__name__ != "EngineFull":
                raise
            raise gr.Error(BUSY_MESSAGE, print_exception=False) from None

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

    # ---- uploads of each session
    def track_upload(self, audio: str | None, request: gr.Request | None = None) -> None:
        """Remember a file the session's question component received (upload or recording), so that it is deleted
        when the session ends; files outside `upload_dir` (the bundled example, a caller's own files) are never
        tracked."""
        session = getattr(request, "session_hash", None)
        if audio is None or session is None:
            return
        path = Path(audio).resolve()
        if path.is_relative_to(self.upload_dir):
            with self._uploads_lock:
                self._uploads.setdefault(session, set()).add(path)

    def end_session(self, request: gr.Request) -> None:
        """Delete every file the session received (Gradio calls this when the visitor closes or reloads the tab)."""
        with self._uploads_lock:
            files = self._uploads.pop(getattr(request, "session_hash", None), set())
        self._delete(files)

    def new_conversation(self, turns: list[Turn], request: gr.Request | None = None) -> tuple:
        """*New conversation*: the chat, player, status and state emptied; the earlier questions' files deleted."""
        session = getattr(request, "session_hash", None)
        paths = {Path(turn.question_path).resolve() for turn in turns}
        with self._uploads_lock:
            mine = self._uploads.get(session, set())
            gone = paths & mine
            mine -= gone
        self._delete(gone)
        return [], None, "", []

    def _delete(self, files: set[Path]) -> None:
        """Delete `files` (and the folder Gradio made for each upload, once empty; never `upload_dir` itself)."""
        for path in files:
            path.unlink(missing_ok=True)
            if path.parent != self.upload_dir:
                try:
                    path.parent.rmdir()
                except OSError:
                    pass  # not empty (another file of the folder is still in use), or gone already
        if files:
            logger.info("deleted %d uploaded file(s)", len(files))


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


def build_demo(
    space: OpenS2SSpace, concurrency_limit: int | None = None, max_queue_size: int | None = 32
) -> gr.Blocks:
    """The app's `gr.Blocks`, with its queue configured and its session clean-up wired (a visitor leaving cancels
    their answer and deletes their uploads).

    Args:
        space ([`OpenS2SSpace`]): the loaded model, its engine and the handlers.
        concurrency_limit (`int`, *optional*): answers generated at the same time (all sessions together, decoded
            together by the engine); further requests wait in Gradio's queue. Default the engine's `max_active`.
        max_queue_size (`int`, *optional*, defaults to 32): requests that may wait; more are refused.
    """
    if concurrency_limit is None:
        concurrency_limit = space.engine.max_active
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
        question.change(space.track_upload, question, None, queue=False, api_visibility="private")
        stop_button.click(
            lambda: "Stopped.", None, status, cancels=[asked, spoken], queue=False, api_visibility="private"
        )
        clear_button.click(
            space.new_conversation,
            state,
            [chatbot, reply_audio, status, state],
            cancels=[asked, spoken],
            queue=False,
            api_visibility="private",
        )
        demo.unload(space.end_session)  # the tab closed or reloaded: its answer is cancelled, its uploads deleted
    demo.queue(default_concurrency_limit=concurrency_limit, max_size=max_queue_size)
    return demo


def serve(demo: gr.Blocks, space: OpenS2SSpace, **launch_kwargs):
    """`demo.launch(...)` with the app's upload limit (`space.max_file_size`: Gradio refuses a larger upload with
    HTTP 413 before storing it) and the bundled example question served; `launch_kwargs` go to `launch`."""
    from opens2s.processing.chat import EXAMPLE_WAV

    return demo.launch(max_file_size=space.max_file_size, allowed_paths=[str(EXAMPLE_WAV.parent)], **launch_kwargs)


def run(args: argparse.Namespace) -> int:
    """Load the model once, build the app and serve it until interrupted (the options of
    `opens2s.spaces_app.add_arguments`)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device, dtype = resolve_device_and_dtype(args.device, args.dtype)
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
        max_active=args.concurrency_limit,
        max_queued=args.concurrency_limit,
        max_file_size=args.max_file_size,
        max_audio_seconds=args.max_audio_seconds,
        compile=args.compile,
    )
    demo = build_demo(space, concurrency_limit=args.concurrency_limit, max_queue_size=args.max_queue_size)
    try:
        serve(demo, space, server_name=args.host, server_port=args.port, share=args.share)
    finally:
        space.close()
    return 0


if __name__ == "__main__":  # the Space runs `python app.py`
    from opens2s.spaces_app import main

    raise SystemExit(main())
