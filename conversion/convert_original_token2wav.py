"""Convert the original `glm-4-voice-decoder` folder (`config.yaml`, `flow.pt`, `hift.pt`) into an
[`OpenS2SToken2Wav`] folder (`config.json` + `model.safetensors` + remote code).

Everything that knows the original's names lives here, never in the remote code: the `config.yaml` -> nested
[`OpenS2SToken2WavConfig`] mapping, the `flow.pt` key renames and the `hift.pt` key renames with HiFT's legacy
weight-norm pairs folded into plain weights.

`config.yaml` is a hyperpyyaml file (`!new:` / `!ref` / `!apply:` tags). We read it as plain YAML, without
hyperpyyaml: tags are not executed (the original's `!apply:torch.manual_seed` side effects and its unused CosyVoice
`llm` section are skipped), `!ref <name>` is resolved against the top-level keys, and YAML aliases (`*name`) are
refused (nested aliases expand exponentially: a few hundred bytes can ask for gigabytes). The `.pt` files are read
with `torch.load(weights_only=True)`.
"""

import logging
import pickle
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
import yaml

from opens2s.conversion.export import save_token2wav, staged_output
from opens2s.modeling_opens2s.configuration_token2wav import OpenS2SToken2WavConfig
from opens2s.modeling_opens2s.modeling_token2wav import OpenS2SToken2Wav
from opens2s.modeling_opens2s.modeling_token2wav_hift import F0_PREDICTOR_LAYERS


__all__ = [
    "check_original_token2wav_folder",
    "convert_original_token2wav",
    "flow_state_dict_from_original",
    "hift_state_dict_from_original",
    "load_original_checkpoint",
    "load_original_decoder_config",
    "write_token2wav",
]

logger = logging.getLogger(__name__)


class _TagIgnoringLoader(yaml.SafeLoader):
    """Reads hyperpyyaml as data: a tagged node becomes its plain value, `!ref <x>` a `_Ref`; aliases are refused."""

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node | None:
        # An alias makes the constructors copy its anchor's node each time it is used, so nested aliases blow up
        # exponentially ("billion laughs"). hyperpyyaml configs share values with `!ref`, never with aliases.
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise ValueError(
                f"YAML alias *{event.anchor} at line {event.start_mark.line + 1}: aliases are not supported (a "
                "GLM-4-Voice config.yaml shares values with !ref)"
            )
        return super().compose_node(parent, index)


class _Ref(str):
    pass


def _construct_tagged(loader: yaml.SafeLoader, tag_suffix: str, node: yaml.Node):
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    value = loader.construct_scalar(node)
    return _Ref(value) if tag_suffix == "ref" else value


_TagIgnoringLoader.add_multi_constructor("!", _construct_tagged)


def _resolve(value, top_level: dict):
    if isinstance(value, _Ref):
        return top_level[value.strip().strip("<>")]
    if isinstance(value, dict):
        return {key: _resolve(item, top_level) for key, item in value.items()}
    if isinstance(value, list):
        return [_resolve(item, top_level) for item in value]
    return value


def _flow_config(flow: dict, sampling_rate: int) -> dict:
    """`flow_config` fields from the resolved `flow:` section (a CosyVoice `MaskedDiffWithXvec`)."""
    encoder, estimator = flow["encoder"], flow["decoder"]["estimator"]
    cfm = flow["decoder"]["cfm_params"]
    cfm = cfm.get("content", cfm)  # an omegaconf.DictConfig node keeps its values under `content`
    return {
        "vocab_size": flow["vocab_size"],
        "token_embedding_dim": flow["input_size"],
        "mel_bins": flow["output_size"],
        "speaker_embedding_dim": flow["spk_embed_dim"],
        "input_frame_rate": flow["input_frame_rate"],
        "sampling_rate": sampling_rate,
        "encoder_hidden_size": encoder["output_size"],
        "encoder_num_heads": encoder["attention_heads"],
        "encoder_ffn_dim": encoder["linear_units"],
        "encoder_num_layers": encoder["num_blocks"],
        "encoder_block_size": encoder["block_size"],
        "regulator_sampling_ratios": list(flow["length_regulator"]["sampling_ratios"]),
        "estimator_channels": list(estimator["channels"]),
        "estimator_attention_head_dim": estimator["attention_head_dim"],
        "estimator_num_heads": estimator["num_heads"],
        "estimator_num_blocks": estimator["n_blocks"],
        "estimator_num_mid_blocks": estimator["num_mid_blocks"],
        "cfg_rate": float(cfm["inference_cfg_rate"]),
    }


