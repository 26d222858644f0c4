"""Converting original checkpoints, exporting remote code, and loading without the opens2s package."""

import json
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoProcessor

from fixture_sets import reference_sets, requires_reference
from opens2s.conversion.convert_original_opens2s import convert_original_checkpoint
from opens2s.training import OpenS2SDataCollator, load_original_jsonl


@pytest.fixture(scope="module", params=reference_sets())
def original_folder(request):
    """An original checkpoint folder: each reference fixture set in turn."""
    return request.param


@pytest.fixture(scope="module")
def converted(original_folder, tmp_path_factory):
    return convert_original_checkpoint(
        original_folder, tmp_path_factory.mktemp("conv") / "model", max_shard_size=400_000
    )


def copy_original(folder, destination):
    shutil.copytree(folder, destination, ignore=shutil.ignore_patterns("reference_outputs.safetensors", "inputs"))
    return destination


@requires_reference
def test_conversion_shards_and_keeps_every_tensor(original_folder, converted):
    index = json.loads((converted / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    original = load_file(original_folder / "model.safetensors")
    assert len(index["weight_map"]) == len(original)
    shard = load_file(converted / index["weight_map"]["language_model.lm_head.weight"])
    torch.testing.assert_close(
        shard["language_model.lm_head.weight"], original["llm_model.lm_head.weight"], atol=0, rtol=0
    )


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "src").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        convert_original_checkpoint(tmp_path / "src", tmp_path / "dst")


@requires_reference
def test_missing_and_unexpected_keys_are_named(original_folder, tmp_path):
    src = copy_original(original_folder, tmp_path / "src")
    weights = load_file(src / "model.safetensors")
    weights.pop("llm2tts.weight")
    weights["extra.weight"] = torch.zeros(1)
    save_file(weights, src / "model.safetensors")
    with pytest.raises(ValueError, match=r"missing \['hidden_projection.weight'\]; unexpected \['extra.weight'\]"):
        convert_original_checkpoint(src, tmp_path / "dst")
    assert not (tmp_path / "dst").exists()


@requires_reference
def test_missing_tts_folder_needs_a_base_tokenizer(original_folder, tmp_path):
    src = copy_original(original_folder, tmp_path / "src")
    shutil.rmtree(src / "tts")
    with pytest.raises(ValueError, match="has no tts/ folder"):
        convert_original_checkpoint(src, tmp_path / "dst")
    # A base tokenizer whose size + units does not equal the decoder vocabulary is refused, not guessed.
    with pytest.raises(ValueError, match="does not match the speech decoder"):
        convert_original_checkpoint(src, tmp_path / "dst", unit_tokenizer_base=str(src), num_units=64)


@requires_reference
def test_tied_lm_head_is_written_explicitly(original_folder, tmp_path):
    src = copy_original(original_folder, tmp_path / "src")
    weights = load_file(src / "model.safetensors")
    weights.pop("tts_lm_model.lm_head.weight")
    save_file(weights, src / "model.safetensors")
    dst = convert_original_checkpoint(src, tmp_path / "dst")
    converted = load_file(dst / "model.safetensors")
    torch.testing.assert_close(
        converted["speech_decoder.lm_head.weight"], weights["tts_lm_model.model.embed_tokens.weight"], atol=0, rtol=0
    )


@requires_reference
def test_processor_round_trip(converted, tmp_path):
    processor = AutoProcessor.from_pretrained(converted, trust_remote_code=True)
    processor.save_pretrained(tmp_path)
    reloaded = AutoProcessor.from_pretrained(tmp_path, trust_remote_code=True)
    assert reloaded.audio_token_id == processor.audio_token_id
    assert reloaded.unit_token_offset == processor.unit_token_offset and reloaded.num_units == processor.num_units
    assert reloaded.chat_template == processor.chat_template
    assert reloaded.feature_extractor.to_dict() == processor.feature_extractor.to_dict()
    assert reloaded.tokenizer.get_vocab() == processor.tokenizer.get_vocab()
    assert reloaded.unit_tokenizer.get_vocab() == processor.unit_tokenizer.get_vocab()
    assert processor.ids_to_units(processor.units_to_ids([0, 5, processor.num_units - 1])) == [
        0,
        5,
        processor.num_units - 1,
    ]
    with pytest.raises(ValueError, match="speech units must be in"):
        processor.units_to_ids([processor.num_units])


@requires_reference
def test_jsonl_bad_rows_are_reported(original_folder, tmp_path, caplog):
    good = (original_folder / "inputs" / "train_example.jsonl").read_text().splitlines()[0]
    row = json.loads(good)
    row["messages"][0]["content"][0]["audio"] = str(original_folder / "inputs" / "a.wav")
    missing = json.loads(json.dumps(row))
    missing["messages"][0]["content"][0]["audio"] = "nope.wav"
    lines = [json.dumps(row), json.dumps(missing), "{not json"]
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n")
    with caplog.at_level("WARNING", logger="opens2s"):
        dataset = load_original_jsonl(tmp_path / "data.jsonl")
    assert len(dataset) == 1
    assert (
        "skipped 2 of 3 rows" in caplog.text
        and "1 missing audio file" in caplog.text
        and "1 invalid json" in caplog.text
    )


BLOCKED_IMPORT = textwrap.dedent(
    """
    import sys, json, torch
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name == "opens2s" or name.startswith("opens2s."):
                raise ImportError("opens2s is hidden in this test")
    sys.meta_path.insert(0, Block())
    from transformers import AutoConfig, AutoModel, AutoProcessor
    folder, batch_file = sys.argv[1], sys.argv[2]
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    assert "opens2s" not in sys.modules
    batch = torch.load(batch_file)
    with torch.no_grad():
        logits = model(**batch).logits
    torch.save(logits, batch_file + ".logits")
    print(type(config).__name__, type(model).__name__, type(processor).__name__)
    """
)


def assert_same_logits_without_opens2s(folder, batch, tmp_path):
    """Load `folder` through the Auto classes in a fresh process where `opens2s` cannot be imported; compare logits."""
    from transformers import AutoModel

    batch_file = tmp_path / "batch.pt"
    torch.save(dict(batch), batch_file)
    script = tmp_path / "load.py"
    script.write_text(BLOCKED_IMPORT)
    result = subprocess.run(
        [sys.executable, str(script), str(folder), str(batch_file)], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OpenS2SConfig OpenS2SForConditionalGeneration OpenS2SProcessor" in result.stdout
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    with torch.no_grad():
        expected = model(**batch).logits
    torch.testing.assert_close(torch.load(str(batch_file) + ".logits"), expected, atol=0, rtol=0)


@pytest.mark.slow  # a fresh Python process loads the folder with opens2s hidden
@requires_reference
def test_export_loads_without_opens2s(converted, original_folder, tmp_path):
    processor = AutoProcessor.from_pretrained(converted, trust_remote_code=True)
    rows = list(load_original_jsonl(original_folder / "inputs" / "train_example.jsonl", audio_root=original_folder))
    batch = OpenS2SDataCollator(processor)(rows)
    assert_same_logits_without_opens2s(converted, batch, tmp_path)


@pytest.mark.slow  # a fresh Python process loads the folder with opens2s hidden
def test_tiny_export_loads_without_opens2s(tiny_model_dir, tmp_path):
    """The same check on the tiny default model, so it runs where the fixture sets are absent."""
    from opens2s import EXAMPLE_WAV

    processor = AutoProcessor.from_pretrained(tiny_model_dir, trust_remote_code=True)
    messages = [{"role": "user", "content": [{"type": "audio", "path": str(EXAMPLE_WAV)}]}]
    batch = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    assert_same_logits_without_opens2s(tiny_model_dir, batch, tmp_path)


@requires_reference
def test_speech_generation_config_allows_only_units_and_eos(converted):
    """By default the converter suppresses every decoder id that is not a unit or the EOS; the stream then speaks
    units only."""
    from transformers import AutoModel, GenerationConfig

    from opens2s.conversion.convert_original_opens2s import SPEECH_GENERATION_CONFIG_NAME

    processor = AutoProcessor.from_pretrained(converted, trust_remote_code=True)
    model = AutoModel.from_pretrained(converted, trust_remote_code=True).eval()
    speech_config = GenerationConfig.from_pretrained(converted, config_file_name=SPEECH_GENERATION_CONFIG_NAME)
    eos = speech_config.eos_token_id
    units = set(range(processor.unit_token_offset, processor.unit_token_offset + processor.num_units))
    vocab = set(range(model.config.speech_decoder_config.vocab_size))
    assert set(speech_config.suppress_tokens) == vocab - units - {eos}
    messages = [{"role": "user", "content": [{"type": "text", "text": "hello"}]}]
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    speech_config.max_new_tokens = 40
    speech_config.do_sample = True
    ids = []
    for event in model.stream(**inputs, processor=processor, speech_generation_config=speech_config, token2wav=False):
        if event.kind == "units":
            ids += event.token_ids
    assert ids and set(ids) <= units | {eos}
