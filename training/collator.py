"""Batches for OpenS2S training: conversations in the prompt format of `opens2s.processing.prompt_format` (the
processor's, or the original training layout), and text-to-units rows (stage 2a)."""

from dataclasses import dataclass

import numpy as np
import torch

from opens2s.modeling_opens2s.audio_lengths_opens2s import audio_embedding_lengths
from opens2s.processing.prompt_format import DEFAULT_SYSTEM_PROMPT, IGNORE_INDEX, PROMPT_LAYOUTS, training_pieces
from opens2s.training.data import row_messages


__all__ = ["OpenS2SDataCollator", "OpenS2STextToUnitsCollator", "build_collator", "unit_ids_with_eos"]


@dataclass
class _Encoded:
    """One tokenised conversation; every audio is one `audio_token_id` until the batch is built."""

    ids: list
    labels: list
    speech_span: list
    audios: list
    unit_rows: list
    speaker_paths: list


class OpenS2SDataCollator:
    r"""
    Turns conversations (`{"messages": [...]}` rows, e.g. from [`load_original_jsonl`]) into a batch for the model.

    Rows are laid out by [`~opens2s.processing.training_pieces`] (the prompt-format module the processor's chat
    template is built from): the system turn, `<|im_start|>role\n`, an empty think block after the assistant header,
    audio as `<|im_audio_start|>` + placeholder + `<|im_audio_end|>`, spoken answers as
    `<|im_tts_start|>text<|im_tts_end|>` (labelled, marked in `speech_span_mask`), and `<|im_end|>\n` (labelled after
    an answer). Each audio placeholder is then repeated once per adapter frame of that audio.

    Args:
        processor ([`OpenS2SProcessor`]): gives the tokenizers, the feature extractor and the audio token.
        system_prompt (`str`, *optional*, defaults to `"You are a helpful assistant."`): system turn of every row;
            `None` leaves it out.
        speaker_embedding_dim (`int`, *optional*, defaults to 512): size of the zero vector used without `spk_emb`.
        use_speech_units (`bool`, *optional*, defaults to `True`): `False` turns spoken answers into plain assistant
            text (no `<|im_tts_*|>` markers, no units): the text-only rows of stage 1.
        prompt_layout (`str`, *optional*, defaults to `"inference"`): `"inference"` tokenises a row exactly as
            `processor.apply_chat_template` tokenises the same conversation (`<think>\n\n</think>\n\n`), so the
            model is trained on the prompts it is asked with; `"original"` is the original OpenS2S training layout
            (`<think></think>`, every piece tokenised on its own), to reproduce the original's training.

    Rows may also be flat `datasets` rows (`audio`, `instruction`, `response`, `speech_units`, ...; see
    [`row_messages`]); audios are anything [`~opens2s.processing.load_audio`] reads (paths, `datasets.Audio` values,
    `{"array", "sampling_rate"}` dicts; bare arrays are taken to be at 16 kHz).
    """

    def __init__(
        self,
        processor,
        system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
        speaker_embedding_dim: int = 512,
        use_speech_units: bool = True,
        prompt_layout: str = "inference",
    ):
        if prompt_layout not in PROMPT_LAYOUTS:
            raise ValueError(f"unknown prompt_layout {prompt_layout!r}: expected one of {PROMPT_LAYOUTS}")
        self.processor = processor
        self.use_speech_units = use_speech_units
        self.prompt_layout = prompt_layout
        self.tokenizer = processor.tokenizer
        self.unit_tokenizer = processor.unit_tokenizer
        self.system_prompt = system_prompt
        self.speaker_embedding_dim = speaker_embedding_dim
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.unit_pad_id = self.unit_tokenizer.pad_token_id if self.unit_tokenizer.pad_token_id is not None else 0
        if self.unit_tokenizer.eos_token_id is None:
            raise ValueError("the unit tokenizer needs an eos token (appended to every unit sequence)")

    def encode_conversation(self, messages: list) -> _Encoded:
        """Tokenise one conversation; each audio stays one `audio_token_id` until the batch is built."""
        encoded = _Encoded([], [], [], [], [], [])
        pieces = training_pieces(messages, self.system_prompt, self.prompt_layout, self.use_speech_units)
        for piece in pieces:
            ids = self.tokenizer.encode(piece.text, add_special_tokens=False)
            encoded.ids += ids
            encoded.labels += ids if piece.labelled else [IGNORE_INDEX] * len(ids)
            encoded.speech_span += [int(piece.speech)] * len(ids)
        for message in messages:
            for item in message["content"]:
                if item.get("audio") is not None and len(item["audio"]) > 0:
                    encoded.audios.append(item["audio"])
                elif self.use_speech_units and item.get("speech_units") is not None and len(item["speech_units"]) > 0:
                    encoded.unit_rows.append(unit_ids_with_eos(self.processor, item["speech_units"]))
                    encoded.speaker_paths.append(item.get("spk_emb") or "")
        audio_id = self.processor.audio_token_id
        if encoded.ids.count(audio_id) != len(encoded.audios):
            raise ValueError(
                f"a row holds {encoded.ids.count(audio_id)} audio placeholders for {len(encoded.audios)} audios "
                f"(does a text contain {self.processor.audio_token}?)"
            )
        return encoded

    def _speaker_embedding(self, path: str) -> torch.Tensor:
        if not path:
            return torch.zeros(self.speaker_embedding_dim)
        embedding = torch.from_numpy(np.load(path)).float().reshape(-1)
        if embedding.numel() != self.speaker_embedding_dim:
            raise ValueError(
                f"speaker embedding {path} has {embedding.numel()} values, expected {self.speaker_embedding_dim}"
            )
        return embedding

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        encoded = [self.encode_conversation(row_messages(row)) for row in rows]
        batch: dict[str, torch.Tensor] = {}
        audio_frames: list[int] = []
        all_audios = [audio for item in encoded for audio in item.audios]
        if all_audios:
            extractor = self.processor.feature_extractor  # reads every audio with `load_audio`
            features = extractor(all_audios, sampling_rate=extractor.sampling_rate, return_tensors="pt")
            batch["input_features"] = features["input_features"]
            batch["feature_attention_mask"] = features["attention_mask"]
            num_convs = self.processor.num_adapter_convs
            audio_frames = audio_embedding_lengths(features["attention_mask"].sum(-1), num_convs).tolist()
        frames = iter(audio_frames)
        sequences = [self._expand_audio(item, frames) for item in encoded]
        width = max(len(ids) for ids, _, _ in sequences)
        batch["input_ids"] = torch.tensor([ids + [self.pad_id] * (width - len(ids)) for ids, _, _ in sequences])
        batch["attention_mask"] = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _, _ in sequences])
        batch["labels"] = torch.tensor([labels + [IGNORE_INDEX] * (width - len(labels)) for _, labels, _ in sequences])
        batch["speech_span_mask"] = torch.tensor([span + [0] * (width - len(span)) for _, _, span in sequences])
        unit_rows = [row for item in encoded for row in item.unit_rows]
        if unit_rows:
            unit_width = max(len(row) for row in unit_rows)
            batch["speech_units"] = torch.tensor(
                [row + [self.unit_pad_id] * (unit_width - len(row)) for row in unit_rows]
            )
            batch["speech_units_mask"] = torch.tensor(
                [[1] * len(row) + [0] * (unit_width - len(row)) for row in unit_rows]
            )
            paths = [path for item in encoded for path in item.speaker_paths]
            batch["speaker_embeddings"] = torch.stack([self._speaker_embedding(path) for path in paths])
        return batch

    def _expand_audio(self, encoded: _Encoded, frames) -> tuple[list, list, list]:
        """Repeat every `audio_token_id` once per adapter frame of its audio (labels -100)."""
        ids, labels, span = [], [], []
        audio_id = self.processor.audio_token_id
        for token, label, in_span in zip(encoded.ids, encoded.labels, encoded.speech_span, strict=True):
            count = next(frames) if token == audio_id else 1
            ids += [token] * count
            labels += [IGNORE_INDEX if token == audio_id else label] * count
            span += [in_span] * count
        return ids, labels, span


