"""Convert the original `glm-4-voice-decoder` folder (`config.yaml`, `flow.pt`, `hift.pt`) into an
[`OpenS2SToken2Wav`] folder (`config.json` + `model.safetensors` + remote code).

`config.yaml` is a hyperpyyaml file (`!new:` / `!ref` / `!apply:` tags). We read it as plain YAML, without
hyperpyyaml: tags are not executed (the original's `!apply:torch.manual_seed` side effects and its unused CosyVoice
`llm` section are skipped), `!ref <name>` is resolved against the top-level keys. The `.pt` files are read with
`torch.load(weights_only=True)`; HiFT's legacy weight-norm pairs are folded into plain weights.
"""

import logging
from pathlib import Path

import torch
import yaml

from opens2s.conversion.export import save_token2wav
from opens2s.modeling_opens2s.configuration_token2wav import OpenS2SToken2WavConfig
from opens2s.modeling_opens2s.modeling_flow_matching import flow_state_dict_from_original
from opens2s.modeling_opens2s.modeling_hift import hift_state_dict_from_original
from opens2s.modeling_opens2s.modeling_token2wav import OpenS2SToken2Wav


__all__ = ["convert_original_token2wav", "load_original_decoder_config"]

logger = logging.getLogger(__name__)


class _TagIgnoringLoader(yaml.SafeLoader):
    """Reads hyperpyyaml as data: a tagged node becomes its plain value, `!ref <x>` a `_Ref`."""


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


def load_original_decoder_config(path: str | Path) -> OpenS2SToken2WavConfig:
    """Our config from the original `config.yaml` (its `flow` and `hift` sections)."""
    raw = yaml.load(Path(path).read_text(), Loader=_TagIgnoringLoader)
    try:
        flow, hift = _resolve(raw["flow"], raw), _resolve(raw["hift"], raw)
        encoder, estimator = flow["encoder"], flow["decoder"]["estimator"]
        cfm = flow["decoder"]["cfm_params"]
        cfm = cfm.get("content", cfm)
        return OpenS2SToken2WavConfig(
            vocab_size=flow["vocab_size"],
            token_embedding_dim=flow["input_size"],
            mel_bins=flow["output_size"],
            speaker_embedding_dim=flow["spk_embed_dim"],
            input_frame_rate=flow["input_frame_rate"],
            sampling_rate=hift["sampling_rate"],
            encoder_hidden_size=encoder["output_size"],
            encoder_num_heads=encoder["attention_heads"],
            encoder_ffn_dim=encoder["linear_units"],
            encoder_num_layers=encoder["num_blocks"],
            encoder_block_size=encoder["block_size"],
            regulator_sampling_ratios=list(flow["length_regulator"]["sampling_ratios"]),
            estimator_channels=list(estimator["channels"]),
            estimator_attention_head_dim=estimator["attention_head_dim"],
            estimator_num_heads=estimator["num_heads"],
            estimator_num_blocks=estimator["n_blocks"],
            estimator_num_mid_blocks=estimator["num_mid_blocks"],
            cfg_rate=float(cfm["inference_cfg_rate"]),
            hift_base_channels=hift["base_channels"],
            hift_num_harmonics=hift["nb_harmonics"],
            hift_upsample_rates=list(hift["upsample_rates"]),
            hift_upsample_kernel_sizes=list(hift["upsample_kernel_sizes"]),
            hift_istft_n_fft=hift["istft_params"]["n_fft"],
            hift_istft_hop_length=hift["istft_params"]["hop_len"],
            hift_resblock_kernel_sizes=list(hift["resblock_kernel_sizes"]),
            hift_resblock_dilation_sizes=[list(d) for d in hift["resblock_dilation_sizes"]],
            hift_source_resblock_kernel_sizes=list(hift["source_resblock_kernel_sizes"]),
            hift_source_resblock_dilation_sizes=[list(d) for d in hift["source_resblock_dilation_sizes"]],
            hift_lrelu_slope=hift["lrelu_slope"],
            hift_audio_limit=hift["audio_limit"],
            hift_nsf_alpha=hift["nsf_alpha"],
            hift_nsf_sigma=hift["nsf_sigma"],
            hift_voiced_threshold=float(hift["nsf_voiced_threshold"]),
            hift_f0_cond_channels=hift["f0_predictor"]["cond_channels"],
        )
    except KeyError as error:
        raise ValueError(f"{path} is not a GLM-4-Voice decoder config.yaml: missing {error}") from error


def convert_original_token2wav(src: str | Path, dst: str | Path) -> Path:
    """Convert the original decoder folder `src` (`config.yaml`, `flow.pt`, `hift.pt`) into `dst`.

    Returns:
        `dst`, loadable with `OpenS2SToken2Wav.from_pretrained(dst)` or, with the copied remote code,
        `AutoModel.from_pretrained(dst, trust_remote_code=True)`.
    """
    src, dst = Path(src), Path(dst)
    missing = [name for name in ("config.yaml", "flow.pt", "hift.pt") if not (src / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{src} is not a glm-4-voice-decoder folder: missing {', '.join(missing)}")
    if dst.exists() and any(dst.iterdir()):
        raise FileExistsError(f"{dst} exists and is not empty")
    config = load_original_decoder_config(src / "config.yaml")
    flow = flow_state_dict_from_original(torch.load(src / "flow.pt", map_location="cpu", weights_only=True))
    hift = hift_state_dict_from_original(torch.load(src / "hift.pt", map_location="cpu", weights_only=True))
    state_dict = {f"flow.{key}": value for key, value in flow.items()}
    state_dict |= {f"vocoder.{key}": value for key, value in hift.items()}
    model = OpenS2SToken2Wav(config)
    # strict: a renamed or missing tensor is an error here, not random weights at inference.
    model.load_state_dict(state_dict, strict=True)
    save_token2wav(model, dst)
    logger.info("converted %s -> %s", src, dst)
    return dst
