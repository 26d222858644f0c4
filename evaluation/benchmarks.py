"""Benchmarks of the paper's Table 2 as `datasets` loaders: VoiceBench subsets and URO-Bench UnderEmotion subsets.

Every loader returns a [`datasets.Dataset`] in one normalised schema, whatever the benchmark:

| column | type | VoiceBench | URO-Bench |
|---|---|---|---|
| `id` | `str` | `key` (ifeval), else the row index `"0000"`, ... | row index `"0000"`, ... (URO-Bench's names) |
| `audio` | `Audio(decode=False)` | `audio` | `source_wav` (relative to `test.jsonl`) |
| `prompt` | `str` | `prompt` (transcript of the spoken instruction) | `source_text` |
| `reference` | `str` | `reference` (sd-qa), else `""` | `target_text` (a list joined with `" / "`, as URO-Bench) |
| `emotion` | `str` | `""` | `emotion` |
| `instruction_id_list` | `list[str]` | ifeval's `instruction_id_list`, else `[]` | `[]` |
| `kwargs` | `str` | ifeval's `kwargs` as JSON (a list of dicts, `None` values dropped), else `"[]"` | `"[]"` |

Audio stays undecoded (`{"bytes", "path"}`): `opens2s.processing.load_audio` reads it (soundfile, soxr), so no
torchcodec is needed.

Where the data comes from (read from the benchmarks' public repositories; nothing here is copied code):
- VoiceBench (github.com/MatthewCYM/VoiceBench, `main.py`): `load_dataset("hlt-lab/voicebench", subset,
  split="test")`; subsets `alpacaeval` (199 rows), `alpacaeval_full` (636), `commoneval` (200), `wildvoice` (1,000),
  `ifeval` (345). Columns used: `audio`, `prompt`; ifeval adds `key`, `instruction_id_list`, `kwargs`.
- URO-Bench (github.com/Ruiqi-Yan/URO-Bench, README and `examples/example-test/inference_for_eval.py`): one archive
  `URO-Bench-data.zip` in the Hub dataset repo `Honggao/URO-Bench`, unpacked to `<track>/<Subset>/test.jsonl` with one
  JSON object per line holding `source_wav`, `source_text`, `target_text` and (UnderEmotion) `emotion`; UnderEmotion-en
  (137 rows) and UnderEmotion-zh (79) are in the `pro` track. *Assumption*: the archive's top folder may be
  `URO-Bench-data/`; both layouts are searched.

Offline mirrors: pass a local path instead of a Hub id. For VoiceBench, a folder holding one sub-folder per subset
(each a `save_to_disk` folder, or parquet / jsonl / arrow files), or a clone of the Hub repo; for URO-Bench, the
unpacked data folder (or the `test.jsonl` folder of one subset).
"""

import json
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path


__all__ = [
    "BENCHMARKS",
    "DEFAULT_SOURCES",
    "TABLE2_BENCHMARKS",
    "BenchmarkSpec",
    "get_benchmark",
    "load_benchmark",
]

logger = logging.getLogger(__name__)

NORMALISED_COLUMNS = ("id", "audio", "prompt", "reference", "emotion", "instruction_id_list", "kwargs")
URO_BENCH_ARCHIVE = "URO-Bench-data.zip"
_LOCAL_DATA_FILES = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".arrow": "arrow"}


@dataclass(frozen=True)
class BenchmarkSpec:
    """One benchmark of the evaluation.

    Args:
        name (`str`): the name used on the command line and in output folders, e.g. `"alpacaeval_full"`.
        title (`str`): the column title of the report, e.g. `"AlpacaEval"`.
        suite (`str`): `"voicebench"` or `"uro-bench"` (picks the loader and the default source).
        subset (`str`): the Hub config (VoiceBench) or the data folder name (URO-Bench).
        scorer (`str`): `"open"` (LLM judge, 1-5), `"ifeval"` (rule-based, 0-100) or `"underemotion"` (LLM judge,
            0-100).
        language (`str`): `"en"` or `"zh"`: ASR language and WER (en) or CER (zh) for the speech metrics.
        track (`str`, *optional*): URO-Bench track folder (`"basic"` or `"pro"`).
        split (`str`, *optional*, defaults to `"test"`): the split to load.
    """

    name: str
    title: str
    suite: str
    subset: str
    scorer: str
    language: str
    track: str | None = None
    split: str = "test"


