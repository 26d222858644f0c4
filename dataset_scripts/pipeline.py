"""Running the data pipeline: one stage, a range of stages, or all of them; and reading where a work folder stands.

    from opens2s.dataset_scripts import PipelineConfig, run_pipeline

    config = PipelineConfig(
        workdir="data/empathetic-en", seed_data="seeds.csv", llm="openai", llm_model="Qwen/Qwen3-32B",
        llm_base_url="http://127.0.0.1:8000/v1", requests_per_second=20, tts="espeak",
    )
    dataset = run_pipeline(config)  # seed -> ... -> units -> push (WORKDIR/push/ or the Hub with repo_id)

Every stage skips what an earlier run finished, so the same call resumes a killed run, and adding rows to the seed
file and calling it again processes only the new rows.
"""

import json
import logging
from pathlib import Path

from opens2s.dataset_scripts.backends import Backends
from opens2s.dataset_scripts.config import STAGES, PipelineConfig
from opens2s.dataset_scripts.runner import workdir_lock


__all__ = ["load_stage", "pipeline_status", "run_pipeline", "run_stage"]

logger = logging.getLogger(__name__)


def load_stage(workdir: str | Path, stage: str):
    """The merged output of `stage` in `workdir` (a `datasets.Dataset`, audio undecoded)."""
    import datasets

    folder = Path(workdir) / stage / "dataset"
    if not (folder / "dataset_info.json").is_file():
        raise FileNotFoundError(f"{Path(workdir) / stage} is not a finished stage: run `opens2s data {stage}` first")
    return datasets.load_from_disk(str(folder))


def run_stage(stage: str, config: PipelineConfig, backends: Backends | None = None):
    """Run one stage on the output of the stage before it; returns the stage's dataset.

    Raises:
        [`WorkdirLocked`] when another run uses `config.workdir` (see [`workdir_lock`]).
    """
    with workdir_lock(config.workdir):
        return _run_stage(stage, config, backends)


def _run_stage(stage: str, config: PipelineConfig, backends: Backends | None):
    from opens2s.dataset_scripts.card import run_push
    from opens2s.dataset_scripts.stages import STAGE_FUNCTIONS

    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    backends = backends or Backends(config)
    config.save()
    logger.info("stage %s", stage)
    if stage == "seed":
        return STAGE_FUNCTIONS["seed"](backends, config)
    source = load_stage(config.workdir, STAGES[STAGES.index(stage) - 1])
    function = run_push if stage == "push" else STAGE_FUNCTIONS[stage]
    return function(source, backends, config)


def run_pipeline(
    config: PipelineConfig,
    stages: list[str] | tuple[str, ...] | None = None,
    backends: Backends | None = None,
):
    """Run `stages` (default: all, `seed` to `push`) in pipeline order; returns the last stage's dataset.

    Args:
        config ([`PipelineConfig`]): the settings (saved to `workdir/config.json`).
        stages (`list[str]`, *optional*): a subset of `STAGES`, e.g. `["seed", "instructions"]`.
        backends ([`Backends`], *optional*): ready-made backends (tests, notebooks); default: built from `config`.

    Raises:
        [`WorkdirLocked`] when another run uses `config.workdir`: one run per work folder at a time.
    """
    stages = list(STAGES if stages is None else stages)
    unknown = [stage for stage in stages if stage not in STAGES]
    if unknown:
        raise ValueError(f"unknown stages {unknown}; stages: {', '.join(STAGES)}")
    with workdir_lock(config.workdir):
        backends = backends or Backends(config)
        dataset = None
        for stage in sorted(stages, key=STAGES.index):
            dataset = _run_stage(stage, config, backends)
    return dataset


def pipeline_status(workdir: str | Path) -> dict[str, dict]:
    """Where each stage of a work folder stands: its manifest (merged), else the count of committed parts."""
    workdir = Path(workdir)
    status = {}
    for stage in STAGES:
        manifest = workdir / stage / "manifest.json"
        parts = len(list((workdir / "parts" / stage).glob("part-*")))
        if manifest.is_file():
            status[stage] = json.loads(manifest.read_text(encoding="utf-8"))
            if stage != "push" and parts != status[stage].get("parts"):
                status[stage]["state"] = "parts newer than the merge: re-run to merge"
            else:
                status[stage]["state"] = "finished"
        else:
            status[stage] = {"state": f"in progress ({parts} parts committed)" if parts else "not started"}
    return status
