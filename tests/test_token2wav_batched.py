"""Batched token2wav streaming: `render_chunks` renders the ready chunks of several `BlockStream`s as one batch, and
each stream's audio equals the same stream rendered alone (`push`/`finish`) up to float32 rounding.

The tolerance: a stream rendered in a batch of 3 differs from it alone by at most 1.4e-7 (tiny decoder, 157 units,
CPU float32; 1.2e-7 on the full-size decoder's first chunk), from the stacked kernels' summation order. 1e-5 is ~70x
that noise and still below one 16-bit sample step (3e-5), so a real error (a stream's noise, phase or context mixed
up with another's) cannot pass.
"""

import pytest
import torch

from opens2s.conversion.tiny import build_tiny_token2wav_config
from opens2s.modeling_opens2s import modeling_token2wav_streaming
from opens2s.modeling_opens2s.modeling_token2wav import OpenS2SToken2Wav
from opens2s.modeling_opens2s.modeling_token2wav_streaming import BlockStream, finish_streams, render_chunks


pytestmark = pytest.mark.usefixtures("single_thread")

BATCH_ATOL = 1e-5


def tiny_token2wav(seed: int = 0) -> OpenS2SToken2Wav:
    """The tiny default decoder (encoder blocks of 10 units: chunks of 10, 20, then 40 units) with 4 ODE steps
    instead of 10 (same schedule, faster)."""
    config = build_tiny_token2wav_config()
    config.flow_config.num_timesteps = 4
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return OpenS2SToken2Wav(config).eval()


@pytest.fixture(scope="module")
def model() -> OpenS2SToken2Wav:
    return tiny_token2wav()


def random_units(model: OpenS2SToken2Wav, count: int, seed: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.config.vocab_size, (count,), generator=generator).tolist()


def start(model: OpenS2SToken2Wav, seed: int, speaker_embedding: torch.Tensor | None = None) -> BlockStream:
    return model.start_stream(speaker_embedding=speaker_embedding, generator=torch.Generator().manual_seed(seed))


def test_batched_chunks_equal_each_stream_alone(model):
    """Three streams (different units, seeds, one with a speaker embedding) fed one unit at a time and rendered
    together whenever ready: chunks of 10, 20, 40, 40 units, then `finish` with the 17 left."""
    count = 127
    speaker = torch.randn(
        1, model.config.flow_config.speaker_embedding_dim, generator=torch.Generator().manual_seed(5)
    )
    settings = [(11, speaker), (12, None), (13, None)]
    units = [random_units(model, count, seed=seed) for seed in (1, 2, 3)]

    alone = []
    for (seed, embedding), stream_units in zip(settings, units, strict=True):
        stream, chunks = start(model, seed, embedding), []
        for unit in stream_units:
            rendered = len(stream.costs)
            audio = stream.push([unit])
            if len(stream.costs) > rendered:
                chunks.append(audio)
        chunks.append(stream.finish())
        alone.append((stream, chunks))

    streams = [start(model, seed, embedding) for seed, embedding in settings]
    batched, chunk_units = [[] for _ in streams], []
    for position in range(count):
        for stream, stream_units in zip(streams, units, strict=True):
            stream.add(stream_units[position : position + 1])
        assert len({stream.ready for stream in streams}) == 1
        if streams[0].ready:
            chunk_units.append(streams[0].next_chunk_units)
            assert len({stream.batch_key() for stream in streams}) == 1
            for chunks, audio in zip(batched, render_chunks(streams), strict=True):
                chunks.append(audio)
    for chunks, stream in zip(batched, streams, strict=True):
        chunks.append(stream.finish())

    assert chunk_units == [10, 20, 40, 40]
    for (solo, solo_chunks), stream, chunks in zip(alone, streams, batched, strict=True):
        assert [chunk.shape for chunk in chunks] == [chunk.shape for chunk in solo_chunks]
        torch.testing.assert_close(torch.cat(chunks, dim=-1), torch.cat(solo_chunks, dim=-1), rtol=0, atol=BATCH_ATOL)
        assert stream.costs == solo.costs
        assert (stream.rendered_units, stream.played_frames) == (solo.rendered_units, solo.played_frames)
    # The streams really differ (so a mixed-up row would show): distinct audio per stream.
    first, second = (torch.cat(chunks, dim=-1) for chunks in batched[:2])
    assert (first - second).abs().max() > 100 * BATCH_ATOL


