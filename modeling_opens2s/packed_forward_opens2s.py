"""Packed forwards: one forward of an LM for the new positions of several conversations, each against its own cache,
giving every conversation bitwise the hidden states and logits of a forward of it alone.

- Every conversation keeps its own `DynamicCache` per LM, of its own length. A packed forward puts only the new
  positions of its feeds one after another; the weight-heavy parts (projections, MLP, LM head) and the per-position
  ones (norms, rotary) run on all of them at once, and attention runs feed by feed against that feed's own cache with
  transformers' own attention function and mask, exactly as a forward of that feed alone. No padding between feeds,
  no mask over other feeds' lengths: a feed's attention is the same arithmetic alone or packed.
- A float32 GEMM does not compute a row alike for every number of rows: MKL/oneDNN on x86 (and cuBLAS) pick another
  kernel, with another summation order, for very few rows (measured here: rows differ by ~1e-6 between 1-3 rows and
  >= 4 rows, and are identical for any count >= 4 and any place of the row in the GEMM). So every forward is padded
  with zero positions to at least `MIN_GEMM_ROWS`, alone too: a conversation's arithmetic does not depend on how
  many neighbours it has or how many positions they feed.

Several engines may share one model from several threads (two `model.stream` calls at once, say): the forwards of one
model take turns under one lock per model ([`forward_lock`]), because a packed forward routes its LM config's attention
through [`_packed_attention`] for its duration (shared state of the model) and the fast path's pools belong to the
model. One feed of at least `MIN_GEMM_ROWS` positions (a prompt) needs neither and runs outside the lock.
"""

import copy
import threading
import weakref
from contextlib import contextmanager

import torch
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.qwen3.modeling_qwen3 import eager_attention_forward

from .streaming_opens2s import _Feed


__all__ = ["MIN_GEMM_ROWS", "forward_groups", "forward_lock", "forward_packed", "pad_rows", "run_packed"]

# Fewest rows a single-position forward is given (zero rows pad it): from this count on, a float32 GEMM row's result
# does not depend on the number of rows (see the module docstring).
MIN_GEMM_ROWS = 4


def pad_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """`tensor` with zero rows appended along dim 0 up to `rows`."""
    if tensor.shape[0] >= rows:
        return tensor
    return torch.cat([tensor, tensor.new_zeros(rows - tensor.shape[0], *tensor.shape[1:])])


def _feed_masks(model, feeds: list[_Feed], inputs: list[torch.Tensor], positions: list) -> dict[str, list]:
    """Per layer type, every feed's attention mask, built as the LM's own forward builds it for a batch of one (for
    the LM's own attention implementation, whether or not a loop's forward has switched it meanwhile)."""
    masks: dict[str, list] = {"full_attention": []}
    if getattr(model, "has_sliding_layers", False):
        masks["sliding_attention"] = []
    config = _unswitched(model.config)
    for feed, embeds, (attention_mask, position_ids) in zip(feeds, inputs, positions, strict=True):
        kwargs = {
            "config": config,
            "inputs_embeds": embeds,
            "attention_mask": attention_mask,
            "cache": feed.state.cache,
            "position_ids": position_ids,
        }
        masks["full_attention"].append(create_causal_mask(**kwargs))
        if "sliding_attention" in masks:
            masks["sliding_attention"].append(create_sliding_window_causal_mask(**kwargs))
    return masks


class _PackedCaches:
    """The caches of the feeds packed into one forward, one `DynamicCache` each (of its own length). The forward's
    new positions are the feeds' positions one after another (`spans`: `(start, end)` of each feed); `update`
    appends each feed's keys/values to its own cache and returns per-feed lists, which [`_packed_attention`] reads."""

    def __init__(self, caches: list, spans: list[tuple[int, int]]):
        self.caches, self.spans = caches, spans

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        keys, values = [], []
        for (start, end), cache in zip(self.spans, self.caches, strict=True):
            key, value = cache.update(key_states[:, :, start:end], value_states[:, :, start:end], layer_idx)
            keys.append(key)
            values.append(value)
        return keys, values


# One lock per model (weakly keyed: no reference kept, nothing added to the model that `deepcopy` would trip on).
_forward_locks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_forward_locks_guard = threading.Lock()


def forward_lock(model) -> threading.RLock:
    """The lock that every engine of `model` holds around a forward (and while returning the fast path's pools to
    the model): the attention switch of [`_attention_packed`] and the pools are state of the model, not of an
    engine, so two engines on one model must not run forwards at the same time."""
    with _forward_locks_guard:
        lock = _forward_locks.get(model)
        if lock is None:
            lock = _forward_locks[model] = threading.RLock()
        return lock


# Attention implementation of each LM config while its packed feeds run through `_packed_attention`.
_PACKED_ATTENTION = "opens2s_packed"
_packed_attention_inner: dict[int, str] = {}
_switch_guard = threading.Lock()


def _packed_attention(module, query: torch.Tensor, key, value, attention_mask, packed_spans=None, **kwargs):
    """Attention of packed feeds, one feed at a time against its own cache with the LM's own attention function and
    mask: the same call, on the same tensors, as a forward of that feed alone. Padding positions get zeros."""
    inner = ALL_ATTENTION_FUNCTIONS.get_interface(_packed_attention_inner.get(id(module.config), "sdpa"), None)
    if inner is None:
        inner = eager_attention_forward
    if packed_spans is None:  # a forward from outside the engine while it runs: nothing packed
        return inner(module, query, key, value, attention_mask, **kwargs)
    outputs = [
        inner(module, query[:, :, start:end], key[index], value[index], attention_mask[index], **kwargs)[0]
        for index, (start, end) in enumerate(packed_spans)
    ]
    padding = query.shape[2] - packed_spans[-1][1]
    if padding:
        outputs.append(outputs[0].new_zeros(1, padding, *outputs[0].shape[2:]))
    return torch.cat(outputs, dim=1), None


