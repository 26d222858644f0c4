"""Loading an OpenS2S folder with this package's own classes, checked against its `checksums.sha256`.

A model folder carries its code (the remote-code files next to the weights), and `trust_remote_code=True` runs
whatever those files say. The tools of this package (`opens2s chat`, `space`, `serve`, `train`) have the same classes
installed, so by default they load a folder with them and never import its files; `trust_remote_code=True` (the
CLI's `--trust-remote-code`) loads the folder's own code through the Auto classes, as transformers does.
"""

import argparse
import logging
import os
from pathlib import Path

from opens2s.conversion.checksums import verify_checksums
from opens2s.modeling_opens2s.saving_opens2s import UNIT_TOKENIZER_SUBFOLDER


__all__ = ["add_loading_arguments", "load_opens2s_model", "load_opens2s_processor", "verify_model_folder"]

logger = logging.getLogger(__name__)


def add_loading_arguments(parser: argparse.ArgumentParser) -> None:
    """`--trust-remote-code` and `--no-verify`, for the commands that load a model folder (`opens2s chat`, `space`,
    `serve`, `train`)."""
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run the Python files of the model folder (its remote code) instead of the installed opens2s classes; "
        "only for folders whose code you trust",
    )
    parser.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="do not check the folder against its checksums.sha256 before loading",
    )


def verify_model_folder(name_or_path: str | os.PathLike) -> list[str] | None:
    """Check a local folder against its `checksums.sha256` (see [`~opens2s.conversion.checksums.verify_checksums`]);
    a Hub id is not checked here (the Hub checks its own downloads). Returns the checked files, or `None`."""
    if not Path(name_or_path).is_dir():
        logger.debug("%s is not a local folder: no checksums to check", name_or_path)
        return None
    return verify_checksums(name_or_path)


def load_opens2s_model(name_or_path: str | os.PathLike, trust_remote_code: bool = False, **kwargs):
    """An [`OpenS2SForConditionalGeneration`] from a folder or Hub id.

    Args:
        name_or_path: the OpenS2S folder or Hub id.
        trust_remote_code (`bool`, *optional*, defaults to `False`): run the folder's own code (`AutoModel` with
            `trust_remote_code=True`) instead of this package's classes.
        kwargs: passed to `from_pretrained` (`dtype`, `revision`, `attn_implementation`, ...).
    """
    if trust_remote_code:
        from transformers import AutoModel

        logger.warning("Running the code in %s (--trust-remote-code)", name_or_path)
        return AutoModel.from_pretrained(str(name_or_path), trust_remote_code=True, **kwargs)
    from opens2s.modeling_opens2s.modeling_opens2s import OpenS2SForConditionalGeneration

    return OpenS2SForConditionalGeneration.from_pretrained(str(name_or_path), **kwargs)


def load_opens2s_processor(name_or_path: str | os.PathLike, trust_remote_code: bool = False, **kwargs):
    """An [`OpenS2SProcessor`] from a folder or Hub id: with this package's classes (the tokenizers through
    `AutoTokenizer` with `trust_remote_code=False`: a folder whose tokenizer needs code is refused), or with
    `trust_remote_code=True` the folder's own (`AutoProcessor`). `kwargs` go to `from_pretrained` (`revision`, ...)."""
    from transformers import AutoProcessor, AutoTokenizer

    name_or_path = str(name_or_path)
    if trust_remote_code:
        return AutoProcessor.from_pretrained(name_or_path, trust_remote_code=True, **kwargs)
    from opens2s.modeling_opens2s.feature_extraction_opens2s import OpenS2SFeatureExtractor
    from opens2s.modeling_opens2s.processing_opens2s import OpenS2SProcessor

    # What ProcessorMixin.from_pretrained does, but with our feature extractor class: AutoFeatureExtractor would
    # follow the folder's auto_map into its code.
    processor_dict, init_kwargs = OpenS2SProcessor.get_processor_dict(name_or_path, **kwargs)
    parts = [
        OpenS2SFeatureExtractor.from_pretrained(name_or_path, **kwargs),
        AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=False, **kwargs),
        AutoTokenizer.from_pretrained(
            name_or_path, subfolder=UNIT_TOKENIZER_SUBFOLDER, trust_remote_code=False, **kwargs
        ),
    ]
    return OpenS2SProcessor.from_args_and_dict(parts, processor_dict, **init_kwargs)
