"""OpenVINO on the CPU: an ONNX file, or a checkpoint exported to ONNX at start."""

from __future__ import annotations

from pathlib import Path

import torch

from engines.base import ExportBackend, Run, write_onnx
from model_tools.card import ModelLoadError


def open_file(path: Path, device: torch.device, threads: int) -> Run:
    """An ONNX file compiled for the CPU, computing with `threads` threads."""
    import openvino

    # f32: OpenVINO would otherwise pick bf16 on CPUs that have it, which moves probabilities by ~0.03.
    config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
    try:
        compiled = openvino.Core().compile_model(str(path), "CPU", config)
    except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own
        raise ModelLoadError(f"openvino cannot load {path}: {exc}") from None
    return lambda images: compiled(images)[0]


BACKEND = ExportBackend("openvino", ".onnx", write_onnx, open_file, runtimes=("torch", "onnx", "openvino"),
                        package="openvino", cpu_only=True)