@contextmanager
def _attention_packed(config):
    """Route `config`'s attention through [`_packed_attention`] for one forward (restored afterwards). The function
    is registered with transformers' attention functions on first use, not at import. Callers hold the model's
    [`forward_lock`]: a second switch at the same time would take this one for the LM's own implementation.

    A forward of another thread meanwhile (a prompt's, beside the loop) goes through [`_packed_attention`] with
    nothing packed, which calls the LM's own implementation: the entry of `_packed_attention_inner` exists whenever
    the config names the packed function (both change together, under `_switch_guard`)."""
    if _PACKED_ATTENTION not in ALL_ATTENTION_FUNCTIONS:
        ALL_ATTENTION_FUNCTIONS.register(_PACKED_ATTENTION, _packed_attention)
    with _switch_guard:
        _packed_attention_inner[id(config)] = config._attn_implementation
        config._attn_implementation_internal = _PACKED_ATTENTION
    try:
        yield
    finally:
        with _switch_guard:
            config._attn_implementation_internal = _packed_attention_inner.pop(id(config))


def _unswitched(config):
    """A copy of `config` naming the LM's own attention implementation, as it is outside [`_attention_packed`]:
    what masks are built for (transformers picks the mask format from it)."""
    view = copy.copy(config)
    with _switch_guard:
        view._attn_implementation_internal = _packed_attention_inner.get(id(config), config._attn_implementation)
    return view


@torch.no_grad()
def forward_packed(causal_lm, feeds: list[_Feed]) -> None:
    """Run one forward of `causal_lm` for feeds of any number of new positions, each through its own cache; fills
    every feed's `hidden` `(1, n, hidden)` and `logits` `(1, vocab)`.

    It is the LM's own forward (`causal_lm.model`) on the feeds' new positions one after another in one sequence
    (zero positions pad it to `MIN_GEMM_ROWS`), with the attention split per feed (see the module docstring); the
    caller holds the model's [`forward_lock`]. One feed of at least `MIN_GEMM_ROWS` positions (a prompt) needs
    neither padding nor split: it runs on its own cache with the LM's own attention, the same arithmetic, and so
    without the lock, beside the loop's forwards.
    """
    inputs = [feed.inputs_embeds.to(causal_lm.lm_head.weight.device) for feed in feeds]
    positions = [feed.state.advance(embeds.shape[1]) for feed, embeds in zip(feeds, inputs, strict=True)]
    masks = _feed_masks(causal_lm.model, feeds, inputs, positions)
    caches = [feed.state.cache for feed in feeds]
    run_packed(causal_lm, feeds, inputs, [position_ids for _, position_ids in positions], masks, caches)


def run_packed(
    causal_lm, feeds: list[_Feed], inputs: list[torch.Tensor], position_ids: list, masks: dict[str, list], caches: list
) -> None:
    """The packed forward itself, for any kind of per-feed cache: [`forward_packed`] (each feed's `DynamicCache`) and
    the fast path's multi-position forwards (each feed's slot of a preallocated pool). `inputs` `(1, n_i, hidden)`,
    `position_ids` `(1, n_i)`, `masks` (per layer type, each feed's attention mask) and `caches` (anything with a
    `DynamicCache`-like `update`) are per feed; fills every feed's `hidden` and `logits`."""
    model = causal_lm.model
    spans, start = [], 0
    for embeds in inputs:
        spans.append((start, start + embeds.shape[1]))
        start += embeds.shape[1]
    packed = pad_rows(torch.cat(inputs, dim=1)[0], MIN_GEMM_ROWS)[None]
    packed_positions = pad_rows(torch.cat(position_ids, dim=1)[0], MIN_GEMM_ROWS)
    kwargs = {"inputs_embeds": packed, "position_ids": packed_positions[None], "use_cache": True}
    if len(feeds) == 1 and spans[0][1] == packed.shape[1]:
        masks = {layer_type: feed_masks[0] for layer_type, feed_masks in masks.items()}
        hidden = model(attention_mask=masks, cache=caches[0], **kwargs).last_hidden_state
    else:
        with _attention_packed(model.config):
            hidden = model(
                attention_mask=masks, cache=_PackedCaches(caches, spans), packed_spans=spans, **kwargs
            ).last_hidden_state
    last = torch.stack([hidden[0, end - 1] for _, end in spans])
    logits = causal_lm.lm_head(pad_rows(last, MIN_GEMM_ROWS))
    for index, (feed, (start, end)) in enumerate(zip(feeds, spans, strict=True)):
        feed.hidden, feed.logits = hidden[:, start:end], logits[index : index + 1]


def forward_groups(feeds: list[_Feed], pack: bool = True) -> list[list[_Feed]]:
    """Feeds that run as one forward: with `pack`, all the feeds of one LM (any numbers of positions, see
    [`forward_packed`]); else (the fast path) the single-position feeds of one LM (its compiled step) and, apart, its
    multi-position feeds (one packed forward, uncompiled)."""
    groups: dict[tuple, list[_Feed]] = {}
    for feed in feeds:
        key = (id(feed.state.causal_lm), pack or feed.inputs_embeds.shape[1] == 1)
        groups.setdefault(key, []).append(feed)
    return list(groups.values())
