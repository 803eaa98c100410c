"""Reduced precision through the real stack: `model_tools quantize` on the real model and photos, a worker serving
the INT8 file with PRECISION=int8 through the API, its report on GET /model, and the refusals: a report below
PRECISION_MIN_AGREEMENT, BF16 on a CPU without it."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import requests

from model_files.card import ModelOptions
from model_files.onnx_file import read_onnx_card, set_onnx_card
from model_files.precision import LEAD_MARGIN, AgreementReport
from model_files.trust import STANDARD_ONNX_DOMAINS
from scripts.precision_bench import photo_split
from serving.config import Settings
from stack.processes import REPO_ROOT, Stack, StartupError
from tests.integration.client import post_image
from tests.integration.conftest import stack_settings
from tests.reference import reference_top3


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    """The default model quantized (minmax: the fastest calibration) on 4 photos, judged on 4 others (each
    photo with its mirror image and a crop)."""
    folder = tmp_path_factory.mktemp("int8")
    calibration, held_out = photo_split(folder, photos=8)
    out = folder / "int8.onnx"
    done = subprocess.run([sys.executable, "-m", "model_tools", "quantize", Settings().model_path,
                           "--calibration", str(calibration), "--held-out", str(held_out), "--out", str(out),
                           "--method", "minmax", "--min-agreement", "0"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return out, sorted(held_out.iterdir()), done.stdout


def test_the_quantized_file_holds_standard_operators_only_and_loads_without_trust(quantized):
    out, held_out, printed = quantized
    operators = {(node.domain, node.op_type) for node in onnx.load(str(out)).graph.node}
    assert {domain for domain, _ in operators} <= STANDARD_ONNX_DOMAINS
    assert {("", "QuantizeLinear"), ("", "DequantizeLinear")} <= operators
    card = read_onnx_card(out, ModelOptions())  # untrusted: model_files.trust's check passes it
    assert card.precision == "int8" and card.agreement.images == len(held_out) == 12
    assert card.agreement.summary() in printed


def test_an_int8_worker_serves_the_reports_answers_and_get_model_shows_the_report(quantized, tmp_path):
    out, held_out, _ = quantized
    report = read_onnx_card(out).agreement
    settings = stack_settings(model_path=str(out), precision="int8", backend=report.engine,
                              precision_min_agreement=report.top1_agreement)
    with Stack(settings, workers=1, log_dir=tmp_path) as stack:
        model = requests.get(stack.url + "/model", timeout=10).json()
        served = [post_image(stack.url, path.read_bytes(), timeout=30).json()["predictions"] for path in held_out]
    assert model["precision"] == "int8" and model["agreement"]["top1_agreeing"] == report.top1_agreeing
    assert model["agreement"]["decisive"] == report.decisive and model["backend"] == report.engine
    float32 = reference_top3([path.read_bytes() for path in held_out])
    decisive = [i for i, top3 in enumerate(float32) if top3[0][1] - top3[1][1] >= LEAD_MARGIN]
    agreeing = [i for i in decisive if served[i][0]["index"] == float32[i][0][0]]
    # Through the API the int8 worker answers as the report measured: float32's top-1 on the same decisive photos.
    assert (len(decisive), len(agreeing)) == (report.decisive, report.top1_agreeing)


def with_one_disagreement_more(path: Path, out: Path) -> AgreementReport:
    """A copy of the int8 file whose card reports one decisive image fewer agreeing: what quantize writes where
    int8 answers worse (on a CPU without VNNI this calibration agreed on 63 %, on one with it on all), so that
    the threshold can be set above it on every CPU. The worker judges the report the file carries."""
    model, card = onnx.load(str(path)), read_onnx_card(path)
    assert card.agreement.top1_agreeing > 0, card.agreement.summary()
    report = dataclasses.replace(card.agreement, top1_agreeing=card.agreement.top1_agreeing - 1)
    set_onnx_card(model, dataclasses.replace(card, agreement=report))
    onnx.save(model, str(out))
    return report


def test_a_worker_refuses_an_int8_file_whose_report_is_below_the_threshold_naming_the_numbers(quantized, tmp_path):
    out = tmp_path / "worse.int8.onnx"
    report = with_one_disagreement_more(quantized[0], out)
    threshold = report.top1_agreement + 0.01
    settings = stack_settings(model_path=str(out), precision="int8", precision_min_agreement=threshold)
    with pytest.raises(StartupError, match="worker0 exited with code 2"):
        Stack(settings, workers=1, log_dir=tmp_path).__enter__()
    log = (tmp_path / "worker0.log").read_text()
    assert f"{report.top1_agreeing} of {report.decisive} images" in log
    assert f"PRECISION_MIN_AGREEMENT={threshold:g}" in log


def test_a_bf16_worker_serves_where_the_cpu_has_bf16_and_is_refused_where_it_has_not(tmp_path):
    from engines.openvino_cpu import cpu_capabilities

    settings = stack_settings(precision="bf16", backend="openvino")
    if "BF16" in cpu_capabilities():
        with Stack(settings, workers=1, log_dir=tmp_path) as stack:
            model = requests.get(stack.url + "/model", timeout=10).json()
        assert model["precision"] == "bf16" and model["agreement"]["engine"] == "openvino"
        return
    with pytest.raises(StartupError, match="worker0 exited with code 2"):
        Stack(settings, workers=1, log_dir=tmp_path).__enter__()
    assert "PRECISION=bf16: this CPU has no BF16 instructions" in (tmp_path / "worker0.log").read_text()
