"""Training OpenS2S with `OpenS2STrainer` on CPU: every stage, loss parity with the original, resume, LoRA, the
training script under `accelerate launch` with two processes, and the data loaders.

Sizes: the tiny model (`opens2s.conversion.tiny`; LLM hidden 64, 2 layers, ~400 tokens; speech decoder hidden 48,
64 units).
A training row is ~45 LLM positions: system turn (~10 tokens) + user turn (1 s of audio = 100 mel frames -> 25
encoder frames -> 7 adapter positions, or ~8 text tokens) + assistant turn (~20 tokens); a spoken answer gives the
speech decoder 1 speaker slot + ~20 hidden states + 17 units (16 + EOS). Each audio is encoded as one 30 s window
(1,500 encoder positions): the most expensive part of a step, so only the stages that need audio use it.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoProcessor, TrainerCallback

from fixture_sets import load_manifest, reference_sets, requires_reference
from opens2s.conversion.convert_original_opens2s import convert_original_checkpoint
from opens2s.modeling_opens2s.modeling_opens2s import checkpoint_key
from opens2s.training import (
    OpenS2SDataCollator,
    OpenS2SSFTConfig,
    OpenS2STrainer,
    alignment_prompt,
    build_alignment_rows,
    get_stage,
    load_training_dataset,
)


# The parts of OpenS2SForConditionalGeneration that train in each stage, from the paper's section 2.2 (written out
# here, not read from the presets, so that a wrong preset fails).
SPEECH_HEAD = {"hidden_projection", "hidden_norm", "speaker_projection", "speaker_norm"}
EXPECTED_TRAINABLE = {
    "align": {"audio_adapter"},
    "speech_pretrain_text": {"speech_decoder"},
    "speech_pretrain": SPEECH_HEAD | {"speech_decoder"},
    "sft": SPEECH_HEAD | {"audio_adapter", "language_model", "speech_decoder"},
}
ALL_PARTS = {"audio_encoder", "audio_adapter", "language_model", "speech_decoder"} | SPEECH_HEAD


class TrainingTester:
    """Writes the tiny training data (a 1 s noise wav, a speaker embedding, jsonl rows) and builds short runs."""

    def __init__(self, model_dir: Path, folder: Path):
        self.model_dir, self.folder = model_dir, folder
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        self.wav = folder / "question.wav"
        soundfile.write(self.wav, (0.1 * rng.standard_normal(16000)).astype(np.float32), 16000)
        # A non-zero speaker embedding, so that the speaker projection gets gradients.
        np.save(folder / "speaker.npy", rng.standard_normal(512).astype(np.float32))
        self.processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=True)

    def spoken(self, text: str, units: list[int]) -> dict:
        units = "".join(f"<|audio_{unit}|>" for unit in units)
        return {"text": text, "speech_units": units, "spk_emb": str(self.folder / "speaker.npy")}

    @staticmethod
    def conversation(user: dict, answer: dict) -> dict:
        return {"messages": [{"role": "user", "content": [user]}, {"role": "assistant", "content": [answer]}]}

    def speech_to_speech(self) -> dict:
        units = [3, 9, 9, 27, 40, 41, 5, 5, 63, 0, 12, 12, 7, 30, 2, 2]
        return self.conversation({"audio": str(self.wav)}, self.spoken("I'm here for you, and I'm listening.", units))

    def text_to_speech(self, answer: str = "Take a deep breath and rest a little.", units: list[int] | None = None):
        units = units or [8, 8, 1, 50, 51, 22, 22, 22, 6, 19, 33, 33, 4, 60, 61, 9]
        return self.conversation({"text": "I failed my exam today."}, self.spoken(answer, units))

    def text_to_text(self) -> dict:
        return self.conversation({"text": "Thank you for sharing that with me."}, {"text": "Your feelings are valid."})

    def alignment_rows(self) -> list[dict]:
        samples = [
            {"audio": str(self.wav), "continuation": "It sounds like you had a long day."},
            {"audio": str(self.wav), "continuation": "One exam does not define you.", "emotion": "sad"},
        ]
        return build_alignment_rows(samples)

    def rows(self, stage: str) -> list[dict]:
        """The memorisable batch of a stage: stage 1 hears speech; 2a and 2b need no audio; stage 3 mixes a
        speech-to-speech and a text-to-speech row."""
        if stage == "align":
            return self.alignment_rows()
        if stage == "sft":
            return [self.speech_to_speech(), self.text_to_speech()]
        return [self.text_to_speech(), self.text_to_speech("You are not alone.", [1, 2, 3, 4, 5, 6, 7, 8, 9, 10])]

    def write_jsonl(self, rows: list[dict], name: str = "train.jsonl") -> Path:
        path = self.folder / name
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        return path

    @staticmethod
    def training_args(output_dir: Path, stage: str, **overrides) -> OpenS2SSFTConfig:
        defaults = {
            "stage": stage,
            "max_steps": 4,
            "learning_rate": 1e-2,
            "lr_scheduler_type": "constant",
            "per_device_train_batch_size": 2,
            "logging_steps": 1,
            "save_strategy": "no",
            "report_to": "none",
            "bf16": False,
            "use_cpu": True,
            "gradient_checkpointing": False,
            "disable_tqdm": True,
            "seed": 0,
        }
        return OpenS2SSFTConfig(str(output_dir), **{**defaults, **overrides})

    def trainer(self, stage: str, output_dir: Path, rows: list[dict] | None = None, **overrides) -> OpenS2STrainer:
        model = AutoModel.from_pretrained(self.model_dir, trust_remote_code=True)
        dataset = load_training_dataset(
            self.write_jsonl(rows or self.rows(stage)),
            num_units=self.processor.num_units,
            row_format=get_stage(stage).row_format,
        )
        args = self.training_args(output_dir, stage, **overrides)
        return OpenS2STrainer(model, args=args, train_dataset=dataset, processing_class=self.processor)


@pytest.fixture(scope="module")
def tester(tiny_model_dir, tmp_path_factory) -> TrainingTester:
    return TrainingTester(tiny_model_dir, tmp_path_factory.mktemp("training-data"))


def snapshot(model) -> dict[str, torch.Tensor]:
    return {name: parameter.detach().clone() for name, parameter in model.named_parameters()}


def part_of(name: str) -> str:
    """The part (`OpenS2SForConditionalGeneration.parts`) of parameter `name`: its checkpoint key's head."""
    return checkpoint_key(name).split(".")[0]


