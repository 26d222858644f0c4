"""Hardening (issue 17 items 4, 8, 10, 11, 13): bad inputs generated in code get a clear error or a counted skip.

- training rows that would abort a run at their batch are skipped when the data is loaded, counted by reason;
- stream inputs (prompt ids, speaker embeddings) are refused at `model.stream` / `engine.submit`, before any event;
- a corrupt generation config file is an error, a missing one a warning saying what is assumed;
- the data pipeline re-checks audio an earlier stage wrote, and one work folder serves one run at a time.
"""

import json
import os
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest
import soundfile
import torch
from transformers import AutoProcessor

from opens2s.dataset_scripts.backends import Backends
from opens2s.dataset_scripts.config import STAGES
from opens2s.dataset_scripts.pipeline import pipeline_status, run_pipeline
from opens2s.dataset_scripts.runner import WorkdirLocked, workdir_lock
from opens2s.modeling_opens2s.engine_opens2s import OpenS2SEngine
from opens2s.modeling_opens2s.modeling_opens2s import OpenS2SForConditionalGeneration
from opens2s.modeling_opens2s.streaming_opens2s import speech_generation_config_of
from opens2s.training import OpenS2SDataCollator, load_training_dataset


def pcm16_wav(rate: int, frames: int) -> bytes:
    """A 16-bit mono wav of silence whose header says `rate` Hz (soundfile refuses to write a rate this low)."""
    data = b"\0\0" * frames
    header = b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt "
    header += struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
    return header + b"data" + struct.pack("<I", len(data)) + data


# ---------------------------------------------------------------- item 4: training rows
def test_rows_that_would_abort_training_are_skipped_by_reason(tiny_model_dir, tmp_path, caplog):
    rng = np.random.default_rng(0)
    soundfile.write(tmp_path / "good.wav", (0.1 * rng.standard_normal(16000)).astype(np.float32), 16000)
    soundfile.write(tmp_path / "short.wav", np.zeros(40, np.float32), 16000)
    nan = (0.1 * rng.standard_normal(16000)).astype(np.float32)
    nan[1234] = np.nan
    soundfile.write(tmp_path / "nan.wav", nan, 16000, subtype="FLOAT")
    (tmp_path / "one_hz.wav").write_bytes(pcm16_wav(1, 400))
    (tmp_path / "long.wav").write_bytes(pcm16_wav(4000, 4000 * 601))  # 601 s of 16-bit silence, 4.8 MB
    np.save(tmp_path / "speaker.npy", rng.standard_normal(512).astype(np.float32))
    np.save(tmp_path / "small.npy", np.zeros(7, np.float32))
    np.save(tmp_path / "object.npy", np.array([{"voice": 1}], dtype=object), allow_pickle=True)
    np.save(tmp_path / "nan.npy", np.full(512, np.nan, np.float32))
    np.save(tmp_path / "huge.npy", np.full(512, 1e6, np.float32))

    def row(audio="good.wav", spk_emb="speaker.npy", units="<|audio_1|><|audio_2|>") -> dict:
        answer = {"text": "I'm here for you.", "speech_units": units, "spk_emb": spk_emb}
        return {
            "messages": [{"role": "user", "content": [{"audio": audio}]}, {"role": "assistant", "content": [answer]}]
        }

    content_string, message_string, int_units = row(), row(), row()
    content_string["messages"][0]["content"] = ["hello"]
    message_string["messages"][0] = "hello"
    int_units["messages"][1]["content"][0]["speech_units"] = 5
    expected = {
        "audio too short": row("short.wav"),
        "NaN or Inf samples": row("nan.wav"),
        "sampling rate too low": row("one_hz.wav"),
        "audio too long": row("long.wav"),
        "spk_emb of the wrong size": row(spk_emb="small.npy"),
        "unreadable spk_emb file": row(spk_emb="object.npy"),
        "spk_emb not finite": row(spk_emb="nan.npy"),
        "spk_emb norm too large": row(spk_emb="huge.npy"),
        "content item is not an object": content_string,
        "message is not an object": message_string,
        "speech units not in <|audio_k|> form": int_units,
    }
    good = [row(), row(spk_emb="")]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in [good[0], *expected.values(), good[1]]))
    with caplog.at_level("WARNING", logger="opens2s"):
        dataset = load_training_dataset(path, num_units=64, speaker_embedding_dim=512)
    assert len(dataset) == 2
    assert f"skipped {len(expected)} of {len(expected) + 2} rows" in caplog.text
    for reason in expected:
        assert f"1 {reason}" in caplog.text, reason
    # What is kept trains: the collator reads every kept row (the run no longer aborts at a bad row's batch).
    processor = AutoProcessor.from_pretrained(tiny_model_dir, trust_remote_code=True)
    batch = OpenS2SDataCollator(processor)([dataset[0], dataset[1]])
    assert batch["speaker_embeddings"].shape == (2, 512) and torch.isfinite(batch["input_features"]).all()


