"""Reduced precision: the agreement report's arithmetic, its threshold, the setting, and where the report travels."""

import dataclasses
import json

import numpy as np
import pytest

from app.operations import _precision
from engines import openvino_cpu
from engines.base import Engine, EngineError
from engines.cache import EngineCache
from engines.choose import engine_for_checkpoint, open_engine
from engines.precision import require_file_precision, require_supported
from model_files import export
from model_files.card import card_from_json, card_to_json
from model_files.precision import AgreementReport, PrecisionRefused, compare, require_agreement
from serving.config import ConfigError, Settings
from serving.protocol import MalformedModelInfo, ModelInfo
from tests.unit.tiny_model import tiny_loaded_model
from worker.inference import Classifier

CPU = "cpu"
WITHOUT_BF16 = ("FP32", "INT8", "BIN", "EXPORT_IMPORT")  # this project's AMD EPYC (Zen 3), as OpenVINO sees it
WITH_BF16 = ("FP32", "BF16", "INT8", "BIN", "EXPORT_IMPORT")  # a Sapphire Rapids or Zen 4 CPU


def rows(*probabilities):
    return np.array(probabilities, dtype=np.float64)


# Float32's answers on four images of six classes: two decisive (top-1 leads by 0.5 and 0.3), two near ties.
FLOAT32 = rows([0.7, 0.2, 0.05, 0.03, 0.01, 0.01],
               [0.5, 0.2, 0.1, 0.1, 0.05, 0.05],
               [0.41, 0.40, 0.1, 0.05, 0.03, 0.01],
               [0.3, 0.29, 0.2, 0.1, 0.1, 0.01])


def test_top1_agreement_counts_only_the_images_where_float32_leads_by_the_margin():
    # The candidate flips both near ties and keeps both decisive answers: judged, it agrees fully.
    candidate = rows([0.68, 0.22, 0.05, 0.03, 0.01, 0.01],
                     [0.45, 0.25, 0.1, 0.1, 0.05, 0.05],
                     [0.39, 0.42, 0.1, 0.05, 0.03, 0.01],
                     [0.28, 0.31, 0.2, 0.1, 0.1, 0.01])
    report = compare(FLOAT32, candidate, "int8", margin=0.1)
    assert (report.images, report.decisive, report.top1_agreeing, report.top1_agreeing_all) == (4, 2, 2, 2)
    assert report.top1_agreement == 1.0
    assert report.max_difference == pytest.approx(0.05)
    assert report.top5_overlap == 1.0  # the same five classes, reordered


def test_a_decisive_answer_changed_counts_against_and_top5_overlap_is_the_mean_share():
    candidate = FLOAT32.copy()
    candidate[0] = [0.1, 0.7, 0.05, 0.03, 0.01, 0.11]  # decisive image, other top-1; class 4 leaves the top 5
    report = compare(FLOAT32, candidate, "bf16", margin=0.1)
    assert (report.decisive, report.top1_agreeing) == (2, 1) and report.top1_agreement == 0.5
    assert report.top5_overlap == pytest.approx((4 / 5 + 1 + 1 + 1) / 4)
    assert report.max_difference == pytest.approx(0.6)


def test_with_no_decisive_image_nothing_is_verified_and_the_report_is_refused():
    near_ties = FLOAT32[2:]
    report = compare(near_ties, near_ties, "int8", margin=0.1)
    assert report.decisive == 0 and report.top1_agreement == 0.0
    with pytest.raises(PrecisionRefused, match="on 0 of 0 images"):
        require_agreement(report, 0.9, "PRECISION_MIN_AGREEMENT")


def test_below_the_threshold_the_refusal_names_the_numbers_and_the_setting():
    report = AgreementReport("int8", 39, 22, 17, 23, 0.7, 0.53)
    require_agreement(report, 0.77, "PRECISION_MIN_AGREEMENT")  # 17/22 = 0.773: enough
    with pytest.raises(PrecisionRefused) as refused:
        require_agreement(report, 0.95, "PRECISION_MIN_AGREEMENT")
    message = str(refused.value)
    for number in ("17 of 22", "77.3%", "23 of all 39", "top-5 overlap 70.0%", "0.530", "PRECISION_MIN_AGREEMENT=0.95"):
        assert number in message


def test_shapes_that_differ_are_an_error_not_a_report():
    with pytest.raises(ValueError, match="expected the same"):
        compare(FLOAT32, FLOAT32[:, :5], "int8")


@pytest.mark.parametrize("name, value", [("PRECISION", "fp16"), ("PRECISION", "INT8"),
                                         ("PRECISION_MIN_AGREEMENT", "1.5"), ("PRECISION_MIN_AGREEMENT", "nan")])
def test_a_precision_setting_that_is_not_one_is_refused_at_start(name, value):
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


def test_bf16_on_a_cpu_without_bf16_is_refused_naming_what_it_has():
    settings = Settings(precision="bf16", backend="openvino")
    with pytest.raises(EngineError, match="this CPU has no BF16 instructions .*FP32, INT8, BIN.*PRECISION=fp32"):
        require_supported(settings, CPU, lambda: WITHOUT_BF16)
    require_supported(settings, CPU, lambda: WITH_BF16)