def unit_ids_with_eos(processor, speech_units) -> list[int]:
    """Speech decoder ids of a unit string (`"<|audio_3|>..."`, encoded by the unit tokenizer as the original does)
    or of a list of unit indices, followed by the unit EOS."""
    if isinstance(speech_units, str):
        ids = processor.unit_tokenizer.encode(speech_units, add_special_tokens=False)
    else:
        ids = processor.units_to_ids(speech_units)
    return ids + [processor.unit_tokenizer.eos_token_id]


class OpenS2STextToUnitsCollator:
    r"""
    Batches for stage 2a (speech generation pre-training with a text prefix): the speech decoder, trained alone as a
    causal LM, reads the text in its own BPE (its word embeddings are the prefix) and then predicts the units.

    Each row `{"text", "speech_units"}` becomes `input_ids = text ids + unit ids + unit EOS`, with `labels` equal to
    `input_ids` on the units and the EOS and -100 on the text (the decoder shifts them: the last text position
    predicts the first unit).

    Args:
        processor ([`OpenS2SProcessor`]): gives the unit tokenizer (BPE text ids and `<|audio_k|>` unit ids).
    """

    def __init__(self, processor):
        self.processor = processor
        self.unit_tokenizer = processor.unit_tokenizer
        self.pad_id = self.unit_tokenizer.pad_token_id if self.unit_tokenizer.pad_token_id is not None else 0
        if self.unit_tokenizer.eos_token_id is None:
            raise ValueError("the unit tokenizer needs an eos token (appended to every unit sequence)")

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        sequences = []
        for row in rows:
            text_ids = self.unit_tokenizer.encode(
                row.get("text") or row.get("response") or "", add_special_tokens=False
            )
            units = unit_ids_with_eos(self.processor, row["speech_units"])
            sequences.append((text_ids + units, [IGNORE_INDEX] * len(text_ids) + units))
        width = max(len(ids) for ids, _ in sequences)
        pad = [width - len(ids) for ids, _ in sequences]
        return {
            "input_ids": torch.tensor([ids + [self.pad_id] * n for (ids, _), n in zip(sequences, pad, strict=True)]),
            "attention_mask": torch.tensor(
                [[1] * len(ids) + [0] * n for (ids, _), n in zip(sequences, pad, strict=True)]
            ),
            "labels": torch.tensor(
                [labels + [IGNORE_INDEX] * n for (_, labels), n in zip(sequences, pad, strict=True)]
            ),
        }


def build_collator(processor, row_format: str = "conversation", **options):
    """The collator of a stage's `row_format`: [`OpenS2SDataCollator`] for `"conversation"` (with `options`:
    `system_prompt`, `speaker_embedding_dim`, `use_speech_units`, `prompt_layout`), [`OpenS2STextToUnitsCollator`]
    for `"text_to_units"` (no options)."""
    if row_format == "conversation":
        return OpenS2SDataCollator(processor, **options)
    if row_format == "text_to_units":
        return OpenS2STextToUnitsCollator(processor)
    raise ValueError(f"unknown row_format {row_format!r}: expected 'conversation' or 'text_to_units'")
