"""ONNX Runtime on the CPU: an ONNX file, or a checkpoint exported to ONNX at start."""

from __future__ import annotations

from pathlib import Path

from engines.base import ExportEngine, Run, write_onnx
from model_files.card import ModelLoadError


def open_file(path: Path, device: str, threads: int) -> Run:
    """An ONNX file run with `threads` compute threads (0: ONNX Runtime's own choice)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    # Idle compute threads would otherwise spin, taking the CPU from the API processes beside a worker.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable files
        raise ModelLoadError(f"onnxruntime cannot load {path}: {exc}") from None
    input_name = session.get_inputs()[0].name
    return lambda images: session.run(None, {input_name: images})[0]


ENGINE = ExportEngine("onnxruntime", ".onnx", write_onnx, open_file, runtimes=("torch", "onnx", "onnxruntime"),
                        package="onnxruntime", cpu_only=True)