def assert_only_stage_parts_changed(before: dict, model, trainable: set[str]) -> None:
    """Every parameter of a trainable part changed; every parameter of a frozen part is bit-identical."""
    after = dict(model.named_parameters())
    assert {part_of(name) for name in before} == ALL_PARTS
    unchanged = [name for name in before if part_of(name) in trainable and torch.equal(before[name], after[name])]
    changed = [
        name for name in before if part_of(name) not in trainable and not torch.equal(before[name], after[name])
    ]
    assert not unchanged, f"trainable parameters that did not change: {unchanged}"
    assert not changed, f"frozen parameters that changed: {changed}"


def losses(trainer, name: str) -> list[float]:
    return [entry[name] for entry in trainer.state.log_history if name in entry]


# ---------------------------------------------------------------- stages
STAGE_CASES = [
    pytest.param("align", {}, ["text_loss"], id="align"),
    pytest.param("speech_pretrain_text", {}, ["speech_loss"], id="speech_pretrain_text"),
    # Gradient accumulation (2 micro-batches of 1 row per optimiser step) and gradient checkpointing.
    pytest.param(
        "speech_pretrain",
        {"per_device_train_batch_size": 1, "gradient_accumulation_steps": 2, "gradient_checkpointing": True},
        ["speech_loss"],
        id="speech_pretrain-grad_accum-grad_checkpointing",
    ),
    pytest.param("sft", {}, ["text_loss", "speech_loss"], id="sft"),
]


@pytest.mark.parametrize(("stage", "overrides", "trained_losses"), STAGE_CASES)
def test_stage_learns_its_batch_and_freezes_the_rest(tester, tmp_path, stage, overrides, trained_losses):
    trainer = tester.trainer(stage, tmp_path / "out", **overrides)
    # No TRL text-only preparation: the rows reach the collator as they were loaded.
    assert set(trainer.train_dataset.column_names) <= {"messages", "text", "speech_units"}
    model = trainer.opens2s_model
    before = snapshot(model)
    trainer.train()
    for name in ["loss", *trained_losses]:  # the loss of the memorised batch goes down at every step
        values = losses(trainer, name)
        assert len(values) == 4 and all(b < a for a, b in zip(values[:-1], values[1:], strict=True)), (name, values)
    if stage == "align":  # stage 1 has no spoken answers: the speech loss is never computed
        assert not losses(trainer, "speech_loss")
    assert_only_stage_parts_changed(before, model, EXPECTED_TRAINABLE[stage])


