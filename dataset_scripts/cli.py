"""`opens2s data STAGE|all|status --workdir DIR ...`: the data pipeline from the command line.

    opens2s data all --workdir data/en --seed-data seeds.csv --llm openai --llm-model Qwen/Qwen3-32B \\
        --llm-base-url http://127.0.0.1:8000/v1 --requests-per-second 20 --tts espeak
    opens2s data status --workdir data/en
    opens2s data all --workdir data/en          # resume: settings come from data/en/config.json

Also `python -m opens2s.dataset_scripts ...`. This module imports only the standard library until a command runs.
"""

import argparse
import sys

from opens2s.dataset_scripts.config import STAGES, add_config_arguments, config_from_arguments


__all__ = ["add_arguments", "main", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of `opens2s data`."""
    parser.add_argument(
        "stage",
        choices=[*STAGES, "all", "status"],
        help=f"one stage ({', '.join(STAGES)}), all of them in order, or status (counts of each stage)",
    )
    parser.add_argument("--until", choices=STAGES, help="with `all`: stop after this stage")
    add_config_arguments(parser)


def _print_status(workdir) -> None:
    from opens2s.dataset_scripts.pipeline import pipeline_status

    for stage, status in pipeline_status(workdir).items():
        if "inputs" in status:
            reasons = ", ".join(f"{count} {reason}" for reason, count in status.get("failure_reasons", {}).items())
            counts = f"inputs {status['inputs']:>6}  rows {status['outputs']:>6}  failed {status.get('failed', 0):>5}"
            print(f"{stage:<16} {status['state']:<10} {counts}" + (f"  ({reasons})" if reasons else ""))
        else:
            print(f"{stage:<16} {status['state']}")


def run(args: argparse.Namespace) -> int:
    """Run the parsed `opens2s data` command; returns the exit status."""
    from opens2s.dataset_scripts.pipeline import run_pipeline
    from opens2s.dataset_scripts.runner import StageAborted, WorkdirLocked

    if args.stage == "status":
        _print_status(args.workdir)
        return 0
    config = config_from_arguments(args)
    if args.stage == "all":
        stages = STAGES[: STAGES.index(args.until) + 1] if args.until else STAGES
    else:
        stages = (args.stage,)
    try:
        run_pipeline(config, stages)
    except (StageAborted, WorkdirLocked) as error:
        print(f"opens2s data: {error}", file=sys.stderr)
        return 1
    _print_status(config.workdir)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m opens2s.dataset_scripts`: the same as `opens2s data`."""
    import logging

    parser = argparse.ArgumentParser(prog="python -m opens2s.dataset_scripts", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except (OSError, ValueError) as error:
        print(f"opens2s data: error: {error}", file=sys.stderr)
        return 1
