"""The fast path (`compile=True`): static key/value caches and compiled single-position steps give the eager path's
greedy ids.

Tiny default model (random weights, seed 0) and every reference fixture set. The quick test traces the static-cache
step with dynamo's `eager` backend (seconds: the caches, masks, slots and pool reuse are exercised, inductor is
not); the `slow` ones compile with inductor on CPU (~40 s per model on a 2-core CPU, needs a C++ compiler) and check
that a second call and a new prompt length reuse the compiled step. A CUDA-graph test is skipped without CUDA.
"""

import sys

import pytest
import torch
from test_engine import ids_of, prompts, run_plan, solo, tiny  # noqa: F401 - fixtures of the tiny model
from test_streaming import converted, run_stream, scenario_configs, scenario_params  # noqa: F401 - fixture

from fixture_sets import load_manifest
from opens2s.modeling_opens2s import fast_path_opens2s


pytestmark = pytest.mark.usefixtures("single_thread")

BUDGETS = {"max_new_tokens": 24, "speech_max_new_tokens": 64, "token2wav": False}


@pytest.fixture
def traced_only(monkeypatch):
    """Fast-path steps traced by dynamo but run eagerly (no inductor): the static-cache arithmetic in seconds."""
    compiled = {mode: torch.compile(fast_path_opens2s._step_every_slot, backend="eager") for mode in ("default",)}
    monkeypatch.setattr(fast_path_opens2s.FastPath, "_compiled", compiled)
    monkeypatch.setattr(fast_path_opens2s.FastPath, "_shapes_seen", set())


def compile_stages(result: dict) -> float:
    return result["done"].stats.stage_seconds.get("compile", 0.0)


def test_static_caches_give_the_eager_ids_in_a_batch(tiny, prompts, traced_only):  # noqa: F811
    """Conversations join at different steps, differ in prompt length and budgets, and one ends early: each one's
    ids with the static caches equal its eager solo run."""
    model, processor = tiny
    kwargs = [
        {"max_new_tokens": 24, "speech_max_new_tokens": 64},
        {"max_new_tokens": 9, "speech_max_new_tokens": 40},
        {"max_new_tokens": 17, "speech_max_new_tokens": 12},  # the speech budget runs out before the text
    ]
    joins = (0, 2, 5)
    plan = [(joins[i], prompts[i], {**kw, "token2wav": False}) for i, kw in enumerate(kwargs)]
    engine = model.engine(processor, max_active=2, compile=True)  # a queue too: the third waits for a slot
    fast = run_plan(engine, plan)
    for (_, inputs, kw), result in zip(plan, fast, strict=True):
        eager = solo(tiny, inputs, **kw)
        assert result["text"] == eager["text"] and result["speech"] == eager["speech"]
        assert result["done"].stats.chunks == eager["done"].stats.chunks
    # The engine is idle: its pools went back to the model, and the next engine reuses them (same shapes).
    pools = model.language_model.__dict__["_opens2s_slot_pools"]
    assert len(pools) == 1
    again = run_plan(model.engine(processor, max_active=2, compile=True), plan[:1])[0]
    assert again["text"] == fast[0]["text"] and compile_stages(again) == 0.0


def test_speech_chunk_heads_of_one_step_run_as_one_packed_forward_and_keep_each_conversations_ids(
    tiny,  # noqa: F811
    prompts,  # noqa: F811
    traced_only,
    monkeypatch,
):
    """Three conversations admitted at once reach their speech chunks together: the fast path runs their heads (the
    text chunk's rows, padded when a last chunk is shorter than `MIN_GEMM_ROWS`) as one uncompiled forward, and every
    conversation's ids equal its eager run alone."""
    model, processor = tiny
    kwargs = [
        {"max_new_tokens": 9, "speech_max_new_tokens": 40, "token2wav": False},  # a 1-token last text chunk
        {"max_new_tokens": 12, "speech_max_new_tokens": 30, "token2wav": False},
        {"max_new_tokens": 10, "speech_max_new_tokens": 36, "token2wav": False},
    ]
    engine = model.engine(processor, max_active=3, compile=True, side_threads=0)  # prompts in step, in the loop
    module = sys.modules[type(engine.fast).__module__]  # the remote-code copy of the fast path module, if any
    run_packed, packed = module.run_packed, []

    def recording_run_packed(causal_lm, feeds, *args):
        if causal_lm is model.speech_decoder:
            packed.append(len(feeds))
        return run_packed(causal_lm, feeds, *args)

    monkeypatch.setattr(module, "run_packed", recording_run_packed)
    together = run_plan(engine, [(0, inputs, kw) for inputs, kw in zip(prompts[:3], kwargs, strict=True)])
    assert max(packed) == 3  # the three heads of one step in one forward
    for index, (inputs, kw, mine) in enumerate(zip(prompts[:3], kwargs, together, strict=True)):
        alone = solo(tiny, inputs, **kw)
        assert mine["text"] == alone["text"], f"conversation {index}: text ids differ"
        assert mine["speech"] == alone["speech"], f"conversation {index}: decoder ids differ"


