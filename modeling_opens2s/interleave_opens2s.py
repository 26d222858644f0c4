"""The interleaved speech-decoder layout of OpenS2S: `[speaker] + text[0:M] + units[0:N] + text[M:2M] + ...`.

Training (paper section 2.2, original `prepare_inputs_labels_for_tts_lm`) feeds the speech decoder one row per
assistant speech turn: the speaker slot, then `M = text_span` LLM hidden states and `N = speech_span` unit
embeddings in turn; once one side is exhausted the other continues alone.
"""

import torch

from .prompt_format_opens2s import IGNORE_INDEX


__all__ = ["find_speech_spans", "interleaved_positions", "build_interleaved_rows"]


def find_speech_spans(speech_span_mask: torch.Tensor) -> list[tuple[int, int, int]]:
    """Return `(batch_row, start, end)` of every run of ones in `speech_span_mask`, in row-major order.

    Unlike the original difference trick on `token_types`, a span that ends at the last position of a row is
    closed correctly.
    """
    mask = (speech_span_mask == 1).to(torch.int8)
    padded = torch.nn.functional.pad(mask, (1, 1))
    diff = padded[:, 1:] - padded[:, :-1]
    start_rows, starts = (diff == 1).nonzero(as_tuple=True)
    _, ends = (diff == -1).nonzero(as_tuple=True)
    return list(zip(start_rows.tolist(), starts.tolist(), ends.tolist(), strict=True))


def interleaved_positions(
    text_length: int, unit_length: int, text_span: int, speech_span: int, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions (after the speaker slot at 0) of every text row and every unit in one interleaved row.

    Text row `t` belongs to chunk `t // M` and follows `min(chunk * N, unit_length)` units; unit `u` belongs to
    chunk `u // N` and follows `min((chunk + 1) * M, text_length)` text rows.
    """
    text_index = torch.arange(text_length, device=device)
    unit_index = torch.arange(unit_length, device=device)
    units_before_text = torch.clamp((text_index // text_span) * speech_span, max=unit_length)
    text_before_unit = torch.clamp((unit_index // speech_span + 1) * text_span, max=text_length)
    return 1 + text_index + units_before_text, 1 + unit_index + text_before_unit


def build_interleaved_rows(
    text_rows: list[torch.Tensor],
    unit_ids: torch.Tensor,
    unit_mask: torch.Tensor,
    unit_embeddings: torch.Tensor,
    speaker_slots: torch.Tensor,
    text_span: int,
    speech_span: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Build the speech decoder's teacher-forced inputs.

    Args:
        text_rows (`list[torch.Tensor]`): per speech turn, the projected LLM hidden states `(text_len_i, hidden)`.
        unit_ids (`torch.Tensor` of shape `(num_turns, max_units)`): decoder ids of the units (+ EOS), padded.
        unit_mask (`torch.Tensor` of shape `(num_turns, max_units)`): 1 on real units.
        unit_embeddings (`torch.Tensor` of shape `(num_turns, max_units, hidden)`): decoder embeddings of `unit_ids`.
        speaker_slots (`torch.Tensor` of shape `(num_turns, hidden)`): the projected speaker embedding per turn.

    Returns:
        `(inputs_embeds, attention_mask, labels)` of shape `(num_turns, 1 + max_text_len + max_units[, hidden])`;
        labels hold the unit id at unit positions (unshifted) and -100 elsewhere.
    """
    num_turns, max_units = unit_ids.shape
    hidden_size = unit_embeddings.shape[-1]
    width = 1 + max(rows.shape[0] for rows in text_rows) + max_units
    device = unit_embeddings.device
    inputs_embeds = unit_embeddings.new_zeros(num_turns, width, hidden_size)
    attention_mask = torch.zeros(num_turns, width, dtype=torch.long, device=device)
    labels = torch.full((num_turns, width), IGNORE_INDEX, dtype=torch.long, device=device)
    unit_lengths = (unit_mask != 0).sum(-1).tolist()
    inputs_embeds[:, 0] = speaker_slots.to(inputs_embeds.dtype)
    attention_mask[:, 0] = 1
    for turn, (rows, unit_length) in enumerate(zip(text_rows, unit_lengths, strict=True)):
        text_pos, unit_pos = interleaved_positions(rows.shape[0], unit_length, text_span, speech_span, device)
        inputs_embeds[turn, text_pos] = rows.to(inputs_embeds.dtype)
        inputs_embeds[turn, unit_pos] = unit_embeddings[turn, :unit_length]
        attention_mask[turn, text_pos] = 1
        attention_mask[turn, unit_pos] = 1
        labels[turn, unit_pos] = unit_ids[turn, :unit_length]
    return inputs_embeds, attention_mask, labels