@pytest.mark.parametrize("backend", ["torch", "torchscript", "onnxruntime"])
def test_bf16_on_an_engine_that_cannot_compute_in_it_is_refused_whatever_the_cpu(backend):
    with pytest.raises(EngineError, match=f"PRECISION=bf16 runs on BACKEND=openvino .*BACKEND={backend} cannot"):
        require_supported(Settings(precision="bf16", backend=backend), CPU, lambda: WITH_BF16)


def test_the_worker_refuses_bf16_on_this_cpu_by_openvinos_own_answer_when_it_lacks_bf16(tmp_path):
    """Not a simulation: OpenVINO's real capability list decides (this project's CPU has no BF16)."""
    model = export.export_onnx(tiny_loaded_model(), tmp_path / "tiny.onnx")
    settings = Settings(model_path=str(model), precision="bf16", precision_min_agreement=0, inference_threads=1)
    if "BF16" in openvino_cpu.cpu_capabilities():
        assert open_engine(settings, CPU).card.precision == "bf16"
    else:
        with pytest.raises(EngineError, match="no BF16 instructions"):
            open_engine(settings, CPU)


def test_a_bf16_engine_carries_its_report_and_is_cached_apart_from_float32(tmp_path):
    """Where the CPU has no BF16 OpenVINO computes in float32 (a perfect report): the report is made all the same."""
    cache = EngineCache(tmp_path / "cache", "0" * 64)

    def start(precision):
        return engine_for_checkpoint(tiny_loaded_model(), "openvino", CPU, 1, cache, precision)

    bf16 = start("bf16")
    assert bf16.card.precision == "bf16" and bf16.card.agreement.images == 27  # engines.verify's, batches of 1, 8
    assert start("fp32").card.agreement is None
    assert len(list((tmp_path / "cache").glob("*.json"))) == 2  # an entry each
    assert start("bf16").card.agreement == bf16.card.agreement  # a restart reads the report from its record


def test_the_cache_keys_bf16_apart_and_keeps_float32s_keys_of_before(tmp_path):
    from engines import onnxruntime_cpu

    card = tiny_loaded_model().card
    cache = EngineCache(tmp_path, "0" * 64)
    fp32, bf16 = (cache.key(openvino_cpu.ENGINE, CPU, card, precision) for precision in ("fp32", "bf16"))
    assert fp32 != bf16 and fp32 == cache.key(openvino_cpu.ENGINE, CPU, card)
    assert cache.key(onnxruntime_cpu.ENGINE, CPU, card) != fp32


def test_the_card_keeps_precision_and_report_through_its_json():
    report = AgreementReport("int8", 39, 22, 21, 30, 0.91, 0.12, 0.1, "39 held-out images")
    card = dataclasses.replace(tiny_loaded_model().card, precision="int8", agreement=report)
    assert card_from_json(card_to_json(card)) == card
    plain = tiny_loaded_model().card
    assert card_from_json(card_to_json(plain)).precision == "fp32"
    old = json.loads(card_to_json(plain))
    del old["precision"]  # a card written before reduced precision existed
    assert card_from_json(json.dumps(old)) == plain


def test_get_model_shows_the_report_the_heartbeat_carries_and_the_heartbeat_stays_small():
    confident = np.eye(3)[[0, 1]] * 0.9 + 0.03
    report = compare(confident, confident, "int8", images_source="x" * 5000)  # a folder with a very long name
    card = dataclasses.replace(tiny_loaded_model().card, precision="int8", agreement=report)

    def announced(card):
        return Classifier(Engine("onnxruntime", card, lambda images: images), CPU).describe("tiny", "1", 8)

    info = announced(card)
    assert len(info.to_json()) - len(announced(tiny_loaded_model().card).to_json()) < 700
    shown = _precision(ModelInfo.from_json(info.to_json()))
    assert shown["precision"] == "int8" and shown["agreement"]["top1_agreement"] == 1.0
    assert _precision(announced(tiny_loaded_model().card)) == {"precision": "fp32"}


def test_a_heartbeat_with_a_forged_precision_or_an_oversized_report_is_no_usable_worker():
    info = Classifier(Engine("onnxruntime", tiny_loaded_model().card, lambda images: images), CPU).describe(
        "tiny", "1", 8)
    for forged in ({"precision": "fp8"}, {"agreement": "x" * 100_000}, {"agreement": 7}):
        with pytest.raises(MalformedModelInfo):
            ModelInfo.from_json(json.dumps({**json.loads(info.to_json()), **forged}).encode())


def test_a_quantized_file_is_served_only_as_int8_and_int8_only_from_a_quantized_file():
    card = tiny_loaded_model().card
    int8 = dataclasses.replace(card, precision="int8")
    with pytest.raises(EngineError, match="is quantized to int8 .*set PRECISION=int8"):
        require_file_precision(int8, "fp32", "m.onnx")
    with pytest.raises(EngineError, match="PRECISION=int8 serves a file python -m model_tools quantize wrote"):
        require_file_precision(card, "int8", "m.onnx")
    require_file_precision(int8, "int8", "m.onnx")


def test_the_worker_refuses_int8_for_a_checkpoint_before_loading_it(tmp_path):
    with pytest.raises(EngineError, match="PRECISION=int8 serves an ONNX file"):
        open_engine(Settings(model_path=str(tmp_path / "absent.pth"), precision="int8"), CPU)
