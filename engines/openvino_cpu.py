"""OpenVINO on the CPU: an ONNX file, or a checkpoint exported to ONNX at start; in float32, or BF16 where it can."""

from __future__ import annotations

from pathlib import Path

from engines.base import ExportEngine, Run, write_onnx
from model_files.card import ModelLoadError


def open_file(path: Path, device: str, threads: int) -> Run:
    """An ONNX file compiled for the CPU in float32, computing with `threads` threads."""
    # f32: OpenVINO would otherwise pick bf16 on CPUs that have it, which moves probabilities by ~0.03.
    return _compiled(path, threads, "f32")


def open_bf16(path: Path, device: str, threads: int) -> Run:
    """An ONNX file compiled to compute in bfloat16 (engines.choose checks cpu_has_bf16 first: elsewhere OpenVINO
    would quietly compute in float32 and the service would claim a precision it does not run)."""
    return _compiled(path, threads, "bf16")


def cpu_capabilities() -> tuple[str, ...]:
    """What OpenVINO's CPU plugin can compute in here, e.g. ("FP32", "INT8", "BIN", "EXPORT_IMPORT") or with "BF16"."""
    import openvino

    return tuple(openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def _compiled(path: Path, threads: int, precision: str) -> Run:
    import openvino

    config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
    try:
        compiled = openvino.Core().compile_model(str(path), "CPU", config)
    except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own
        raise ModelLoadError(f"openvino cannot load {path}: {exc}") from None
    return lambda images: compiled(images)[0]


ENGINE = ExportEngine("openvino", ".onnx", write_onnx, open_file, runtimes=("torch", "onnx", "openvino"),
                        package="openvino", cpu_only=True, open_bf16=open_bf16)