def test_stage_2a_trains_the_decoder_alone_and_saves_a_full_model(tester, tmp_path):
    from opens2s.training.train import save_trained_model

    trainer = tester.trainer("speech_pretrain_text", tmp_path / "out", max_steps=1)
    assert trainer.model is trainer.opens2s_model.speech_decoder
    trainer.train()
    output = save_trained_model(trainer, tmp_path / "out", tester.processor)
    reloaded = AutoModel.from_pretrained(output, trust_remote_code=True)
    for name, parameter in trainer.opens2s_model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], parameter), name


def test_lora_is_refused_where_the_llm_is_frozen(tester, tmp_path):
    with pytest.raises(ValueError, match="LoRA adapts the LLM"):
        tester.trainer("speech_pretrain", tmp_path / "out", lora=True)


def test_alignment_rows_hear_speech_and_learn_the_continuation(tester):
    assert alignment_prompt("I lost my keys.", emotion="sad").endswith("I lost my keys.")
    assert "'sad'" in alignment_prompt("I lost my keys.", emotion="sad")
    rows = tester.alignment_rows()
    batch = OpenS2SDataCollator(tester.processor, use_speech_units=False)(rows)
    assert "speech_units" not in batch and batch["input_features"].shape[0] == 2
    for row, labels in zip(rows, batch["labels"], strict=True):
        target = tester.processor.tokenizer.decode(labels[labels != -100])
        assert target == row["messages"][1]["content"][0]["text"] + "<|im_end|>\n"


# ---------------------------------------------------------------- training rows = inference prompts
def chat_messages(messages: list[dict]) -> list[dict]:
    """A training conversation (original jsonl items) as processor chat messages."""
    return [
        {
            "role": message["role"],
            "content": [
                {"type": "audio", "path": item["audio"]}
                if item.get("audio")
                else {"type": "text", "text": item["text"]}
                for item in message["content"]
            ],
        }
        for message in messages
    ]


def test_default_training_rows_start_with_the_chat_template_prompt(tester):
    """The collator's default layout and `apply_chat_template` give the same ids up to the answer, for spoken and
    text answers and with an earlier turn: training and inference prompts cannot drift apart."""
    earlier = tester.text_to_text()["messages"]
    cases = [
        (tester.speech_to_speech(), True),
        (tester.text_to_text(), False),
        ({"messages": earlier + tester.speech_to_speech()["messages"]}, True),
    ]
    collator = OpenS2SDataCollator(tester.processor)
    for row, spoken in cases:
        batch = collator([row])
        prompt = tester.processor.apply_chat_template(
            chat_messages(row["messages"][:-1]),
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            speech_output=spoken,
        )["input_ids"]
        prompt = prompt[0] if isinstance(prompt[0], list) else prompt
        ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
        assert ids[: len(prompt)] == prompt
        # The answer (from <|im_tts_start|> for a spoken one) is labelled; the final prompt is not.
        answer_start = len(prompt) - 1 if spoken else len(prompt)
        im_start = tester.processor.tokenizer.convert_tokens_to_ids("<|im_start|>")
        final_prompt = max(index for index, token in enumerate(prompt) if token == im_start)
        assert set(labels[final_prompt:answer_start]) == {-100} and labels[answer_start] == ids[answer_start]


