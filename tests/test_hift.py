"""HiFT vocoder (`modeling_token2wav_hift`) against the recorded outputs of the original `HiFTGenerator` in every
token2wav set.

Every recorded decoder call is replayed: the vocoded mel, the recorded `cache_source`, and a generator seeded as the
original's global one was (the flow's noise drawn first, then HiFT's draws). Tolerances are the fixture README's
(f0 2e-3 Hz, source 1e-3, speech 1e-3).
"""

import functools
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fixture_sets import recorded_calls, requires_token2wav, token2wav_sets
from opens2s.conversion.convert_original_token2wav import hift_state_dict_from_original
from opens2s.modeling_opens2s.configuration_token2wav import OpenS2SToken2WavHiFTConfig
from opens2s.modeling_opens2s.modeling_token2wav_hift import HiFTVocoder


pytestmark = pytest.mark.usefixtures("single_thread")


F0_ATOL = 2e-3
SOURCE_ATOL = SPEECH_ATOL = 1e-3


def call_params() -> list:
    params = []
    for param in token2wav_sets():
        folder = param.values[0]
        manifest = json.loads((folder / "manifest.json").read_text())
        params += [
            pytest.param(folder, prefix, call, id=f"{folder.name}-{prefix}")
            for prefix, call in recorded_calls(manifest)
        ]
    return params


def vocoder_config(hift: dict) -> OpenS2SToken2WavHiFTConfig:
    """`decoder_config.json["hift"]` (the original's constructor arguments) -> the `HiFTVocoder` config."""
    return OpenS2SToken2WavHiFTConfig(
        mel_bins=hift["in_channels"],
        base_channels=hift["base_channels"],
        num_harmonics=hift["nb_harmonics"],
        sampling_rate=hift["sampling_rate"],
        upsample_rates=hift["upsample_rates"],
        upsample_kernel_sizes=hift["upsample_kernel_sizes"],
        istft_n_fft=hift["istft_params"]["n_fft"],
        istft_hop_length=hift["istft_params"]["hop_len"],
        resblock_kernel_sizes=hift["resblock_kernel_sizes"],
        resblock_dilation_sizes=hift["resblock_dilation_sizes"],
        source_resblock_kernel_sizes=hift["source_resblock_kernel_sizes"],
        source_resblock_dilation_sizes=hift["source_resblock_dilation_sizes"],
        lrelu_slope=hift["lrelu_slope"],
        audio_limit=hift["audio_limit"],
        nsf_alpha=hift["nsf_alpha"],
        nsf_sigma=hift["nsf_sigma"],
        voiced_threshold=hift["nsf_voiced_threshold"],
        f0_cond_channels=hift["f0_predictor"]["cond_channels"],
    )


@functools.cache
def fixture_set(folder: Path) -> tuple[HiFTVocoder, dict, dict]:
    """(converted vocoder, reference tensors, decoder config) of a set, loaded once."""
    config = json.loads((folder / "decoder_config.json").read_text())
    vocoder = HiFTVocoder(vocoder_config(config["hift"])).eval()
    vocoder.load_state_dict(hift_state_dict_from_original(torch.load(folder / "hift.pt", weights_only=True)))
    return vocoder, load_file(folder / "reference_outputs.safetensors"), config


def vocoded_mel(reference: dict, prefix: str, call: dict) -> torch.Tensor:
    """Streaming calls store the mel given to HiFT; offline ones vocode the flow output past the prompt frames."""
    if f"{prefix}/hift/in_mel" in reference:
        return reference[f"{prefix}/hift/in_mel"]
    return reference[f"{prefix}/flow/mel_full"][:, :, call["prompt_feat_len"] :]


