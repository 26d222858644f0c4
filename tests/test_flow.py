"""The flow decoder (units -> mel) against the original GLM-4-Voice `MaskedDiffWithXvec` fixtures (`token2wav_*`).

Every fixture set with a manifest is checked the same way: the model is built from the set's `decoder_config.json`,
the calls are read from its manifest. Tolerances are the fixture README's.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fixture_sets import requires_token2wav, token2wav_sets
from opens2s.conversion.convert_original_token2wav import flow_state_dict_from_original
from opens2s.modeling_opens2s.configuration_token2wav import OpenS2SToken2WavFlowConfig
from opens2s.modeling_opens2s.modeling_token2wav_flow import FlowDecoder
from opens2s.modeling_opens2s.modeling_token2wav_flow_encoder import BlockConformerEncoder


ENCODER_ATOL = 1e-5  # encoder_out, encoder_proj_out, mu, spks
ODE_ATOL = 1e-4  # v_*, x_step*, mel_full
NOISE_SEED = 42  # the original's torch.manual_seed(42) before every ODE
MU_BATCH_ULPS = 16  # batched vs one-row `mu`, in float32 eps of its magnitude (see test_tiny_model_runs_and_batches)
GUIDANCE_BATCH_ULPS = 32  # batch-2 guidance vs two calls, in float32 eps of max|mel| (see its test)


pytestmark = pytest.mark.usefixtures("single_thread")


def flow_config(config: dict) -> OpenS2SToken2WavFlowConfig:
    """The `FlowDecoder` config of a fixture set's `decoder_config.json` (asserting the layout we implement)."""
    flow = config["flow"]
    encoder, cfm = flow["encoder"], flow["decoder"]
    estimator, constants = cfm["estimator"], flow["inference_constants"]
    assert encoder["pos_enc_layer_type"] == "rel_pos_espnet"
    assert encoder["selfattention_layer_type"] == "block_rel_selfattn"
    assert encoder["input_layer"] == "linear" and encoder["normalize_before"] and encoder["key_bias"]
    assert not encoder["use_cnn_module"] and not encoder["macaron_style"]
    assert encoder["input_size"] == flow["input_size"]
    assert estimator["in_channels"] == 4 * flow["output_size"] == cfm["in_channels"] + cfm["spk_emb_dim"]
    assert estimator["out_channels"] == flow["output_size"] and estimator["act_fn"] == "gelu"
    assert (cfm["cfm_params"]["solver"], cfm["cfm_params"]["t_scheduler"]) == ("euler", "cosine")
    return OpenS2SToken2WavFlowConfig(
        vocab_size=flow["vocab_size"],
        token_embedding_dim=flow["input_size"],
        mel_bins=flow["output_size"],
        speaker_embedding_dim=flow["spk_embed_dim"],
        input_frame_rate=flow["input_frame_rate"],
        # The original's frame formula hard-codes 22050 / 256, whatever the config's sample rate.
        sampling_rate=22050,
        hop_length=256,
        encoder_hidden_size=encoder["output_size"],
        encoder_num_heads=encoder["attention_heads"],
        encoder_ffn_dim=encoder["linear_units"],
        encoder_num_layers=encoder["num_blocks"],
        encoder_block_size=encoder["block_size"],
        regulator_sampling_ratios=flow["length_regulator"]["sampling_ratios"],
        estimator_channels=estimator["channels"],
        estimator_attention_head_dim=estimator["attention_head_dim"],
        estimator_num_heads=estimator["num_heads"],
        estimator_num_blocks=estimator["n_blocks"],
        estimator_num_mid_blocks=estimator["num_mid_blocks"],
        num_timesteps=constants["n_timesteps"],
        cfg_rate=cfm["cfm_params"]["inference_cfg_rate"],
        temperature=constants["temperature"],
    )


@pytest.fixture(scope="module", params=token2wav_sets())
def fixture_set(request: pytest.FixtureRequest) -> dict:
    """One fixture set: the loaded model, its reference tensors and its manifest."""
    folder: Path = request.param
    config = json.loads((folder / "decoder_config.json").read_text())
    model = FlowDecoder(flow_config(config)).eval()
    original = torch.load(folder / "flow.pt", weights_only=True)
    model.load_state_dict(flow_state_dict_from_original(original, expected_keys=model.state_dict().keys()))
    manifest = json.loads((folder / "manifest.json").read_text())
    tensors = load_file(folder / "reference_outputs.safetensors")
    return {"model": model, "tensors": tensors, "manifest": manifest, "config": config}


def seeded_generator() -> torch.Generator:
    return torch.Generator().manual_seed(NOISE_SEED)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float, what: str) -> None:
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    torch.testing.assert_close(actual, expected, rtol=0, atol=atol, msg=lambda m: f"{what}: {m}")


