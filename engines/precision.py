"""Reduced precision in the worker (PRECISION): which engines and CPUs can run it, and whether its answers serve.

- `bf16`: OpenVINO's BF16 inference-precision hint, on a CPU whose OpenVINO plugin reports BF16 (AVX-512 BF16
  or AMX). Elsewhere OpenVINO would quietly compute in float32, so it is refused instead. The export is judged
  at start against eager PyTorch on engines.verify's images (agreement_on_test_images).
- `int8`: a file `python -m model_tools quantize` wrote, which carries its agreement report, measured on
  held-out photos; ONNX Runtime and OpenVINO both run its QuantizeLinear/DequantizeLinear operators.

Either way the card's report must reach PRECISION_MIN_AGREEMENT (model_files.precision), or the worker refuses.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from engines import openvino_cpu
from engines.base import EngineError, Run, device_type
from engines.verify import check_batches
from model_files.card import ModelCard
from model_files.precision import AgreementReport, PrecisionRefused, compare, require_agreement
from serving.config import Settings

FULL = "fp32"
# The engines that can compute each reduced precision, under BACKEND=auto in this order.
ENGINES = {"bf16": ("openvino",), "int8": ("onnxruntime", "openvino")}
QUANTIZE_COMMAND = "python -m model_tools quantize"


def require_supported(settings: Settings, device: str,
                      capabilities: Callable[[], tuple[str, ...]] | None = None) -> None:
    """EngineError unless BACKEND and this CPU can compute in PRECISION.

    `capabilities` says what the CPU computes in (default: OpenVINO's CPU plugin's answer, looked up when
    called), so that a test can be a CPU without BF16 on one with it, or the other way round.
    """
    precision, backend = settings.precision, settings.backend
    if precision == FULL:
        return
    engines = ENGINES[precision]
    if backend != "auto" and backend not in engines:
        raise EngineError(f"PRECISION={precision} runs on BACKEND={' or '.join(engines)} (or auto); BACKEND={backend} "
                           f"cannot compute in {precision}")
    if device_type(device) != "cpu":
        raise EngineError(f"PRECISION={precision} runs on the CPU only here; DEVICE={device} needs PRECISION=fp32")
    if precision == "bf16":
        found = (capabilities or openvino_cpu.cpu_capabilities)()
        if "BF16" not in found:
            raise EngineError(f"PRECISION=bf16: this CPU has no BF16 instructions (OpenVINO's CPU capabilities: "
                               f"{', '.join(found)}); serve PRECISION=fp32, or int8 ({QUANTIZE_COMMAND})")


def candidates(precision: str) -> list[str]:
    """The engines BACKEND=auto tries for a reduced precision."""
    return list(ENGINES[precision])


def require_file_precision(card: ModelCard, precision: str, path: str) -> None:
    """A quantized file is served as what it is: PRECISION must say int8 exactly when the file is int8."""
    if card.precision == "int8" and precision != "int8":
        raise EngineError(f"{path} is quantized to int8 ({QUANTIZE_COMMAND}): set PRECISION=int8 to serve it")
    if precision == "int8" and card.precision != "int8":
        raise EngineError(f"PRECISION=int8 serves a file {QUANTIZE_COMMAND} wrote; {path} computes in "
                           f"{card.precision}")


def require_serving_agreement(card: ModelCard, settings: Settings) -> None:
    """EngineError unless a reduced-precision card's report reaches PRECISION_MIN_AGREEMENT."""
    if card.precision == FULL:
        return
    if card.agreement is None:
        raise EngineError(f"the {card.precision} model carries no agreement report: make it again with "
                           f"{QUANTIZE_COMMAND}")
    try:
        require_agreement(card.agreement, settings.precision_min_agreement, "PRECISION_MIN_AGREEMENT")
    except PrecisionRefused as exc:
        raise EngineError(f"PRECISION={card.precision} refused: {exc}") from None


def agreement_on_test_images(reference: Run, candidate: Run, input_size: int, precision: str,
                             engine: str) -> AgreementReport:
    """The candidate's report against the reference on engines.verify's images (noise, colour blobs, a constant)."""
    batches = check_batches(input_size)
    expected = np.concatenate([np.asarray(reference(images)) for images in batches])
    got = np.concatenate([np.asarray(candidate(images)) for images in batches])
    return compare(expected, got, precision, images_source=f"{len(expected)} of engines.verify's synthetic images",
                   engine=engine)