def test_history_turns_are_plain_as_the_original_worker_prompted(tester):
    """With an earlier turn, the prompt is the original worker's (Qwen3's template, `enable_thinking=False`): the
    earlier answer has no think block, the answer being generated has one; training rows follow the same rule."""
    earlier = tester.text_to_text()["messages"]
    row = {"messages": earlier + tester.speech_to_speech()["messages"]}
    tokenizer = tester.processor.tokenizer
    prompt = tester.processor.apply_chat_template(
        chat_messages(row["messages"][:-1]), add_generation_prompt=True, tokenize=False
    )
    prompt = prompt[0] if isinstance(prompt, list) else prompt
    earlier_answer = earlier[-1]["content"][0]["text"]
    assert f"<|im_start|>assistant\n{earlier_answer}<|im_end|>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n<|im_tts_start|>")
    assert prompt.count("<think>") == 1
    trained = tokenizer.decode(OpenS2SDataCollator(tester.processor)([row])["input_ids"][0])
    assert trained.count("<think>") == 1 and f"assistant\n{earlier_answer}<|im_end|>" in trained


def test_original_layout_is_the_original_training_prompt(tester):
    """`prompt_layout="original"`: `<think></think>` after the assistant header, as the original trained."""
    row = tester.text_to_text()
    tokenizer = tester.processor.tokenizer
    original = OpenS2SDataCollator(tester.processor, prompt_layout="original")([row])["input_ids"][0]
    default = OpenS2SDataCollator(tester.processor)([row])["input_ids"][0]
    assert "<|im_start|>assistant\n<think></think>Your feelings" in tokenizer.decode(original)
    assert "<|im_start|>assistant\n<think>\n\n</think>\n\nYour feelings" in tokenizer.decode(default)
    with pytest.raises(ValueError, match="prompt_layout"):
        OpenS2SDataCollator(tester.processor, prompt_layout="qwen")
    with pytest.raises(ValueError, match="prompt_layout"):
        TrainingTester.training_args(tester.folder / "out", "sft", prompt_layout="qwen")


