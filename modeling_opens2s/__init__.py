"""OpenS2S as flat remote-code modules: the model (config, feature extractor, processor, streaming engine), the
token2wav decoder and the speech tokenizer. The converters of the original checkpoints live in `opens2s.conversion`."""

from typing import TYPE_CHECKING

from transformers.utils import _LazyModule


_import_structure = {
    "configuration_opens2s": ["OpenS2SConfig"],
    "modeling_opens2s": [
        "OpenS2SForConditionalGeneration",
        "OpenS2SGenerateOutput",
        "OpenS2SOutput",
        "OpenS2SPreTrainedModel",
    ],
    "feature_extraction_opens2s": ["OpenS2SFeatureExtractor"],
    "processing_opens2s": ["OpenS2SProcessor"],
    "streaming_opens2s": ["AudioChunk", "Done", "SpeechUnits", "TextDelta"],
    "engine_opens2s": ["Conversation", "EngineFull", "OpenS2SEngine", "stream"],
    "configuration_speech_tokenizer": ["OpenS2SSpeechTokenizerConfig"],
    "modeling_speech_tokenizer": ["OpenS2SSpeechTokenizer", "OpenS2SSpeechTokenizerOutput"],
    "configuration_token2wav": [
        "OpenS2SToken2WavConfig",
        "OpenS2SToken2WavFlowConfig",
        "OpenS2SToken2WavHiFTConfig",
    ],
    "modeling_token2wav": ["OpenS2SToken2Wav", "Token2WavOutput"],
}

if TYPE_CHECKING:
    from .configuration_opens2s import OpenS2SConfig
    from .configuration_speech_tokenizer import OpenS2SSpeechTokenizerConfig
    from .configuration_token2wav import (
        OpenS2SToken2WavConfig,
        OpenS2SToken2WavFlowConfig,
        OpenS2SToken2WavHiFTConfig,
    )
    from .engine_opens2s import Conversation, EngineFull, OpenS2SEngine, stream
    from .feature_extraction_opens2s import OpenS2SFeatureExtractor
    from .modeling_opens2s import (
        OpenS2SForConditionalGeneration,
        OpenS2SGenerateOutput,
        OpenS2SOutput,
        OpenS2SPreTrainedModel,
    )
    from .modeling_speech_tokenizer import OpenS2SSpeechTokenizer, OpenS2SSpeechTokenizerOutput
    from .modeling_token2wav import OpenS2SToken2Wav, Token2WavOutput
    from .processing_opens2s import OpenS2SProcessor
    from .streaming_opens2s import AudioChunk, Done, SpeechUnits, TextDelta
else:
    import sys

    sys.modules[__name__] = _LazyModule(__name__, __file__, _import_structure, module_spec=__spec__)