def test_last_chunks_of_one_shape_finish_as_one_batch(model, monkeypatch):
    """`finish_streams`: three streams with 57 units each (chunks of 10, 20 rendered, 27 left) finish their last
    chunks in one flow + vocoder call, each equal to its own `finish()`; a fourth with another count left finishes
    in a call of its own; a stream with a ready chunk renders it first, as `finish()` does."""
    counts, seeds = [57, 57, 57, 52], [21, 22, 23, 24]
    units = [random_units(model, count, seed=seed) for count, seed in zip(counts, seeds, strict=True)]
    alone = []
    for seed, stream_units in zip(seeds, units, strict=True):
        stream = start(model, seed)
        alone.append(torch.cat([stream.push(stream_units), stream.finish()], dim=-1))
    streams = [start(model, seed) for seed in seeds]
    played = [stream.push(stream_units[:30]) for stream, stream_units in zip(streams, units, strict=True)]
    for stream, stream_units in zip(streams, units, strict=True):
        stream.add(stream_units[30:])  # 27 or 22 units: short of the next chunk (40), so the last chunk
    streams.append(start(model, 25))
    extra = random_units(model, 45, seed=25)  # chunks of 10 and 20 ready when finishing, then 15 left
    streams[-1].add(extra)
    reference = start(model, 25)
    alone.append(torch.cat([reference.push(extra), reference.finish()], dim=-1))
    played.append(torch.zeros(1, 0))
    calls = []
    render = modeling_token2wav_streaming._render

    def recording_render(batch, num_units, final):
        calls.append((len(batch), num_units, final))
        return render(batch, num_units, final)

    monkeypatch.setattr(modeling_token2wav_streaming, "_render", recording_render)
    finished = finish_streams(streams)
    assert sorted(call for call in calls if call[2]) == [(1, 15, True), (1, 22, True), (3, 27, True)]
    for index, (first, last, expected) in enumerate(zip(played, finished, alone, strict=True)):
        torch.testing.assert_close(torch.cat([first, last], dim=-1), expected, rtol=0, atol=BATCH_ATOL, msg=str(index))
    with pytest.raises(ValueError, match="appears twice"):
        finish_streams([streams[0], streams[0]])


def test_render_chunks_refuses_what_cannot_batch(model):
    """A stream at its first chunk and one at its steady chunk have different shapes; a stream not ready has no
    chunk; a stream twice would render one state twice; another model cannot share the network calls. Nothing is
    rendered when refused."""
    first = start(model, 1)
    first.add(random_units(model, 10, seed=1))
    steady = start(model, 2)
    steady.push(random_units(model, 30, seed=2))  # chunks of 10 and 20 rendered; the next one is 40 units
    steady.add(random_units(model, 40, seed=3))
    assert first.ready and steady.ready and first.batch_key() != steady.batch_key()
    with pytest.raises(ValueError, match="batch key differs.*new_units 10 vs 40"):
        render_chunks([first, steady])

    waiting = start(model, 3)
    waiting.add(random_units(model, 9, seed=4))
    assert not waiting.ready
    with pytest.raises(ValueError, match="stream 1 is not ready"):
        render_chunks([first, waiting])
    with pytest.raises(ValueError, match="appears twice"):
        render_chunks([first, first])

    other = start(tiny_token2wav(seed=1), 1)
    other.add(random_units(model, 10, seed=1))
    with pytest.raises(ValueError, match="batch key differs.*model"):
        render_chunks([first, other])
    assert (first.rendered_units, first.costs) == (0, [])


def test_push_is_add_then_render_chunks_alone(model):
    """`push` returns exactly (bit for bit) what `add` + `render_chunks([stream])` while ready give, including pushes
    that complete no chunk or two chunks at once."""
    units = random_units(model, 95, seed=6)
    pushed, driven = start(model, 7), start(model, 7)
    for begin in range(0, len(units), 33):
        piece = units[begin : begin + 33]
        audio = pushed.push(piece)
        driven.add(piece)
        chunks = [torch.zeros(1, 0)]
        while driven.ready:
            chunks.extend(render_chunks([driven]))
        assert torch.equal(audio, torch.cat(chunks, dim=-1))
    assert torch.equal(pushed.finish(), driven.finish())
    assert pushed.costs == driven.costs and len(pushed.costs) == 4