# ---------------------------------------------------------------- parity with the original
@requires_reference
@pytest.mark.parametrize("folder", reference_sets())
def test_first_training_loss_matches_the_original(folder, tmp_path):
    """The trainer's first logged losses equal the original's forward losses on the fixture's training batch."""
    model = AutoModel.from_pretrained(convert_original_checkpoint(folder, tmp_path / "model"), trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(tmp_path / "model", trust_remote_code=True)
    # Dropout off: every dropout probability of the three sub-models is zero, so train mode computes the eval loss.
    sub_configs = (model.config.audio_config, model.config.text_config, model.config.speech_decoder_config)
    assert all(value == 0 for config in sub_configs for key, value in config.to_dict().items() if "dropout" in key)
    manifest = load_manifest(folder)
    dataset = load_training_dataset(folder / manifest["train_example"]["file"], audio_root=folder)
    args = TrainingTester.training_args(
        tmp_path / "out",
        "sft",
        max_steps=1,
        per_device_train_batch_size=len(dataset),
        train_sampling_strategy="sequential",
        prompt_layout="original",  # the original's training layout, which its losses were computed on
    )
    trainer = OpenS2STrainer(model, args=args, train_dataset=dataset, processing_class=processor)
    trainer.train()
    first = trainer.state.log_history[0]
    ref = load_file(folder / "reference_outputs.safetensors")
    for logged, key in (
        ("text_loss", "forward.llm_loss"),
        ("speech_loss", "forward.tts_loss"),
        ("loss", "forward.loss"),
    ):
        torch.testing.assert_close(torch.tensor(first[logged]), ref[key], rtol=1e-5, atol=0)


# ---------------------------------------------------------------- resume
class StopAt(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        control.should_training_stop = state.global_step >= self.step


def test_resume_after_step_k_gives_the_uninterrupted_weights(tester, tmp_path):
    rows = [tester.text_to_speech(), tester.text_to_text()]
    common = {
        "per_device_train_batch_size": 1,
        "lr_scheduler_type": "linear",
        "save_strategy": "steps",
        "save_steps": 2,
    }
    interrupted = tester.trainer("sft", tmp_path / "interrupted", rows, **common)
    interrupted.add_callback(StopAt(2))
    interrupted.train()
    assert interrupted.state.global_step == 2 and (tmp_path / "interrupted" / "checkpoint-2").is_dir()

    resumed = tester.trainer("sft", tmp_path / "resumed", rows, **common)
    resumed.train(resume_from_checkpoint=str(tmp_path / "interrupted" / "checkpoint-2"))
    uninterrupted = tester.trainer("sft", tmp_path / "uninterrupted", rows, **common)
    uninterrupted.train()

    assert resumed.state.global_step == uninterrupted.state.global_step == 4
    assert losses(resumed, "loss")[-2:] == losses(uninterrupted, "loss")[-2:]
    expected = dict(uninterrupted.opens2s_model.named_parameters())
    for name, parameter in resumed.opens2s_model.named_parameters():
        assert torch.equal(parameter, expected[name]), name


# ---------------------------------------------------------------- LoRA, through the CLI
def test_lora_train_save_merge_reload(tester, tmp_path):
    from peft import PeftModel

    from opens2s.cli import main

    rows = [tester.speech_to_speech(), tester.text_to_speech()]
    data, out = tester.write_jsonl(rows, "lora.jsonl"), tmp_path / "lora"
    training_args = ["--output_dir", str(out), "--max_steps", "2", "--learning_rate", "1e-2", "--bf16", "False"]
    training_args += ["--use_cpu", "True", "--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "True"]
    training_args += ["--per_device_train_batch_size", "2", "--gradient_checkpointing", "False"]
    argv = ["train", "--stage", "sft", "--model", str(tester.model_dir), "--data", str(data), "--lora", "--"]
    assert main(argv + training_args) == 0

    adapter = load_file(out / "adapter_model.safetensors")
    assert any("lora_A" in key and "language_model" in key for key in adapter)
    assert not any("lora_" in key and "speech_decoder" in key for key in adapter)
    assert any("speech_decoder" in key for key in adapter)  # trained fully, saved with the adapter

    batch = OpenS2SDataCollator(tester.processor)(rows)
    # Both evaluated in float64: merging computes (W + s B A) x instead of W x + s B (A x), whose float32
    # reassociation error, amplified through the speech decoder, sits at the tolerance on some random tiny models; in
    # float64 what is left is the float32 rounding of the saved merged weights.
    base = AutoModel.from_pretrained(tester.model_dir, trust_remote_code=True, dtype=torch.float64).eval()
    with torch.no_grad():
        base_logits = base(**batch).logits
        adapted = PeftModel.from_pretrained(base, out).eval()
        adapted_out = adapted(**batch)
        merged = AutoModel.from_pretrained(out / "merged", trust_remote_code=True, dtype=torch.float64).eval()
        merged_out = merged(**batch)
    assert not torch.allclose(adapted_out.logits, base_logits, atol=1e-3)
    torch.testing.assert_close(merged_out.logits, adapted_out.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(merged_out.speech_logits, adapted_out.speech_logits, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- accelerate, two processes
@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes(tester, tmp_path):
    """Two gloo processes run `sft` with DDP; one row per process and step, so the row without a spoken answer
    leaves the speech decoder unused on its process (DDP must allow it) and the speech loss absent there."""
    data = tester.write_jsonl([tester.speech_to_speech(), tester.text_to_text()], "ddp.jsonl")
    out = tmp_path / "ddp"
    # `accelerate launch --cpu --num_processes 2` starts ONE process in accelerate 1.15 (its simple launcher forks
    # several only through mpirun); `--multi_gpu` uses torch.distributed.run, and `--use_cpu` makes them gloo on CPU.
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    command += [
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "opens2s.training.train",
    ]
    command += ["--stage", "sft", "--model_name_or_path", str(tester.model_dir), "--dataset_name", str(data)]
    command += [
        "--trust_remote_code",
        "--output_dir",
        str(out),
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "1",
    ]
    command += ["--use_cpu", "--bf16", "False", "--report_to", "none", "--save_strategy", "no", "--logging_steps", "1"]
    command += ["--gradient_checkpointing", "False", "--learning_rate", "1e-2", "--disable_tqdm", "True"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-4000:]

    state = json.loads((out / "trainer_state.json").read_text())
    steps = [entry for entry in state["log_history"] if "text_loss" in entry]
    # 2 rows, 1 per process: each step is a whole epoch only when both processes take part.
    assert [entry["epoch"] for entry in steps] == [1.0, 2.0]
    assert all("speech_loss" in entry for entry in steps)
    trained = AutoModel.from_pretrained(out, trust_remote_code=True)
    initial = AutoModel.from_pretrained(tester.model_dir, trust_remote_code=True)
    assert_only_stage_parts_changed(snapshot(initial), trained, EXPECTED_TRAINABLE["sft"])


# ---------------------------------------------------------------- data
def test_bad_rows_are_counted_by_reason(tester, caplog):
    (tester.folder / "broken.wav").write_bytes(b"not a wav file")
    good = tester.speech_to_speech()
    listed = json.loads(json.dumps(good))
    listed["messages"][1]["content"][0]["speech_units"] = [1, 2, 3]

    def with_item(role: int, **changes) -> str:
        row = json.loads(json.dumps(good))
        row["messages"][role]["content"][0].update(changes)
        return json.dumps(row)

    lines = [
        json.dumps(good),
        json.dumps(listed),
        with_item(0, audio="missing.wav"),
        with_item(0, audio="broken.wav"),
        with_item(1, text="", speech_units=""),
        with_item(1, speech_units="<|audio_64|>"),
        "{not json",
    ]
    path = tester.folder / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with caplog.at_level("WARNING", logger="opens2s"):
        dataset = load_training_dataset(path, num_units=tester.processor.num_units)
    assert len(dataset) == 2
    assert dataset[1]["messages"][1]["content"][0]["speech_units"] == "<|audio_1|><|audio_2|><|audio_3|>"
    for reason in (
        "1 missing audio file",
        "1 unreadable audio file",
        "1 empty message",
        "1 speech units out of range",
        "1 invalid json",
    ):
        assert reason in caplog.text
    assert "skipped 5 of 7 rows" in caplog.text


def test_datasets_with_an_audio_column(tester, tmp_path, caplog):
    import datasets

    (tmp_path / "broken.wav").write_bytes(b"not a wav file")
    table = datasets.Dataset.from_dict(
        {
            "audio": [str(tester.wav), str(tester.wav), str(tmp_path / "broken.wav")],
            "response": ["I'm here for you.", "That sounds really hard.", "Lost."],
            "speech_units": [[1, 2, 3, 4], [5, 6], [7]],
        }
    ).cast_column("audio", datasets.Audio(sampling_rate=16000))
    table.save_to_disk(tmp_path / "table")
    with caplog.at_level("WARNING", logger="opens2s"):
        dataset = load_training_dataset(tmp_path / "table", num_units=tester.processor.num_units)
    assert len(dataset) == 2 and "skipped 1 of 3 rows (1 unreadable audio file)" in caplog.text
    batch = OpenS2SDataCollator(tester.processor)([dataset[0], dataset[1]])
    assert batch["input_features"].shape[0] == 2 and batch["speech_units"].shape[0] == 2
    # A local folder of data files (`datasets.load_dataset`), conversations with paths relative to it.
    (tmp_path / "files").mkdir()
    soundfile.write(tmp_path / "files" / "q.wav", np.zeros(8000, dtype=np.float32), 16000)
    row = tester.conversation({"audio": "q.wav"}, {"text": "Your feelings are valid."})
    (tmp_path / "files" / "train.jsonl").write_text(json.dumps(row) + "\n")
    dataset = load_training_dataset(tmp_path / "files")
    assert dataset[0]["messages"][0]["content"][0]["audio"] == str((tmp_path / "files" / "q.wav").resolve())
    units = load_training_dataset(table.select([0, 1]), row_format="text_to_units")
    assert units[1] == {"text": "That sounds really hard.", "speech_units": "<|audio_5|><|audio_6|>"}


def test_accelerate_configs_are_valid_and_installed():
    from importlib.resources import files

    from accelerate.commands.config.config_args import load_config_from_file

    folder = files("opens2s.training") / "accelerate_configs"
    expected = {
        "single_gpu": "NO",
        "multi_gpu_ddp": "MULTI_GPU",
        "deepspeed_zero2": "DEEPSPEED",
        "deepspeed_zero3": "DEEPSPEED",
        "fsdp": "FSDP",
    }
    for name, distributed_type in expected.items():
        config = load_config_from_file(str(folder / f"{name}.yaml"))
        assert config.distributed_type.value == distributed_type, name
    assert load_config_from_file(str(folder / "deepspeed_zero3.yaml")).deepspeed_config["zero_stage"] == 3
    assert load_config_from_file(str(folder / "fsdp.yaml")).fsdp_config["fsdp_version"] == 2
