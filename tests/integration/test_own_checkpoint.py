"""Serving the checkpoint a user trained, through the real stack: the classic format with its labels, the
imported file without trust, a wrong label file at start-up, and batches far longer than WORKER_TIMEOUT."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from model_files.checkpoints import load_model
from serving.config import Settings
from stack.processes import REPO_ROOT, Stack, StartupError
from tests.images import CAT_LABELS, photo_bytes
from tests.integration.client import post_image
from tests.integration.conftest import stack_settings
from tests.integration.standins import SlowClassifier
from tests.model_files import save_classic

PHOTOS = ("chelsea.png", "coffee.png")


@pytest.fixture(scope="module")
def classic_checkpoint(tmp_path_factory):
    """The default model saved the classic way (`{'model', 'model_state_dict'}`, nothing else) and its labels."""
    folder = tmp_path_factory.mktemp("classic")
    loaded = load_model(Settings().model_path)
    save_classic(loaded.network, folder / "classic.pth")
    (folder / "labels.txt").write_text("\n".join(loaded.card.class_names) + "\n")
    return folder / "classic.pth", folder / "labels.txt"


def answers(stack: Stack) -> dict[str, list[dict]]:
    return {name: post_image(stack.url, photo_bytes(name), timeout=30).json()["predictions"] for name in PHOTOS}


@pytest.fixture(scope="module")
def classic_answers(classic_checkpoint, tmp_path_factory):
    checkpoint, labels = classic_checkpoint
    settings = stack_settings(model_path=str(checkpoint), model_trusted=True, labels_path=str(labels),
                              mean="0.5,0.5,0.5", std="0.5,0.5,0.5", engine_cache_dir="")
    with Stack(settings, workers=1, log_dir=tmp_path_factory.mktemp("logs")) as stack:
        model = requests.get(stack.url + "/model", timeout=10).json()
        named = requests.get(f"{stack.url}/models/{model['name']}", timeout=10).json()
        return answers(stack), model, named


def test_the_classic_checkpoint_is_served_with_labels_and_normalization_from_configuration(classic_answers):
    predictions, model, _ = classic_answers
    assert predictions["chelsea.png"][0]["label"] in CAT_LABELS
    assert predictions["coffee.png"][0]["label"] == "espresso"
    assert model["sources"]["class_names"] == "LABELS_PATH (labels.txt)" and model["sources"]["mean"] == "MEAN"
    assert model["preprocessing"]["crop_size"] == 224 and model["preprocessing"]["resize_size"] == 256


def test_the_model_endpoints_name_the_label_file_without_its_path(classic_checkpoint, classic_answers):
    """Where a file lies on the worker's host is nobody's business who can reach the API."""
    _, labels = classic_checkpoint
    _, model, named = classic_answers
    for answer in (model, named):
        assert "labels.txt" in json.dumps(answer) and str(labels.parent) not in json.dumps(answer)


def test_the_imported_file_is_served_without_trust_and_answers_as_the_source(classic_checkpoint, classic_answers,
                                                                             tmp_path):
    checkpoint, labels = classic_checkpoint
    imported = tmp_path / "imported.onnx"
    subprocess.run([sys.executable, "-m", "model_tools", "import", str(checkpoint), "--out", str(imported),
                    "--trusted", "--labels", str(labels), "--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5"],
                   cwd=REPO_ROOT, check=True, capture_output=True, timeout=300)
    with Stack(stack_settings(model_path=str(imported)), workers=1, log_dir=tmp_path) as stack:
        served = answers(stack)
    for name, predictions in classic_answers[0].items():
        assert [p["label"] for p in served[name]] == [p["label"] for p in predictions]
        assert max(abs(a["probability"] - b["probability"]) for a, b in zip(served[name], predictions)) < 1e-4


def test_a_label_file_of_the_wrong_length_stops_the_worker_at_start_naming_both_counts(classic_checkpoint, tmp_path):
    checkpoint, labels = classic_checkpoint
    short = tmp_path / "short.txt"
    short.write_text("\n".join(labels.read_text().split("\n")[:999]))
    settings = stack_settings(model_path=str(checkpoint), model_trusted=True, labels_path=str(short))
    with pytest.raises(StartupError, match="worker0 exited with code 2"):
        Stack(settings, workers=1, log_dir=tmp_path).__enter__()
    assert "names 999 classes, but the model in" in (tmp_path / "worker0.log").read_text()
    assert "has 1000 outputs" in (tmp_path / "worker0.log").read_text()


def test_batches_three_times_longer_than_the_worker_timeout_never_look_like_dead_workers(tmp_path):
    worker_timeout = 1.0
    model = tmp_path / "slow.pth"
    network = SlowClassifier(seconds=3 * worker_timeout).eval()
    save_classic(network, model)
    settings = stack_settings(model_path=str(model), model_trusted=True, backend="torch", batch_size=4,
                              worker_timeout=worker_timeout, request_timeout=60)
    readiness: list[int] = []
    with Stack(settings, workers=2, log_dir=tmp_path / "logs") as stack:
        watching = threading.Event()

        def watch_readiness():
            while not watching.is_set():
                readiness.append(requests.get(stack.url + "/readyz", timeout=5).status_code)
                time.sleep(0.1)

        watcher = threading.Thread(target=watch_readiness)
        watcher.start()
        with ThreadPoolExecutor(max_workers=8) as pool:
            responses = list(pool.map(lambda _: post_image(stack.url, photo_bytes("coffee.png")), range(16)))
        watching.set()
        watcher.join()
    assert [r.status_code for r in responses] == [200] * 16
    assert max(r.json()["timing"]["inference_ms"] for r in responses) >= 3000 * worker_timeout
    logs = "".join(path.read_text() for path in (tmp_path / "logs").iterdir())
    assert "reaped dead worker" not in logs
    assert readiness and set(readiness) == {200}, readiness
