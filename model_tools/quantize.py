"""INT8: ONNX Runtime's static quantization of the serving model, judged on photos its calibration did not see.

`python -m model_tools quantize MODEL --calibration DIR --held-out DIR --out FILE` writes a QDQ ONNX file
(QuantizeLinear/DequantizeLinear around each quantized operator, standard ONNX operators only, so an
untrusted worker may load it: model_files.trust), with weights int8 per output channel and activations
uint8 (int8 activations did worse here: docs/precision.md), their ranges calibrated on the photos in
--calibration by --method. The file's card says int8 and carries the agreement report
(model_files.precision) of the quantized model against float32 on the photos in --held-out, with ONNX
Runtime and with OpenVINO (each computes int8 its own way; the card keeps the worse); below
--min-agreement the command refuses, naming the numbers, and --out stays as it was.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from model_files.card import ModelCard, ModelLoadError, ModelOptions
from model_files.precision import AgreementReport, compare, require_agreement
from serving.config import Settings
from serving.preprocess import prepare

# How each activation's range is chosen from the calibration photos (docs/precision.md compares them here).
METHODS = ("minmax", "percentile", "entropy")
DEFAULT_METHOD = "percentile"
PERCENTILE = 99.9  # of each activation's absolute values: the rarest 0.1 % are clipped (99.99 and 99.5 did worse here)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif")
BATCH = 8  # images per run when measuring the report


def quantize(model: Path, calibration: Path, held_out: Path, out: Path, method: str, min_agreement: float,
             options: ModelOptions) -> AgreementReport:
    """Write the int8 model to `out` and return its report; PrecisionRefused (out unchanged) below min_agreement."""
    from model_files.files import written_aside

    if method not in METHODS:
        raise ValueError(f"--method {method!r}: expected one of {', '.join(METHODS)}")
    with tempfile.TemporaryDirectory() as scratch:
        fp32, card = _float32_onnx(model, options, Path(scratch))
        calibration_images = photos_in(calibration, card)
        held_out_images = photos_in(held_out, card)
        _require_apart(calibration_images, held_out_images)
        with written_aside(out) as partial:
            _quantize_onnx(fp32, calibration_images, method, partial, Path(scratch))
            report = _worst_engine_report(fp32, partial, held_out_images, f"{len(held_out_images)} held-out images "
                                          f"in {held_out.name}/ (calibrated by {method} on {len(calibration_images)} "
                                          f"in {calibration.name}/)")
            require_agreement(report, min_agreement, "--min-agreement")
            _write_card(partial, ModelCard(card.name, card.arch, card.class_names, card.preprocessing,
                                           precision="int8", agreement=report))
    return report


def photos_in(folder: Path, card: ModelCard) -> np.ndarray:
    """Every image file in `folder` (sorted by name), prepared as the API prepares uploads: uint8 NHWC."""
    files = sorted(path for path in folder.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES) \
        if folder.is_dir() else []
    if not files:
        raise ModelLoadError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    p, limit = card.preprocessing, Settings().max_image_pixels
    return np.stack([prepare(path.read_bytes(), p.resize_size, p.input_size, limit) for path in files])


def _float32_onnx(model: Path, options: ModelOptions, scratch: Path) -> tuple[Path, ModelCard]:
    """The model as a float32 ONNX file: itself when it is one, else its verified export."""
    from model_files.onnx_file import read_onnx_card

    if model.suffix == ".onnx":
        card = read_onnx_card(model, options)  # the trust check included
        if card.precision != "fp32":
            raise ModelLoadError(f"{model} computes in {card.precision} already: quantize its float32 model")
        return model, card
    from engines.eager import run_module
    from engines.onnxruntime_cpu import open_file
    from engines.verify import verify
    from model_files.checkpoints import load_model
    from model_files.export import export_onnx, serving_module

    loaded = load_model(model, options)
    path = export_onnx(loaded, scratch / "float32.onnx")
    verify(run_module(serving_module(loaded)), open_file(path, "cpu", 0), loaded.card.preprocessing.input_size)
    return path, loaded.card


def _require_apart(calibration: np.ndarray, held_out: np.ndarray) -> None:
    """A held-out image the calibration saw would flatter the report: refused, whatever its file's name."""
    seen = {_digest(image) for image in calibration}
    shared = sum(_digest(image) in seen for image in held_out)
    if shared:
        raise ModelLoadError(f"{shared} of the held-out images are also calibration images: the report must be "
                             "on images the calibration did not see")


def _quantize_onnx(fp32: Path, images: np.ndarray, method: str, out: Path, scratch: Path) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Photos(CalibrationDataReader):
        """One photo per run: the percentile and entropy calibrators stack every run's activations, which
        must then have one shape (a last, shorter batch raises "inhomogeneous shape")."""

        def __init__(self):
            self._photos: Iterator[np.ndarray] = iter(images)

        def get_next(self) -> dict | None:
            photo = next(self._photos, None)
            return None if photo is None else {"images": photo[np.newaxis]}

    prepared = scratch / "prepared.onnx"
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)  # shapes known, constants folded
    calibrate = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                 "entropy": CalibrationMethod.Entropy}[method]
    quantize_static(str(prepared), str(out), Photos(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=calibrate,
                    op_types_to_quantize=QUANTIZED_OPERATORS,
                    # Each ReLU6 (Clip) keeps a range of its own from the photos: removed, as ONNX Runtime does
                    # by default, its output takes Clip's whole 0..6, mostly unused (docs/precision.md).
                    extra_options={"CalibPercentile": PERCENTILE, "CalibMovingAverage": False,
                                   "QDQKeepRemovableActivations": True})


# The operators given int8 inputs: the convolutions, their ReLU6 and the residual additions, where the time
# goes. The normalization at the input, the classifier and the softmax stay float32: quantizing the
# probabilities to 256 levels alone reorders a photo's top 5.
QUANTIZED_OPERATORS = ["Conv", "Clip", "Add"]


def _worst_engine_report(fp32: Path, int8: Path, images: np.ndarray, source: str) -> AgreementReport:
    """The int8 file's report against float32 with each engine that can serve it; the worse of them."""
    from engines import onnxruntime_cpu, openvino_cpu

    cpu = "cpu"
    expected = batched_probabilities(onnxruntime_cpu.open_file(fp32, cpu, 0), images)
    reports = [compare(expected, batched_probabilities(engine.open_file(int8, cpu, 0), images), "int8",
                       images_source=source, engine=name)
               for name, engine in (("onnxruntime", onnxruntime_cpu), ("openvino", openvino_cpu))]
    return min(reports, key=lambda report: (report.top1_agreement, report.top5_overlap, -report.max_difference))


def batched_probabilities(run, images: np.ndarray) -> np.ndarray:
    """run(batch) over `images` in batches of BATCH, its rows together."""
    return np.concatenate([run(images[i:i + BATCH]) for i in range(0, len(images), BATCH)])


def _write_card(path: Path, card: ModelCard) -> None:
    import onnx

    from model_files.onnx_file import set_onnx_card

    model = onnx.load(str(path))
    set_onnx_card(model, card)
    onnx.save(model, str(path))


def _digest(image: np.ndarray) -> str:
    return hashlib.sha256(image.tobytes()).hexdigest()

