"""Resumable stages: committed parts, per-row failures with reasons, atomic outputs and a manifest of counts.

A stage reads the rows of its input (each with a stable `id`), skips those already finished, and processes the rest
in chunks of `chunk_size`. Each chunk is committed as one *part*, `WORKDIR/parts/<stage>/part-00007/`:

    rows.jsonl       output rows (audio as paths relative to WORKDIR)
    failures.jsonl   {"id", "source_id", "reason", "detail"} per failed input or dropped output
    status.json      {"done": [input ids], "failed": [input ids]}

written to a temporary folder and renamed, so a kill leaves whole parts only (it loses at most the chunk in flight).
When every input is finished, the parts are merged into `WORKDIR/<stage>/`:

    dataset/         `save_to_disk` folder, rows in input order, `Audio` columns with the audio bytes embedded
    failures.jsonl   the failures that still stand
    manifest.json    counts: inputs, outputs, done, failed, pending, failures by reason, parts

again through a temporary folder and a rename, so `WORKDIR/<stage>/` is always a complete stage or absent. A re-run
skips finished inputs (so nothing is duplicated), retries failed ones (`retry_failed`), and for an input processed
more than once keeps only its latest part's rows and failures (so nothing is counted twice). Inputs that left the
source are left out of the merge.
"""

import hashlib
import json
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from opens2s.dataset_scripts.config import PipelineConfig


__all__ = ["Failure", "StageAborted", "StageRunner", "WorkdirLocked", "map_rows", "workdir_lock", "write_atomic"]

logger = logging.getLogger(__name__)

DATASET_DIR, FAILURES_FILE, MANIFEST_FILE = "dataset", "failures.jsonl", "manifest.json"
LOCK_FILE = ".lock"


@dataclass
class Failure:
    """Why an input row (`source_id`) failed, or why one of its outputs (`id`) was dropped."""

    id: str
    source_id: str
    reason: str
    detail: str = ""


class StageAborted(RuntimeError):
    """Too many backend calls failed in a row (an endpoint down, a model missing): finished parts are kept."""


class WorkdirLocked(RuntimeError):
    """Another run holds the work folder's lock."""


@contextmanager
def workdir_lock(workdir: str | Path) -> Iterator[None]:
    """Hold `WORKDIR/.lock` (an exclusive `fcntl.flock`, holding this process's pid) while a run writes the folder.

    Two runs on one folder would race on its parts and stage folders; the second refuses at once instead. The
    kernel drops a `flock` when its process exits, however it exits, so a crashed or killed run never leaves a stale
    lock behind: the pid in the file is only for the message.

    Raises:
        [`WorkdirLocked`] naming the other run's pid when the folder is in use.
    """
    import fcntl

    path = Path(workdir) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(descriptor, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise WorkdirLocked(
                f"{workdir} is in use by another run (pid {other}); wait for it to finish or stop it. A run that "
                "crashed holds nothing: the lock ends with its process."
            ) from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, str(os.getpid()).encode("ascii"), 0)
        try:
            yield
        finally:
            os.ftruncate(descriptor, 0)
            fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)


