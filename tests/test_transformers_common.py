"""transformers' own common model tests (`ModelTesterMixin`, `GenerationTesterMixin`) run against OpenS2S.

The mixins are imported, unchanged, from a transformers `tests/` folder given in `OPENS2S_TRANSFORMERS_TESTS`
(the sdist holds `tests/test_modeling_common.py`; `tests/generation/test_utils.py` and
`tests/exporters/test_export.py` come from the transformers repository at the installed version):

    pip download transformers==5.24.0 --no-deps --no-binary :all: -d /tmp/tfsdist
    tar xzf /tmp/tfsdist/transformers-5.24.0.tar.gz -C /tmp/tfsdist
    export OPENS2S_TRANSFORMERS_TESTS=/tmp/tfsdist/transformers-5.24.0/tests  # needs `pip install parameterized`
    # transformers marks tests with its own markers and asserts FutureWarnings, which pyproject's options hide
    python -m pytest -o addopts="" -o filterwarnings="" tests/test_transformers_common.py

Without the variable the module is skipped. When the folder lacks `generation/test_utils.py` (the sdist does) the
generation tests are not run (an empty `GenerationTesterMixin` stands in so `test_modeling_common` imports), and the
same for `exporters/test_export.py`; a warning names what is missing. No sdist on the package registry ships
`tests/generation/`, and a copy of `test_utils.py` from before 5.x does not import on 5.x (it needs
`GreedySearchDecoderOnlyOutput`, `DisjunctiveConstraint`, `require_torch_sdpa`, removed since). Generation is
tested on the `generate(return_speech=False)` text path, as transformers tests Qwen2.5-Omni's thinker.

Tests that cannot apply to a composite of an audio encoder and two LMs are skipped below, each with its reason.
"""

import importlib
import os
import sys
import types
import unittest
import warnings
from pathlib import Path

import pytest
import torch

from opens2s.modeling_opens2s.audio_lengths_opens2s import audio_embedding_lengths
from opens2s.modeling_opens2s.configuration_opens2s import OpenS2SConfig
from opens2s.modeling_opens2s.modeling_opens2s import OpenS2SForConditionalGeneration


TESTS_DIR = os.environ.get("OPENS2S_TRANSFORMERS_TESTS")
if not TESTS_DIR or not (Path(TESTS_DIR) / "test_modeling_common.py").exists():
    pytest.skip(
        "set OPENS2S_TRANSFORMERS_TESTS to a transformers tests/ folder (see this module's docstring)",
        allow_module_level=True,
    )

PACKAGE = "transformers_common_tests"


def _import_common_tests():
    """Import `test_modeling_common` (and `generation.test_utils`) from `TESTS_DIR` as package `PACKAGE`."""
    root = Path(TESTS_DIR)
    if PACKAGE not in sys.modules:
        package = types.ModuleType(PACKAGE)
        package.__path__ = [str(root)]
        sys.modules[PACKAGE] = package
        for sub, module, mixin in (
            ("generation", "test_utils", "GenerationTesterMixin"),
            ("exporters", "test_export", "ExportTesterMixin"),
        ):
            if (root / sub / f"{module}.py").exists():
                continue
            warnings.warn(f"{root / sub / module}.py is missing: the {mixin} tests are not run", stacklevel=1)
            sub_package, stub = types.ModuleType(f"{PACKAGE}.{sub}"), types.ModuleType(f"{PACKAGE}.{sub}.{module}")
            sub_package.__path__ = []
            setattr(stub, mixin, type(mixin, (), {}))
            sys.modules[sub_package.__name__], sys.modules[stub.__name__] = sub_package, stub
    common = importlib.import_module(f"{PACKAGE}.test_modeling_common")
    generation = importlib.import_module(f"{PACKAGE}.generation.test_utils")
    return common, generation


common, generation = _import_common_tests()
ModelTesterMixin, GenerationTesterMixin = common.ModelTesterMixin, generation.GenerationTesterMixin
ids_tensor, floats_tensor = common.ids_tensor, common.floats_tensor


