"""Model files on disk, without torch: written so that no reader ever sees half of one, and told apart by content.

A worker that serves an ONNX file (requirements-worker-onnx.txt) reads these helpers too, so they import no
torch: model_files.checkpoints loads the files they recognise.
"""

from __future__ import annotations

import contextlib
import io
import os
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from model_files import CARD_FILE


def is_torchscript_file(path: Path) -> bool:
    """TorchScript archives are zip files with a code/ folder; torch.save's zip files have none."""
    return any("/code/" in name for name in _zip_members(path))


def is_exported_program(path: Path) -> bool:
    """torch.export.save's archives hold an archive_format record and serialized models/*.json."""
    return any(name.endswith("/archive_format") for name in _zip_members(path))


def is_serving_torchscript(path: Path) -> bool:
    """A TorchScript export of model_tools (uint8 images in, probabilities out, card inside)."""
    members = _zip_members(path)
    return any("/code/" in name for name in members) and any(name.endswith(f"/extra/{CARD_FILE}") for name in members)


def _zip_members(path: Path) -> list[str]:
    if not zipfile.is_zipfile(path):
        return []
    with zipfile.ZipFile(path) as archive:
        return archive.namelist()


def write_atomically(path: Path, write: Callable[[Path], None]) -> Path:
    """Have `write` fill a partial file beside `path`, then rename it over `path`: readers never see half a file."""
    with written_aside(path) as partial:
        write(partial)
    return path


@contextlib.contextmanager
def written_aside(path: Path) -> Iterator[Path]:
    """A partial file beside `path` (same folder, so the rename is atomic) for the block to write and check.

    Renamed over `path` when the block ends without an error; removed in any case, so a write or a check
    that fails leaves `path` as it was, or absent. The partial keeps the suffix: torch.export.load reads
    a path only when it ends in .pt2.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.stem}.partial{path.suffix}")
    try:
        yield partial
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def write_serialized(path: Path, serialize: Callable[[BinaryIO], None]) -> Path:
    """write_atomically for torch's serializers (torch.save, torch.jit.save, torch.export.save): a full disk
    is an OSError, never an abort.

    Their zip writer (PyTorchStreamWriter) finishes the archive in its C++ destructor; when a write into
    a full disk fails there, the exception leaves the destructor and std::terminate aborts the process
    (exit 134) whatever Python catches (torch 2.14: torch.jit.save to a path, torch.export.save to a file).
    So they write into memory, where no write fails, and Python writes the bytes: the file's size in
    memory once more, for the moment.
    """
    buffer = io.BytesIO()
    serialize(buffer)
    return write_atomically(path, lambda partial: partial.write_bytes(buffer.getbuffer()))
