"""Frame arithmetic shared by the processor and the model: how many LLM positions one audio occupies."""

import torch


__all__ = ["encoder_output_lengths", "adapter_output_lengths", "audio_embedding_lengths"]


def encoder_output_lengths(feature_lengths: torch.Tensor) -> torch.Tensor:
    """Qwen2-Audio encoder frames (25 Hz) for `feature_lengths` valid mel frames (100 Hz) of one 30 s window.

    A stride-2 convolution then a stride-2 average pool: `L1 = (L - 1) // 2 + 1`, `L2 = (L1 - 2) // 2 + 1`.
    """
    conv_lengths = (feature_lengths - 1) // 2 + 1
    return (conv_lengths - 2) // 2 + 1


def adapter_output_lengths(encoder_lengths: torch.Tensor, num_convs: int) -> torch.Tensor:
    """Adapter frames after `num_convs` convolutions of stride 2, padding `k // 2`: `floor((L - 1) / 2 + 1)` each."""
    lengths = encoder_lengths
    for _ in range(num_convs):
        lengths = torch.div(lengths - 1, 2, rounding_mode="floor") + 1
        lengths = lengths.clamp(min=0)
    return lengths


def audio_embedding_lengths(feature_lengths: torch.Tensor, num_adapter_convs: int, window: int = 3000) -> torch.Tensor:
    """Number of LLM positions (adapter frames, 6.25 Hz) of audios with `feature_lengths` valid mel frames.

    The encoder runs on 30 s windows of `window` mel frames; the per-window outputs are summed, as the original
    OpenS2S encoder wrapper does, then the adapter shortens the sum.

    Args:
        feature_lengths (`torch.Tensor` of shape `(num_audios,)`): valid mel frames per audio.
        num_adapter_convs (`int`): number of stride-2 adapter convolutions.
        window (`int`, *optional*, defaults to 3000): mel frames per encoder window.
    """
    feature_lengths = torch.as_tensor(feature_lengths, dtype=torch.long)
    full_windows = torch.div(feature_lengths, window, rounding_mode="floor")
    remainder = feature_lengths - full_windows * window
    full_window_frames = encoder_output_lengths(torch.tensor(window))
    encoder_lengths = full_windows * full_window_frames + encoder_output_lengths(remainder)
    return adapter_output_lengths(encoder_lengths, num_adapter_convs)