def offline_calls(manifest: dict) -> list[str]:
    return [tag for tag, call in manifest["calls"].items() if isinstance(call, dict)]


def stream_calls(manifest: dict) -> list[str]:
    return [tag for tag, call in manifest["calls"].items() if isinstance(call, list)]


def recorder(trace: dict):
    """A `step_callback` that keeps t and x of every Euler step and both velocities of step 0."""

    def record(step: int, t: torch.Tensor, x: torch.Tensor, v_cond: torch.Tensor, v_uncond: torch.Tensor) -> None:
        trace[f"t{step}"], trace[f"x_step{step}"] = t.clone(), x.clone()
        if step == 0:
            trace["v_cond_step0"], trace["v_uncond_step0"] = v_cond.clone(), v_uncond.clone()

    return record


@requires_token2wav
def test_frame_count_formula(fixture_set: dict) -> None:
    model = fixture_set["model"]
    for tag, calls in fixture_set["manifest"]["calls"].items():
        for index, call in enumerate(calls if isinstance(calls, list) else [calls]):
            total = model.num_frames(call["prompt_token_len"] + call["token_len"])
            assert total == call["T_total"], f"{tag}[{index}]"


@requires_token2wav
def test_offline_and_prompted_calls(fixture_set: dict) -> None:
    """Non-streaming calls: every stored intermediate, the ODE trace and the result, seed-42 noise."""
    model, tensors = fixture_set["model"], fixture_set["tensors"]
    for tag in offline_calls(fixture_set["manifest"]):
        trace = {}
        prompt_mel = tensors.get(f"{tag}/prompt_feat")
        with torch.inference_mode():
            out = model.inference(
                tensors[f"{tag}/token"],
                prompt_tokens=tensors[f"{tag}/prompt_token"],
                prompt_mel=prompt_mel if prompt_mel is not None and prompt_mel.shape[1] else None,
                speaker_embedding=tensors[f"{tag}/embedding"],
                generator=seeded_generator(),
                step_callback=recorder(trace),
            )
        assert torch.equal(trace["x_step0"], tensors[f"{tag}/flow/noise_z"]), f"{tag}: seed-42 noise"
        for name, actual, atol in (
            ("flow/encoder_out", out.encoder_out, ENCODER_ATOL),
            ("flow/encoder_proj_out", out.encoder_proj_out, ENCODER_ATOL),
            ("flow/spks", out.speaker_condition, ENCODER_ATOL),
            ("flow/mu", out.mu, ENCODER_ATOL),
            ("flow/mel_full", out.mel_full, ODE_ATOL),
        ):
            assert_close(actual, tensors[f"{tag}/{name}"], atol, f"{tag}/{name}")
        if f"{tag}/ode/t" in tensors:
            t = torch.stack([trace[f"t{step}"] for step in range(model.num_timesteps)])
            # Accumulated float32 t (docs/original_behaviour.md#ob-t2w-8): exact or 1 ulp.
            expected_t = tensors[f"{tag}/ode/t"]
            ulp = torch.nextafter(expected_t, torch.full_like(expected_t, 2.0)) - expected_t
            assert ((t - expected_t).abs() <= ulp).all(), f"{tag}/ode/t: {t.tolist()} != {expected_t.tolist()}"
        for name in ("v_cond_step0", "v_uncond_step0", "x_step1", "x_step5"):
            if f"{tag}/ode/{name}" in tensors:
                assert_close(trace[name], tensors[f"{tag}/ode/{name}"], ODE_ATOL, f"{tag}/ode/{name}")
        assert torch.equal(out.mel, out.mel_full[:, :, 0 if prompt_mel is None else prompt_mel.shape[1] :])


def stored_prefade_mel(stored: torch.Tensor, start: int, overlap: torch.Tensor, window: np.ndarray) -> torch.Tensor:
    """Undo the streaming cross-fade that the original wrote into the recorded `flow/mel_full`.

    `flow.inference` returns the view `mel_full[:, :, P:]`, and `fade_in_out` (on CPU `.cpu()` is a no-op) overwrites
    its first `n` frames in place with `new * w[:n] + held_overlap * w[n:]` (float64 maths, np.hamming window), so
    the recorded `mel_full` of every call after the first holds faded frames `[P, P + n)`. Inverting the fade
    (`w[:n] >= 0.08`) recovers the flow's own output there to ~1e-5.
    """
    n = overlap.shape[-1]
    window = torch.from_numpy(window)
    restored = stored.clone()
    faded = stored[:, :, start : start + n].double()
    restored[:, :, start : start + n] = ((faded - overlap.double() * window[n:]) / window[:n]).float()
    return restored


