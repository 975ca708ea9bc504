"""Which exact weights a model reference named: the provenance stored with an experiment.

- a GGUF file: its SHA-256 and size (hashed once per path, size and modification time in
  a process, since hashing gigabytes takes seconds and pages ask often);
- a hub id: the cached snapshot's commit (its revision);
- a local folder: the SHA-256 of its ``config.json`` (cheap; weights are not hashed).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20
_HASHES: dict[tuple[str, int, int], str] = {}
_HASHES_LOCK = threading.Lock()


def file_sha256(path: Path) -> str:
    """SHA-256 (hex) of a file, computed once per (resolved path, size, modification time) in this process."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _HASHES_LOCK:
        known = _HASHES.get(key)
    if known is not None:
        return known
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    value = digest.hexdigest()
    with _HASHES_LOCK:
        _HASHES[key] = value
    return value


def describe_file(path: Path) -> dict[str, Any]:
    return {"kind": "gguf", "file": path.name, "bytes": path.stat().st_size, "sha256": file_sha256(path)}


def describe_folder(folder: Path) -> dict[str, Any]:
    config = folder / "config.json"
    described: dict[str, Any] = {"kind": "folder"}
    if config.is_file():
        described["config_sha256"] = file_sha256(config)
    return described


def describe_hub(repo_id: str, filename: str = "config.json") -> dict[str, Any]:
    """The hub snapshot the cache holds (``.../snapshots/<commit>/<file>``), without network."""
    from huggingface_hub import try_to_load_from_cache

    described: dict[str, Any] = {"kind": "hub", "repo": repo_id}
    try:
        cached = try_to_load_from_cache(repo_id, filename)
    except ValueError:  # not a valid repo id
        return described
    if isinstance(cached, str):
        described["revision"] = Path(cached).parent.name
        if filename.lower().endswith(".gguf"):
            described.update(describe_file(Path(cached)), kind="hub-gguf")
    return described