def write_atomic(path: Path, data: bytes) -> None:
    """Write a file through a temporary name and a rename: readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_bytes(data)
    temporary.replace(path)


def _write_jsonl(path: Path, records: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def map_rows(function: Callable[[dict], Any], rows: list[dict], workers: int, progress=None) -> list[Any]:
    """`function(row)` of every row, in row order, on up to `workers` threads; an `Exception` a call raises is
    returned in its place (so one bad row never stops the others). `KeyboardInterrupt` and friends propagate."""

    def call(row: dict) -> Any:
        try:
            return function(row)
        except Exception as error:  # noqa: BLE001 - recorded as the row's failure by the caller
            logger.debug("row %s failed", row.get("id"), exc_info=True)
            return error
        finally:
            if progress is not None:
                progress.update(1)

    if workers <= 1 or len(rows) <= 1:
        return [call(row) for row in rows]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(call, rows))


@dataclass
class _Part:
    index: int
    rows: list[dict]
    failures: list[dict]
    done: list[str]
    failed: list[str]


class StageRunner:
    """Progress of one stage: which inputs are finished, committing parts, and the final merge.

    Args:
        stage (`str`): the stage name, also its folder name.
        config ([`PipelineConfig`]): gives `workdir`, `chunk_size`, `retry_failed`, `max_consecutive_failures`.
        source_key (`str`, *optional*, defaults to `"id"`): the output column that holds the input row's id.
        abort_reasons (`tuple[str]`, *optional*): failure reasons that count towards `max_consecutive_failures`.
    """

    def __init__(self, stage: str, config: PipelineConfig, source_key: str = "id", abort_reasons: tuple = ()):
        self.stage, self.config, self.source_key = stage, config, source_key
        self.workdir = Path(config.workdir)
        self.final_dir = self.workdir / stage
        self.parts_dir = self.workdir / "parts" / stage
        self.abort_reasons = set(abort_reasons)
        self._streak = 0
        self._recover()
        self.parts = self._load_parts()

    # ------------------------------------------------------------------ state on disk
    def _recover(self) -> None:
        """Undo what a kill can leave: temporary parts, a half-written final folder, a final folder being swapped."""
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        for path in self.parts_dir.glob(".part-*"):
            shutil.rmtree(path, ignore_errors=True)
        shutil.rmtree(self.final_dir.with_name(f".{self.stage}.tmp"), ignore_errors=True)
        old = self.final_dir.with_name(f".{self.stage}.old")
        if old.exists():
            if self.final_dir.exists():
                shutil.rmtree(old)
            else:
                old.rename(self.final_dir)

    def _load_parts(self) -> list[_Part]:
        parts = []
        for path in sorted(self.parts_dir.glob("part-*")):
            status = json.loads((path / "status.json").read_text(encoding="utf-8"))
            rows, failures = _read_jsonl(path / "rows.jsonl"), _read_jsonl(path / FAILURES_FILE)
            parts.append(_Part(int(path.name.split("-")[1]), rows, failures, status["done"], status["failed"]))
        return parts

    def _latest(self) -> dict[str, int]:
        """For each input id, the index of the last part that processed it."""
        latest = {}
        for part in self.parts:
            for source_id in part.done + part.failed:
                latest[source_id] = part.index
        return latest

    def _current(self) -> tuple[dict[str, bool], list[dict], list[dict]]:
        """`({input id: finished?}, rows, failures)` after the latest-part rule."""
        latest, status, rows, failures = self._latest(), {}, [], []
        for part in self.parts:
            status.update({source_id: True for source_id in part.done if latest[source_id] == part.index})
            status.update({source_id: False for source_id in part.failed if latest[source_id] == part.index})
            rows += [row for row in part.rows if latest.get(row[self.source_key]) == part.index]
            failures += [failure for failure in part.failures if latest.get(failure["source_id"]) == part.index]
        return status, rows, failures

    def finished_rows(self) -> list[dict]:
        """Output rows committed so far (e.g. to dedup new rows against)."""
        return self._current()[1]

    def pending(self, source_ids: list[str]) -> list[int]:
        """Positions of the inputs still to process: not finished, and not failed unless `retry_failed`."""
        status = self._current()[0]
        return [
            position
            for position, source_id in enumerate(source_ids)
            if source_id not in status or (not status[source_id] and self.config.retry_failed)
        ]

    # ------------------------------------------------------------------ progress
    def chunks(self, positions: list[int]) -> Iterator[list[int]]:
        """`positions` in chunks of `chunk_size` (each becomes one part)."""
        size = self.config.chunk_size
        for start in range(0, len(positions), size):
            yield positions[start : start + size]

    def commit(self, rows: list[dict], done: list[str], failures: list[Failure]) -> None:
        """Commit one processed chunk as a part (atomically). Raises [`StageAborted`] after committing when the
        last `max_consecutive_failures` inputs all failed for a backend reason."""
        finished = set(done)
        failed = list(dict.fromkeys(f.source_id for f in failures if f.source_id not in finished))
        index = self.parts[-1].index + 1 if self.parts else 0
        temporary = self.parts_dir / f".part-{index:05d}-{os.getpid()}"
        temporary.mkdir(parents=True)
        records = [asdict(failure) for failure in failures]
        _write_jsonl(temporary / "rows.jsonl", rows)
        _write_jsonl(temporary / FAILURES_FILE, records)
        (temporary / "status.json").write_text(json.dumps({"done": done, "failed": failed}), encoding="utf-8")
        temporary.rename(self.parts_dir / f"part-{index:05d}")
        self.parts.append(_Part(index, rows, records, list(done), failed))
        for failure in failures:
            logger.debug("%s: %s failed: %s %s", self.stage, failure.id, failure.reason, failure.detail)
        backend_failures = [failure for failure in failures if failure.reason in self.abort_reasons]
        self._streak = 0 if done else self._streak + len(backend_failures)
        if self._streak >= self.config.max_consecutive_failures:
            reasons = Counter(failure.reason for failure in backend_failures)
            raise StageAborted(
                f"{self.stage}: the last {self._streak} rows all failed ({dict(reasons)}; last: "
                f"{backend_failures[-1].detail[:200]}); stopping. Finished rows are kept: fix the backend and re-run."
            )

    # ------------------------------------------------------------------ merge
    def finish(self, source_ids: list[str], features, write_extra: Callable | None = None, info: dict | None = None):
        """Merge the parts into `WORKDIR/<stage>/` (atomically) and return its `datasets.Dataset`.

        Args:
            source_ids (`list[str]`): the input ids in input order (rows are ordered and filtered by them).
            features (`datasets.Features`): the output schema; `Audio` columns hold paths relative to the work
                folder in the parts and get the files' bytes embedded here.
            write_extra (`Callable`, *optional*): `write_extra(folder, rows)` writes more files into the stage folder.
            info (`dict`, *optional*): extra manifest entries (backends, settings).
        """
        import datasets

        fingerprint = hashlib.sha1("\n".join(source_ids).encode("utf-8")).hexdigest()
        manifest = self.manifest()
        if manifest and manifest.get("source_fingerprint") == fingerprint and manifest.get("parts") == len(self.parts):
            logger.info("%s: up to date (%d rows)", self.stage, manifest["outputs"])
            return datasets.load_from_disk(str(self.final_dir / DATASET_DIR))
        status, rows, failures = self._current()
        order = {source_id: position for position, source_id in enumerate(source_ids)}
        rows = sorted((row for row in rows if row[self.source_key] in order), key=lambda r: order[r[self.source_key]])
        failures = sorted((f for f in failures if f["source_id"] in order), key=lambda f: order[f["source_id"]])
        temporary = self.final_dir.with_name(f".{self.stage}.tmp")
        temporary.mkdir(parents=True)
        self._save_dataset(rows, features, temporary)
        _write_jsonl(temporary / FAILURES_FILE, failures)
        if write_extra is not None:
            write_extra(temporary, rows)
        done = sum(1 for source_id in source_ids if status.get(source_id) is True)
        failed = sum(1 for source_id in source_ids if status.get(source_id) is False)
        manifest = {
            "stage": self.stage,
            "inputs": len(source_ids),
            "outputs": len(rows),
            "done": done,
            "failed": failed,
            "pending": len(source_ids) - done - failed,
            "failure_reasons": dict(Counter(failure["reason"] for failure in failures).most_common()),
            "parts": len(self.parts),
            "source_fingerprint": fingerprint,
            "columns": list(features),
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **(info or {}),
        }
        (temporary / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")
        self._swap_in(temporary)
        _log_manifest(manifest)
        return datasets.load_from_disk(str(self.final_dir / DATASET_DIR))

    def _save_dataset(self, rows: list[dict], features, folder: Path, batch_size: int = 256) -> None:
        """Write rows as an Arrow file in batches (audio bytes read per batch), then `save_to_disk`."""
        import datasets
        import pyarrow as pa

        audio_columns = [name for name, feature in features.items() if isinstance(feature, datasets.Audio)]
        arrow_path = folder / "rows.arrow"
        schema = features.arrow_schema
        with pa.OSFile(str(arrow_path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
            for start in range(0, len(rows), batch_size):
                batch = [self._embed(row, audio_columns) for row in rows[start : start + batch_size]]
                writer.write_batch(pa.RecordBatch.from_pylist(batch, schema=schema))
        dataset = datasets.Dataset.from_file(str(arrow_path), info=datasets.DatasetInfo(features=features))
        # One shard at least: `datasets` writes none for an empty table and then cannot load the folder.
        dataset.save_to_disk(str(folder / DATASET_DIR), num_shards=None if rows else 1)
        del dataset
        arrow_path.unlink()

    def _embed(self, row: dict, audio_columns: list[str]) -> dict:
        row = dict(row)
        for name in audio_columns:
            if row.get(name):
                path = self.workdir / row[name]
                row[name] = {"bytes": path.read_bytes(), "path": path.name}
        return row

    def _swap_in(self, temporary: Path) -> None:
        old = self.final_dir.with_name(f".{self.stage}.old")
        if self.final_dir.exists():
            self.final_dir.rename(old)
        temporary.rename(self.final_dir)
        shutil.rmtree(old, ignore_errors=True)

    def manifest(self) -> dict | None:
        """The manifest of the merged stage, or `None` before the first merge."""
        path = self.final_dir / MANIFEST_FILE
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _log_manifest(manifest: dict) -> None:
    reasons = ", ".join(f"{count} {reason}" for reason, count in manifest["failure_reasons"].items())
    logger.info(
        "%s: %d inputs -> %d rows (%d done, %d failed%s)",
        manifest["stage"],
        manifest["inputs"],
        manifest["outputs"],
        manifest["done"],
        manifest["failed"],
        f": {reasons}" if reasons else "",
    )
    if manifest["failure_reasons"]:
        logger.warning(
            "%s: failures by reason: %s (see %s/failures.jsonl)", manifest["stage"], reasons, manifest["stage"]
        )