def _hift_config(hift: dict) -> dict:
    """`hift_config` fields from the resolved `hift:` section (a CosyVoice `HiFTGenerator`)."""
    return {
        "mel_bins": hift["in_channels"],
        "sampling_rate": hift["sampling_rate"],
        "base_channels": hift["base_channels"],
        "num_harmonics": hift["nb_harmonics"],
        "upsample_rates": list(hift["upsample_rates"]),
        "upsample_kernel_sizes": list(hift["upsample_kernel_sizes"]),
        "istft_n_fft": hift["istft_params"]["n_fft"],
        "istft_hop_length": hift["istft_params"]["hop_len"],
        "resblock_kernel_sizes": list(hift["resblock_kernel_sizes"]),
        "resblock_dilation_sizes": [list(d) for d in hift["resblock_dilation_sizes"]],
        "source_resblock_kernel_sizes": list(hift["source_resblock_kernel_sizes"]),
        "source_resblock_dilation_sizes": [list(d) for d in hift["source_resblock_dilation_sizes"]],
        "lrelu_slope": hift["lrelu_slope"],
        "audio_limit": hift["audio_limit"],
        "nsf_alpha": hift["nsf_alpha"],
        "nsf_sigma": hift["nsf_sigma"],
        "voiced_threshold": float(hift["nsf_voiced_threshold"]),
        "f0_cond_channels": hift["f0_predictor"]["cond_channels"],
    }


def load_original_decoder_config(path: str | Path) -> OpenS2SToken2WavConfig:
    """Our nested config from the original `config.yaml` (its `flow` and `hift` sections).

    The flow's frame formula uses the vocoder's sample rate (the original hard-codes 22050, the value of every
    released config) and the default hop of 256 samples; ODE steps and temperature are not in `config.yaml`.

    Raises:
        `ValueError`: when the file uses YAML aliases, or is not a GLM-4-Voice decoder `config.yaml`.
    """
    try:
        raw = yaml.load(Path(path).read_text(), Loader=_TagIgnoringLoader)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error
    try:
        flow, hift = _resolve(raw["flow"], raw), _resolve(raw["hift"], raw)
        return OpenS2SToken2WavConfig(
            flow_config=_flow_config(flow, sampling_rate=hift["sampling_rate"]), hift_config=_hift_config(hift)
        )
    except KeyError as error:
        raise ValueError(f"{path} is not a GLM-4-Voice decoder config.yaml: missing {error}") from error