def replayed_generator(rng_calls: list, vocoder: HiFTVocoder, samples: int) -> torch.Generator:
    """A generator in the state the original's global one had when HiFT started drawing."""
    (seed_call, seed), *draws = rng_calls
    assert seed_call == "manual_seed"
    names = [name for name, _ in draws]
    hift_start = names.index("uniform_sample")
    generator = torch.Generator().manual_seed(seed)
    for name, shape in draws[:hift_start]:
        assert name == "randn_like"
        torch.randn(shape, generator=generator)
    # HiFT's draws must be the ones `draw_noise` makes, then the original's unused one (not made by us).
    harmonics = vocoder.config.num_harmonics + 1
    assert draws[hift_start:] == [
        ["uniform_sample", [1, harmonics, 1]],
        ["randn_like", [1, harmonics, samples]],
        ["randn_like", [1, samples, 1]],
    ]
    return generator


@requires_token2wav
@pytest.mark.parametrize(("folder", "prefix", "call"), call_params())
def test_call_matches_original(folder: Path, prefix: str, call: dict):
    vocoder, reference, config = fixture_set(folder)
    mel = vocoded_mel(reference, prefix, call)
    cache_source = reference[f"{prefix}/hift/cache_source"]
    samples = mel.shape[-1] * vocoder.samples_per_frame
    held_back = config["streaming_constants_flow_inference_py"]["source_cache_len"]

    with torch.inference_mode():
        initial_phase, _ = vocoder.draw_noise(1, samples, replayed_generator(call["rng_calls"], vocoder, samples))
        output = vocoder(mel, cache_source, generator=replayed_generator(call["rng_calls"], vocoder, samples))

    phase_sample = reference[f"{prefix}/hift/phase_sample"].clone()
    phase_sample[:, 0] = 0
    torch.testing.assert_close(initial_phase, phase_sample, rtol=0, atol=0)
    assert output.waveform.shape == (1, samples) == output.source.shape[::2]
    torch.testing.assert_close(output.f0, reference[f"{prefix}/hift/f0"], rtol=0, atol=F0_ATOL)
    torch.testing.assert_close(output.source[..., : cache_source.shape[-1]], cache_source, rtol=0, atol=0)
    if f"{prefix}/hift/source" in reference:
        torch.testing.assert_close(output.source, reference[f"{prefix}/hift/source"], rtol=0, atol=SOURCE_ATOL)
    if not call["finalize"]:
        # What the original keeps for the next chunk: the source tail (next cache_source) and the held-back audio.
        kept_source, kept_speech = output.source[..., -held_back:], output.waveform[:, -held_back:]
        torch.testing.assert_close(kept_source, reference[f"{prefix}/state/cache_source"], rtol=0, atol=SOURCE_ATOL)
        torch.testing.assert_close(kept_speech, reference[f"{prefix}/state/cache_speech"], rtol=0, atol=SPEECH_ATOL)
    speech = output.waveform if call["finalize"] else output.waveform[:, :-held_back]
    torch.testing.assert_close(speech, reference[f"{prefix}/speech"], rtol=0, atol=SPEECH_ATOL)


@requires_token2wav
@pytest.mark.parametrize("folder", token2wav_sets())
def test_conversion_checks_keys_and_folds_weight_norm(folder: Path):
    vocoder, reference, _ = fixture_set(folder)
    original = torch.load(folder / "hift.pt", weights_only=True)
    with pytest.raises(ValueError, match=r"missing \['resblocks\.1\.convs2\.0\.bias'\]"):
        hift_state_dict_from_original({k: v for k, v in original.items() if k != "resblocks.1.convs2.0.bias"})
    with pytest.raises(ValueError, match=r"unexpected \['conv_pre\.weight'\]"):
        hift_state_dict_from_original({**original, "conv_pre.weight": original["conv_pre.weight_v"]})

    # Ignoring weight_g (as if g == ||v||) must visibly change f0: the fixtures' g are not ||v||.
    ignoring_g = HiFTVocoder(vocoder_config(json.loads((folder / "decoder_config.json").read_text())["hift"]))
    unit_g = dict(original)
    for key, value in original.items():
        if key.endswith(".weight_g"):
            unit_g[key] = original[key[:-1] + "v"].flatten(1).norm(dim=1).view_as(value)
    ignoring_g.load_state_dict(hift_state_dict_from_original(unit_g))
    prefix, call = recorded_calls(json.loads((folder / "manifest.json").read_text()))[0]
    mel = vocoded_mel(reference, prefix, call)
    with torch.inference_mode():
        f0_error = (ignoring_g.predict_f0(mel) - reference[f"{prefix}/hift/f0"]).abs().max()
        assert (vocoder.predict_f0(mel) - reference[f"{prefix}/hift/f0"]).abs().max() < F0_ATOL < f0_error


