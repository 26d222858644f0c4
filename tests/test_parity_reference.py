"""Parity with the original OpenS2S code on the reference fixture sets (tiny random models built by the original).

Tolerances from the fixture READMEs: rtol/atol 1e-4 on activations and logits (valid positions), rtol 1e-5 on the
three losses, exact equality for every integer tensor.
"""

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoProcessor

from fixture_sets import collapse_audio, load_manifest, reference_sets, requires_reference
from opens2s.conversion.convert_original_opens2s import convert_original_checkpoint
from opens2s.training import OpenS2SDataCollator, load_original_jsonl


pytestmark = requires_reference
ATOL = RTOL = 1e-4


@pytest.fixture(scope="module", params=reference_sets())
def reference(request, tmp_path_factory):
    """Converted model + processor + the collated training batch + the stored reference tensors of one set."""
    folder = request.param
    converted = convert_original_checkpoint(folder, tmp_path_factory.mktemp(folder.name) / "converted")
    model = AutoModel.from_pretrained(converted, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(converted, trust_remote_code=True)
    manifest = load_manifest(folder)
    rows = list(load_original_jsonl(folder / manifest["train_example"]["file"], audio_root=folder))
    batch = OpenS2SDataCollator(processor, prompt_layout="original")(rows)  # the original's training layout
    with torch.no_grad():
        output = model(**batch)
    return {
        "folder": folder,
        "model": model,
        "processor": processor,
        "manifest": manifest,
        "batch": batch,
        "output": output,
        "ref": load_file(folder / "reference_outputs.safetensors"),
    }


def test_batch_matches_original_collator(reference):
    batch, ref, processor = reference["batch"], reference["ref"], reference["processor"]
    audio_id = processor.audio_token_id
    for row, mask in enumerate(batch["attention_mask"]):
        length = int(mask.sum())
        ref_length = int(ref["batch.attention_mask"][row].sum())
        ids = batch["input_ids"][row, :length].tolist()
        assert collapse_audio(ids, audio_id) == ref["batch.input_ids"][row, :ref_length].tolist()
        audio = [token == audio_id for token in ids]
        labels = [
            label
            for label, is_audio in zip(batch["labels"][row, :length].tolist(), audio, strict=True)
            if not is_audio
        ]
        spans = [
            span
            for span, is_audio in zip(batch["speech_span_mask"][row, :length].tolist(), audio, strict=True)
            if not is_audio
        ]
        ref_ids = ref["batch.input_ids"][row, :ref_length]
        keep = ref_ids != -200
        assert labels == ref["batch.labels"][row, :ref_length][keep].tolist()
        assert spans == (ref["batch.token_types"][row, :ref_length][keep] == 1).long().tolist()
    assert torch.equal(batch["speech_units"], ref["batch.speech_units"])
    assert torch.equal(batch["speech_units_mask"], ref["batch.speech_units_mask"])
    assert torch.equal(batch["feature_attention_mask"].long(), ref["batch.speech_mask"].long())
    torch.testing.assert_close(batch["input_features"], ref["batch.speech_values"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(
        batch["speaker_embeddings"], ref["batch.spk_embs"].reshape(len(batch["speech_units"]), -1)
    )


def test_audio_encoder_and_adapter(reference):
    model, batch, ref = reference["model"], reference["batch"], reference["ref"]
    with torch.no_grad():
        encoded = model.model._encode_audio_windows(batch["input_features"], batch["feature_attention_mask"])
        audio = model.get_audio_features(batch["input_features"], batch["feature_attention_mask"])
    states, lengths = encoded.last_hidden_state, encoded.audio_lengths
    adapted, adapted_lengths = audio.pooler_output, audio.audio_lengths
    assert torch.equal(lengths, ref["audio_encoder.output_lengths"])
    assert torch.equal(adapted_lengths, ref["adapter.lengths"])
    for audio, (length, adapted_length) in enumerate(zip(lengths.tolist(), adapted_lengths.tolist(), strict=True)):
        torch.testing.assert_close(
            states[audio, :length], ref["audio_encoder.last_hidden_state"][audio, :length], atol=ATOL, rtol=RTOL
        )
        torch.testing.assert_close(
            adapted[audio, :adapted_length], ref["adapter.output"][audio, :adapted_length], atol=ATOL, rtol=RTOL
        )


def test_llm_logits(reference):
    output, ref, batch = reference["output"], reference["ref"], reference["batch"]
    valid = ref["llm_inputs.attention_mask"].bool()
    assert output.logits.shape == ref["forward.llm_logits"].shape
    assert torch.equal(batch["attention_mask"].bool(), valid)
    torch.testing.assert_close(output.logits[valid], ref["forward.llm_logits"][valid], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(
        output.last_hidden_state[valid], ref["forward.llm_last_hidden_state"][valid], atol=ATOL, rtol=RTOL
    )


def test_speech_decoder_logits(reference):
    output, ref = reference["output"], reference["ref"]
    assert torch.equal(output.speech_attention_mask, ref["tts_inputs.attention_mask"])
    assert torch.equal(output.speech_labels, ref["tts_inputs.labels"])
    valid = ref["tts_inputs.attention_mask"].bool()
    torch.testing.assert_close(output.speech_logits[valid], ref["forward.tts_logits"][valid], atol=ATOL, rtol=RTOL)


def test_losses(reference):
    output, ref = reference["output"], reference["ref"]
    torch.testing.assert_close(output.text_loss, ref["forward.llm_loss"], rtol=1e-5, atol=0)
    torch.testing.assert_close(output.speech_loss, ref["forward.tts_loss"], rtol=1e-5, atol=0)
    torch.testing.assert_close(output.loss, ref["forward.loss"], rtol=1e-5, atol=0)


def test_generation_prompt_matches_original_worker(reference):
    folder, processor, manifest, ref = (
        reference["folder"],
        reference["processor"],
        reference["manifest"],
        reference["ref"],
    )
    generation = manifest["generation"]
    content = [{"type": "audio", "path": str(folder / path)} for path in generation["audio_paths"]]
    messages = [{"role": "user", "content": content}]
    assert processor.apply_chat_template(messages, add_generation_prompt=True) == generation["prompt_text"]
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    ids = inputs["input_ids"][0].tolist()
    assert collapse_audio(ids, processor.audio_token_id) == ref["gen.input_ids"][0].tolist()
    model = reference["model"]
    with torch.no_grad():
        embeds = model.embed_inputs(inputs["input_ids"], inputs["input_features"], inputs["feature_attention_mask"])
    torch.testing.assert_close(embeds, ref["gen.prompt_inputs_embeds"], atol=ATOL, rtol=RTOL)
