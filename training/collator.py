"""Batches for OpenS2S training: conversations in the original OpenS2S layout, and text-to-units rows (stage 2a)."""

from dataclasses import dataclass

import numpy as np
import torch

from opens2s.modeling_opens2s.audio_lengths_opens2s import audio_embedding_lengths
from opens2s.training.data import decode_audio, row_messages


__all__ = ["DEFAULT_SYSTEM_PROMPT", "OpenS2SDataCollator", "OpenS2STextToUnitsCollator", "build_collator"]

IGNORE_INDEX = -100
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."


@dataclass
class _Encoded:
    """One conversation as the original tokenises it for training; audios are single placeholders (`None`)."""

    ids: list
    labels: list
    speech_span: list
    audios: list
    unit_rows: list
    speaker_paths: list


class OpenS2SDataCollator:
    r"""
    Turns conversations (`{"messages": [...]}` rows, e.g. from [`load_original_jsonl`]) into a batch for the model.

    Tokenisation follows the original `process_dataset` piece by piece (which a fine-tuned model expects): the
    system turn, `<|im_start|>role\n`, `<think></think>` after the assistant header, audio as
    `<|im_audio_start|>` + placeholder + `<|im_audio_end|>`, spoken answers as
    `<|im_tts_start|>text<|im_tts_end|>` (labelled, marked in `speech_span_mask`), and `<|im_end|>\n`.
    Each audio placeholder is then repeated once per adapter frame of that audio.

    Args:
        processor ([`OpenS2SProcessor`]): gives the tokenizers, the feature extractor and the audio token.
        system_prompt (`str`, *optional*, defaults to `"You are a helpful assistant."`): system turn of every row.
        speaker_embedding_dim (`int`, *optional*, defaults to 512): size of the zero vector used without `spk_emb`.
        use_speech_units (`bool`, *optional*, defaults to `True`): `False` turns spoken answers into plain assistant
            text (no `<|im_tts_*|>` markers, no units): the text-only rows of stage 1.

    Rows may also be flat `datasets` rows (`audio`, `instruction`, `response`, `speech_units`, ...; see
    [`row_messages`]); audios may be paths, `datasets.Audio` values or 16 kHz arrays (see [`decode_audio`]).
    """

    def __init__(
        self,
        processor,
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        speaker_embedding_dim: int = 512,
        use_speech_units: bool = True,
    ):
        self.processor = processor
        self.use_speech_units = use_speech_units
        self.tokenizer = processor.tokenizer
        self.unit_tokenizer = processor.unit_tokenizer
        self.system_prompt = system_prompt
        self.speaker_embedding_dim = speaker_embedding_dim
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.unit_pad_id = self.unit_tokenizer.pad_token_id if self.unit_tokenizer.pad_token_id is not None else 0
        if self.unit_tokenizer.eos_token_id is None:
            raise ValueError("the unit tokenizer needs an eos token (appended to every unit sequence)")

    def _encode(self, text: str) -> list:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _append(self, encoded: _Encoded, ids: list, labelled: bool, speech_span: bool = False):
        encoded.ids += ids
        encoded.labels += ids if labelled else [IGNORE_INDEX] * len(ids)
        encoded.speech_span += [int(speech_span)] * len(ids)

    def _unit_ids(self, speech_units) -> list:
        return unit_ids_with_eos(self.processor, speech_units)

    def encode_conversation(self, messages: list) -> _Encoded:
        """Tokenise one conversation; audio placeholders stay single `None` entries until the batch is built."""
        encoded = _Encoded([], [], [], [], [], [])
        header = self._encode("<|im_start|>")
        if self.system_prompt is not None:
            ids = header + self._encode("system") + self._encode("\n") + self._encode(self.system_prompt)
            self._append(encoded, ids + self._encode("<|im_end|>\n"), labelled=False)
        for message in messages:
            role, assistant = message["role"], message["role"] == "assistant"
            ids = header + self._encode(role) + self._encode("\n")
            if assistant:
                ids += self._encode("<think></think>")
            self._append(encoded, ids, labelled=False)
            for item in message["content"]:
                if item.get("audio") is not None and len(item["audio"]) > 0:
                    self._append(encoded, self._encode("<|im_audio_start|>"), labelled=False)
                    self._append(encoded, [None], labelled=False)
                    encoded.audios.append(item["audio"])
                    self._append(encoded, self._encode("<|im_audio_end|>"), labelled=False)
                elif self.use_speech_units and item.get("speech_units") is not None and len(item["speech_units"]) > 0:
                    ids = self._encode(f"<|im_tts_start|>{item['text']}<|im_tts_end|>")
                    self._append(encoded, ids, labelled=True, speech_span=True)
                    encoded.unit_rows.append(self._unit_ids(item["speech_units"]))
                    encoded.speaker_paths.append(item.get("spk_emb") or "")
                elif item.get("text"):
                    self._append(encoded, self._encode(item["text"]), labelled=assistant)
            self._append(encoded, self._encode("<|im_end|>\n"), labelled=assistant)
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
            waveforms = [decode_audio(audio) for audio in all_audios]
            features = self.processor.feature_extractor(waveforms, sampling_rate=16000, return_tensors="pt")
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
        """Replace every audio placeholder by `audio_token_id` repeated once per adapter frame."""
        ids, labels, span = [], [], []
        audio_id = self.processor.audio_token_id
        for token, label, in_span in zip(encoded.ids, encoded.labels, encoded.speech_span, strict=True):
            count = next(frames) if token is None else 1
            ids += [audio_id if token is None else token] * count
            labels += [IGNORE_INDEX if token is None else label] * count
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
    `system_prompt`, `speaker_embedding_dim`, `use_speech_units`), [`OpenS2STextToUnitsCollator`] for
    `"text_to_units"` (no options)."""
    if row_format == "conversation":
        return OpenS2SDataCollator(processor, **options)
    if row_format == "text_to_units":
        return OpenS2STextToUnitsCollator(processor)
    raise ValueError(f"unknown row_format {row_format!r}: expected 'conversation' or 'text_to_units'")
