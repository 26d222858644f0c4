"""Behaviour of OpenS2SForConditionalGeneration on tiny random configs built in code."""

import pytest
import torch
from safetensors.torch import load_file

from opens2s.modeling_opens2s.audio_lengths_opens2s import audio_embedding_lengths
from opens2s.modeling_opens2s.configuration_opens2s import OpenS2SConfig, parse_interleave_strategy
from opens2s.modeling_opens2s.modeling_opens2s import OpenS2SForConditionalGeneration, OpenS2SModel


AUDIO_TOKEN_ID = 60  # last id of the 61-token tiny text vocabulary


class OpenS2SModelTester:
    """Builds a tiny config (hidden sizes 16-32, 1 layer, vocab <= 64) and matching inputs.

    One audio of `num_samples` at 16 kHz gives ceil(num_samples / 160) mel frames; the encoder halves that twice
    (conv stride 2, avg-pool 2) and the two adapter convs halve it twice more: 2.0 s -> 200 -> 50 -> 13 positions.
    """

    def __init__(self, text_span: int = 2, speech_span: int = 3):
        self.config = OpenS2SConfig(
            audio_config={"d_model": 16, "encoder_layers": 1, "encoder_attention_heads": 2, "encoder_ffn_dim": 32},
            text_config={
                "vocab_size": 61,
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "num_key_value_heads": 1,
                "head_dim": 16,
                "sliding_window": None,
            },
            speech_decoder_config={
                "vocab_size": 40,
                "hidden_size": 16,
                "intermediate_size": 32,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "num_key_value_heads": 1,
                "head_dim": 8,
                "sliding_window": None,
            },
            adapter_inner_dim=24,
            text_span=text_span,
            speech_span=speech_span,
            speaker_embedding_dim=8,
            audio_token_id=AUDIO_TOKEN_ID,
        )

    def features(self, seconds: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
        frames = [int(s * 100) for s in seconds]
        window = 3000 * max(1 + (f - 1) // 3000 for f in frames)
        features = torch.randn(len(frames), 128, window)
        mask = (torch.arange(window)[None, :] < torch.tensor(frames)[:, None]).long()
        return features, mask

    def inputs(self, seconds: list[float], audios_per_row: list[int]) -> dict:
        features, mask = self.features(seconds)
        counts = iter(audio_embedding_lengths(mask.sum(-1), 2).tolist())
        rows = []
        for num_audios in audios_per_row:
            row = [1, 2, 3]
            for _ in range(num_audios):
                row += [4] + [AUDIO_TOKEN_ID] * next(counts) + [5]
            rows.append(row + [6, 7, 8, 9, 10, 11])
        width = max(map(len, rows))
        input_ids = torch.tensor([row + [0] * (width - len(row)) for row in rows])
        attention_mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows])
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "input_features": features,
            "feature_attention_mask": mask,
        }


@pytest.fixture(scope="module")
def tester():
    return OpenS2SModelTester()


@pytest.fixture(scope="module")
def model(tester):
    torch.manual_seed(0)
    return OpenS2SForConditionalGeneration(tester.config).eval()


def test_interleave_strategy_strings():
    assert parse_interleave_strategy("4:8") == (4, 8)
    with pytest.raises(ValueError, match="M:N"):
        parse_interleave_strategy("4-8")


def test_config_rejects_bad_spans():
    with pytest.raises(Exception, match="text_span and speech_span must be >= 1"):
        OpenS2SConfig(text_span=0)


def test_valid_multi_audio_prompt_passes(model, tester):
    inputs = tester.inputs([2.0, 1.3, 0.7], audios_per_row=[2, 1])
    with torch.no_grad():
        output = model(**inputs)
    assert output.logits.shape == (*inputs["input_ids"].shape, 61)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param("drop_audio", id="one-audio-fewer-than-placeholders"),
        pytest.param("add_audio", id="one-audio-more-than-placeholders"),
        pytest.param("double_text", id="placeholders-twice"),
    ],
)
def test_mismatching_number_of_audio_tokens(model, tester, change):
    inputs = tester.inputs([2.0, 1.3], audios_per_row=[1, 1])
    if change == "drop_audio":
        inputs["input_features"] = inputs["input_features"][:1]
        inputs["feature_attention_mask"] = inputs["feature_attention_mask"][:1]
    elif change == "add_audio":
        extra, extra_mask = tester.features([1.0])
        inputs["input_features"] = torch.cat([inputs["input_features"], extra])
        inputs["feature_attention_mask"] = torch.cat([inputs["feature_attention_mask"], extra_mask])
    else:
        inputs["input_ids"] = torch.cat([inputs["input_ids"], inputs["input_ids"]], dim=1)
        inputs["attention_mask"] = torch.cat([inputs["attention_mask"], inputs["attention_mask"]], dim=1)
    with pytest.raises(ValueError, match="placeholder tokens in input_ids"):
        model(**inputs)