# Original `MaskedDiffWithXvec.state_dict()` names -> ours, applied in order with `re.sub`. Rules shared by the
# encoder (CosyVoice names) and the U-Net (diffusers names) come after the prefixes.
_FLOW_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^input_embedding\.", "token_embedding."),
    (r"^spk_embed_affine_layer\.", "speaker_projection."),
    (r"^encoder_proj\.", "encoder_projection."),
    (r"^encoder\.embed\.out\.0\.", "encoder.input_projection."),
    (r"^encoder\.embed\.out\.1\.", "encoder.input_norm."),
    (r"^encoder\.after_norm\.", "encoder.final_norm."),
    (r"^encoder\.encoders\.", "encoder.layers."),
    (r"^decoder\.estimator\.", "estimator."),
    (r"\.(norm_mha|norm1)\.", ".attn_norm."),
    (r"\.(norm_ff|norm3)\.", ".ffn_norm."),
    (r"\.(self_attn\.linear|attn1\.to)_([qkv])\.", r".self_attn.\2_proj."),
    (r"\.(self_attn\.linear_out|attn1\.to_out\.0)\.", ".self_attn.o_proj."),
    (r"\.self_attn\.linear_pos\.", ".self_attn.pos_proj."),
    (r"\.(feed_forward\.w_1|ff\.net\.0\.proj)\.", ".ffn.fc1."),
    (r"\.(feed_forward\.w_2|ff\.net\.2)\.", ".ffn.fc2."),
    (r"_blocks\.(\d+)\.0\.", r"_blocks.\1.resnet."),
    (r"_blocks\.(\d+)\.1\.", r"_blocks.\1.transformer_blocks."),
    (r"_blocks\.(\d+)\.2\.(conv\.)?", r"_blocks.\1.resample."),
    (r"\.mlp\.1\.", ".time_proj."),
    (r"\.block\.0\.", ".conv."),
    (r"\.block\.1\.", ".norm."),
)
_ORIGINAL_PREFIXES = ("input_embedding.", "spk_embed_affine_layer.", "encoder.", "encoder_proj.", "decoder.estimator.")
# The regulator is one nn.Sequential of [Conv1d, GroupNorm, Mish] * n + [Conv1d]: index 3k -> blocks.k.conv,
# 3k + 1 -> blocks.k.norm, the last index -> output_conv.
_REGULATOR_KEY = re.compile(r"^length_regulator\.model\.(\d+)\.(weight|bias)$")


def _rename_flow_key(key: str, last_regulator: int) -> str | None:
    """Our name for one original key, or None when it has no place in our model."""
    if match := _REGULATOR_KEY.match(key):
        index, leaf = int(match.group(1)), match.group(2)
        if index == last_regulator:
            return f"length_regulator.output_conv.{leaf}"
        if index % 3 == 2:  # Mish has no parameters
            return None
        return f"length_regulator.blocks.{index // 3}.{('conv', 'norm')[index % 3]}.{leaf}"
    if not key.startswith(_ORIGINAL_PREFIXES):
        return None
    for pattern, replacement in _FLOW_RENAMES:
        key = re.sub(pattern, replacement, key)
    return key


def flow_state_dict_from_original(
    state_dict: Mapping[str, torch.Tensor], expected_keys: Iterable[str] | None = None
) -> dict[str, torch.Tensor]:
    """Rename an original `MaskedDiffWithXvec.state_dict()` (GLM-4-Voice `flow.pt`) to `FlowDecoder` names.

    Args:
        state_dict (`Mapping[str, Tensor]`): the original weights.
        expected_keys (`Iterable[str]`, *optional*): our keys to check against (e.g. `model.state_dict().keys()`).

    Returns:
        `dict[str, Tensor]` with our names (same tensors).

    Raises:
        `ValueError`: naming the original keys that have no place in our model (unexpected) and, when
        `expected_keys` is given, our keys left without a weight (missing).
    """
    regulator_indices = [int(m.group(1)) for key in state_dict if (m := _REGULATOR_KEY.match(key))]
    last_regulator = max(regulator_indices, default=-1)
    converted, origin, unexpected = {}, {}, []
    for key, tensor in state_dict.items():
        name = _rename_flow_key(key, last_regulator)
        if name is None:
            unexpected.append(key)
        else:
            converted[name], origin[name] = tensor, key

    missing = []
    if expected_keys is not None:
        expected = set(expected_keys)
        missing = sorted(expected - set(converted))
        unexpected += sorted(f"{origin[name]} (-> {name})" for name in converted if name not in expected)
    if unexpected or missing:
        raise ValueError(
            f"flow checkpoint does not match FlowDecoder: unexpected keys {unexpected}, missing {missing}"
        )
    return converted


