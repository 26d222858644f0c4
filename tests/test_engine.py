"""`OpenS2SEngine`: many conversations decoded together, each one's ids exactly those of the same conversation alone.

Tiny default model (random weights, seed 0). Conversations join at different engine steps (mid-chunk), leave at
different steps (budgets, a text EOS, a cancel) and differ in prompt, budgets and speaker embedding; every one's text
ids and decoder ids must equal `model.stream` of that conversation alone (which is itself the engine with one
conversation, and reproduces the original on the fixture sets: `test_streaming.py`).

Tests of how the engine groups work (which feeds share a forward, which chunks share a token2wav batch) run without the
side worker (`side_threads=0`): with it, when a prompt's encoding or a chunk ends depends on timing, never the ids.
"""

import gc
import sys
import threading
import time
import weakref

import numpy as np
import pytest
import torch

from opens2s import EXAMPLE_WAV
from opens2s.modeling_opens2s.audio_opens2s import load_audio
from opens2s.modeling_opens2s.side_worker_opens2s import SideJob, SideWorker
from opens2s.processing.chat import conversation_inputs, load_speech_model


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    loaded = load_speech_model(tiny_model_dir)
    return loaded.model, loaded.processor


@pytest.fixture(scope="module")
def prompts(tiny):
    """Four one-turn prompts of different lengths: the example question, shortened twice, and with a system turn."""
    _, processor = tiny
    waveform = load_audio(EXAMPLE_WAV, sampling_rate=16000)
    return [
        conversation_inputs(processor, waveform, sampling_rate=16000),
        conversation_inputs(processor, waveform[: len(waveform) // 2], sampling_rate=16000),
        conversation_inputs(processor, waveform[: len(waveform) // 3], sampling_rate=16000, system_prompt="Be brief."),
        conversation_inputs(processor, waveform, sampling_rate=16000, system_prompt="You are a kind listener."),
    ]


def ids_of(events) -> dict:
    out = {"text": [], "speech": [], "audio": [], "done": None}
    for event in events:
        if event.kind == "text":
            out["text"] += event.token_ids
        elif event.kind == "units":
            out["speech"] += event.token_ids
        elif event.kind == "audio":
            out["audio"].append(event.pcm)
        else:
            out["done"] = event
    return out


def solo(tiny, inputs, **kwargs) -> dict:
    model, processor = tiny
    return ids_of(model.stream(**inputs, processor=processor, **kwargs))


def run_plan(engine, plan: list[tuple[int, dict, dict]]) -> list[dict]:
    """Submit `(join_step, inputs, kwargs)` conversations at their steps, step until all are done, return ids."""
    conversations = [None] * len(plan)
    step = 0
    while step == 0 or any(c is None or not c.done for c in conversations):
        for index, (join, inputs, kwargs) in enumerate(plan):
            if join == step:
                conversations[index] = engine.submit(inputs, **kwargs)
        engine.step()
        step += 1
    return [ids_of(conversation) for conversation in conversations]


def test_batched_greedy_ids_equal_each_conversation_alone(tiny, prompts):
    model, processor = tiny
    dim = model.config.speaker_embedding_dim
    voice = torch.randn(dim, generator=torch.Generator().manual_seed(1))
    kwargs = [
        {"max_new_tokens": 13, "speech_max_new_tokens": 40, "token2wav": False},
        {"max_new_tokens": 5, "speech_max_new_tokens": 60, "token2wav": False, "speaker_embedding": voice},
        {"max_new_tokens": 9, "speech_max_new_tokens": 7, "token2wav": False},  # speech budget ends first
        {"max_new_tokens": 11, "speech_max_new_tokens": 30, "seed": 3},  # speaks through its own token2wav
    ]
    alone = [solo(tiny, inputs, **kw) for inputs, kw in zip(prompts, kwargs, strict=True)]
    # Row 0 stops at a text EOS (its 4th token) while the others go on.
    eos = alone[0]["text"][3]
    kwargs[0]["eos_token_id"] = eos
    alone[0] = solo(tiny, prompts[0], **kwargs[0])
    assert alone[0]["done"].stats.text_stop_reason == "eos"
    # Joins at steps 0, 1, 6 and 7: mid text chunk and mid speech chunk of those already running.
    plan = [
        (0, prompts[0], kwargs[0]),
        (1, prompts[1], kwargs[1]),
        (6, prompts[2], kwargs[2]),
        (7, prompts[3], kwargs[3]),
    ]
    together = run_plan(model.engine(processor=processor), plan)
    for index, (mine, reference) in enumerate(zip(together, alone, strict=True)):
        assert mine["text"] == reference["text"], f"conversation {index}: text ids differ"
        assert mine["speech"] == reference["speech"], f"conversation {index}: decoder ids differ"
        assert mine["done"].stats.text_stop_reason == reference["done"].stats.text_stop_reason
        assert mine["done"].stats.speech_stop_reason == reference["done"].stats.speech_stop_reason
    assert together[3]["audio"] and np.array_equal(
        np.concatenate(together[3]["audio"]), np.concatenate(alone[3]["audio"])
    )
    # The voice matters: conversation 1 with another speaker gives other units (so the rows did not share slots).
    assert solo(tiny, prompts[1], **(kwargs[1] | {"speaker_embedding": None}))["speech"] != alone[1]["speech"]


def test_a_packed_forward_gives_every_feed_bitwise_the_hidden_states_and_logits_of_that_feed_alone(tiny):
    """Feeds of 1, 2, 3, 5 and 17 new positions, with caches of different lengths, in one packed forward: every
    feed's hidden states and logits are bitwise those of the same feed run alone (which is also padded to
    `MIN_GEMM_ROWS` positions; alone, a feed of that many positions or more runs on its own cache with the LM's own
    attention, as a prompt's forward beside the loop does), so packing cannot change an id."""
    model, _ = tiny
    module = sys.modules[type(model.engine()).__module__]  # the remote-code copy of the engine module, if any
    causal_lm = model.language_model
    hidden_size = causal_lm.config.hidden_size
    generator = torch.Generator().manual_seed(0)
    history_lengths, new_lengths = [7, 0, 12, 3, 30], [1, 2, 3, 5, 17]

    histories = [torch.randn(1, n, hidden_size, generator=generator) for n in history_lengths]
    news = [torch.randn(1, n, hidden_size, generator=generator) for n in new_lengths]
    lm_state = sys.modules[module._Feed.__module__]._LMState

    def fresh_feeds():
        feeds = []
        for history, new in zip(histories, news, strict=True):
            state = lm_state(causal_lm)
            if history.shape[1]:
                module.forward_packed(causal_lm, [module._Feed(state, history, "text_prefill")])
            feeds.append(module._Feed(state, new, "text_decode"))
        return feeds

    alone = []
    for feed in fresh_feeds():
        module.forward_packed(causal_lm, [feed])
        alone.append(feed)
    packed = fresh_feeds()
    module.forward_packed(causal_lm, packed)
    for index, (mine, reference) in enumerate(zip(packed, alone, strict=True)):
        assert torch.equal(mine.hidden, reference.hidden), f"feed {index}: hidden states differ"
        assert torch.equal(mine.logits, reference.logits), f"feed {index}: logits differ"


def test_prefills_and_speech_heads_are_packed_with_other_feeds_and_ids_stay_those_alone(tiny, prompts, monkeypatch):
    """Conversations arriving at different steps: a newcomer's prompt and the speech-chunk heads run in one forward
    with the single-position feeds of the same LM (checked), and every id equals that conversation alone."""
    model, processor = tiny
    voice = torch.randn(model.config.speaker_embedding_dim, generator=torch.Generator().manual_seed(2))
    kwargs = [
        {"max_new_tokens": 9, "speech_max_new_tokens": 30, "token2wav": False},
        {"max_new_tokens": 7, "speech_max_new_tokens": 40, "token2wav": False, "speaker_embedding": voice},
        {"max_new_tokens": 10, "speech_max_new_tokens": 25, "token2wav": False},
    ]
    alone = [solo(tiny, inputs, **kw) for inputs, kw in zip(prompts[:3], kwargs, strict=True)]
    engine = model.engine(processor=processor, side_threads=0)
    module = sys.modules[type(engine).__module__]  # the remote-code copy of the engine module, if any
    mixed = []

    def recording_forward_packed(causal_lm, feeds):
        lengths = sorted(feed.inputs_embeds.shape[1] for feed in feeds)
        if len(set(lengths)) > 1:
            mixed.append(lengths)
        return forward_packed(causal_lm, feeds)

    forward_packed = module.forward_packed
    monkeypatch.setattr(module, "forward_packed", recording_forward_packed)
    together = run_plan(engine, [(0, prompts[0], kwargs[0]), (3, prompts[1], kwargs[1]), (5, prompts[2], kwargs[2])])
    assert any(lengths[-1] > 1 + model.config.text_span for lengths in mixed)  # a prompt packed with other feeds
    assert any(1 + model.config.text_span in lengths for lengths in mixed)  # a speech-chunk head packed
    for index, (mine, reference) in enumerate(zip(together, alone, strict=True)):
        assert mine["text"] == reference["text"], f"conversation {index}: text ids differ"
        assert mine["speech"] == reference["speech"], f"conversation {index}: decoder ids differ"


def test_rows_in_other_phases_wait_a_bounded_number_of_steps_and_keep_their_ids(tiny, prompts):
    """Once a conversation has its first unit, a single-position forward of an LM whose largest group is elsewhere
    waits (so rows fall in step with the others' text/speech cycle) -- never more than the bound, and ids stay those
    of the conversation alone."""
    model, processor = tiny
    kwargs = {"max_new_tokens": 12, "speech_max_new_tokens": 40, "token2wav": False}
    alone = [solo(tiny, inputs, **kwargs) for inputs in prompts]
    engine = model.engine(processor=processor, side_threads=0)
    bound = sys.modules[type(engine).__module__]._MAX_WAIT_STEPS
    conversations, waits = [], []
    while len(conversations) < len(prompts) or any(not c.done for c in conversations):
        if len(conversations) < len(prompts) and engine.steps == 2 * len(conversations):
            conversations.append(engine.submit(prompts[len(conversations)], **kwargs))
        engine.step()
        waits += [conversation.waited for conversation in engine.active]
    assert 0 < max(waits) <= bound
    for index, (conversation, reference) in enumerate(zip(conversations, alone, strict=True)):
        mine = ids_of(conversation)
        assert mine["text"] == reference["text"], f"conversation {index}: text ids differ"
        assert mine["speech"] == reference["speech"], f"conversation {index}: decoder ids differ"


def test_conversations_fall_in_step_so_llm_forwards_hold_them_all(tiny, prompts, monkeypatch):
    """Four conversations arriving two steps apart with equal budgets (no EOS): once each newcomer has its first unit,
    the schedule brings them to the start of a text chunk together, so the LLM runs about one text budget of forwards
    for all of them (plus each newcomer's first chunk), not one per phase offset; ids stay those alone."""
    model, processor = tiny
    text_eos = model.generation_config.eos_token_id
    speech_eos = model.config.speech_decoder_config.eos_token_id
    budget, span = 24, model.config.text_span
    kwargs = {"max_new_tokens": budget, "speech_max_new_tokens": 80, "token2wav": False}
    kwargs |= {"suppress_tokens": list(np.atleast_1d(text_eos)), "speech_suppress_tokens": [speech_eos]}
    alone = [solo(tiny, inputs, **kwargs) for inputs in prompts]
    engine = model.engine(processor=processor, side_threads=0)
    module = sys.modules[type(engine).__module__]  # the remote-code copy of the engine module, if any
    text_forwards = []

    def recording_forward_packed(causal_lm, feeds):
        if causal_lm is model.language_model:
            text_forwards.append(len(feeds))
        return forward_packed(causal_lm, feeds)

    forward_packed = module.forward_packed
    monkeypatch.setattr(module, "forward_packed", recording_forward_packed)
    together = run_plan(engine, [(2 * index, inputs, kwargs) for index, inputs in enumerate(prompts)])
    assert all(len(result["text"]) == budget for result in together)
    # Out of step, each phase offset runs its own LLM forwards (up to 4 x 24 here); in step, one budget for all, plus
    # at most a first text chunk per newcomer outside the others' phase.
    assert len(text_forwards) <= budget + span * len(prompts)
    assert text_forwards.count(len(prompts)) >= budget - 2 * span
    for index, (mine, reference) in enumerate(zip(together, alone, strict=True)):
        assert mine["text"] == reference["text"], f"conversation {index}: text ids differ"
        assert mine["speech"] == reference["speech"], f"conversation {index}: decoder ids differ"


def test_seeded_sampling_does_not_depend_on_neighbours(tiny, prompts):
    model, processor = tiny
    sampled = {"do_sample": True, "temperature": 0.9, "top_k": 20, "speech_do_sample": True, "token2wav": False}
    budgets = {"max_new_tokens": 8, "speech_max_new_tokens": 24}
    alone = solo(tiny, prompts[1], seed=7, **sampled, **budgets)
    again = solo(tiny, prompts[1], seed=7, **sampled, **budgets)
    assert alone["text"] == again["text"] and alone["speech"] == again["speech"]
    plan = [
        (0, prompts[0], {"seed": 1, **sampled, **budgets}),
        (2, prompts[1], {"seed": 7, **sampled, **budgets}),
        (3, prompts[2], {"seed": 2, **sampled, **budgets}),
    ]
    together = run_plan(model.engine(processor=processor), plan)
    assert together[1]["text"] == alone["text"] and together[1]["speech"] == alone["speech"]
    assert solo(tiny, prompts[1], seed=8, **sampled, **budgets)["speech"] != alone["speech"]


def test_ready_token2wav_chunks_of_several_conversations_render_as_one_batch(tiny, prompts, monkeypatch):
    """Three conversations in step (one prompt, submitted together; other token2wav seeds and voices): their ready
    chunks go through the flow and the vocoder as one batch (checked), each one's ids are those alone and its audio
    is that alone up to float32 rounding (a batch sums in another order: ~1e-7 measured), chunk for chunk."""
    model, processor = tiny
    dim = model.token2wav.config.flow_config.speaker_embedding_dim
    voice = torch.randn(1, dim, generator=torch.Generator().manual_seed(4))
    speech_eos = model.config.speech_decoder_config.eos_token_id
    budgets = {"max_new_tokens": 10, "speech_max_new_tokens": 200, "speech_suppress_tokens": [speech_eos]}
    kwargs = [{"seed": 1}, {"seed": 2}, {"seed": 3, "token2wav_speaker_embedding": voice}]
    kwargs = [{**kw, **budgets} for kw in kwargs]
    alone = [solo(tiny, prompts[0], **kw) for kw in kwargs]
    assert all(len(result["audio"]) >= 3 for result in alone)  # first, doubling and final chunks at least
    engine = model.engine(processor=processor, side_threads=0)
    module = sys.modules[type(engine).__module__]  # the remote-code copy of the engine module, if any
    batch_sizes = []

    def recording_render_chunks(streams):
        batch_sizes.append(len(streams))
        return render_chunks(streams)

    render_chunks = module.render_chunks
    monkeypatch.setattr(module, "render_chunks", recording_render_chunks)
    together = run_plan(engine, [(0, prompts[0], kw) for kw in kwargs])
    assert 3 in batch_sizes
    for index, (mine, reference) in enumerate(zip(together, alone, strict=True)):
        assert mine["text"] == reference["text"] and mine["speech"] == reference["speech"], f"conversation {index}"
        assert [len(chunk) for chunk in mine["audio"]] == [len(chunk) for chunk in reference["audio"]]
        for chunk, expected in zip(mine["audio"], reference["audio"], strict=True):
            np.testing.assert_allclose(chunk, expected, rtol=0, atol=1e-5)
        assert mine["done"].stats.time_to_first_audio is not None
    # Arrivals one step apart, and every feed running at every step (the LM schedule would bring them in step): a
    # ready chunk (after the first) waits a bounded number of steps for the others to reach the same chunk shape, so
    # batches still form; the audio is the same.
    monkeypatch.setattr(type(engine), "_choose", lambda self, feeds, owners: feeds)
    batch_sizes.clear()
    bound = module._MAX_AUDIO_WAIT_STEPS
    conversations, waits = [], []
    while len(conversations) < len(kwargs) or any(not c.done for c in conversations):
        if len(conversations) < len(kwargs):
            conversations.append(engine.submit(prompts[0], **kwargs[len(conversations)]))
        engine.step()
        waits += [conversation.audio_waited for conversation in engine.active]
    assert max(batch_sizes) > 1 and 0 < max(waits) <= bound
    for conversation, reference in zip(conversations, alone, strict=True):
        mine = ids_of(conversation)
        assert mine["speech"] == reference["speech"]
        np.testing.assert_allclose(np.concatenate(mine["audio"]), np.concatenate(reference["audio"]), atol=1e-5)
    # Other seeds and voices really give other audio, so the rows did not share noise or speaker.
    assert not np.allclose(np.concatenate(together[0]["audio"]), np.concatenate(together[1]["audio"]), atol=1e-3)
    assert not np.allclose(np.concatenate(together[1]["audio"]), np.concatenate(together[2]["audio"]), atol=1e-3)


def test_a_newcomers_work_queues_only_for_a_short_wait_and_token2wav_work_for_as_long_as_it_lasts():
    """The side worker's queueing rule, on a worker busy with an encoding measured at 100 s: a newcomer's encoding or
    prompt forward queues when that wait is at most a quarter of its own expected time (an encoding of 2 prompts,
    200 s, runs in its loop instead: the wait would add 100 s to its first unit), a token2wav job when the wait is no
    longer than the job; an idle worker takes any job."""
    worker = SideWorker(threads=1)
    worker.seconds_per_item.update({"audio_encoder": 100.0, "text_prefill": 1.0, "token2wav": 50.0})
    with worker.lock:  # as the worker's thread sets a job it has just started
        worker.running = SideJob(lambda: None, "audio_encoder", 1, owner=None)
        worker.running_since = time.perf_counter()
    assert not worker.accepts("audio_encoder", 2) and worker.accepts("audio_encoder", 5)
    assert not worker.accepts("text_prefill", 200) and worker.accepts("text_prefill", 500)
    assert not worker.accepts("token2wav", 1) and worker.accepts("token2wav", 2)
    with worker.lock:
        worker.running = None
    assert worker.accepts("audio_encoder", 2)


def test_a_prompt_encoded_beside_the_loop_does_not_stall_the_others(tiny, prompts, monkeypatch):
    """With a side worker, a newcomer's prompt is encoded on the worker's thread while the loop goes on decoding the
    others. A prompt that arrives while the worker is busy waits in its queue when the wait it can expect (from the
    seconds the worker measured) is short against its own encoding, else it is encoded in the loop; a conversation
    cancelled while its prompt waits leaves the queue and ends at once; a loop with nothing else to do encodes its
    own queued prompt itself. Ids stay those alone."""
    model, processor = tiny
    kwargs = {"max_new_tokens": 8, "speech_max_new_tokens": 24, "token2wav": False}
    alone = [solo(tiny, inputs, **kwargs) for inputs in prompts]
    engine = model.engine(processor=processor, side_threads=1)
    encode, gate, threads = model.embed_inputs, threading.Event(), {}

    def gated_embed_inputs(input_ids, *args):
        threads[input_ids.shape[1]] = threading.current_thread().name
        if input_ids.shape[1] == prompts[1]["input_ids"].shape[1]:
            assert gate.wait(timeout=60)
        return encode(input_ids, *args)

    def encoded_on(index: int) -> str:
        return threads[prompts[index]["input_ids"].shape[1]]

    monkeypatch.setattr(model, "embed_inputs", gated_embed_inputs)
    first = engine.submit(prompts[0], **kwargs)
    while first.events.qsize() == 0:
        engine.step()
    blocked = engine.submit(prompts[1], **kwargs)
    engine.step()  # offered to the idle worker, which takes it
    while prompts[1]["input_ids"].shape[1] not in threads:
        threading.Event().wait(0.01)
    assert encoded_on(1).startswith("opens2s-side")

    # The worker's measured encoding is far shorter than the time it is running already: encoded in the loop.
    monkeypatch.setitem(engine.side.seconds_per_item, "audio_encoder", 1e-9)
    third = engine.submit(prompts[2], **kwargs)
    before = first.events.qsize()
    for _ in range(6):
        engine.step()
    assert first.events.qsize() > before and third.events.qsize() > 0 and blocked.events.qsize() == 0
    assert not encoded_on(2).startswith("opens2s-side")

    # Encodings measured as long as the wait, and a patience of a whole job (token2wav's): a newcomer queues behind
    # the running one, and leaves when cancelled.
    monkeypatch.setitem(engine.side.seconds_per_item, "audio_encoder", 1e6)
    monkeypatch.setitem(engine.side._PATIENCE, "audio_encoder", 1.0)
    cancelled = engine.submit(prompts[3], **kwargs)
    engine.step()
    assert [job.owner for job in engine.side.queue] == [engine] and cancelled.job in engine.side.queue
    cancelled.cancel()
    assert [event.kind for event in cancelled][-1] == "done" and not engine.side.queue

    # The loop encodes a queued newcomer itself once the others are done and it has nothing else to decode.
    late = engine.submit(prompts[3], **kwargs)
    engine.step()
    assert late.job in engine.side.queue
    results = {0: ids_of(first), 2: ids_of(third), 3: ids_of(late)}
    assert not encoded_on(3).startswith("opens2s-side") and blocked.events.qsize() == 0
    gate.set()
    results[1] = ids_of(blocked)
    for index, mine in results.items():
        reference = alone[index]
        assert mine["text"] == reference["text"] and mine["speech"] == reference["speech"], f"conversation {index}"


def test_a_prompt_forward_runs_beside_the_loop_while_the_others_decode(tiny, prompts, monkeypatch):
    """A prompt encoded in the loop (the worker was busy) has its LLM forward queued on the side worker, which runs
    it without the model's forward lock while the loop goes on decoding the others (checked: that forward is held
    on the worker's thread for several steps); a conversation cancelled while its prompt forward waits leaves the
    queue. Ids stay those alone."""
    model, processor = tiny
    kwargs = {"max_new_tokens": 8, "speech_max_new_tokens": 24, "token2wav": False}
    alone = [solo(tiny, inputs, **kwargs) for inputs in prompts[:3]]
    engine = model.engine(processor=processor, side_threads=1)
    module = sys.modules[type(engine).__module__]
    forward_packed, gate, prompt_threads = module.forward_packed, threading.Event(), []

    def gated_forward_packed(causal_lm, feeds):
        if feeds[0].stage == "text_prefill":
            prompt_threads.append(threading.current_thread().name)
            if prompt_threads[-1].startswith("opens2s-side"):
                assert gate.wait(timeout=60)
        return forward_packed(causal_lm, feeds)

    monkeypatch.setattr(module, "forward_packed", gated_forward_packed)
    first = engine.submit(prompts[0], **kwargs)
    while first.events.qsize() == 0:
        engine.step()
    # Encodings stay in the loop, prompt forwards go to the worker.
    monkeypatch.setattr(engine.side, "accepts", lambda kind, items: kind == "text_prefill")
    newcomer = engine.submit(prompts[1], **kwargs)
    engine.step()
    assert newcomer.job is not None and newcomer.job.kind == "text_prefill" and newcomer.request is None
    for _ in range(1000):  # the worker's thread takes the job (and stops at the gate) within 10 s
        if any(name.startswith("opens2s-side") for name in prompt_threads):
            break
        threading.Event().wait(0.01)
    assert prompt_threads[-1].startswith("opens2s-side")
    before = first.events.qsize()
    for _ in range(4):
        engine.step()
    assert first.events.qsize() > before and newcomer.events.qsize() == 0 and not newcomer.job.future.done()

    cancelled = engine.submit(prompts[2], **kwargs)
    engine.step()
    assert cancelled.job in engine.side.queue and cancelled.job.kind == "text_prefill"
    cancelled.cancel()
    assert [event.kind for event in cancelled][-1] == "done" and cancelled.job not in engine.side.queue
    gate.set()
    late = engine.submit(prompts[2], **kwargs)
    results = {0: ids_of(first), 1: ids_of(newcomer), 2: ids_of(late)}
    for index, mine in results.items():
        reference = alone[index]
        assert mine["text"] == reference["text"] and mine["speech"] == reference["speech"], f"conversation {index}"


def test_the_side_worker_changes_no_id_and_no_audio(tiny, prompts):
    """Three conversations arriving a step apart, with token2wav, with and without the side worker (prompts and
    chunks rendered beside the loop): the same ids, and the same audio chunk for chunk up to float32 rounding (the
    chunks may share other batches)."""
    model, processor = tiny
    speech_eos = model.config.speech_decoder_config.eos_token_id
    budgets = {"max_new_tokens": 10, "speech_max_new_tokens": 120, "speech_suppress_tokens": [speech_eos]}
    plan = [(step, prompts[step], {"seed": step, **budgets}) for step in range(3)]
    results = [run_plan(model.engine(processor=processor, side_threads=threads), plan) for threads in (0, 1)]
    for index, (inline, beside) in enumerate(zip(*results, strict=True)):
        assert inline["text"] == beside["text"] and inline["speech"] == beside["speech"], f"conversation {index}"
        assert [len(chunk) for chunk in inline["audio"]] == [len(chunk) for chunk in beside["audio"]]
        assert len(beside["audio"]) >= 2
        np.testing.assert_allclose(np.concatenate(beside["audio"]), np.concatenate(inline["audio"]), atol=1e-5)


def test_cancel_frees_the_row_and_leaves_the_others_untouched(tiny, prompts):
    model, processor = tiny
    kwargs = {"max_new_tokens": 10, "speech_max_new_tokens": 40, "token2wav": False}
    alone = solo(tiny, prompts[0], **kwargs)
    engine = model.engine(processor=processor)
    keep, victim = engine.submit(prompts[0], **kwargs), engine.submit(prompts[1], **kwargs)
    for _ in range(5):
        engine.step()
    cache = weakref.ref(victim.interleaver.text.cache)
    victim.cancel()
    gc.collect()
    assert victim.done and victim.interleaver is None and cache() is None
    assert engine.stats()["active"] == 1
    events = list(victim)
    assert events[-1].kind == "done" and events[-1].stats.text_stop_reason == "cancelled"
    mine = ids_of(keep)
    assert mine["text"] == alone["text"] and mine["speech"] == alone["speech"]


def test_a_full_engine_refuses_with_a_named_error(tiny, prompts):
    model, processor = tiny
    engine = model.engine(processor=processor, max_active=1, max_queued=1)
    first = engine.submit(prompts[0], max_new_tokens=2, token2wav=False)
    engine.submit(prompts[1], max_new_tokens=2, token2wav=False)
    assert engine.stats()["queued"] == 2
    # A remote-code model has its own copy of the class: catch the RuntimeError base and check the name.
    with pytest.raises(RuntimeError, match="max_active=1.*max_queued=1") as error:
        engine.submit(prompts[2], max_new_tokens=2, token2wav=False)
    assert type(error.value).__name__ == "EngineFull"
    engine.step()
    assert engine.stats()["active"] == 1 and engine.stats()["queued"] == 1
    first.cancel()
    engine.submit(prompts[2], max_new_tokens=2, token2wav=False)  # a slot was freed


def test_background_thread_serves_conversations_from_other_threads(tiny, prompts):
    model, processor = tiny
    kwargs = {"max_new_tokens": 6, "speech_max_new_tokens": 20, "token2wav": False}
    alone = [solo(tiny, inputs, **kwargs) for inputs in prompts[:3]]
    results = [None] * 3
    with model.engine(processor=processor) as engine:

        def client(index):
            results[index] = ids_of(engine.submit(prompts[index], **kwargs))

        threads = [threading.Thread(target=client, args=(index,)) for index in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    for mine, reference in zip(results, alone, strict=True):
        assert mine["text"] == reference["text"] and mine["speech"] == reference["speech"]


def test_two_threads_streaming_on_one_model_give_each_ones_ids_alone(tiny, prompts):
    """Two `model.stream` calls at once from two threads (two engines on one model, as two web requests would run
    them): their forwards take turns on the model, and each answer's ids, speech included, equal that answer alone."""
    model, processor = tiny
    voice = torch.randn(model.config.speaker_embedding_dim, generator=torch.Generator().manual_seed(3))
    kwargs = [
        {"max_new_tokens": 8, "speech_max_new_tokens": 30, "seed": 0},
        {"max_new_tokens": 6, "speech_max_new_tokens": 24, "seed": 0, "speaker_embedding": voice},
    ]
    alone = [solo(tiny, prompts[index], **kwargs[index]) for index in range(2)]
    results, errors, barrier = [None, None], [], threading.Barrier(2)

    def client(index):
        try:
            barrier.wait()
            results[index] = ids_of(model.stream(**prompts[index], processor=processor, **kwargs[index]))
        except BaseException as error:  # noqa: BLE001 - reported by the test's own thread
            errors.append(error)

    threads = [threading.Thread(target=client, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, f"a concurrent stream failed: {errors[0]!r}"
    for mine, reference in zip(results, alone, strict=True):
        assert mine["text"] == reference["text"] and mine["speech"] == reference["speech"]
        assert len(mine["audio"]) == len(reference["audio"]) >= 1
        for chunk, expected in zip(mine["audio"], reference["audio"], strict=True):
            np.testing.assert_array_equal(chunk, expected)


def test_batched_speech_generate_equals_generate_per_prompt(tiny):
    model, processor = tiny
    waveform = load_audio(EXAMPLE_WAV, sampling_rate=16000)
    questions = [waveform, waveform[: len(waveform) // 2]]
    kwargs = {"processor": processor, "max_new_tokens": 7, "speech_max_new_tokens": 30, "seed": 0}
    batch = conversation_inputs(processor, questions, sampling_rate=16000)
    assert batch["input_ids"].shape[0] == 2
    together = model.generate(**batch, **kwargs)
    for row, question in enumerate(questions):
        inputs = conversation_inputs(processor, question, sampling_rate=16000)
        alone = model.generate(**inputs, **kwargs)
        prompt_length = inputs["input_ids"].shape[1]
        new_ids = together.sequences[row, batch["input_ids"].shape[1] :][: alone.sequences.shape[1] - prompt_length]
        assert new_ids.tolist() == alone.sequences[0, prompt_length:].tolist()
        units = together.unit_sequences[row, : together.unit_lengths[row]]
        assert units.tolist() == alone.unit_sequences[0].tolist()
        audio = together.audio_values[row, : together.audio_lengths[row]]
        assert torch.equal(audio, alone.audio_values[0])
    assert together.stats is None and len(together.row_stats) == 2


def test_speech_generate_takes_standard_sampling_arguments(tiny, prompts):
    model, processor = tiny
    kwargs = {"processor": processor, "max_new_tokens": 6, "speech_max_new_tokens": 12, "token2wav": False}
    sampled = {"do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 10, "repetition_penalty": 1.1}
    first = model.generate(**prompts[0], **kwargs, **sampled, seed=5)
    second = model.generate(**prompts[0], **kwargs, **sampled, seed=5)
    assert torch.equal(first.sequences, second.sequences)
    greedy = model.generate(**prompts[0], **kwargs)
    hot = model.generate(**prompts[0], **kwargs, do_sample=True, temperature=50.0, seed=5)
    assert not torch.equal(greedy.sequences, hot.sequences)
    for unsupported in ({"num_beams": 2}, {"assistant_model": model}, {"penalty_alpha": 0.6}):
        with pytest.raises(ValueError, match="return_speech=False"):
            model.generate(**prompts[0], **kwargs, **unsupported)
    with pytest.raises(TypeError, match="unexpected arguments"):
        model.generate(**prompts[0], **kwargs, not_an_argument=1)