def test_placeholders_without_audio_raise(model, tester):
    inputs = tester.inputs([1.0], audios_per_row=[1])
    with pytest.raises(ValueError, match="no input_features"):
        model(input_ids=inputs["input_ids"])


def test_long_audio_is_encoded_in_30s_windows(model, tester):
    """A 45 s audio: the encoder sees two windows and the frames of both land in the LLM input."""
    inputs = tester.inputs([45.0], audios_per_row=[1])
    assert inputs["input_features"].shape[-1] == 6000
    with torch.no_grad():
        lengths = model.get_audio_features(inputs["input_features"], inputs["feature_attention_mask"]).audio_lengths
        output = model(**inputs)
    assert lengths.tolist() == audio_embedding_lengths(torch.tensor([4500]), 2).tolist() == [282]
    assert output.logits.shape[1] == inputs["input_ids"].shape[1]


def test_adapter_sees_the_batch_longest_audio(model, tester):
    """Original quirk kept for parity (`docs/original_behaviour.md#ob-llm-8`): the adapter runs over encoder frames
    padded to the batch's longest audio, so a short audio's last frames (those whose receptive field crosses its end)
    depend on what it is batched with; the earlier frames do not."""
    features, mask = tester.features([1.0, 4.0])
    with torch.no_grad():
        alone = model.get_audio_features(features[:1], mask[:1])
        batched = model.get_audio_features(features, mask).pooler_output
    length = int(alone.audio_lengths[0])
    alone = alone.pooler_output
    torch.testing.assert_close(batched[0, : length - 2], alone[0, : length - 2], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(batched[0, length - 2 : length], alone[0, length - 2 : length], atol=1e-4)


def speech_batch(tester, span_length: int = 5, units: int = 7) -> dict:
    inputs = tester.inputs([1.0], audios_per_row=[1])
    width = inputs["input_ids"].shape[1]
    span = torch.zeros(1, width, dtype=torch.long)
    span[0, width - span_length - 1 : width - 1] = 1
    inputs["labels"] = torch.where(span.bool(), inputs["input_ids"], -100)
    inputs["speech_span_mask"] = span
    inputs["speech_units"] = torch.randint(3, 40, (1, units))
    inputs["speech_units_mask"] = torch.ones(1, units, dtype=torch.long)
    return inputs


def test_speech_layout_interleaves_text_and_units(model, tester):
    """M=2, N=3, 5 text rows, 7 units: [spk] t t u u u t t u u u t u (the units run out of text at the end)."""
    inputs = speech_batch(tester)
    with torch.no_grad():
        output = model(**inputs)
    labels = output.speech_labels[0].tolist()
    is_unit = [label != -100 for label in labels]
    assert is_unit == [False, False, False, True, True, True, False, False, True, True, True, False, True]
    assert [label for label in labels if label != -100] == inputs["speech_units"][0].tolist()
    assert output.speech_logits.shape == (1, 13, 40)
    torch.testing.assert_close(output.loss, output.text_loss + output.speech_loss)


def test_span_ending_a_row_is_kept(model, tester):
    """Unlike the original's token-type difference trick, a speech span at the very end of a row is still found."""
    inputs = speech_batch(tester)
    inputs["speech_span_mask"] = torch.roll(inputs["speech_span_mask"], 1, dims=1)
    with torch.no_grad():
        output = model(**inputs)
    assert output.speech_logits.shape[0] == 1


def test_span_count_must_match_unit_rows(model, tester):
    inputs = speech_batch(tester)
    inputs["speech_units"] = inputs["speech_units"].repeat(2, 1)
    inputs["speech_units_mask"] = inputs["speech_units_mask"].repeat(2, 1)
    with pytest.raises(ValueError, match="1 speech turns but speech_units has 2 rows"):
        model(**inputs)


def test_speaker_embedding_changes_the_speech_logits(model, tester):
    inputs = speech_batch(tester)
    with torch.no_grad():
        silent = model(**inputs).speech_logits
        voiced = model(**inputs, speaker_embeddings=torch.randn(1, 8)).speech_logits
    assert not torch.allclose(silent, voiced)


def test_text_only_generation_is_generation_mixin(model, tester):
    """`return_speech=False` is plain `GenerationMixin.generate` (batched, KV-cached, returns ids)."""
    inputs = tester.inputs([1.0, 0.5], audios_per_row=[1, 1])
    # Random weights may pick the audio placeholder, which is never an answer token (it needs audio features).
    settings = {"max_new_tokens": 5, "do_sample": False, "pad_token_id": 0, "suppress_tokens": [AUDIO_TOKEN_ID]}
    generated = model.generate(**inputs, return_speech=False, **settings)
    assert generated.shape == (2, inputs["input_ids"].shape[1] + 5)


def test_gradients_reach_every_trained_part(model, tester):
    model.train()
    try:
        output = model(**speech_batch(tester))
        output.loss.backward()
        for name in (
            "audio_adapter.fc1.weight",
            "language_model.lm_head.weight",
            "speech_decoder.lm_head.weight",
            "hidden_projection.weight",
            "speaker_norm.bias",
            "audio_encoder.conv1.weight",
        ):
            assert model.get_parameter(name).grad is not None, name
    finally:
        model.zero_grad()
        model.eval()


@pytest.mark.parametrize("dtype", [pytest.param(torch.float32, id="fp32"), pytest.param(torch.bfloat16, id="bf16")])
def test_save_and_load_round_trip(model, tester, tmp_path, dtype):
    model.save_pretrained(tmp_path)
    reloaded = OpenS2SForConditionalGeneration.from_pretrained(tmp_path, dtype=dtype).eval()
    assert reloaded.dtype == dtype
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[name], tensor.to(dtype), atol=0, rtol=0)
    inputs = tester.inputs([1.0], audios_per_row=[1])
    with torch.no_grad():
        logits = reloaded(**inputs).logits
    assert logits.dtype == dtype and torch.isfinite(logits.float()).all()


