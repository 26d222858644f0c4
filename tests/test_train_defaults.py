"""`opens2s train` as README shows it, without precision or device flags: precision from the hardware (fp32 on a
CPU), and `--resume_from_checkpoint True` meaning the latest checkpoint in `--output_dir`.

Sizes: the tiny model (`opens2s.conversion.tiny`) and two text-to-speech rows (no audio to encode: a step takes well
under a second on CPU), batch 2, so one step is one epoch.
"""

import json
import logging
from pathlib import Path

import pytest
from transformers.utils import is_torch_bf16_gpu_available

from opens2s.cli import main
from opens2s.training import OpenS2SSFTConfig


ON_CPU_ONLY = pytest.mark.skipif(is_torch_bf16_gpu_available(), reason="this machine has a bf16 accelerator")


def spoken_answer_row(question: str, answer: str, units: list[int]) -> dict:
    """One text-to-speech training row in the original format (units below the tiny model's 64)."""
    spoken = {"text": answer, "speech_units": "".join(f"<|audio_{unit}|>" for unit in units)}
    return {
        "messages": [{"role": "user", "content": [{"text": question}]}, {"role": "assistant", "content": [spoken]}]
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("train-defaults") / "train.jsonl"
    rows = [
        spoken_answer_row("I failed my exam today.", "Take a deep breath.", [8, 8, 1, 50, 51, 22, 6, 19]),
        spoken_answer_row("I feel alone.", "You are not alone.", [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]),
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def train(model_dir: Path, data: Path, output_dir: Path, *extra: str) -> int:
    """`opens2s train --stage sft` with README's arguments only: no --bf16/--fp16, no --use_cpu."""
    argv = ["train", "--stage", "sft", "--model", str(model_dir), "--data", str(data), "--"]
    argv += ["--output_dir", str(output_dir), "--report_to", "none", "--disable_tqdm", "True", *extra]
    return main(argv)


def trained_steps(output_dir: Path) -> int:
    return json.loads((output_dir / "trainer_state.json").read_text())["global_step"]


@ON_CPU_ONLY
def test_precision_defaults_to_fp32_on_cpu():
    args = OpenS2SSFTConfig("unused")
    assert not args.bf16 and not args.fp16


def test_explicit_precision_wins(monkeypatch):
    assert OpenS2SSFTConfig("unused", bf16=True, use_cpu=True).bf16  # CPU bf16 autocast, asked for
    assert not OpenS2SSFTConfig("unused", fp16=True).bf16  # --fp16 alone never adds bf16
    # --use_cpu on a bf16-capable machine trains in fp32.
    monkeypatch.setattr("opens2s.training.config.is_torch_bf16_gpu_available", lambda: True)
    assert not OpenS2SSFTConfig("unused", use_cpu=True).bf16


@ON_CPU_ONLY
def test_train_without_flags_runs_in_fp32_and_saves(tiny_model_dir, data, tmp_path, caplog):
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="opens2s"):
        assert train(tiny_model_dir, data, out, "--max_steps", "1") == 0
    assert "Training on cpu in fp32 precision" in caplog.text
    assert trained_steps(out) == 1
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()


def test_resume_true_continues_from_the_latest_checkpoint(tiny_model_dir, data, tmp_path, caplog):
    out = tmp_path / "run"
    assert train(tiny_model_dir, data, out, "--max_steps", "2", "--save_steps", "1") == 0
    assert {path.name for path in out.glob("checkpoint-*")} == {"checkpoint-1", "checkpoint-2"}
    saved = {path.name: path.stat().st_mtime_ns for path in out.glob("checkpoint-*/trainer_state.json")}
    with caplog.at_level(logging.INFO, logger="opens2s"):
        resumed = train(
            tiny_model_dir, data, out, "--max_steps", "3", "--save_steps", "1", "--resume_from_checkpoint", "True"
        )
    assert resumed == 0
    assert f"Resuming from the latest checkpoint, {out / 'checkpoint-2'}" in caplog.text
    # Only step 3 ran: a fresh run would have written checkpoint-1 and checkpoint-2 again.
    assert trained_steps(out) == 3 and (out / "checkpoint-3").is_dir()
    assert {path.name: path.stat().st_mtime_ns for path in out.glob("checkpoint-[12]/trainer_state.json")} == saved


def test_resume_true_without_a_checkpoint_is_a_clear_error(tiny_model_dir, data, tmp_path, capsys):
    out = tmp_path / "empty"
    out.mkdir()
    assert train(tiny_model_dir, data, out, "--resume_from_checkpoint", "true") == 1
    assert f"--resume_from_checkpoint True: no checkpoint-* folder in --output_dir {out}" in capsys.readouterr().err