def test_chunks_through_a_compiled_estimator_batch_across_conversations(tiny, prompts, traced_only, monkeypatch):  # noqa: F811
    """With `compile=True` the conversations' token2wav chunks of one shape still render as one batch (the compiled
    estimator's batch is symbolic: one graph for every batch size). Run with the estimator uncompiled here (an
    inductor build takes a minute; the one-graph property is tested in test_token2wav.py)."""
    model, processor = tiny
    flow = model.token2wav.flow
    monkeypatch.setattr(flow, "compiled_estimator", lambda mode=None: flow.estimator)
    engine = model.engine(processor, max_active=3, compile=True, side_threads=0)
    kwargs = {"max_new_tokens": 8, "speech_max_new_tokens": 40}
    together = run_plan(engine, [(0, inputs, kwargs) for inputs in prompts[:3]])
    work = engine.stats()
    assert work["token2wav_chunks"] > work["token2wav_batches"] > 0  # chunks of several conversations in one batch
    for index, (inputs, mine) in enumerate(zip(prompts[:3], together, strict=True)):
        alone = solo(tiny, inputs, compile=True, **kwargs)
        assert mine["speech"] == alone["speech"], f"conversation {index}: decoder ids differ"
        assert sum(len(pcm) for pcm in mine["audio"]) == sum(len(pcm) for pcm in alone["audio"]) > 0


def test_left_padded_prompt_gives_the_eager_ids(tiny, prompts, traced_only):  # noqa: F811
    model, processor = tiny
    inputs = dict(prompts[1])
    inputs["attention_mask"] = torch.cat(
        [torch.zeros(1, 3, dtype=torch.long), torch.ones_like(inputs["input_ids"])], 1
    )
    inputs["input_ids"] = torch.cat([torch.zeros(1, 3, dtype=torch.long), inputs["input_ids"]], 1)
    eager = solo(tiny, inputs, **BUDGETS)
    fast = solo(tiny, inputs, compile=True, **BUDGETS)
    assert fast["text"] == eager["text"] and fast["speech"] == eager["speech"]


def test_sampling_with_a_seed_gives_the_eager_ids(tiny, prompts, traced_only):  # noqa: F811
    sampling = {"do_sample": True, "top_k": 20, "speech_do_sample": True, "seed": 3, **BUDGETS}
    eager, fast = solo(tiny, prompts[0], **sampling), solo(tiny, prompts[0], compile=True, **sampling)
    assert fast["text"] == eager["text"] and fast["speech"] == eager["speech"]


def test_the_compile_switch_reaches_token2wav_block_streaming(tiny, prompts, traced_only, monkeypatch):  # noqa: F811
    """`compile=True` also compiles the answer's token2wav estimator (block streaming) unless `token2wav_compile=False`
    says otherwise; the original schedule never compiles. (Recorded, and run uncompiled here: an inductor build of
    the estimator takes minutes.)"""
    model, processor = tiny
    token2wav = model.token2wav
    start_stream, asked = token2wav.start_stream, []

    def recording_start_stream(mode="blocks", compile=False, **kwargs):
        asked.append(compile)
        return start_stream(mode=mode, compile=False, **kwargs)

    monkeypatch.setattr(token2wav, "start_stream", recording_start_stream)
    budgets = {"max_new_tokens": 4, "speech_max_new_tokens": 8}
    for kwargs in ({}, {"compile": True}, {"compile": True, "token2wav_compile": False}):
        solo(tiny, prompts[0], **kwargs, **budgets)
    solo(tiny, prompts[0], compile=True, token2wav_mode="original", **budgets)
    assert asked == [False, True, False, False]


@pytest.mark.slow
def test_inductor_compiled_stream_gives_the_eager_ids_and_compiles_once(tiny, prompts):  # noqa: F811
    first = solo(tiny, prompts[0], compile=True, **BUDGETS)
    eager = solo(tiny, prompts[0], **BUDGETS)
    assert first["text"] == eager["text"] and first["speech"] == eager["speech"]
    # The first call of a new model compiles (counted apart); a second call and other prompt lengths do not.
    for inputs in (prompts[0], prompts[1], prompts[2]):
        result = solo(tiny, inputs, compile=True, **BUDGETS)
        expected = solo(tiny, inputs, **BUDGETS)
        assert result["text"] == expected["text"] and result["speech"] == expected["speech"]
        assert compile_stages(result) == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("case", scenario_params())
def test_inductor_compiled_stream_matches_the_original_generation(converted, case):  # noqa: F811
    folder, name = case
    entry = converted(folder)
    result = run_stream(entry, *scenario_configs(entry, name), compile=True)
    assert result["text_ids"] == entry["ref"][f"gen.{name}.text_ids"].tolist()
    assert result["speech_ids"] == entry["ref"][f"gen.{name}.unit_ids"].tolist()
    recorded = [len(call["generated"]) for call in load_manifest(folder)["generation"]["scenarios"][name]["calls"]]
    assert [chunk.num_tokens for chunk in result["stats"].chunks] == recorded


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_cuda_graph_stream_gives_the_eager_ids(tiny, prompts):  # noqa: F811
    model, processor = tiny
    model.to("cuda")
    try:
        inputs = {key: value.to("cuda") for key, value in prompts[0].items()}
        eager = ids_of(model.stream(**inputs, processor=processor, **BUDGETS))
        fast = ids_of(model.stream(**inputs, processor=processor, compile=True, **BUDGETS))
        assert fast["text"] == eager["text"] and fast["speech"] == eager["speech"]
    finally:
        model.to("cpu")
