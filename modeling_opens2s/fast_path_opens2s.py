"""The engine's fast path (`compile=True`): static key/value caches and a compiled single-position step.

Each LM keeps one preallocated key/value pool of fixed shape for all conversations (a slot each, `max(max_active,
MIN_GEMM_ROWS)` slots), so a single-position step is one forward of fixed shapes over every slot (idle slots are
padding rows), compiled once with `torch.compile` (CUDA graphs on CUDA) and reused by every later step and every later
engine of the same model. Multi-position forwards (a prompt, a speech chunk's rows) run uncompiled against the same
pool, those of one step and one LM packed into one forward as on the eager path, so a new prompt length never
recompiles and the conversations' speech chunk heads of one step cost one forward, not one each. The pool length grows
in powers of two from 64 (a longer answer recompiles once per new length).
"""

import logging

import torch

from .packed_forward_opens2s import MIN_GEMM_ROWS, run_packed
from .streaming_opens2s import _Feed


__all__ = ["FastPath"]

logger = logging.getLogger(__name__)

# Smallest key/value pool length; lengths grow by doubling, so most prompts share a compiled shape. Small, because
# every compiled step attends over the whole pool: a 256-position floor made short answers 4-9% slower than eager
# on CPU (measured, mid preset), 64 makes them as fast.
_MIN_POOL_LENGTH = 64
_RECOMPILE_LIMIT = 64


class _SlotPool:
    """Preallocated keys/values of one LM for every slot: per layer `(slots, kv_heads, length, head_dim)` in the
    LM's dtype, and `valid` `(slots, length)`: which cached positions hold a real token (left padding never does).

    A slot's positions past what its conversation has fed may hold stale values; they are never read, as every
    forward writes its own positions before attending."""

    def __init__(self, causal_lm, slots: int, length: int):
        config = causal_lm.config
        weight = causal_lm.lm_head.weight
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.shape = (slots, config.num_key_value_heads, length, head_dim)
        self.dtype, self.device = weight.dtype, weight.device
        layers = config.num_hidden_layers
        self.keys = [torch.zeros(self.shape, dtype=self.dtype, device=self.device) for _ in range(layers)]
        self.values = [torch.zeros(self.shape, dtype=self.dtype, device=self.device) for _ in range(layers)]
        self.valid = torch.zeros(slots, length, dtype=torch.bool, device=self.device)
        self._mark_static()

    def _mark_static(self) -> None:
        if self.device.type == "cuda":  # fixed addresses: CUDA graphs replay on them
            for tensor in (*self.keys, *self.values, self.valid):
                torch._dynamo.mark_static_address(tensor)

    @property
    def length(self) -> int:
        return self.shape[2]

    def grow(self, length: int) -> None:
        """Reallocate to `length` positions per slot, keeping what is cached."""
        old = self.length
        self.shape = (*self.shape[:2], length, self.shape[3])
        for tensors in (self.keys, self.values):
            for layer, tensor in enumerate(tensors):
                tensors[layer] = torch.zeros(self.shape, dtype=self.dtype, device=self.device)
                tensors[layer][:, :, :old] = tensor
        valid = torch.zeros(self.shape[0], length, dtype=torch.bool, device=self.device)
        valid[:, :old] = self.valid
        self.valid = valid
        self._mark_static()


class _SlotWrite:
    """The `cache=` of a multi-position forward of one slot: writes `n` positions from `start`, returns the slot's
    whole pool `(1, kv_heads, length, head_dim)` (a view, no copy)."""

    def __init__(self, pool: _SlotPool, slot: int, start: int):
        self.pool, self.slot, self.start = pool, slot, start

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        keys, values = self.pool.keys[layer_idx], self.pool.values[layer_idx]
        end = self.start + key_states.shape[2]
        keys[self.slot : self.slot + 1, :, self.start : end] = key_states
        values[self.slot : self.slot + 1, :, self.start : end] = value_states
        return keys[self.slot : self.slot + 1], values[self.slot : self.slot + 1]


class _EverySlotWrite:
    """The `cache=` of a single-position step over every slot (row `i` is slot `i`): writes each row's position
    `index[i]`, returns the whole pool `(slots, kv_heads, length, head_dim)`."""

    def __init__(self, keys: list, values: list, index: torch.Tensor):
        self.keys, self.values, self.index = keys, values, index
        self.rows = torch.arange(index.shape[0], device=index.device)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        keys[self.rows, :, self.index] = key_states[:, :, 0]
        values[self.rows, :, self.index] = value_states[:, :, 0]
        return keys, values


