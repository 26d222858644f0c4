"""Issue 17, items 6, 7, 9, 14 and 15: the CLI on bad destinations and bad checkpoint files (one line, no traceback,
nothing left on disk), conversions that are whole or absent, no model-folder code run unless asked for, and
checksums that name the file that changed. Every bad input is generated here."""

import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from fixture_sets import reference_sets, requires_token2wav, token2wav_sets
from opens2s.cli import main
from opens2s.conversion.checksums import CHECKSUMS_NAME, ChecksumError, verify_checksums, write_checksums


def one_error_line(capsys, command: str) -> str:
    """The stderr of a failed command: exactly one `opens2s COMMAND: error: ...` line and no traceback."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"opens2s {command}: error: "), err
    assert "Traceback" not in err
    return lines[0]


def partial_folders(parent: Path) -> list[Path]:
    return sorted(parent.glob(".*.partial-*"))


# ------------------------------------------------------------------ item 6: chat --out checked before loading
@pytest.mark.parametrize(
    ("out", "message"),
    [
        pytest.param("missing/reply.wav", "does not exist", id="missing-folder"),
        pytest.param(".", "is a folder", id="a-folder"),
        pytest.param("reply.txt", "unknown audio format '.txt'", id="txt-name"),
        pytest.param("reply", "unknown audio format ''", id="no-extension"),
    ],
)
def test_chat_refuses_a_bad_out_before_loading_the_model(tmp_path, capsys, monkeypatch, out, message):
    import opens2s.processing.chat

    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(opens2s.processing.chat, "load_speech_model", must_not_load)
    assert main(["chat", "--out", str(tmp_path / out), "--threads", "1"]) == 2
    assert message in one_error_line(capsys, "chat")
    assert list(tmp_path.iterdir()) == []  # no folder made, no file written


# ------------------------------------------------------------------ item 7: bad original .pt files
class _RunsCode:
    """Pickles into a call of `os.system`: what a malicious checkpoint holds."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _write_bad_pt(kind: str, path: Path, marker: Path) -> None:
    if kind == "malicious":
        torch.save({"weight": _RunsCode(marker)}, path)
    elif kind == "raw-pickle":  # protocol 2: the opcodes torch's weights-only unpickler reads
        path.write_bytes(pickle.dumps({"weight": _RunsCode(marker)}, protocol=2))
    elif kind == "raw-pickle-protocol-4":
        path.write_bytes(pickle.dumps({"weight": _RunsCode(marker)}, protocol=4))
    elif kind == "garbage":
        path.write_bytes(bytes(range(256)) * 16)
    elif kind == "truncated":
        torch.save({"weight": torch.zeros(4096)}, path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "not-a-state-dict":
        torch.save([torch.zeros(3)], path)


BAD_PT = {
    "malicious": "refused: it asks to run code",
    "raw-pickle": "refused: it asks to run code",
    "raw-pickle-protocol-4": "not a PyTorch weights file",
    "garbage": "not a PyTorch weights file",
    "truncated": "truncated or corrupted",
    "empty": "truncated or corrupted",
    "not-a-state-dict": "holds a list, not a state dict",
}


def _decoder_folder(original: Path, root: Path, bad: str | None = None, name: str = "flow.pt") -> Path:
    """A copy of the original decoder folder, with `name` replaced by a bad file of kind `bad`."""
    folder = root / "decoder"
    folder.mkdir()
    for file in ("config.yaml", "flow.pt", "hift.pt"):
        shutil.copyfile(original / file, folder / file)
    if bad is not None:
        _write_bad_pt(bad, folder / name, root / "CODE_RAN")
    return folder


@requires_token2wav
@pytest.mark.parametrize("name", ["flow.pt", "hift.pt"])
@pytest.mark.parametrize("kind", list(BAD_PT))
def test_convert_token2wav_names_the_bad_file_and_leaves_nothing(tmp_path, capsys, kind, name):
    folder = _decoder_folder(token2wav_sets()[0].values[0], tmp_path, kind, name)
    dst = tmp_path / "out" / "t2w"
    assert main(["convert-token2wav", str(folder), str(dst)]) == 1
    line = one_error_line(capsys, "convert-token2wav")
    assert str(folder / name) in line and BAD_PT[kind] in line
    assert not (tmp_path / "CODE_RAN").exists()
    assert not dst.exists() and partial_folders(dst.parent) == []


@requires_token2wav
def test_load_original_checkpoint_raises_value_error_naming_the_file(tmp_path):
    from opens2s.conversion.convert_original_token2wav import load_original_checkpoint

    _write_bad_pt("malicious", tmp_path / "flow.pt", tmp_path / "CODE_RAN")
    with pytest.raises(ValueError, match=r"flow\.pt: refused: it asks to run code.*GLOBAL .*system"):
        load_original_checkpoint(tmp_path / "flow.pt")
    assert not (tmp_path / "CODE_RAN").exists()


# ------------------------------------------------------------------ item 9: whole or absent
@requires_token2wav
@pytest.mark.parametrize("original", reference_sets())
def test_convert_whose_token2wav_fails_leaves_no_folder_and_reruns(original, tmp_path, capsys):
    decoder = token2wav_sets()[0].values[0]
    broken = _decoder_folder(decoder, tmp_path, "truncated")
    dst = tmp_path / "converted"
    assert main(["convert", str(original), str(dst), "--token2wav", str(broken)]) == 1
    assert "flow.pt: not a readable PyTorch checkpoint" in one_error_line(capsys, "convert")
    assert not dst.exists() and partial_folders(tmp_path) == []

    # The re-run is not refused as "not empty", and gives a whole folder whose checksums hold.
    assert main(["convert", str(original), str(dst), "--token2wav", str(decoder)]) == 0
    assert (dst / "token2wav" / "model.safetensors").is_file() and (dst / CHECKSUMS_NAME).is_file()
    checked = verify_checksums(dst)
    assert "model.safetensors" in checked and "token2wav/model.safetensors" in checked
    assert partial_folders(tmp_path) == []


KILL_AFTER_MAIN_WEIGHTS = """
import os, signal, sys
import opens2s.conversion.convert_original_opens2s as converter

def killed(src, dst):  # SIGKILL once the main folder is written, before its token2wav part
    assert (dst.parent / "model.safetensors").exists() or any(dst.parent.glob("model-*.safetensors"))
    os.kill(os.getpid(), signal.SIGKILL)

converter.write_token2wav = killed
converter.convert_original_checkpoint(sys.argv[1], sys.argv[2], token2wav=sys.argv[3])
"""


@requires_token2wav
@pytest.mark.parametrize("original", reference_sets())
def test_convert_killed_mid_way_leaves_no_folder_and_the_rerun_cleans_up(original, tmp_path, caplog):
    decoder = token2wav_sets()[0].values[0]
    dst = tmp_path / "converted"
    run = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(KILL_AFTER_MAIN_WEIGHTS), str(original), str(dst), str(decoder)],
        capture_output=True,
        text=True,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
    )
    assert run.returncode == -signal.SIGKILL, run.stderr
    assert not dst.exists()  # a folder that loads would answer without a voice
    (leftover,) = partial_folders(tmp_path)
    assert (leftover / "config.json").exists()

    assert main(["convert", str(original), str(dst), "--token2wav", str(decoder)]) == 0
    assert partial_folders(tmp_path) == [] and verify_checksums(dst)
    assert any("incomplete write" in record.getMessage() for record in caplog.records)


