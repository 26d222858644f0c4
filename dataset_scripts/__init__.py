"""The data-construction pipeline of OpenS2S (paper section 3.2) as resumable `datasets` stages.

seed audio (emotion, age, gender, transcript) -> LLM instructions -> voice-cloned user speech -> LLM empathetic
replies and tones -> instruct-TTS reply speech -> speech units and training rows -> push to the Hub.
Command line: `opens2s data STAGE|all|status --workdir DIR ...`. Names load on first use.
"""

from typing import TYPE_CHECKING

from transformers.utils import _LazyModule


_import_structure = {
    "backends": [
        "Backends",
        "OpenAICompatibleLLM",
        "TransformersLLM",
        "register_llm_backend",
        "register_tts_backend",
    ],
    "card": ["build_card", "run_push"],
    "config": ["STAGES", "PipelineConfig"],
    "pipeline": ["load_stage", "pipeline_status", "run_pipeline", "run_stage"],
    "runner": ["Failure", "StageAborted", "StageRunner"],
    "tts": ["CosyVoice2TTS", "EspeakTTS"],
}

if TYPE_CHECKING:
    from opens2s.dataset_scripts.backends import (
        Backends,
        OpenAICompatibleLLM,
        TransformersLLM,
        register_llm_backend,
        register_tts_backend,
    )
    from opens2s.dataset_scripts.card import build_card, run_push
    from opens2s.dataset_scripts.config import STAGES, PipelineConfig
    from opens2s.dataset_scripts.pipeline import load_stage, pipeline_status, run_pipeline, run_stage
    from opens2s.dataset_scripts.runner import Failure, StageAborted, StageRunner
    from opens2s.dataset_scripts.tts import CosyVoice2TTS, EspeakTTS
else:
    import sys

    sys.modules[__name__] = _LazyModule(__name__, __file__, _import_structure, module_spec=__spec__)