# ---------------------------------------------------------------- base model and checkpoint layout
def test_base_model_is_the_backbone_without_heads(model, tester):
    assert isinstance(model.base_model, OpenS2SModel) and model.base_model is model.model
    assert model.get_decoder() is model.model.language_model and model.get_output_embeddings() is model.lm_head
    inputs = tester.inputs([1.0, 2.0], audios_per_row=[1, 1])
    with torch.no_grad():
        hidden = model.model(**inputs).last_hidden_state
        output = model(**inputs)
    torch.testing.assert_close(output.last_hidden_state, hidden, atol=0, rtol=0)
    torch.testing.assert_close(output.logits, model.lm_head(hidden), atol=0, rtol=0)


def test_language_model_is_the_llm_as_a_causal_lm_of_the_same_modules(model):
    causal_lm = model.language_model
    assert causal_lm.model is model.model.language_model and causal_lm.lm_head is model.lm_head
    assert model.language_model is causal_lm  # one object: the engine keeps state on it
    assert model.audio_encoder is model.model.audio_encoder and model.audio_adapter is model.model.audio_adapter
    assert not any(name.startswith("_language_model_view") for name in model.state_dict())


def test_checkpoints_keep_the_names_of_earlier_versions(model, tmp_path):
    """Saved keys are those of folders written before `OpenS2SModel` (the LLM as `language_model.model.*` and
    `language_model.lm_head.*`, the audio parts at the top): older code reads new folders and this code old ones."""
    model.save_pretrained(tmp_path / "new")
    keys = set(load_file(tmp_path / "new" / "model.safetensors"))
    assert "language_model.lm_head.weight" in keys and "language_model.model.embed_tokens.weight" in keys
    assert "audio_adapter.fc1.weight" in keys and "audio_encoder.conv1.weight" in keys
    assert not any(key.startswith(("model.", "lm_head.")) for key in keys)
    # A folder with those keys loads into the new layout, every weight in place.
    reloaded, info = OpenS2SForConditionalGeneration.from_pretrained(tmp_path / "new", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[name], tensor, atol=0, rtol=0)
    # `Trainer` resumes with `load_state_dict` on the saved keys.
    fresh = OpenS2SForConditionalGeneration(model.config)
    result = fresh.load_state_dict(load_file(tmp_path / "new" / "model.safetensors"))
    assert not result.missing_keys and not result.unexpected_keys
    torch.testing.assert_close(fresh.lm_head.weight, model.lm_head.weight, atol=0, rtol=0)
