"""OpenS2S behaves as a transformers model: saving keeps the voice, forward honours the standard
arguments, the loss honours gradient accumulation, batched text generation is right whatever the padding."""

import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from test_model import OpenS2SModelTester
from transformers import AutoModel, AutoModelForMultimodalLM, AutoProcessor, GenerationConfig, pipeline

from opens2s.modeling_opens2s.audio_lengths_opens2s import audio_embedding_lengths
from opens2s.modeling_opens2s.modeling_opens2s import OpenS2SForConditionalGeneration, left_padded
from opens2s.modeling_opens2s.saving_opens2s import TOKEN2WAV_SUBFOLDER
from opens2s.modeling_opens2s.streaming_opens2s import SPEECH_GENERATION_CONFIG_NAME
from opens2s.processing.chat import EXAMPLE_WAV


@pytest.fixture(scope="module")
def tester():
    return OpenS2SModelTester()


@pytest.fixture(scope="module")
def model(tester):
    torch.manual_seed(0)
    return OpenS2SForConditionalGeneration(tester.config).eval()


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return AutoModel.from_pretrained(tiny_model_dir, trust_remote_code=True).eval()


# ---------------------------------------------------------------- 1, 6, 11: a saved folder is whole
def test_saved_folder_speaks_like_the_one_loaded(tiny, tiny_model_dir, tmp_path):
    out = tmp_path / "saved"
    tiny.save_pretrained(out)
    assert not [p for p in tmp_path.iterdir() if p.name != "saved"], "the staging folder is left behind"
    reloaded = AutoModelForMultimodalLM.from_pretrained(out, trust_remote_code=True).eval()
    assert type(reloaded).__name__ == "OpenS2SForConditionalGeneration"
    for name, tensor in tiny.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name
    assert reloaded.generation_config.to_diff_dict() == tiny.generation_config.to_diff_dict()
    loaded_speech = GenerationConfig.from_pretrained(tiny_model_dir, config_file_name=SPEECH_GENERATION_CONFIG_NAME)
    saved_speech = GenerationConfig.from_pretrained(out, config_file_name=SPEECH_GENERATION_CONFIG_NAME)
    assert saved_speech.suppress_tokens == loaded_speech.suppress_tokens and saved_speech.suppress_tokens
    assert saved_speech.max_new_tokens == loaded_speech.max_new_tokens
    decoder = reloaded.attach_token2wav()
    original = AutoModel.from_pretrained(tiny_model_dir / TOKEN2WAV_SUBFOLDER, trust_remote_code=True)
    for name, tensor in original.state_dict().items():
        assert torch.equal(decoder.state_dict()[name], tensor), name
    processor = AutoProcessor.from_pretrained(out, trust_remote_code=True)
    assert processor.num_units == AutoProcessor.from_pretrained(tiny_model_dir, trust_remote_code=True).num_units


def test_attached_token2wav_is_saved(tiny, tiny_model_dir, tmp_path):
    """A model that never saw a folder on disk (moved, renamed) still saves the decoder it speaks with."""
    model = AutoModel.from_pretrained(tiny_model_dir, trust_remote_code=True)
    decoder = model.attach_token2wav()
    model.config.name_or_path = str(tmp_path / "gone")
    model.save_pretrained(tmp_path / "out")
    saved = AutoModel.from_pretrained(tmp_path / "out" / TOKEN2WAV_SUBFOLDER, trust_remote_code=True)
    for name, tensor in decoder.state_dict().items():
        assert torch.equal(saved.state_dict()[name], tensor), name


def test_save_into_a_folder_keeps_other_files(tiny, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "trainer_state.json").write_text("{}")
    tiny.save_pretrained(out)
    assert (out / "trainer_state.json").exists() and (out / "model.safetensors").exists()
    assert (out / SPEECH_GENERATION_CONFIG_NAME).exists() and (out / TOKEN2WAV_SUBFOLDER / "config.json").exists()


def test_model_card_front_matter(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "card")
    text = (tmp_path / "card" / "README.md").read_text()
    front = yaml.safe_load(text.split("---")[1])
    assert front["library_name"] == "transformers"
    assert front["pipeline_tag"] == "any-to-any"
    assert front["license"] == "apache-2.0"
    assert {"opens2s", "speech-to-speech"} <= set(front["tags"])
    assert "attach_token2wav" in text and "from_pretrained" in text