# Original `HiFTGenerator` key fragment -> ours, applied in order (regular expressions). Weight-norm pairs are folded
# into `.weight` first; every original key must be changed by at most these rules into one of our keys.
_HIFT_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^m_source\.l_linear\.", "source_linear."),
    *((rf"^f0_predictor\.condnet\.{2 * i}\.", f"f0_predictor.convs.{i}.") for i in range(F0_PREDICTOR_LAYERS)),
    (r"^ups\.", "upsamples."),
    (r"^source_downs\.", "source_downsamples."),
    (r"\.convs1\.(\d+)\.", r".layers.\1.dilated_conv."),
    (r"\.convs2\.(\d+)\.", r".layers.\1.conv."),
    (r"\.activations1\.(\d+)\.", r".layers.\1.dilated_snake."),
    (r"\.activations2\.(\d+)\.", r".layers.\1.snake."),
)


def _original_key_template(keys: set[str]) -> set[str]:
    """Every key an original `HiFTGenerator` state dict with as many blocks (by index) as `keys` must hold."""

    def count(prefix: str) -> int:
        found = [re.match(r"\d+", key[len(prefix) :]) for key in keys if key.startswith(prefix)]
        return max((int(match.group()) + 1 for match in found if match), default=0)

    def normed(name: str) -> set[str]:
        return {f"{name}.bias", f"{name}.weight_g", f"{name}.weight_v"}

    def plain(name: str) -> set[str]:
        return {f"{name}.bias", f"{name}.weight"}

    expected = plain("m_source.l_linear") | plain("f0_predictor.classifier") | normed("conv_pre") | normed("conv_post")
    for i in range(F0_PREDICTOR_LAYERS):
        expected |= normed(f"f0_predictor.condnet.{2 * i}")
    expected |= {key for i in range(count("ups.")) for key in normed(f"ups.{i}")}
    expected |= {key for i in range(count("source_downs.")) for key in plain(f"source_downs.{i}")}
    for group in ("source_resblocks", "resblocks"):
        for block in range(count(f"{group}.")):
            prefix = f"{group}.{block}"
            for j in range(count(f"{prefix}.convs1.")):
                expected |= normed(f"{prefix}.convs1.{j}") | normed(f"{prefix}.convs2.{j}")
                expected |= {f"{prefix}.activations1.{j}.alpha", f"{prefix}.activations2.{j}.alpha"}
    return expected