BENCHMARKS: dict[str, BenchmarkSpec] = {
    spec.name: spec
    for spec in (
        BenchmarkSpec("alpacaeval_full", "AlpacaEval", "voicebench", "alpacaeval_full", "open", "en"),
        BenchmarkSpec("alpacaeval", "AlpacaEval-199", "voicebench", "alpacaeval", "open", "en"),
        BenchmarkSpec("commoneval", "CommonEval", "voicebench", "commoneval", "open", "en"),
        BenchmarkSpec("wildvoice", "WildVoice", "voicebench", "wildvoice", "open", "en"),
        BenchmarkSpec("ifeval", "IFEval", "voicebench", "ifeval", "ifeval", "en"),
        BenchmarkSpec(
            "underemotion-en", "UnderEmotion-en", "uro-bench", "UnderEmotion-en", "underemotion", "en", "pro"
        ),
        BenchmarkSpec(
            "underemotion-zh", "UnderEmotion-zh", "uro-bench", "UnderEmotion-zh", "underemotion", "zh", "pro"
        ),
    )
}
# The benchmarks of the paper's Table 2, in the order of its numbers (see `report.PAPER_TABLE2`). AlpacaEval is
# VoiceBench's leaderboard subset `alpacaeval_full` (636 rows; VoiceBench README: "`alpacaeval_full` is used in the
# leaderboard", where the paper's Kimi-Audio 4.46 comes from); the 199-row `alpacaeval` is the named option.
TABLE2_BENCHMARKS = ("alpacaeval_full", "commoneval", "ifeval", "wildvoice", "underemotion-en", "underemotion-zh")
DEFAULT_SOURCES = {"voicebench": "hlt-lab/voicebench", "uro-bench": "Honggao/URO-Bench"}


def get_benchmark(name: str) -> BenchmarkSpec:
    """The [`BenchmarkSpec`] called `name`; raises `ValueError` listing the known names."""
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}") from None


def load_benchmark(
    name: str | BenchmarkSpec,
    source: str | Path | None = None,
    limit: int | None = None,
    cache_dir: Path | None = None,
):
    """Load one benchmark in the normalised schema (see the module docstring).

    Args:
        name (`str` or [`BenchmarkSpec`]): e.g. `"alpacaeval_full"`, `"ifeval"`, `"underemotion-en"`.
        source (`str` or `Path`, *optional*): a Hub dataset id or a local mirror; defaults to the suite's Hub id
            (`DEFAULT_SOURCES`).
        limit (`int`, *optional*): keep the first `limit` rows only.
        cache_dir (`Path`, *optional*): where the URO-Bench archive is unpacked (default `~/.cache/opens2s`).

    Returns:
        [`datasets.Dataset`] with the columns `id`, `audio`, `prompt`, `reference`, `emotion`,
        `instruction_id_list`, `kwargs`.
    """
    spec = get_benchmark(name) if isinstance(name, str) else name
    source = DEFAULT_SOURCES[spec.suite] if source is None else source
    if spec.suite == "voicebench":
        dataset = _normalise_voicebench(_load_voicebench_raw(spec, source))
    else:
        dataset = _load_uro_bench(spec, source, cache_dir)
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    logger.info("%s: %d rows from %s", spec.name, len(dataset), source)
    return dataset


# ---------------------------------------------------------------- VoiceBench
def _load_voicebench_raw(spec: BenchmarkSpec, source: str | Path):
    import datasets

    local = Path(source)
    if not local.exists():
        return datasets.load_dataset(str(source), spec.subset, split=spec.split)
    folder = local / spec.subset if (local / spec.subset).is_dir() else local
    if (folder / "dataset_dict.json").is_file():
        return datasets.load_from_disk(str(folder))[spec.split]
    if (folder / "state.json").is_file():
        return datasets.load_from_disk(str(folder))
    files = sorted(path for path in folder.iterdir() if path.suffix in _LOCAL_DATA_FILES)
    split_files = [path for path in files if path.name.startswith(spec.split)] or files
    if split_files and folder != local:
        builder = _LOCAL_DATA_FILES[split_files[0].suffix]
        dataset = datasets.load_dataset(builder, data_files=[str(p) for p in split_files], split="train")
        return _absolute_audio_paths(dataset, folder)
    # A clone of the Hub repo: its README declares the configs.
    return datasets.load_dataset(str(local), spec.subset, split=spec.split)


def _absolute_audio_paths(dataset, folder: Path):
    """Audio given as file paths (jsonl mirrors) are made absolute, relative to the data folder."""
    from datasets import Value

    feature = dataset.features.get("audio")
    if not (isinstance(feature, Value) and feature.dtype == "string"):  # not read: that would decode the audio
        return dataset
    return dataset.map(lambda row: {"audio": str((folder / row["audio"]).resolve())})


