"""Verified engine exports kept on disk, so a restart with the same model neither exports nor verifies again.

An entry is keyed by everything its answers depend on: the model file's
content, the card (normalization travels inside an export), the engine, the
device type, and the versions of torch and of the engine's runtime. Exporting a
large model takes tens of seconds (ResNeXt-101 to ONNX: about 30 s here); a hit
takes the time to hash the file and open the export.

Workers starting together take an exclusive lock on the entry (flock), so the
first exports and the others wait and then use its file. An export that failed
to build (exporter, runtime), or did not match eager PyTorch, is remembered as
well, so `BACKEND=auto` does not retry a dead end at every start.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from engines.base import ExportBackend
from model_tools.card import ModelCard, card_to_json
from model_tools.checkpoints import write_atomically


@dataclass(frozen=True)
class Verdict:
    verified: bool
    reason: str  # why it was refused, when not verified


class Entry:
    """One cached export: its file, and what verifying it found (None: not made yet)."""

    def __init__(self, path: Path):
        self.path = path
        self._record = path.with_name(path.name + ".json")
        self.verdict = self._read_verdict()

    def remember_success(self) -> None:
        self._write({"verified": True, "reason": ""})

    def remember_failure(self, reason: str) -> None:
        self.path.unlink(missing_ok=True)
        self._write({"verified": False, "reason": reason})

    def _read_verdict(self) -> Verdict | None:
        try:
            record = json.loads(self._record.read_text())
            verdict = Verdict(bool(record["verified"]), str(record["reason"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None  # absent or unreadable: make it again
        return verdict if not verdict.verified or self.path.is_file() else None

    def _write(self, record: dict) -> None:
        write_atomically(self._record, lambda partial: partial.write_text(json.dumps(record)))


class EngineCache:
    def __init__(self, directory: Path, model_digest: str):
        self.directory = directory
        self.model_digest = model_digest  # SHA-256 of the model file

    @classmethod
    def for_model_file(cls, directory: Path, model_path: Path) -> "EngineCache":
        """The cache of exports of this model file's content (hashed here: about 1 s per GB)."""
        digest = hashlib.sha256()
        with open(model_path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        return cls(directory, digest.hexdigest())

    @contextlib.contextmanager
    def entry(self, backend: ExportBackend, device: torch.device, card: ModelCard) -> Iterator[Entry]:
        """The entry of this export, held under an exclusive lock while the caller reads or makes it."""
        key = self.key(backend, device, card)
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / f"{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if the process dies
            yield Entry(self.directory / f"{key}{backend.suffix}")

    def key(self, backend: ExportBackend, device: torch.device, card: ModelCard) -> str:
        versions = [f"{name}=={importlib.metadata.version(name)}" for name in backend.runtimes]
        parts = [self.model_digest, card_to_json(card), backend.name, device.type, *versions]
        return f"{backend.name}-{hashlib.sha256(chr(0).join(parts).encode()).hexdigest()[:24]}"
