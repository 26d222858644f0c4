"""opens2s: the OpenS2S empathetic speech-to-speech model on the Hugging Face stack.

`import opens2s` is cheap: every name below loads on first use. The folders of the source tree are its subpackages
(`opens2s.modeling_opens2s`, `opens2s.processing`, `opens2s.conversion`, `opens2s.training`, ...); this folder holds
the command line only.
"""

from typing import TYPE_CHECKING

from transformers.utils import _LazyModule


__version__ = "0.1.0"

_import_structure = {
    "modeling_opens2s.configuration_opens2s": ["OpenS2SConfig"],
    "modeling_opens2s.modeling_opens2s": ["OpenS2SForConditionalGeneration", "OpenS2SOutput"],
    "modeling_opens2s.feature_extraction_opens2s": ["OpenS2SFeatureExtractor"],
    "modeling_opens2s.processing_opens2s": ["OpenS2SProcessor"],
    "modeling_opens2s.modeling_token2wav": ["OpenS2SToken2Wav"],
    "modeling_opens2s.modeling_speech_tokenizer": ["OpenS2SSpeechTokenizer"],
    "conversion.convert_original_opens2s": ["convert_original_checkpoint"],
    "conversion.convert_original_token2wav": ["convert_original_token2wav"],
    "conversion.tiny": ["build_tiny_model", "tiny_model_path", "TINY_MODEL_DIR"],
    "processing.chat": ["EXAMPLE_WAV"],
}

if TYPE_CHECKING:
    from opens2s.conversion.convert_original_opens2s import convert_original_checkpoint
    from opens2s.conversion.convert_original_token2wav import convert_original_token2wav
    from opens2s.conversion.tiny import TINY_MODEL_DIR, build_tiny_model, tiny_model_path
    from opens2s.modeling_opens2s.configuration_opens2s import OpenS2SConfig
    from opens2s.modeling_opens2s.feature_extraction_opens2s import OpenS2SFeatureExtractor
    from opens2s.modeling_opens2s.modeling_opens2s import OpenS2SForConditionalGeneration, OpenS2SOutput
    from opens2s.modeling_opens2s.modeling_speech_tokenizer import OpenS2SSpeechTokenizer
    from opens2s.modeling_opens2s.modeling_token2wav import OpenS2SToken2Wav
    from opens2s.modeling_opens2s.processing_opens2s import OpenS2SProcessor
    from opens2s.processing.chat import EXAMPLE_WAV
else:
    import sys

    sys.modules[__name__] = _LazyModule(
        __name__, __file__, _import_structure, module_spec=__spec__, extra_objects={"__version__": __version__}
    )