def test_auto_classes_and_attention_claims(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "auto")
    auto_map = json.loads((tmp_path / "auto" / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModel"] == auto_map["AutoModelForMultimodalLM"]
    assert OpenS2SForConditionalGeneration._supports_flex_attn is False


# ---------------------------------------------------------------- 2, 3, 4, 5: the standard forward arguments
def test_forward_returns_hidden_states_attentions_and_tuples(tester):
    config = tester.config
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = OpenS2SForConditionalGeneration(config).eval()
    inputs = tester.inputs([1.0, 2.0], [1, 1])
    with torch.no_grad():
        output = model(**inputs, output_hidden_states=True, output_attentions=True)
        as_tuple = model(**inputs, return_dict=False)
    layers = config.text_config.num_hidden_layers
    assert len(output.hidden_states) == layers + 1 and len(output.attentions) == layers
    assert output.attentions[0].shape[-1] == inputs["input_ids"].shape[1]
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], output.logits)


@pytest.mark.parametrize("name", [pytest.param("cache", id="cache"), pytest.param("past_key_values", id="pkv")])
def test_forward_continues_from_a_filled_cache(model, tester, name):
    inputs = tester.inputs([1.0], [1])
    split = inputs["input_ids"].shape[1] - 3
    with torch.no_grad():
        full = model(**inputs).logits
        prefix = model(
            input_ids=inputs["input_ids"][:, :split],
            input_features=inputs["input_features"],
            feature_attention_mask=inputs["feature_attention_mask"],
            use_cache=True,
        )
        rest = model(input_ids=inputs["input_ids"][:, split:], use_cache=True, **{name: prefix.cache})
    assert rest.cache.get_seq_length() == inputs["input_ids"].shape[1]
    torch.testing.assert_close(rest.logits, full[:, split:], atol=1e-5, rtol=1e-5)


def test_resize_token_embeddings(tester):
    model = OpenS2SForConditionalGeneration(tester.config)
    size = tester.config.text_config.vocab_size + 5
    model.resize_token_embeddings(size)
    assert model.get_output_embeddings().weight.shape[0] == size == model.get_input_embeddings().weight.shape[0]
    assert model(**tester.inputs([1.0], [1])).logits.shape[-1] == size


def test_get_audio_features_output(model, tester):
    features, mask = tester.features([1.0, 2.0])
    with torch.no_grad():
        output = model.get_audio_features(features, mask, output_hidden_states=True)
        as_tuple = model.get_audio_features(features, mask, return_dict=False)
    assert output.pooler_output.shape[-1] == tester.config.text_config.hidden_size
    assert output.last_hidden_state.shape[-1] == tester.config.audio_config.d_model
    assert torch.equal(output.audio_lengths, audio_embedding_lengths(mask.sum(-1), 2))
    assert len(output.hidden_states) == tester.config.audio_config.encoder_layers + 1
    torch.testing.assert_close(as_tuple[1], output.pooler_output)


# ---------------------------------------------------------------- 8: batched text generation, right padding
def test_left_padded_moves_padding_and_keeps_left_padding():
    ids, mask = torch.tensor([[5, 6, 0, 0], [0, 7, 8, 9]]), torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1]])
    new_ids, new_mask = left_padded(ids, mask)
    assert new_ids.tolist() == [[0, 0, 5, 6], [0, 7, 8, 9]] and new_mask.tolist() == [[0, 0, 1, 1], [0, 1, 1, 1]]
    assert left_padded(new_ids, new_mask)[0] is new_ids


@pytest.mark.parametrize("side", [pytest.param("right", id="right"), pytest.param("left", id="left")])
def test_batched_text_generation_equals_each_alone(tiny, tiny_model_dir, side):
    processor = AutoProcessor.from_pretrained(tiny_model_dir, trust_remote_code=True)
    prompts = ["I failed my exam today.", "Thank you for sharing that with me. How are you feeling now?"]
    tokenizer = processor.tokenizer
    tokenizer.padding_side = side
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    settings = {"max_new_tokens": 6, "do_sample": False, "return_speech": False}
    with torch.no_grad():
        batched = tiny.generate(**batch, **settings)[:, batch["input_ids"].shape[1] :]
        for row, prompt in enumerate(prompts):
            alone = tokenizer([prompt], return_tensors="pt")
            expected = tiny.generate(**alone, **settings)[0, alone["input_ids"].shape[1] :]
            assert batched[row, : len(expected)].tolist() == expected.tolist(), (side, row)


