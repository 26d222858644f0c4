"""Block-causal conformer encoder of the GLM-4-Voice flow decoder (speech units -> hidden states).

Re-implements the maths of CosyVoice v1 `BlockConformerEncoder` as configured by GLM-4-Voice: a `linear` input layer
(Linear + LayerNorm, scaled by sqrt(hidden_size)), ESPnet-style relative positions (`rel_pos_espnet`), pre-norm
layers made of block-causal relative-position self-attention (`block_rel_selfattn`) and a SiLU feed-forward network,
and a final LayerNorm. The convolution module and the macaron feed-forward are not used by GLM-4-Voice and are not
implemented.

Block-causal attention: token `i` attends to token `j` iff `j // block_size <= i // block_size` and `j` is not
padding. The block grid is anchored at token 0 of the sequence passed in, so the same tokens get different states
when a stream cuts them at other offsets (OB-T2W-7, `docs/original_behaviour.md#ob-t2w-7`).
"""

import math

import torch
from torch import Tensor, nn

from .configuration_token2wav import OpenS2SToken2WavFlowConfig


__all__ = ["BlockConformerEncoder", "FeedForward", "block_causal_mask", "relative_position_table"]


def relative_position_table(length: int, dim: int, *, device: torch.device | None = None) -> Tensor:
    """ESPnet relative sinusoidal position table for relative distances `length - 1, ..., 0, ..., -(length - 1)`.

    Args:
        length (`int`): sequence length `T`.
        dim (`int`): embedding size (even).
        device (`torch.device`, *optional*): where to build the table.

    Returns:
        `Tensor` of shape `(1, 2 * T - 1, dim)`, float32: row `c` encodes the distance `T - 1 - c` with
        `sin(d * w_k)` at even and `cos(d * w_k)` at odd channels, `w_k = 10000 ** (-2k / dim)`.
    """
    distances = torch.arange(length - 1, -length, -1, dtype=torch.float32, device=device).unsqueeze(1)
    frequencies = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device) * -(math.log(10000.0) / dim))
    angles = distances * frequencies
    table = torch.zeros(2 * length - 1, dim, dtype=torch.float32, device=device)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles)
    return table.unsqueeze(0)


def block_causal_mask(attention_mask: Tensor, block_size: int) -> Tensor:
    """Which keys each query may attend to.

    Args:
        attention_mask (`Tensor` of shape `(batch, tokens)`): 1/True for real tokens, 0/False for padding.
        block_size (`int`): tokens per block of the grid anchored at token 0.

    Returns:
        `Tensor` of shape `(batch, tokens, tokens)`, bool: `[b, i, j]` is True iff `j // block_size <= i // block_size`
        and key `j` of row `b` is not padding (padded queries still attend, their outputs are simply unused).
    """
    # Same set as the original's `create_grid_mask` (lower triangle plus the query's whole block).
    blocks = torch.arange(attention_mask.shape[1], device=attention_mask.device) // block_size
    grid = blocks.unsqueeze(0) <= blocks.unsqueeze(1)
    return grid.unsqueeze(0) & attention_mask.bool().unsqueeze(1)


class RelPositionSelfAttention(nn.Module):
    """Multi-head self-attention with Transformer-XL relative positions (content bias `u`, position bias `v`).

    Args:
        config ([`OpenS2SToken2WavFlowConfig`]): `encoder_hidden_size` split into `encoder_num_heads` heads.
    """

    def __init__(self, config: OpenS2SToken2WavFlowConfig) -> None:
        super().__init__()
        hidden_size, num_heads = config.encoder_hidden_size, config.encoder_num_heads
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.q_proj = nn.Linear(hidden_size, hidden_size)
        self.k_proj = nn.Linear(hidden_size, hidden_size)
        self.v_proj = nn.Linear(hidden_size, hidden_size)
        self.o_proj = nn.Linear(hidden_size, hidden_size)
        self.pos_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.pos_bias_u = nn.Parameter(torch.empty(num_heads, self.head_dim))
        self.pos_bias_v = nn.Parameter(torch.empty(num_heads, self.head_dim))
        nn.init.xavier_uniform_(self.pos_bias_u)
        nn.init.xavier_uniform_(self.pos_bias_v)

    def _heads(self, states: Tensor) -> Tensor:
        """`(batch, time, hidden)` -> `(batch, time, heads, head_dim)`."""
        return states.view(states.shape[0], -1, self.num_heads, self.head_dim)

    def forward(self, hidden_states: Tensor, position_table: Tensor, visible: Tensor) -> Tensor:
        """Attend.

        Args:
            hidden_states (`Tensor` of shape `(batch, T, hidden)`): normalised layer input.
            position_table (`Tensor` of shape `(1, 2T - 1, hidden)`): from `relative_position_table`.
            visible (`Tensor` of shape `(batch, T, T)`, bool): from `block_causal_mask`.

        Returns:
            `Tensor` of shape `(batch, T, hidden)`.
        """
        batch, length, _ = hidden_states.shape
        query = self._heads(self.q_proj(hidden_states))
        key = self._heads(self.k_proj(hidden_states)).transpose(1, 2)
        value = self._heads(self.v_proj(hidden_states)).transpose(1, 2)
        position = self._heads(self.pos_proj(position_table)).transpose(1, 2)

        content_scores = torch.matmul((query + self.pos_bias_u).transpose(1, 2), key.transpose(-2, -1))
        position_scores = torch.matmul((query + self.pos_bias_v).transpose(1, 2), position.transpose(-2, -1))
        # Column c of the table is the distance T - 1 - c; query i / key j needs distance i - j.
        offsets = torch.arange(length, device=hidden_states.device)
        index = (length - 1) - offsets.unsqueeze(1) + offsets.unsqueeze(0)
        position_scores = position_scores.gather(-1, index.expand(batch, self.num_heads, length, length))
        scores = (content_scores + position_scores) / math.sqrt(self.head_dim)

        hidden = visible.unsqueeze(1).logical_not()
        # Zeroing after the softmax keeps a row with no visible key at 0 instead of NaN.
        probs = torch.softmax(scores.masked_fill(hidden, -float("inf")), dim=-1).masked_fill(hidden, 0.0)
        context = torch.matmul(probs, value).transpose(1, 2).reshape(batch, length, -1)
        return self.o_proj(context)