def _pool_mask(valid: torch.Tensor, query_index: torch.Tensor) -> torch.Tensor:
    """Boolean attention mask `(rows, 1, n, length)` of queries at cache positions `query_index` `(rows, n)`: cached
    real tokens up to the query's position, and the query's own position (so a left-padding query stays finite)."""
    span = torch.arange(valid.shape[-1], device=valid.device)
    allowed = valid[:, None, :] & (span <= query_index[..., None])
    return (allowed | (span == query_index[..., None]))[:, None]


def _step_every_slot(causal_lm, keys: list, values: list, valid, embeds, index, position_ids):
    """One position for every slot: `embeds` `(slots, 1, hidden)` at cache positions `index` `(slots,)` and rotary
    positions `position_ids` `(slots, 1)`; returns hidden states `(slots, 1, hidden)` and logits `(slots, vocab)`.
    The function compiled by the fast path (fixed shapes)."""
    valid[torch.arange(index.shape[0], device=index.device), index] = True
    mask = _pool_mask(valid, index[:, None])
    hidden = causal_lm.model(
        inputs_embeds=embeds,
        attention_mask={"full_attention": mask},
        position_ids=position_ids,
        cache=_EverySlotWrite(keys, values, index),
        use_cache=True,
    ).last_hidden_state
    return hidden, causal_lm.lm_head(hidden[:, -1])