def _normalise_voicebench(dataset):
    from datasets import Audio

    if "audio" not in dataset.column_names or "prompt" not in dataset.column_names:
        raise ValueError(f"a VoiceBench subset needs `audio` and `prompt` columns, got {dataset.column_names}")
    dataset = dataset.cast_column("audio", Audio(decode=False))
    has_key = "key" in dataset.column_names

    def normalise(row: dict, index: int) -> dict:
        return {
            "id": str(row["key"]) if has_key else f"{index:04d}",
            "prompt": row["prompt"] or "",
            "reference": _as_text(row.get("reference")),
            "emotion": "",
            "instruction_id_list": list(row.get("instruction_id_list") or []),
            "kwargs": _kwargs_json(row.get("kwargs")),
        }

    extra = [column for column in dataset.column_names if column not in NORMALISED_COLUMNS]
    dataset = dataset.map(normalise, with_indices=True, remove_columns=extra)
    return dataset.select_columns(list(NORMALISED_COLUMNS))


def _kwargs_json(kwargs) -> str:
    """IFEval kwargs as JSON: one dict per instruction; the `None` fields that Arrow adds for the union of all
    instructions' arguments are dropped (VoiceBench's `ifeval.py` drops them too)."""
    if kwargs is None:
        return "[]"
    if isinstance(kwargs, str):
        kwargs = json.loads(kwargs)
    return json.dumps([{key: value for key, value in (item or {}).items() if value is not None} for item in kwargs])


def _as_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return " / ".join(str(item) for item in value)
    return str(value)


# ---------------------------------------------------------------- URO-Bench
def _load_uro_bench(spec: BenchmarkSpec, source: str | Path, cache_dir: Path | None):
    from datasets import Audio, Dataset, Features, Sequence, Value

    root = Path(source) if Path(source).exists() else _download_uro_bench(str(source), cache_dir)
    test_file = _find_uro_test_file(root, spec)
    rows = []
    with test_file.open(encoding="utf-8") as lines:
        for index, line in enumerate(line for line in lines if line.strip()):
            item = json.loads(line)
            if "source_wav" not in item or "source_text" not in item:
                raise ValueError(f"{test_file}: row {index} lacks source_wav/source_text (URO-Bench schema)")
            rows.append(
                {
                    "id": f"{index:04d}",
                    "audio": {"bytes": None, "path": str((test_file.parent / item["source_wav"]).resolve())},
                    "prompt": item["source_text"],
                    "reference": _as_text(item.get("target_text", item["source_text"])),
                    "emotion": _as_text(item.get("emotion")),
                    "instruction_id_list": [],
                    "kwargs": "[]",
                }
            )
    # Built with a plain struct and cast: encoding through Audio() needs torchcodec, casting does not.
    features = Features(
        {
            "id": Value("string"),
            "audio": {"bytes": Value("binary"), "path": Value("string")},
            "prompt": Value("string"),
            "reference": Value("string"),
            "emotion": Value("string"),
            "instruction_id_list": Sequence(Value("string")),
            "kwargs": Value("string"),
        }
    )
    return Dataset.from_list(rows, features=features).cast_column("audio", Audio(decode=False))


def _find_uro_test_file(root: Path, spec: BenchmarkSpec) -> Path:
    candidates = [root / "test.jsonl"] if root.name == spec.subset else []
    for base in (root, root / "URO-Bench-data"):
        candidates += [base / (spec.track or "") / spec.subset / "test.jsonl", base / spec.subset / "test.jsonl"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"no {spec.subset}/test.jsonl under {root} (looked for {', '.join(str(c) for c in candidates)})"
    )


def _download_uro_bench(repo_id: str, cache_dir: Path | None) -> Path:
    """Download `URO-Bench-data.zip` from the Hub dataset `repo_id` and unpack it once (needs network access)."""
    from huggingface_hub import hf_hub_download

    archive = Path(hf_hub_download(repo_id, URO_BENCH_ARCHIVE, repo_type="dataset"))
    target = (cache_dir or Path("~/.cache/opens2s").expanduser()) / "uro-bench" / repo_id.replace("/", "--")
    done = target / ".unpacked"
    if not done.is_file():
        logger.info("unpacking %s into %s", archive, target)
        target.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(archive) as zipped:
            zipped.extractall(target)  # zipfile drops absolute and `..` path parts
        done.write_text(archive.name)
    return target