class OpenS2SCommonTester:
    """Tiny OpenS2S and inputs for the mixins: one audio per row.

    Each audio is one 30 s window of 128 mel bins (3000 frames) of which `audio_frames` are valid; 100 valid frames
    (1 s) -> 50 encoder frames -> 13 adapter frames = 13 placeholders. A row is `[text] + 13 x <audio> + [text]`:
    `seq_length = 2 * text_length + 13`.
    """

    # batch_size 7: `test_eager_matches_sdpa_inference` runs 7 rows and fills missing ones with random ids and masks,
    # which would be invalid audio inputs (random placeholder counts, non-binary feature masks).
    def __init__(self, parent, batch_size: int = 7, text_length: int = 4, audio_frames: int = 100):
        self.parent = parent
        self.batch_size = batch_size
        self.audio_frames = audio_frames
        self.num_audio_tokens = int(audio_embedding_lengths(torch.tensor([audio_frames]), 2)[0])
        self.text_length = text_length
        self.seq_length = 2 * text_length + self.num_audio_tokens
        self.vocab_size = 99
        # Low ids for the specials: `test_resize_tokens_embeddings` clamps input_ids below a shrunk vocabulary.
        self.pad_token_id, self.eos_token_id, self.audio_token_id = 0, 1, 2
        self.hidden_size = 32
        self.num_hidden_layers = 2
        self.num_attention_heads = 4
        self.is_training = True
        self.text_config = {
            "model_type": "qwen3",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": 37,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": 2,
            "head_dim": 8,
            "max_position_embeddings": 512,
            "sliding_window": None,
            "pad_token_id": self.pad_token_id,
            "bos_token_id": self.pad_token_id,
            "eos_token_id": self.eos_token_id,
            "tie_word_embeddings": False,
        }

    def get_config(self) -> OpenS2SConfig:
        return OpenS2SConfig(
            audio_config={"d_model": 16, "encoder_layers": 2, "encoder_attention_heads": 4, "encoder_ffn_dim": 32},
            text_config=self.text_config,
            # Tied like the LLM's, so `test_tied_weights_keys` (which ties the text config) finds both LMs tied.
            speech_decoder_config=dict(
                self.text_config, vocab_size=40, hidden_size=16, intermediate_size=24, tie_word_embeddings=True
            ),
            adapter_inner_dim=24,
            speaker_embedding_dim=8,
            audio_token_id=self.audio_token_id,
            pad_token_id=self.pad_token_id,
            eos_token_id=self.eos_token_id,
        )

    def prepare_config_and_inputs_for_common(self) -> tuple[OpenS2SConfig, dict]:
        config = self.get_config()
        text = ids_tensor([self.batch_size, 2 * self.text_length], self.vocab_size - 3) + 3
        audio = torch.full((self.batch_size, self.num_audio_tokens), self.audio_token_id, dtype=torch.long)
        input_ids = torch.cat([text[:, : self.text_length], audio, text[:, self.text_length :]], dim=1)
        features = floats_tensor([self.batch_size, 128, 3000])
        feature_mask = torch.zeros(self.batch_size, 3000, dtype=torch.long)
        feature_mask[:, : self.audio_frames] = 1
        inputs = {
            "input_ids": input_ids.to(common.torch_device),
            "attention_mask": torch.ones_like(input_ids).to(common.torch_device),
            "input_features": features.to(common.torch_device),
            "feature_attention_mask": feature_mask.to(common.torch_device),
        }
        return config, inputs


class OpenS2STransformersCommonTest(ModelTesterMixin, GenerationTesterMixin, unittest.TestCase):
    all_model_classes = (OpenS2SForConditionalGeneration,)
    all_generative_model_classes = (OpenS2SForConditionalGeneration,)
    pipeline_model_mapping = {}
    additional_model_inputs = ["input_features", "feature_attention_mask"]
    _is_composite = True
    test_resize_embeddings = True
    test_torch_exportable = False

    def setUp(self):
        self.model_tester = OpenS2SCommonTester(self)

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        # The mixin adds labels only for classes in transformers' own auto mappings (ours is remote code). The training
        # targets of OpenS2S are text labels and, so that the speech head trains too, the speech units of an answer
        # spoken over the last `text_length` positions of every row.
        inputs_dict = super()._prepare_for_class(inputs_dict, model_class, return_labels=return_labels)
        if return_labels:
            input_ids = inputs_dict["input_ids"]
            inputs_dict["labels"] = input_ids.clone()
            span = torch.zeros_like(input_ids)
            span[:, -self.model_tester.text_length :] = 1
            inputs_dict["speech_span_mask"] = span
            inputs_dict["speech_units"] = input_ids[:, :6] % 37 + 3  # deterministic: tests compare two calls
            inputs_dict["speech_units_mask"] = torch.ones_like(inputs_dict["speech_units"])
        return inputs_dict
