"""Training OpenS2S with the Trainer/TRL API: data, collators, stage presets, the trainer and its config.

Every name loads on first use: `import opens2s.training` imports neither trl, peft nor datasets.
"""

from typing import TYPE_CHECKING

from transformers.utils import _LazyModule


_import_structure = {
    "collator": [
        "OpenS2SDataCollator",
        "OpenS2STextToUnitsCollator",
        "build_collator",
    ],
    "config": ["OpenS2SSFTConfig"],
    "data": [
        "alignment_prompt",
        "build_alignment_rows",
        "load_original_jsonl",
        "load_training_dataset",
        "row_messages",
    ],
    "stages": ["STAGE_PRESETS", "StagePreset", "apply_stage", "build_lora_config", "get_stage", "trainable_parts"],
    "trainer": ["OpenS2STrainer"],
}

if TYPE_CHECKING:
    from opens2s.training.collator import (
        OpenS2SDataCollator,
        OpenS2STextToUnitsCollator,
        build_collator,
    )
    from opens2s.training.config import OpenS2SSFTConfig
    from opens2s.training.data import (
        alignment_prompt,
        build_alignment_rows,
        load_original_jsonl,
        load_training_dataset,
        row_messages,
    )
    from opens2s.training.stages import (
        STAGE_PRESETS,
        StagePreset,
        apply_stage,
        build_lora_config,
        get_stage,
        trainable_parts,
    )
    from opens2s.training.trainer import OpenS2STrainer
else:
    import sys

    sys.modules[__name__] = _LazyModule(__name__, __file__, _import_structure, module_spec=__spec__)
