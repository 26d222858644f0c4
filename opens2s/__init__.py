"""opens2s: the OpenS2S empathetic speech-to-speech model on the Hugging Face stack.

`import opens2s` is cheap: every name below loads on first use.
"""

from typing import TYPE_CHECKING

from transformers.utils import _LazyModule


__version__ = "0.1.0"

_import_structure = {
    "modeling_opens2s.configuration_opens2s": ["OpenS2SConfig"],
    "modeling_opens2s.modeling_opens2s": ["OpenS2SForConditionalGeneration", "OpenS2SOutput"],
    "modeling_opens2s.feature_extraction_opens2s": ["OpenS2SFeatureExtractor"],
    "modeling_opens2s.processing_opens2s": ["OpenS2SProcessor"],
    "modeling_opens2s.convert_original_opens2s": ["convert_original_checkpoint"],
    "modeling_opens2s.modeling_token2wav": ["OpenS2SToken2Wav"],
    "modeling_opens2s.convert_original_token2wav": ["convert_original_token2wav"],
    "modeling_opens2s.modeling_speech_tokenizer": ["OpenS2SSpeechTokenizer"],
    "tiny": ["build_tiny_model", "tiny_model_path", "TINY_MODEL_DIR", "EXAMPLE_WAV"],
}

if TYPE_CHECKING:
    from .modeling_opens2s.configuration_opens2s import OpenS2SConfig
    from .modeling_opens2s.convert_original_opens2s import convert_original_checkpoint
    from .modeling_opens2s.convert_original_token2wav import convert_original_token2wav
    from .modeling_opens2s.feature_extraction_opens2s import OpenS2SFeatureExtractor
    from .modeling_opens2s.modeling_opens2s import OpenS2SForConditionalGeneration, OpenS2SOutput
    from .modeling_opens2s.modeling_speech_tokenizer import OpenS2SSpeechTokenizer
    from .modeling_opens2s.modeling_token2wav import OpenS2SToken2Wav
    from .modeling_opens2s.processing_opens2s import OpenS2SProcessor
    from .tiny import EXAMPLE_WAV, TINY_MODEL_DIR, build_tiny_model, tiny_model_path
else:
    import sys

    sys.modules[__name__] = _LazyModule(
        __name__, __file__, _import_structure, module_spec=__spec__, extra_objects={"__version__": __version__}
    )