@requires_token2wav
def test_streaming_calls(fixture_set: dict) -> None:
    """Streaming calls: prompt mel = earlier calls' vocoded mels, seed-42 noise per call, mu and mel_full."""
    model, tensors, manifest = fixture_set["model"], fixture_set["tensors"], fixture_set["manifest"]
    window = np.hamming(2 * fixture_set["config"]["streaming_constants_flow_inference_py"]["mel_overlap_len"])
    for tag in stream_calls(manifest):
        returned_mels = []
        for index, call in enumerate(manifest["calls"][tag]):
            prefix = f"{tag}/call{index}"
            prompt_mel = torch.cat(returned_mels, dim=2).transpose(1, 2) if returned_mels else None
            assert (0 if prompt_mel is None else prompt_mel.shape[1]) == call["prompt_feat_len"], prefix
            with torch.inference_mode():
                out = model.inference(
                    tensors[f"{prefix}/token"],
                    prompt_tokens=tensors[f"{prefix}/prompt_token"],
                    prompt_mel=prompt_mel,
                    generator=seeded_generator(),
                )
            if f"{prefix}/flow/mu" in tensors:
                assert_close(out.mu, tensors[f"{prefix}/flow/mu"], ENCODER_ATOL, f"{prefix}/flow/mu")
            expected = tensors[f"{prefix}/flow/mel_full"]
            if index > 0 and not torch.allclose(out.mel_full, expected, rtol=0, atol=ODE_ATOL):
                overlap = tensors[f"{tag}/call{index - 1}/state/mel_overlap"]
                expected = stored_prefade_mel(expected, call["prompt_feat_len"], overlap, window)
            assert_close(out.mel_full, expected, ODE_ATOL, f"{prefix}/flow/mel_full")
            returned_mels.append(tensors[f"{prefix}/hift/in_mel"])


TINY_CONFIG = {
    "vocab_size": 32,
    "token_embedding_dim": 16,
    "mel_bins": 80,
    "speaker_embedding_dim": 24,
    "input_frame_rate": 12.5,
    "sampling_rate": 22050,
    "hop_length": 256,
    "encoder_hidden_size": 16,
    "encoder_num_heads": 2,
    "encoder_ffn_dim": 32,
    "encoder_num_layers": 1,
    "encoder_block_size": 4,
    "regulator_sampling_ratios": [1, 1],
    "estimator_channels": [16, 16],
    "estimator_attention_head_dim": 8,
    "estimator_num_heads": 3,
    "estimator_num_blocks": 1,
    "estimator_num_mid_blocks": 1,
    "num_timesteps": 4,
    "cfg_rate": 0.7,
    "temperature": 1.0,
}


