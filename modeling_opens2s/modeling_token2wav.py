"""token2wav: speech units -> 22.05 kHz waveform (GLM-4-Voice's decoder: flow matching + HiFT), offline, streamed."""

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_token2wav import OpenS2SToken2WavConfig
from .modeling_token2wav_flow import FlowDecoder
from .modeling_token2wav_hift import HiFTVocoder
from .modeling_token2wav_streaming import BlockStream, OriginalStream, check_unit_range


__all__ = ["OpenS2SToken2Wav", "Token2WavOutput"]


@dataclass
class Token2WavOutput(ModelOutput):
    r"""
    mel (`torch.FloatTensor` of shape `(batch_size, mel_bins, frames)`):
        Log-mel spectrogram of the new units (prompt frames excluded), `frames = int(units / 12.5 * 22050 / 256)`.
    waveform (`torch.FloatTensor` of shape `(batch_size, frames * hop_length)`):
        The waveform at `config.sampling_rate` (22.05 kHz), in [-0.99, 0.99].
    """

    mel: torch.FloatTensor | None = None
    waveform: torch.FloatTensor | None = None


class OpenS2SToken2Wav(PreTrainedModel):
    r"""
    The speech-unit decoder of OpenS2S / GLM-4-Voice: a flow-matching mel generator ([`FlowDecoder`]) and the HiFT
    vocoder ([`HiFTVocoder`]). Weight-compatible with the released `glm-4-voice-decoder` through
    `opens2s convert-token2wav`.

    Randomness (flow noise, the vocoder's initial phases and sine noise) comes only from the `torch.Generator` you pass
    (or one the stream owns); the global RNG is never read or reseeded. With
    `generator=torch.Generator().manual_seed(42)`, [`~OpenS2SToken2Wav.synthesize`] draws in the original's order and
    reproduces its output.
    """

    config: OpenS2SToken2WavConfig
    config_class = OpenS2SToken2WavConfig
    base_model_prefix = "token2wav"
    main_input_name = "units"
    _no_split_modules = []
    _supports_sdpa = False

    def __init__(self, config: OpenS2SToken2WavConfig):
        super().__init__(config)
        self.flow = FlowDecoder(config.flow_config)
        self.vocoder = HiFTVocoder(config.hift_config)
        self.post_init()

    def _init_weights(self, module: torch.nn.Module) -> None:
        # The layers keep their PyTorch default initialisation (as the original); real weights come from a converted
        # checkpoint.
        return

    @property
    def sampling_rate(self) -> int:
        return self.config.sampling_rate

    def _as_unit_batch(self, units: torch.Tensor | list[int] | list[list[int]]) -> torch.LongTensor:
        units = torch.as_tensor(units, dtype=torch.long, device=self.device)
        if units.dim() == 1:
            units = units[None]
        if units.dim() != 2 or units.shape[1] == 0:
            raise ValueError(
                f"units must be a non-empty (batch_size, num_units) sequence, got shape {tuple(units.shape)}"
            )
        check_unit_range(units, self.config.vocab_size)
        return units

    @torch.no_grad()
    def synthesize(
        self,
        units: torch.Tensor | list[int] | list[list[int]],
        prompt_units: torch.Tensor | list[int] | None = None,
        prompt_mel: torch.Tensor | None = None,
        speaker_embedding: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Token2WavOutput:
        r"""
        Offline synthesis: one flow pass over all units, then the vocoder (the original's `token2wav(finalize=True)`).
        Runs without autograd (the outputs have no grad), with the original's two estimator calls per Euler step.

        Args:
            units (`torch.LongTensor` of shape `(batch_size, num_units)` or `(num_units,)`):
                Speech unit ids in `[0, vocab_size)`; rows of a batch have the same length.
            prompt_units (`torch.LongTensor` of shape `(batch_size, num_prompt_units)`, *optional*):
                Units of a prompt utterance whose mel is `prompt_mel` (voice/style prompt); not rendered again.
            prompt_mel (`torch.FloatTensor` of shape `(batch_size, prompt_frames, mel_bins)`, *optional*):
                Log-mel of the prompt, in the original's `prompt_feat` layout (time before channels).
            speaker_embedding (`torch.FloatTensor` of shape `(batch_size, speaker_embedding_dim)`, *optional*):
                x-vector of the voice; zeros (the default) give the decoder's default voice.
            generator (`torch.Generator`, *optional*):
                Source of all randomness (flow noise first, then the vocoder's phases and sine noise). A fresh
                unseeded generator when omitted; the global RNG is never used.
        """
        units = self._as_unit_batch(units)
        if (prompt_units is None) != (prompt_mel is None):
            raise ValueError("prompt_units and prompt_mel go together: pass both or neither")
        if prompt_units is not None:
            prompt_units = self._as_unit_batch(prompt_units)
            prompt_mel = prompt_mel.to(self.device, self.dtype)
        if speaker_embedding is not None:
            speaker_embedding = speaker_embedding.to(self.device, self.dtype)
        if generator is None:
            generator = torch.Generator(device=self.device)
            generator.seed()
        flow_output = self.flow.inference(
            units,
            prompt_tokens=prompt_units,
            prompt_mel=prompt_mel,
            speaker_embedding=speaker_embedding,
            generator=generator,
        )
        vocoder_output = self.vocoder(flow_output.mel, generator=generator)
        return Token2WavOutput(mel=flow_output.mel, waveform=vocoder_output.waveform)

    def start_stream(
        self,
        mode: str = "blocks",
        speaker_embedding: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        compile: bool = False,
    ) -> BlockStream | OriginalStream:
        r"""
        A streaming session for one answer: `push(units)` returns the waveform that became final (possibly empty),
        `finish()` returns the rest.

        Args:
            mode (`str`, *optional*, defaults to `"blocks"`):
                `"blocks"`: chunks of whole encoder blocks (`config.stream_first_chunk_blocks` first, then
                `config.stream_chunk_blocks`), a bounded left context (`config.stream_left_context_blocks`), phase-
                continuous vocoding with a cross-fade at seams; no frame is lost and any reply length works.
                `"original"`: OpenS2S's loop, call for call (24-unit chunks, whole history re-run, 34-frame log-mel
                fade, one mel frame lost per boundary from the 3rd call on, seed 42 per call), for parity checks.
            speaker_embedding (`torch.FloatTensor` of shape `(1, speaker_embedding_dim)`, *optional*):
                Voice of the answer. The original OpenS2S loop always passes zeros.
            generator (`torch.Generator`, *optional*):
                `"blocks"` mode: the stream's own source of randomness (seed it for reproducible audio).
            compile (`bool`, *optional*, defaults to `False`):
                `"blocks"` mode: run the flow's estimator compiled with `torch.compile` for the schedule's fixed chunk
                shapes (the first block, the doubling chunks, the steady chunk; the last chunk stays eager). The
                first chunk of each shape compiles (seconds to minutes; later streams of this model reuse the
                graphs), then chunks are faster. The audio equals the eager stream's up to float32 rounding.

        Both modes run without autograd: every returned waveform has no grad.
        """
        if mode == "blocks":
            return BlockStream(self, speaker_embedding=speaker_embedding, generator=generator, compile=compile)
        if mode == "original":
            if generator is not None:
                raise ValueError('mode="original" reseeds 42 for every call, as the original; it takes no generator')
            if compile:
                raise ValueError('compile=True is for mode="blocks" (the original re-runs a growing history)')
            return OriginalStream(self, speaker_embedding=speaker_embedding)
        raise ValueError(f'mode must be "blocks" or "original", got {mode!r}')


OpenS2SToken2Wav.register_for_auto_class("AutoModel")
