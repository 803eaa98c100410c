"""Verified engine exports kept on disk, so a restart with the same model neither exports nor verifies again.

An entry is keyed by everything its answers depend on: the model file's
content, the card (normalization travels inside an export), the engine, the
device type, the precision it computes in (a bf16 variant is an entry of its
own, with its agreement report in the record), and the versions of torch and
of the engine's runtime. Exporting a
large model takes tens of seconds (ResNeXt-101 to ONNX: about 30 s here); a hit
takes the time to hash the file and open the export.

Workers starting together take an exclusive lock on the entry (flock), so the
first exports and the others wait and then use its file. The record of a
verified export holds the file's SHA-256, and a hit is hashed and compared
before it is opened: a file changed on disk (tampered, truncated) is exported
and verified again. A verdict on the model itself (the exporter refuses it, or
the export does not match eager PyTorch) is remembered as well, so
`BACKEND=auto` does not retry a dead end at every start; a failure of the
machine's (memory, disk) is not a verdict and is never remembered.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from engines.base import ExportEngine, device_type
from model_files.card import ModelCard, card_to_json
from model_files.files import write_atomically
from model_files.precision import AgreementReport

log = logging.getLogger("worker")

# Records of earlier versions hold no file hash, and may hold a passing failure (an out-of-memory) as a
# verdict: entries without this format are made again.
RECORD_FORMAT = 2


@dataclass(frozen=True)
class Verdict:
    verified: bool
    reason: str  # why it was refused, when not verified
    agreement: AgreementReport | None = None  # a reduced precision's report against float32's answers


class Entry:
    """One cached export: its file, and what verifying it found (None: not made yet, or to be made again)."""

    def __init__(self, path: Path):
        self.path = path
        self._record = path.with_name(path.name + ".json")
        self.verdict = self._read_verdict()

    def remember_success(self, agreement: AgreementReport | None = None) -> None:
        """The file at `path` is verified: recorded with its hash, which every later hit must match."""
        report = {"agreement": agreement.to_dict()} if agreement is not None else {}
        self._write({"verified": True, "reason": "", "sha256": file_sha256(self.path), **report})

    def remember_failure(self, reason: str) -> None:
        """The model has no export of this kind (a deterministic verdict, never a machine's passing state)."""
        self._write({"verified": False, "reason": reason}, remove_export=True)

    def _read_verdict(self) -> Verdict | None:
        try:
            record = json.loads(self._record.read_text())
            if record["format"] != RECORD_FORMAT:
                return None
            agreement = AgreementReport.from_dict(record["agreement"]) if "agreement" in record else None
            verdict = Verdict(bool(record["verified"]), str(record["reason"]), agreement)
            digest = str(record["sha256"]) if verdict.verified else ""
        except (OSError, ValueError, KeyError, TypeError):
            return None  # absent or unreadable: make it again
        if verdict.verified and not self._holds(digest):
            return None
        return verdict

    def _holds(self, digest: str) -> bool:
        """Whether the export file is still the one verified."""
        try:
            found = file_sha256(self.path)
        except OSError:
            return False  # removed since: made again, without a warning
        if found != digest:
            log.warning("engine cache: %s changed since it was verified (SHA-256 %s, recorded %s): exported and "
                        "verified again", self.path, found[:12], digest[:12])
        return found == digest

    def _write(self, record: dict, remove_export: bool = False) -> None:
        """Best effort: a cache that cannot be written (full, read-only) costs an export at the next start."""
        try:
            if remove_export:
                self.path.unlink(missing_ok=True)
            write_atomically(self._record, lambda partial: partial.write_text(
                json.dumps({"format": RECORD_FORMAT, **record})))
        except OSError as exc:
            log.warning("engine cache: %s not recorded (%s): made again at the next start", self.path,
                        exc.strerror or exc)


def file_sha256(path: Path) -> str:
    """The file's SHA-256, read in 1 MiB chunks (about 1 s per GB here)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class EngineCache:
    def __init__(self, directory: Path, model_digest: str):
        self.directory = directory
        self.model_digest = model_digest  # SHA-256 of the model file

    @classmethod
    def for_model_file(cls, directory: Path, model_path: Path) -> "EngineCache":
        """The cache of exports of this model file's content."""
        return cls(directory, file_sha256(model_path))

    @contextlib.contextmanager
    def entry(self, engine: ExportEngine, device: str, card: ModelCard,
              precision: str = "fp32") -> Iterator[Entry]:
        """The entry of this export, held under an exclusive lock while the caller reads or makes it."""
        key = self.key(engine, device, card, precision)
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / f"{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if the process dies
            yield Entry(self.directory / f"{key}{engine.suffix}")

    def key(self, engine: ExportEngine, device: str, card: ModelCard, precision: str = "fp32") -> str:
        versions = [f"{name}=={importlib.metadata.version(name)}" for name in engine.runtimes]
        # float32's keys are those of before reduced precision, so existing entries stay hits.
        computed_in = [] if precision == "fp32" else [f"precision={precision}"]
        parts = [self.model_digest, card_to_json(card), engine.name, device_type(device), *versions, *computed_in]
        return f"{engine.name}-{hashlib.sha256(chr(0).join(parts).encode()).hexdigest()[:24]}"