def test_a_write_still_running_is_not_removed(tmp_path):
    from opens2s.conversion.export import staged_output

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        leftover = tmp_path / f".out.partial-{sleeper.pid}-abcd"
        leftover.mkdir()
        with pytest.raises(FileExistsError, match=rf"still running \(process {sleeper.pid}\)"):
            with staged_output(tmp_path / "out"):
                pass
        assert leftover.is_dir() and not (tmp_path / "out").exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_staged_output_is_removed_on_error_and_refuses_a_full_folder(tmp_path):
    from opens2s.conversion.export import staged_output

    with pytest.raises(RuntimeError, match="boom"):
        with staged_output(tmp_path / "out") as staging:
            (staging / "model.safetensors").write_bytes(b"half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="exists and is not an empty folder"):
        with staged_output(tmp_path / "full"):
            pass
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]


# ------------------------------------------------------------------ item 14: no folder code unless asked for
MARKER_LINE = 'import pathlib; pathlib.Path({marker!r}).joinpath({name!r}).write_text("ran")\n'


def _tampered_copy(tiny_model_dir: Path, root: Path) -> tuple[Path, Path]:
    """A copy of the tiny folder whose every remote-code file writes a marker when imported; the attacker also
    rewrote checksums.sha256, so only the trust rule can stop it."""
    folder, markers = root / "tampered", root / "markers"
    shutil.copytree(tiny_model_dir, folder)
    markers.mkdir()
    for path in folder.rglob("*.py"):
        with path.open("a") as handle:
            handle.write(MARKER_LINE.format(marker=str(markers), name=path.name))
    write_checksums(folder)
    return folder, markers


def _chat(folder: Path, out: Path, *extra: str) -> int:
    args = ["chat", "--model", str(folder), "--out", str(out), "--max-new-tokens", "2", "--max-units", "12"]
    return main([*args, "--threads", "1", *extra])


def test_chat_does_not_run_the_folders_code_unless_trusted(tiny_model_dir, tmp_path):
    folder, markers = _tampered_copy(tiny_model_dir, tmp_path)
    assert _chat(folder, tmp_path / "reply.wav") == 0
    assert list(markers.iterdir()) == []
    assert (tmp_path / "reply.wav").is_file()

    assert _chat(folder, tmp_path / "reply2.wav", "--trust-remote-code") == 0
    ran = {path.name for path in markers.iterdir()}
    assert {"modeling_opens2s.py", "processing_opens2s.py", "feature_extraction_opens2s.py"} <= ran


