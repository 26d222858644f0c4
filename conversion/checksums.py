"""SHA-256 checksums of a model folder: written where the converters and `opens2s tiny` write a folder, verified by
the `opens2s` tools that load one (`opens2s verify FOLDER` on its own).

The manifest is `checksums.sha256` in the folder, in the `sha256sum` format (`<hex digest>  <relative path>` per line,
sub-folders included), so `sha256sum -c checksums.sha256` checks it too. A folder without one is not checked.
"""

import hashlib
import logging
from pathlib import Path


__all__ = ["CHECKSUMS_NAME", "ChecksumError", "file_sha256", "verify_checksums", "write_checksums"]

logger = logging.getLogger(__name__)

CHECKSUMS_NAME = "checksums.sha256"
# Read size of the hash loop: memory stays flat for multi-GB shards, and hashing runs near disk speed.
_CHUNK_BYTES = 8 * 1024 * 1024


class ChecksumError(ValueError):
    """A folder's files do not match its `checksums.sha256` (changed, truncated or missing files)."""


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of the file at `path`, read in 8 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def write_checksums(folder: str | Path) -> Path:
    """Write `folder/checksums.sha256` with the SHA-256 of every file under `folder` (hidden files and the manifest
    itself excepted) and return its path."""
    folder = Path(folder)
    files = sorted(
        path
        for path in folder.rglob("*")
        if path.is_file() and path.name != CHECKSUMS_NAME and not _hidden(path.relative_to(folder))
    )
    lines = [f"{file_sha256(path)}  {path.relative_to(folder).as_posix()}\n" for path in files]
    manifest = folder / CHECKSUMS_NAME
    manifest.write_text("".join(lines), encoding="utf-8")
    return manifest


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _read_manifest(manifest: Path) -> dict[str, str]:
    entries = {}
    for number, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        digest, separator, name = line.partition("  ")
        name = name.lstrip("*")  # sha256sum's binary-mode marker
        if not separator or len(digest) != 64 or not name or Path(name).is_absolute() or ".." in Path(name).parts:
            raise ChecksumError(f"{manifest}: line {number} is not '<sha256>  <relative path>': {line[:80]!r}")
        entries[name] = digest.lower()
    return entries


def verify_checksums(folder: str | Path) -> list[str] | None:
    """Check every file listed in `folder/checksums.sha256`.

    Returns:
        The checked relative paths, or `None` when the folder has no manifest (nothing is checked).

    Raises:
        [`ChecksumError`]: naming the files that differ from the manifest or are missing (a `ValueError`).
    """
    folder = Path(folder)
    manifest = folder / CHECKSUMS_NAME
    if not manifest.is_file():
        logger.debug("%s has no %s: its files are not checked", folder, CHECKSUMS_NAME)
        return None
    entries = _read_manifest(manifest)
    missing, differing = [], []
    for name, digest in entries.items():
        path = folder / name
        if not path.is_file():
            missing.append(name)
        elif file_sha256(path) != digest:
            differing.append(name)
    if missing or differing:
        problems = [f"{name} differs from its checksum" for name in differing]
        problems += [f"{name} is missing" for name in missing]
        raise ChecksumError(
            f"{folder} is corrupted or was changed after it was written: {'; '.join(problems)} ({CHECKSUMS_NAME}). "
            "Download or convert it again (or pass --no-verify to load it anyway)"
        )
    logger.info("%s: %d files match %s", folder, len(entries), CHECKSUMS_NAME)
    return list(entries)