class FeedForward(nn.Module):
    """Position-wise feed-forward network `fc2(act(fc1(x)))`.

    Args:
        hidden_size (`int`): input and output width.
        intermediate_size (`int`): inner width.
        activation (`nn.Module`): the non-linearity.
    """

    def __init__(self, hidden_size: int, intermediate_size: int, activation: nn.Module) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.act = activation
        self.fc2 = nn.Linear(intermediate_size, hidden_size)

    def forward(self, hidden_states: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(hidden_states)))


class ConformerLayer(nn.Module):
    """Pre-norm layer: `x + attn(norm(x))`, then `x + ffn(norm(x))` (no convolution module, no macaron FFN).

    Args:
        config ([`OpenS2SToken2WavFlowConfig`]): its `encoder_*` fields.
    """

    def __init__(self, config: OpenS2SToken2WavFlowConfig) -> None:
        super().__init__()
        hidden_size, eps = config.encoder_hidden_size, config.encoder_layer_norm_eps
        self.attn_norm = nn.LayerNorm(hidden_size, eps=eps)
        self.self_attn = RelPositionSelfAttention(config)
        self.ffn_norm = nn.LayerNorm(hidden_size, eps=eps)
        self.ffn = FeedForward(hidden_size, config.encoder_ffn_dim, nn.SiLU())

    def forward(self, hidden_states: Tensor, position_table: Tensor, visible: Tensor) -> Tensor:
        hidden_states = hidden_states + self.self_attn(self.attn_norm(hidden_states), position_table, visible)
        return hidden_states + self.ffn(self.ffn_norm(hidden_states))


class BlockConformerEncoder(nn.Module):
    """Block-causal conformer encoder with ESPnet relative positions (CosyVoice v1 `BlockConformerEncoder`).

    Args:
        config ([`OpenS2SToken2WavFlowConfig`]): input width `token_embedding_dim`; `encoder_hidden_size` (also the
            output width), `encoder_num_heads`, `encoder_ffn_dim`, `encoder_num_layers`, `encoder_block_size` (10 for
            GLM-4-Voice = the units of 0.8 s) and `encoder_layer_norm_eps`.
    """

    def __init__(self, config: OpenS2SToken2WavFlowConfig) -> None:
        super().__init__()
        self.hidden_size = config.encoder_hidden_size
        self.block_size = config.encoder_block_size
        self.input_projection = nn.Linear(config.token_embedding_dim, self.hidden_size)
        self.input_norm = nn.LayerNorm(self.hidden_size, eps=config.encoder_layer_norm_eps)
        self.layers = nn.ModuleList(ConformerLayer(config) for _ in range(config.encoder_num_layers))
        self.final_norm = nn.LayerNorm(self.hidden_size, eps=config.encoder_layer_norm_eps)

    def forward(self, inputs_embeds: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Encode a batch of embedded token sequences.

        Args:
            inputs_embeds (`Tensor` of shape `(batch, tokens, token_embedding_dim)`): token embeddings (the flow
                zeroes the embeddings of padding tokens before calling).
            attention_mask (`Tensor` of shape `(batch, tokens)`, *optional*): 1/True for real tokens, 0/False for
                padding; all tokens are real when omitted.

        Returns:
            `Tensor` of shape `(batch, tokens, hidden_size)`: the final-normalised hidden states.
        """
        batch, length, _ = inputs_embeds.shape
        if attention_mask is None:
            attention_mask = torch.ones(batch, length, dtype=torch.bool, device=inputs_embeds.device)
        hidden_states = self.input_norm(self.input_projection(inputs_embeds)) * math.sqrt(self.hidden_size)
        position_table = relative_position_table(length, self.hidden_size, device=inputs_embeds.device)
        position_table = position_table.to(hidden_states.dtype)
        visible = block_causal_mask(attention_mask, self.block_size)
        for layer in self.layers:
            hidden_states = layer(hidden_states, position_table, visible)
        return self.final_norm(hidden_states)