TINY = {
    "mel_bins": 8,
    "base_channels": 16,
    "num_harmonics": 2,
    "sampling_rate": 16000,
    "upsample_rates": [2, 2],
    "upsample_kernel_sizes": [4, 4],
    "istft_n_fft": 8,
    "istft_hop_length": 2,
    "resblock_kernel_sizes": [3, 5],
    "resblock_dilation_sizes": [[1, 2], [1, 3]],
    "source_resblock_kernel_sizes": [3, 5],
    "source_resblock_dilation_sizes": [[1, 2], [1]],
    "lrelu_slope": 0.1,
    "audio_limit": 0.99,
    "nsf_alpha": 0.1,
    "nsf_sigma": 0.003,
    "voiced_threshold": 10.0,
    "f0_cond_channels": 8,
}


def tiny_vocoder(seed: int = 0) -> HiFTVocoder:
    """A tiny vocoder whose weights come from an explicit generator (default init is overwritten)."""
    vocoder = HiFTVocoder(OpenS2SToken2WavHiFTConfig(**TINY)).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in vocoder.named_parameters():
            values = torch.randn(parameter.shape, generator=generator)
            # Snake alphas near 1; f0 head scaled so that f0 spans voiced (> 10 Hz) and unvoiced frames.
            if name.endswith("alpha"):
                parameter.copy_(1 + 0.1 * values)
            else:
                parameter.copy_(values * (20.0 if name.endswith("classifier.weight") else 0.2))
    return vocoder


def test_batch_equals_each_alone():
    vocoder = tiny_vocoder()
    generator = torch.Generator().manual_seed(1)
    mels = torch.randn(2, TINY["mel_bins"], 13, generator=generator)
    samples = 13 * vocoder.samples_per_frame
    caches = torch.randn(2, 1, vocoder.samples_per_frame, generator=generator).tanh()
    noises = [vocoder.draw_noise(1, samples, generator) for _ in range(2)]
    with torch.inference_mode():
        alone = [
            vocoder(mels[i : i + 1], caches[i : i + 1], initial_phase=p, noise=n) for i, (p, n) in enumerate(noises)
        ]
        batched = vocoder(
            mels, caches, initial_phase=torch.cat([p for p, _ in noises]), noise=torch.cat([n for _, n in noises])
        )
    for field in ("waveform", "source", "f0"):
        expected = torch.cat([output[field] for output in alone])
        torch.testing.assert_close(batched[field], expected, rtol=1e-5, atol=1e-6)
    assert not torch.equal(batched.waveform[0], batched.waveform[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_tiny_runs_in_dtype_without_global_rng(dtype: torch.dtype):
    vocoder = tiny_vocoder().to(dtype)
    frames = 29
    mel = torch.randn(2, TINY["mel_bins"], frames, generator=torch.Generator().manual_seed(2)).to(dtype)
    global_state = torch.get_rng_state()
    with torch.inference_mode():
        output = vocoder(mel)
        again = vocoder(mel)
    assert torch.equal(torch.get_rng_state(), global_state)
    # A fresh unseeded generator per call: the same draws every time.
    torch.testing.assert_close(output.waveform, again.waveform, rtol=0, atol=0)
    assert vocoder.samples_per_frame == 8
    assert output.waveform.shape == (2, frames * vocoder.samples_per_frame)
    assert output.source.shape == (2, 1, frames * vocoder.samples_per_frame)
    assert output.f0.shape == (2, frames)
    assert ((output.f0 > TINY["voiced_threshold"]).float().mean() - 0.5).abs() < 0.45
    for tensor in output.values():
        assert tensor.dtype == dtype and torch.isfinite(tensor).all()
    assert output.waveform.abs().max() <= TINY["audio_limit"]