def _fold_weight_norm(magnitude: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """Legacy `weight_norm(dim=0)`: `W = g * v / ||v||`, the norm over every dim but 0 (for ConvTranspose1d: input)."""
    direction32 = direction.float()
    norm = torch.linalg.vector_norm(direction32, dim=tuple(range(1, direction.dim())), keepdim=True)
    return (direction32 * (magnitude.float() / norm)).to(direction.dtype)


def hift_state_dict_from_original(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """
    Convert an original CosyVoice / GLM-4-Voice `HiFTGenerator` state dict (`hift.pt`) to [`HiFTVocoder`] keys.

    Weight-norm pairs (`*.weight_g`, `*.weight_v`) are folded into plain `*.weight`, and keys are renamed with
    `_HIFT_RENAMES` (e.g. `ups.0.*` -> `upsamples.0.*`, `resblocks.0.convs1.2.*` ->
    `resblocks.0.layers.2.dilated_conv.*`).

    Args:
        state_dict (`dict[str, torch.Tensor]`): As `torch.load("hift.pt", weights_only=True)` returns it.

    Returns:
        `dict[str, torch.Tensor]`: Loadable with `HiFTVocoder.load_state_dict(..., strict=True)`.

    Raises:
        `ValueError`: when keys of an original checkpoint are missing or keys it cannot hold are present.
    """
    keys = set(state_dict)
    expected = _original_key_template(keys)
    missing, unexpected = sorted(expected - keys), sorted(keys - expected)
    if missing or unexpected:
        raise ValueError(
            f"not an original HiFTGenerator state dict: missing {missing[:10]}{' ...' if len(missing) > 10 else ''}"
            f"; unexpected {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}"
        )
    converted = {}
    for key, tensor in state_dict.items():
        if key.endswith(".weight_v"):
            continue
        if key.endswith(".weight_g"):
            key, tensor = key[: -len("_g")], _fold_weight_norm(tensor, state_dict[key[: -len("g")] + "v"])
        for pattern, replacement in _HIFT_RENAMES:
            key = re.sub(pattern, replacement, key)
        converted[key] = tensor
    return converted


def load_original_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in an original `.pt` file, read with `torch.load(weights_only=True)` (tensors and plain
    containers only: a pickle that asks for any other object is refused, never run).

    Raises:
        `ValueError`: naming the file and why it is not a state dict: a pickle that refers to code (what a
        malicious file does), not a PyTorch file, truncated or empty, or not a mapping of names to tensors.
    """
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        globals_ = [line.strip() for line in str(error).splitlines() if "GLOBAL" in line]
        if globals_:
            reason = f"refused: it asks to run code, which a weights file never does ({globals_[0]})"
        else:
            reason = "not a PyTorch weights file (it does not unpickle as tensors)"
        raise ValueError(f"{path}: {reason}") from None
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except (RuntimeError, EOFError, OSError) as error:  # the zip reader's errors (OSError: a seek past the end)
        detail = str(error).split(". ")[0] or "the file ends early"
        raise ValueError(f"{path}: not a readable PyTorch checkpoint, truncated or corrupted ({detail})") from None
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError(f"{path}: holds a {type(state_dict).__name__}, not a state dict (names -> tensors)")
    return state_dict


def write_token2wav(src: Path, dst: Path) -> None:
    """Convert the decoder folder `src` (checked by [`check_original_token2wav_folder`]) into the folder `dst`, in
    place: callers stage `dst` ([`~opens2s.conversion.export.staged_output`])."""
    config = load_original_decoder_config(src / "config.yaml")
    flow = flow_state_dict_from_original(load_original_checkpoint(src / "flow.pt"))
    hift = hift_state_dict_from_original(load_original_checkpoint(src / "hift.pt"))
    state_dict = {f"flow.{key}": value for key, value in flow.items()}
    state_dict |= {f"vocoder.{key}": value for key, value in hift.items()}
    model = OpenS2SToken2Wav(config)
    # strict: a renamed or missing tensor is an error here, not random weights at inference.
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        raise ValueError(f"{src}: the weights do not fit its config.yaml: {str(error).splitlines()[0]}") from None
    save_token2wav(model, dst)


def check_original_token2wav_folder(src: str | Path) -> Path:
    """`src` as a `Path` when it holds `config.yaml`, `flow.pt` and `hift.pt`; else a `FileNotFoundError`."""
    src = Path(src)
    missing = [name for name in ("config.yaml", "flow.pt", "hift.pt") if not (src / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{src} is not a glm-4-voice-decoder folder: missing {', '.join(missing)}")
    return src


def convert_original_token2wav(src: str | Path, dst: str | Path) -> Path:
    """Convert the original decoder folder `src` (`config.yaml`, `flow.pt`, `hift.pt`) into `dst`.

    Args:
        src: the original `glm-4-voice-decoder` folder.
        dst: the new folder (must not exist or be empty). It is written whole or not at all (through a staging
            folder next to it, with `checksums.sha256`).

    Returns:
        `dst`, loadable with `OpenS2SToken2Wav.from_pretrained(dst)` or, with the copied remote code,
        `AutoModel.from_pretrained(dst, trust_remote_code=True)`.
    """
    src, dst = check_original_token2wav_folder(src), Path(dst)
    with staged_output(dst) as staging:
        write_token2wav(src, staging)
    logger.info("converted %s -> %s", src, dst)
    return dst