# ---------------------------------------------------------------- items 8, 11: stream inputs
@pytest.fixture(scope="module")
def speaking_model(tiny_model_dir):
    model = OpenS2SForConditionalGeneration.from_pretrained(tiny_model_dir)
    model.attach_token2wav()
    processor = AutoProcessor.from_pretrained(tiny_model_dir, trust_remote_code=True)
    messages = [{"role": "user", "content": [{"type": "text", "text": "I failed my exam."}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    return model, processor, torch.as_tensor(prompt["input_ids"]).reshape(1, -1)


BAD_STREAM_INPUTS = [
    pytest.param({"input_ids": torch.zeros(1, 0, dtype=torch.long)}, "input_ids is empty", id="empty-ids"),
    pytest.param({"input_ids": torch.tensor([[1, 10**6]])}, r"input_ids must lie in \[0, \d+\)", id="oov-id"),
    pytest.param({"input_ids": torch.tensor([[-3, 1]])}, r"got ids from -3 to 1", id="negative-id"),
    pytest.param({"input_ids": torch.tensor([[1.0, 2.0]])}, "integer token ids, got dtype torch.float32", id="float"),
    pytest.param(
        {"speaker_embedding": torch.zeros(7)},
        r"speaker_embedding must be one vector of 512 values, got shape \(7,\)",
        id="speaker-size",
    ),
    pytest.param(
        {"token2wav_speaker_embedding": torch.zeros(1, 7)},
        r"token2wav_speaker_embedding must be one vector of 192 values, got shape \(1, 7\)",
        id="token2wav-speaker-size",
    ),
    pytest.param(
        {"speaker_embedding": torch.full((512,), float("nan"))},
        "speaker_embedding must be finite, got 512 NaN",
        id="speaker-nan",
    ),
    pytest.param(
        {"token2wav_speaker_embedding": torch.full((1, 192), float("inf"))},
        "token2wav_speaker_embedding must be finite",
        id="token2wav-speaker-inf",
    ),
    pytest.param(
        {"speaker_embedding": torch.full((512,), 1e20)},
        "speaker_embedding has an L2 norm of 2.26e\\+21",
        id="speaker-huge",
    ),
]


@pytest.mark.parametrize(("bad", "message"), BAD_STREAM_INPUTS)
def test_bad_stream_inputs_are_refused_before_any_event(speaking_model, bad, message):
    model, processor, input_ids = speaking_model
    kwargs = {"input_ids": input_ids, "processor": processor, "max_new_tokens": 2, "speech_max_new_tokens": 4} | bad
    events = model.stream(**kwargs)
    with pytest.raises(ValueError, match=message):
        next(events)  # the first event is never produced: the check runs before the prompt is prefilled
    engine = OpenS2SEngine(model, max_active=1, max_queued=0)
    with pytest.raises(ValueError, match=message):
        engine.submit({"input_ids": kwargs.pop("input_ids")}, **kwargs)
    assert engine.stats()["queued"] == 0


def test_a_sane_voice_still_speaks(speaking_model):
    model, processor, input_ids = speaking_model
    voice = torch.randn(512, generator=torch.Generator().manual_seed(0))  # norm ~23, the scale of CAM++ vectors
    events = list(
        model.stream(
            input_ids=input_ids,
            processor=processor,
            speaker_embedding=voice,
            token2wav_speaker_embedding=torch.randn(1, 192),
            max_new_tokens=4,
            speech_max_new_tokens=30,
        )
    )
    assert any(event.kind == "units" for event in events) and events[-1].kind == "done"


# ---------------------------------------------------------------- item 10: generation configs
@pytest.mark.parametrize("file_name", ["generation_config.json", "speech_generation_config.json"])
def test_a_corrupt_generation_config_is_an_error_and_a_missing_one_a_warning(
    tiny_model_dir, tmp_path, file_name, caplog
):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    (folder / file_name).write_text('{"eos_token_id": ')

    def load_and_configure():
        model = OpenS2SForConditionalGeneration.from_pretrained(folder)
        return model, speech_generation_config_of(model)

    with pytest.raises(ValueError, match=f"{file_name} is corrupt .*not a valid JSON file.*fix it, or delete it"):
        load_and_configure()
    (folder / file_name).unlink()
    with caplog.at_level("WARNING"):
        model, speech_config = load_and_configure()
    assert f"has no {file_name}: the " in caplog.text and "decodes greedily until its EOS" in caplog.text
    if file_name == "speech_generation_config.json":
        assert speech_config.eos_token_id == model.config.speech_decoder_config.eos_token_id
    else:
        assert model.generation_config.eos_token_id == model.config.text_config.eos_token_id


# ---------------------------------------------------------------- item 13: data pipeline
def test_a_second_run_on_a_work_folder_is_refused_with_the_other_pid(tmp_path):
    from test_data_pipeline import make_config

    workdir = tmp_path / "work"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom opens2s.dataset_scripts.runner import workdir_lock\n"
            f"with workdir_lock({str(workdir)!r}):\n    print('locked', flush=True)\n    time.sleep(120)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        config = make_config(workdir, tmp_path / "seeds.csv")
        with pytest.raises(WorkdirLocked, match=f"{workdir} is in use by another run \\(pid {holder.pid}\\)"):
            run_pipeline(config, ["seed"])
        assert not (workdir / "parts").exists()  # refused before touching anything
    finally:
        holder.kill()  # SIGKILL: no clean-up runs, so the lock file stays, but its flock dies with the process
        holder.wait()
    assert (workdir / ".lock").exists()
    with workdir_lock(workdir):  # a crashed run leaves no stale lock
        with pytest.raises(WorkdirLocked, match=f"pid {os.getpid()}"):
            with workdir_lock(workdir):
                pass


@pytest.mark.slow  # user speech by espeak-ng, then three more stages
def test_a_question_file_corrupted_after_its_stage_is_skipped_not_trained_on(tmp_path):
    from test_data_pipeline import StandInLLM, make_config

    from opens2s.conversion.tiny import build_tiny_speech_tokenizer

    if shutil.which("espeak-ng") is None:
        pytest.skip("needs espeak-ng (apt-get install espeak-ng)")
    rng = np.random.default_rng(0)
    lines = ["audio,transcript,emotion,age,gender,speaker"]
    for number in range(2):
        soundfile.write(tmp_path / f"seed{number}.wav", (0.1 * rng.standard_normal(24000)).astype(np.float32), 16000)
        lines.append(f'seed{number}.wav,"Nobody calls me anymore {number}.",sad,adult,female,speaker{number}')
    (tmp_path / "seeds.csv").write_text("\n".join(lines) + "\n")
    config = make_config(tmp_path / "work", tmp_path / "seeds.csv")
    backends = Backends(config, llm=StandInLLM(), speech_tokenizer=build_tiny_speech_tokenizer())
    questions = run_pipeline(config, STAGES[: STAGES.index("user_speech") + 1], backends)
    victim = questions[0]["audio_file"]
    (config.workdir / victim).write_bytes(b"RIFF garbage, not a wav any more")
    rows = run_pipeline(config, STAGES[STAGES.index("responses") : STAGES.index("units") + 1], backends)

    assert len(rows) == len(questions) - 1 and victim not in rows["audio_file"]
    assert pipeline_status(config.workdir)["responses"]["failure_reasons"] == {"corrupt stage audio": 1}
    failures = (config.workdir / "responses" / "failures.jsonl").read_text()
    assert victim in failures and "cannot read" in failures
    assert victim not in (config.workdir / "units" / "train.jsonl").read_text()