# ---------------------------------------------------------------- 10: pipeline("any-to-any")
SPOKEN_QUESTION = [{"role": "user", "content": [{"type": "audio", "path": str(EXAMPLE_WAV)}]}]


@pytest.fixture(scope="module")
def any_to_any(tiny_model_dir):
    return pipeline("any-to-any", model=str(tiny_model_dir), trust_remote_code=True)


@pytest.fixture(scope="module")
def spoken_inputs(tiny_model_dir):
    processor = AutoProcessor.from_pretrained(tiny_model_dir, trust_remote_code=True)
    inputs = processor.apply_chat_template(
        SPOKEN_QUESTION, add_generation_prompt=True, tokenize=True, return_tensors="pt", return_dict=True
    )
    return processor, inputs


def test_pipeline_answers_a_spoken_question_in_text(any_to_any, tiny, spoken_inputs):
    processor, inputs = spoken_inputs
    with torch.no_grad():
        ids = tiny.generate(**inputs, return_speech=False, max_new_tokens=8, do_sample=False)
    expected = processor.tokenizer.decode(ids[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    for generate_kwargs in ({}, {"return_speech": False}):
        answer = any_to_any(text=SPOKEN_QUESTION, max_new_tokens=8, generate_kwargs=generate_kwargs)
        assert answer[0]["generated_text"][-1] == {"role": "assistant", "content": expected}
    assert any_to_any(text=SPOKEN_QUESTION, max_new_tokens=8, return_full_text=False)[0]["generated_text"] == expected


def test_pipeline_answers_a_spoken_question_in_speech(any_to_any, tiny_model_dir, spoken_inputs):
    processor, inputs = spoken_inputs
    settings = {"max_new_tokens": 8, "speech_max_new_tokens": 32, "seed": 0}
    answer = any_to_any(text=SPOKEN_QUESTION, generation_mode="audio", generate_kwargs=settings)[0]["generated_audio"]
    model = AutoModel.from_pretrained(tiny_model_dir, trust_remote_code=True).eval()
    model.attach_token2wav()
    with torch.no_grad():
        output = model.generate(**inputs, processor=processor, **settings)
    expected = output.audio_values[0, : int(output.audio_lengths[0])].numpy()
    assert answer.ndim == 1 and answer.size > 0
    np.testing.assert_allclose(answer, expected, atol=1e-5, rtol=1e-5)


def test_generation_mode_chooses_the_path(tiny, spoken_inputs):
    processor, inputs = spoken_inputs
    settings = {"max_new_tokens": 5, "do_sample": False}
    with torch.no_grad():
        as_text = tiny.generate(**inputs, generation_mode="text", **settings)
        assert torch.equal(as_text, tiny.generate(**inputs, return_speech=False, **settings))
        with pytest.raises(ValueError, match="generation_mode"):
            tiny.generate(**inputs, generation_mode="image", **settings)
    assert processor.post_process_multimodal_output(as_text) == processor.tokenizer.batch_decode(
        as_text, skip_special_tokens=True
    )
    with pytest.raises(ValueError, match="no audio"):
        processor.post_process_multimodal_output(tiny.generate(**inputs, **settings), generation_mode="audio")


# ---------------------------------------------------------------- the audio placeholder is never an answer
def test_text_generation_never_writes_the_audio_placeholder(tiny, tiny_model_dir):
    """Random weights pick `<|im_audio|>` (it has a row in the tiny LM head); the generation config suppresses it,
    so a long greedy answer neither holds it nor crashes on it."""
    processor = AutoProcessor.from_pretrained(tiny_model_dir, trust_remote_code=True)
    assert tiny.generation_config.suppress_tokens == [tiny.config.audio_token_id]
    words = (
        "I failed my exam today . Thank you how are you feeling now tell me a story about the sea sad happy".split()
    )
    draws = torch.randint(len(words), (32, 6), generator=torch.Generator().manual_seed(0)).tolist()
    # Without the suppression some of these 32 random-word prompts write the placeholder and the next step raises.
    prompts = [" ".join(words[index] for index in row) for row in draws]
    batch = processor.tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
    with torch.no_grad():
        ids = tiny.generate(**batch, return_speech=False, max_new_tokens=64, min_new_tokens=64)
    assert not (ids[:, batch["input_ids"].shape[1] :] == tiny.config.audio_token_id).any()


# ---------------------------------------------------------------- 9: the loss under gradient accumulation
def _grads(model) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("speech_count", [pytest.param(True, id="counted"), pytest.param(False, id="text-count")])
def test_two_micro_batches_give_the_full_batch_gradient(tester, speech_count):
    """GA=2 with `num_items_in_batch` (as `Trainer` passes it) equals GA=1 on the same rows. The two rows have the
    same text/speech target ratio, so the text-count estimate of the speech targets is exact too."""
    torch.manual_seed(0)
    model = OpenS2SForConditionalGeneration(tester.config)
    # Equal audio lengths: the adapter runs over audios padded to the batch's longest (a kept original behaviour).
    batch = tester.inputs([1.0, 1.0], [1, 1])
    width, span_length, units = batch["input_ids"].shape[1], 5, 7
    batch["speech_span_mask"] = torch.zeros(2, width, dtype=torch.long)
    batch["speech_span_mask"][:, width - span_length - 1 : width - 1] = 1
    batch["labels"] = torch.where(batch["speech_span_mask"].bool(), batch["input_ids"], -100)
    batch["speech_units"] = torch.randint(3, 40, (2, units))
    batch["speech_units_mask"] = torch.ones(2, units, dtype=torch.long)
    model.zero_grad()
    model(**batch).loss.backward()
    full = _grads(model)

    model.zero_grad()
    text_items = batch["labels"][:, 1:].ne(-100).sum()
    speech_items = batch["speech_units_mask"].sum()
    for row in range(2):
        micro = {key: value[row : row + 1] for key, value in batch.items()}
        counts = {"num_items_in_batch": text_items}
        if speech_count:
            counts["num_speech_items_in_batch"] = speech_items
        model(**micro, **counts).loss.backward()
    accumulated = _grads(model)
    assert full.keys() == accumulated.keys()
    for name, grad in full.items():
        torch.testing.assert_close(accumulated[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_trainer_accepts_a_parent_config(tiny_model_dir, tmp_path):
    from datasets import Dataset
    from trl import SFTConfig

    from opens2s.training.trainer import OpenS2STrainer

    model = AutoModel.from_pretrained(tiny_model_dir, trust_remote_code=True)
    args = SFTConfig(str(tmp_path), report_to="none", use_cpu=True, bf16=False, max_steps=1)
    processor = AutoProcessor.from_pretrained(tiny_model_dir, trust_remote_code=True)
    rows = Dataset.from_list(
        [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}]
    )
    trainer = OpenS2STrainer(model, args=args, train_dataset=rows, processing_class=processor)
    assert trainer.args.stage == "sft" and trainer.args.max_steps == 1
    assert trainer.model_accepts_loss_kwargs


# ---------------------------------------------------------------- a model trained through the CLI still speaks
def test_opens2s_train_saves_a_folder_that_speaks(tiny_model_dir, tmp_path):
    from opens2s.cli import main

    units = [8, 8, 1, 50, 51, 22, 22, 22, 6, 19, 33, 33, 4, 60, 61, 9]
    answer = {"text": "Take a deep breath.", "speech_units": "".join(f"<|audio_{u}|>" for u in units)}
    row = {
        "messages": [{"role": "user", "content": [{"text": "I failed."}]}, {"role": "assistant", "content": [answer]}]
    }
    data, out = tmp_path / "train.jsonl", tmp_path / "trained"
    data.write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n")
    args = ["train", "--stage", "sft", "--model", str(tiny_model_dir), "--data", str(data), "--"]
    args += ["--output_dir", str(out), "--max_steps", "1", "--use_cpu", "True", "--bf16", "False"]
    args += [
        "--report_to",
        "none",
        "--save_strategy",
        "no",
        "--disable_tqdm",
        "True",
        "--gradient_checkpointing",
        "False",
    ]
    assert main(args) == 0
    model = AutoModel.from_pretrained(out, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(out, trust_remote_code=True)
    model.attach_token2wav()
    inputs = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "text", "text": "I failed."}]}],
        add_generation_prompt=True,
        tokenize=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        output = model.generate(**inputs, processor=processor, max_new_tokens=4, speech_max_new_tokens=16)
    assert output.unit_sequences.numel() > 0 and output.audio_values is not None and output.audio_values.numel() > 0
    shutil.rmtree(out)