def test_load_speech_model_uses_the_installed_classes(tiny_model_dir):
    from opens2s.processing.chat import load_speech_model

    speech_model = load_speech_model(tiny_model_dir)
    for part in (speech_model.model, speech_model.processor, speech_model.processor.feature_extractor):
        assert type(part).__module__.startswith("opens2s.modeling_opens2s."), type(part)
    assert type(speech_model.model.token2wav).__module__ == "opens2s.modeling_opens2s.modeling_token2wav"


def test_saving_a_model_loaded_untrusted_does_not_run_the_folders_processor_code(tiny_model_dir, tmp_path):
    """`save_pretrained` (so `Trainer.save_model`) copies the source folder's processor files instead of loading
    them, which would import the folder's feature-extractor code."""
    from opens2s.processing.loading import load_opens2s_model, load_opens2s_processor

    folder, markers = _tampered_copy(tiny_model_dir, tmp_path)
    model = load_opens2s_model(folder)
    model.save_pretrained(tmp_path / "saved")
    assert list(markers.iterdir()) == []
    saved_processor = load_opens2s_processor(tmp_path / "saved")
    original_processor = load_opens2s_processor(tiny_model_dir)
    assert saved_processor.tokenizer.get_vocab() == original_processor.tokenizer.get_vocab()
    assert saved_processor.num_units == original_processor.num_units


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        pytest.param([], ["--trust_remote_code", "False", "--verify_checksums", "True"], id="default"),
        pytest.param(
            ["--trust-remote-code", "--no-verify"],
            ["--trust_remote_code", "True", "--verify_checksums", "False"],
            id="opted-in",
        ),
    ],
)
def test_train_passes_trust_and_verify_on(monkeypatch, flags, expected):
    import opens2s.training.train

    seen = []
    monkeypatch.setattr(opens2s.training.train, "main", lambda argv: seen.append(argv) or 0)
    assert main(["train", "--stage", "sft", "--model", "m", "--data", "d.jsonl", *flags]) == 0
    (argv,) = seen
    start = argv.index("--trust_remote_code")
    assert argv[start : start + 4] == expected


@pytest.mark.parametrize("command", ["space", "serve"])
def test_space_and_serve_take_the_loading_flags(command):
    from opens2s.cli import build_parser

    args = build_parser().parse_args([command])
    assert (args.trust_remote_code, args.verify) == (False, True)
    args = build_parser().parse_args([command, "--trust-remote-code", "--no-verify"])
    assert (args.trust_remote_code, args.verify) == (True, False)


# ------------------------------------------------------------------ item 15: checksums
def _flip_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))  # same size


def test_tiny_folder_has_checksums_and_verify_says_ok(tiny_model_dir, capsys):
    assert (tiny_model_dir / CHECKSUMS_NAME).is_file()
    assert main(["verify", str(tiny_model_dir)]) == 0
    assert capsys.readouterr().out.startswith(f"{tiny_model_dir}: OK, ")


@pytest.mark.parametrize("name", ["model.safetensors", "token2wav/model.safetensors", "config.json"])
def test_a_flipped_byte_is_named_by_verify_and_refused_at_load(tiny_model_dir, tmp_path, capsys, name):
    from opens2s.processing.chat import load_speech_model

    folder = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, folder)
    size = (folder / name).stat().st_size
    _flip_one_byte(folder / name)
    assert (folder / name).stat().st_size == size
    assert main(["verify", str(folder)]) == 1
    assert f"{name} differs from its checksum" in one_error_line(capsys, "verify")
    with pytest.raises(ChecksumError, match=rf"{name} differs from its checksum.*--no-verify"):
        load_speech_model(folder)
    assert main(["chat", "--model", str(folder), "--out", str(tmp_path / "r.wav"), "--threads", "1"]) == 1
    assert f"{name} differs" in one_error_line(capsys, "chat")
    assert not (tmp_path / "r.wav").exists()


def test_a_missing_file_and_a_broken_manifest_are_named(tiny_model_dir, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "generation_config.json").unlink()
    with pytest.raises(ChecksumError, match=r"generation_config\.json is missing"):
        verify_checksums(folder)
    (folder / CHECKSUMS_NAME).write_text("0123  ../../etc/passwd\n")
    with pytest.raises(ChecksumError, match=r"line 1 is not '<sha256>  <relative path>'"):
        verify_checksums(folder)


def test_a_folder_without_checksums_is_not_checked(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")
    assert verify_checksums(tmp_path) is None
    assert main(["verify", str(tmp_path)]) == 1
    assert "no checksums.sha256, nothing to check" in capsys.readouterr().out
    assert main(["verify", str(tmp_path / "nope")]) == 1
    assert "is not a folder" in one_error_line(capsys, "verify")
