"""Making model folders: converters of the original checkpoints, the remote-code export, the tiny default model.

None of this is remote code: a converted folder loads without it. Every name loads on first use.
"""

from typing import TYPE_CHECKING

from transformers.utils import _LazyModule


_import_structure = {
    "checksums": ["CHECKSUMS_NAME", "ChecksumError", "verify_checksums", "write_checksums"],
    "convert_original_opens2s": ["convert_original_checkpoint", "units_only_generation_config"],
    "convert_original_token2wav": [
        "convert_original_token2wav",
        "load_original_checkpoint",
        "load_original_decoder_config",
    ],
    "export": ["export_remote_code", "save_token2wav", "staged_output"],
    "tiny": ["TINY_MODEL_DIR", "build_tiny_model", "tiny_model_path"],
}

if TYPE_CHECKING:
    from opens2s.conversion.checksums import CHECKSUMS_NAME, ChecksumError, verify_checksums, write_checksums
    from opens2s.conversion.convert_original_opens2s import convert_original_checkpoint, units_only_generation_config
    from opens2s.conversion.convert_original_token2wav import (
        convert_original_token2wav,
        load_original_checkpoint,
        load_original_decoder_config,
    )
    from opens2s.conversion.export import export_remote_code, save_token2wav, staged_output
    from opens2s.conversion.tiny import TINY_MODEL_DIR, build_tiny_model, tiny_model_path
else:
    import sys

    sys.modules[__name__] = _LazyModule(__name__, __file__, _import_structure, module_spec=__spec__)