@pytest.fixture(scope="module")
def tiny_model() -> FlowDecoder:
    torch.manual_seed(0)
    return FlowDecoder(OpenS2SToken2WavFlowConfig(**TINY_CONFIG)).eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_tiny_model_runs_and_batches(tiny_model: FlowDecoder, dtype: torch.dtype) -> None:
    model = FlowDecoder(OpenS2SToken2WavFlowConfig(**TINY_CONFIG)).eval()
    model.load_state_dict(tiny_model.state_dict())
    model.to(dtype)
    tokens = torch.tensor([[1, 5, 9, 2, 31, 7, 3], [4, 4, 0, 12, 8, 30, 1]])
    prompt_tokens = torch.tensor([[6, 7, 8], [9, 10, 11]])
    prompt_mel = torch.randn(2, 20, 80, generator=torch.Generator().manual_seed(1))
    speaker = torch.randn(2, 24, generator=torch.Generator().manual_seed(2))
    total = model.num_frames(10)
    noise = torch.randn(2, 80, total, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        both = model.inference(tokens, prompt_tokens, prompt_mel, speaker, noise=noise)
        alone = [
            model.inference(
                tokens[i : i + 1],
                prompt_tokens[i : i + 1],
                prompt_mel[i : i + 1],
                speaker[i : i + 1],
                noise=noise[i : i + 1],
            )
            for i in range(2)
        ]
    assert both.mel_full.dtype == torch.float32 and both.mel.shape == (2, 80, total - 20)
    assert torch.isfinite(both.mel_full).all()
    if dtype == torch.float32:
        for i in range(2):
            assert_close(both.mel_full[i : i + 1], alone[i].mel_full, 1e-5, f"row {i} batched vs alone")
            # Equal only up to rounding: a batch of 2 and a batch of 1 run the matmuls/convs with other blocking, so
            # their float32 sums are added in another order, and each reordered reduction moves a result by a few
            # ulps of the values it sums. `mu` passes ~5 of them (encoder projection, two regulator convs with their
            # GroupNorm statistics, the 1x1 output conv); measured up to 6.5 eps * max|mu| on this machine, we allow
            # MU_BATCH_ULPS. A batching bug (a row reading another row's units or frames) moves `mu` by O(1).
            atol = MU_BATCH_ULPS * torch.finfo(torch.float32).eps * alone[i].mu.abs().max().item()
            assert_close(both.mu[i : i + 1], alone[i].mu, atol, f"row {i} mu batched vs alone")


def test_batched_guidance_equals_two_calls_up_to_float32_rounding(tiny_model: FlowDecoder) -> None:
    """`batch_guidance=True` (block streaming's solver) runs v(x, mu, spks, cond) and v(x, 0, 0, 0) as one batch-2
    call: the same velocities, only summed in another kernel order."""
    tokens = torch.tensor([[1, 5, 9, 2, 31, 7, 3]])
    prompt_tokens, prompt_mel = (
        torch.tensor([[6, 7, 8]]),
        torch.randn(1, 20, 80, generator=torch.Generator().manual_seed(1)),
    )
    speaker = torch.randn(1, 24, generator=torch.Generator().manual_seed(2))
    noise = torch.randn(1, 80, tiny_model.num_frames(10), generator=torch.Generator().manual_seed(3))
    steps = {True: [], False: []}
    with torch.inference_mode():
        outputs = {
            batched: tiny_model.inference(
                tokens,
                prompt_tokens,
                prompt_mel,
                speaker,
                noise=noise,
                batch_guidance=batched,
                step_callback=lambda step, t, x, v_cond, v_uncond, batched=batched: steps[batched].append(
                    (v_cond, v_uncond)
                ),
            ).mel_full
            for batched in (False, True)
        }
    # Each Euler step feeds the rounding of the last into a deep U-Net, so the ODE result moves by a few ulps of
    # max|mel|: measured 5.5 eps (tiny) and 8.9 eps (released dims) on this machine; a mix-up of the two rows
    # (guidance applied the wrong way round) moves it by O(1).
    atol = GUIDANCE_BATCH_ULPS * torch.finfo(torch.float32).eps * outputs[False].abs().max().item()
    assert_close(outputs[True], outputs[False], atol, "batch-2 guidance vs two calls")
    assert not torch.equal(steps[True][0][0], steps[True][0][1])  # the callback sees both velocities, apart
    for (cond_batched, uncond_batched), (cond, uncond) in zip(steps[True], steps[False], strict=True):
        assert cond_batched.shape == cond.shape and uncond_batched.shape == uncond.shape


def test_noise_never_touches_global_rng(tiny_model: FlowDecoder) -> None:
    tokens = torch.tensor([[1, 2, 3, 4, 5]])
    state = torch.random.get_rng_state()
    with torch.inference_mode():
        first = tiny_model.inference(tokens).mel_full
        seeded = tiny_model.inference(tokens, generator=seeded_generator()).mel_full
        again = tiny_model.inference(tokens, generator=seeded_generator()).mel_full
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(seeded, again) and not torch.equal(first, seeded)


def test_encoder_is_block_causal_and_ignores_padding() -> None:
    torch.manual_seed(0)
    config = OpenS2SToken2WavFlowConfig(
        token_embedding_dim=8,
        encoder_hidden_size=16,
        encoder_num_heads=2,
        encoder_ffn_dim=16,
        encoder_num_layers=2,
        encoder_block_size=3,
    )
    encoder = BlockConformerEncoder(config)
    inputs = torch.randn(1, 10, 8)
    changed = inputs.clone()
    changed[:, 7] += 1.0  # block 2 (tokens 6-8)
    padded = torch.cat([inputs, torch.randn(1, 4, 8)], dim=1)
    with torch.inference_mode():
        reference = encoder(inputs)
        after_change = encoder(changed)
        after_padding = encoder(padded, torch.tensor([[1] * 10 + [0] * 4]))
    assert torch.equal(reference[:, :6], after_change[:, :6])
    assert not torch.allclose(reference[:, 6:9], after_change[:, 6:9])
    torch.testing.assert_close(after_padding[:, :10], reference, rtol=0, atol=1e-6)


def test_converter_names_bad_keys(tiny_model: FlowDecoder) -> None:
    keys = tiny_model.state_dict().keys()
    original = {"input_embedding.weight": torch.zeros(1), "decoder.bogus.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match=r"unexpected keys \['decoder\.bogus\.weight'\].*missing \[.*encoder\."):
        flow_state_dict_from_original(original, expected_keys=keys)