class FastPath:
    """Static caches and compiled single-position steps of one engine (`compile=True`).

    Every LM has one [`_SlotPool`]; an admitted conversation takes a slot (the same index in both pools) and frees it
    when it leaves. Pools of an engine with no conversation go back to the model (`_opens2s_slot_pools` on each LM),
    so the next `model.stream` call reuses them: same shapes and addresses, so no recompilation and, on CUDA, the
    recorded graphs replay.

    Args:
        model: the OpenS2S model.
        slots (`int`): conversations decoded together at most; at least `MIN_GEMM_ROWS` rows run per step.
    """

    _compiled: dict[str, object] = {}  # compile mode -> compiled `_step_every_slot`, shared by every engine
    _shapes_seen: set = set()  # (LM id, slots, length) whose first compiled call has run

    def __init__(self, model, slots: int):
        lms = (model.language_model, model.speech_decoder)
        for causal_lm in lms:
            if getattr(causal_lm.model, "has_sliding_layers", False):
                raise ValueError("compile=True supports full-attention LMs only (this one has sliding-window layers)")
        self.slots = max(slots, MIN_GEMM_ROWS)
        self.pools: dict[int, _SlotPool] = {}
        self.free = list(range(self.slots))
        self.slot_of: dict[int, int] = {}  # conversation id -> slot
        self.occupants: dict[int, tuple] = {}  # slot -> the conversation's (text, speech) `_LMState`s
        self.owners: dict[int, object] = {}  # id(LM) -> LM, of the pools held
        mode = "reduce-overhead" if model.device.type == "cuda" else "default"
        # One compiled graph per (LM, slots, pool length): more than dynamo's default of 8 once a process holds a
        # few models (tests, A/B runs). Raised on opt-in only, never lowered.
        dynamo_config = torch._dynamo.config
        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, _RECOMPILE_LIMIT)
        if mode not in self._compiled:
            self._compiled[mode] = torch.compile(_step_every_slot, mode=mode, dynamic=False)
        self.step_function = self._compiled[mode]
        self.cuda = model.device.type == "cuda"

    def admit(self, conversation_id: int, states: tuple) -> None:
        """Give a conversation a slot; `states` are its `(text, speech)` `_LMState`s, whose keys/values move to it."""
        slot = self.free.pop(0)
        self.slot_of[conversation_id] = slot
        self.occupants[slot] = states
        for state in states:
            state.slot, state.cache = slot, None  # this conversation's keys/values live in the pools
            if id(state.causal_lm) in self.pools:
                self.pools[id(state.causal_lm)].valid[slot] = False

    def leave(self, conversation_id: int) -> None:
        """Free a conversation's slot; once no conversation holds one, the pools go back to the model."""
        slot = self.slot_of.pop(conversation_id, None)
        if slot is not None:
            self.free.append(slot)
            del self.occupants[slot]
        if not self.slot_of:  # idle: the pools go back to the model for the next engine
            for key, pool in self.pools.items():
                self.owners.pop(key).__dict__.setdefault("_opens2s_slot_pools", []).append(pool)
            self.pools.clear()

    def _pool(self, state, needed: int) -> _SlotPool:
        """This LM's pool, taken back from the model or made, grown to hold `needed` positions of `state`'s slot."""
        key = id(state.causal_lm)
        pool = self.pools.get(key)
        if pool is None:
            spare = state.causal_lm.__dict__.setdefault("_opens2s_slot_pools", [])
            fits = [pool for pool in spare if pool.shape[0] == self.slots]
            pool = fits[0] if fits else _SlotPool(state.causal_lm, self.slots, _MIN_POOL_LENGTH)
            if fits:
                spare.remove(pool)
            pool.valid.zero_()
            self.pools[key], self.owners[key] = pool, state.causal_lm
        if needed > pool.length:
            length = max(pool.length, _MIN_POOL_LENGTH)
            while length < needed:
                length *= 2
            logger.info("fast path: key/value pool grows to %d positions (one recompilation)", length)
            pool.grow(length)
        return pool

    def prefill(self, feeds: list[_Feed]) -> None:
        """Multi-position forwards of one LM (a prompt, a speech chunk's rows), uncompiled, each against its
        conversation's slot of the pool: one packed forward ([`run_packed`]: the feeds' positions one after another,
        attention per feed), so a conversation's arithmetic is that of its forward alone."""
        causal_lm = feeds[0].state.causal_lm
        inputs = [feed.inputs_embeds.to(causal_lm.lm_head.weight.device) for feed in feeds]
        for feed, embeds in zip(feeds, inputs, strict=True):
            if feed.state.written == 0:  # first forward of this LM: room for everything the budgets allow, + 1 idle
                feed.state.capacity = embeds.shape[1] + feed.state.reserve + 1
        pool = self._pool(feeds[0].state, max(feed.state.capacity for feed in feeds))
        position_ids, masks, writes = [], [], []
        for feed, embeds in zip(feeds, inputs, strict=True):
            state, length = feed.state, embeds.shape[1]
            start = state.written
            attention_mask, positions = state.advance(length)
            pool.valid[state.slot, start : start + length] = (
                attention_mask[:, -length:].bool() if attention_mask is not None else True
            )
            query_index = torch.arange(start, start + length, device=pool.device)[None]
            position_ids.append(positions)
            masks.append(_pool_mask(pool.valid[state.slot : state.slot + 1], query_index))
            writes.append(_SlotWrite(pool, state.slot, start))
        run_packed(causal_lm, feeds, inputs, position_ids, {"full_attention": masks}, writes)

    def decode(self, causal_lm, feeds: list[_Feed]) -> bool:
        """One compiled single-position step of `causal_lm` over every slot, for `feeds` (other slots idle); returns
        whether this call compiled (the first for its shapes)."""
        first = feeds[0].state
        pool = self._pool(first, max(feed.state.capacity for feed in feeds))
        hidden_size = causal_lm.config.hidden_size
        embeds = torch.zeros(self.slots, 1, hidden_size, dtype=pool.dtype, device=pool.device)
        index = torch.zeros(self.slots, dtype=torch.long, device=pool.device)
        position_ids = torch.zeros(self.slots, 1, dtype=torch.long, device=pool.device)
        # An idle slot writes (and attends to) its next free position only, which its next forward overwrites.
        for slot, states in self.occupants.items():
            index[slot] = next(state.written for state in states if state.causal_lm is causal_lm)
        for feed in feeds:
            embeds[feed.state.slot] = feed.inputs_embeds[0].to(pool.device, pool.dtype)
            position_ids[feed.state.slot] = feed.state.advance(1)[1][0]
        key = (id(causal_lm), self.slots, pool.length)
        compiling = key not in self._shapes_seen
        if self.cuda:
            torch.compiler.cudagraph_mark_step_begin()
        hidden, logits = self.step_function(causal_lm, pool.keys, pool.values, pool.valid, embeds, index, position_ids)
        self._shapes_seen.add(key)
        for feed in feeds:  # copies: CUDA graph outputs are overwritten by the next replay
            feed.hidden = hidden[feed.state.slot : feed.state.slot + 1].clone()
            feed.logits = logits[feed.state.slot : feed.state.slot + 1].clone()
        return compiling
