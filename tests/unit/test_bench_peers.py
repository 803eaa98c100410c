"""`make bench-peers`' cheap parts: the answer rule, the table, the peers' generated settings, their preprocessing,
and stopping a peer's whole process group. No peer is installed here."""

from __future__ import annotations

import io
import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scripts.bench_peers.answers import WrongAnswers, check_answers
from scripts.bench_peers.driver import Sitting, parse_arguments, run_system, wait_until_answering
from scripts.bench_peers.ours import Ours
from scripts.bench_peers.peer import ModelFiles, Peer, Serving, peer_config
from scripts.bench_peers.processes import PeerUnavailable, ensure_venv, live_members, requirements_digest, stop_group
from scripts.bench_peers.servers.classify import resize_and_crop, top_labels
from scripts.bench_peers.table import Result, markdown_table
from scripts.bench_peers.torchserve import LOG4J2, config_properties, model_config
from scripts.loadtest import Client, Report, sample_photos
from serving.preprocess import decode_image, fit_to_model
from stack.processes import free_port

REFERENCE = {"chelsea.png": "Egyptian cat", "coffee.png": "espresso"}
FILES = ModelFiles(Path("/m/model.onnx"), Path("/m/network.ts.pt"), ["cat", "dog"], 256, 224, (0.5,) * 3, (0.5,) * 3)


def report(requests_per_second: float, p50: float, p99: float, failed: int = 0) -> Report:
    """A 10 s closed-loop run's figures at this rate."""
    succeeded = int(requests_per_second * 10)
    return Report(mode="test", requests=succeeded + failed, duration_s=10.0, throughput_rps=requests_per_second,
                  images_per_s=requests_per_second, statuses={"200": succeeded, **({"0": failed} if failed else {})},
                  errors={}, latency_ms={"p50": p50, "p90": p99, "p99": p99, "max": p99}, batch_sizes={},
                  mean_batch_size=None, outcomes=[])


def test_a_system_whose_answers_all_match_eager_pytorch_passes():
    check_answers("peer", REFERENCE, dict(REFERENCE))


def test_a_system_that_differs_on_one_photo_is_refused_naming_it():
    with pytest.raises(WrongAnswers, match=r"1 of 2 photos: coffee.png: 'cup' instead of 'espresso'"):
        check_answers("peer", REFERENCE, {"chelsea.png": "Egyptian cat", "coffee.png": "cup"})


def test_a_photo_without_an_answer_counts_as_wrong():
    with pytest.raises(WrongAnswers, match="chelsea.png: 'no answer'"):
        check_answers("peer", REFERENCE, {"coffee.png": "espresso"})


def test_the_table_gives_each_row_its_ratio_to_the_best_peer_not_to_ours():
    results = [Result("ours", is_peer=False, rounds=[{1: report(50, 20, 30), 16: report(120, 150, 300)}]),
               Result("fast peer", is_peer=True, rounds=[{1: report(40, 25, 40), 16: report(100, 160, 280)}]),
               Result("slow peer", is_peer=True, rounds=[{1: report(20, 50, 60), 16: report(50, 300, 500)}])]
    lines = markdown_table(results, [1, 16]).splitlines()
    assert lines[0] == "| system | c=1 req/s (p50) | c=16 req/s (p50 / p99) | c=16 images/s | vs best peer |"
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ")[1:] for line in lines[2:]}
    assert rows["ours"][-1].rstrip(" |") == "1.20"
    assert rows["fast peer"][-1].rstrip(" |") == "1.00"
    assert rows["slow peer"][-1].rstrip(" |") == "0.50"
    assert rows["fast peer"][0] == "40.0 (25 ms)"
    assert rows["fast peer"][1].endswith("(160 / 280 ms)")


def test_a_refused_system_keeps_its_row_with_the_reason_and_is_no_best_peer():
    results = [Result("ours", is_peer=False, rounds=[{1: report(50, 20, 30), 16: report(120, 150, 300)}]),
               Result("broken peer", is_peer=True, refused="pip install failed (exit 1)\nlong log | tail")]
    table = markdown_table(results, [1, 16])
    assert "| broken peer | not reported: pip install failed (exit 1) |" in table
    assert "long log" not in table
    assert "no peer measured" in table


def test_failed_requests_are_shown_beside_the_throughput():
    results = [Result("peer", is_peer=True, rounds=[{1: report(10, 20, 30), 16: report(10, 20, 30, failed=3)}])]
    assert ", 3 failed" in markdown_table(results, [1, 16])


def test_torchserve_listens_on_loopback_only_with_two_workers_and_no_per_request_metrics(tmp_path):
    ports = (8081, 8082, 8083, 8084, 8085)
    properties = dict(line.split("=", 1) for line in config_properties(tmp_path, ports).splitlines())
    assert properties["inference_address"] == "http://127.0.0.1:8081"
    assert properties["management_address"] == "http://127.0.0.1:8082"
    assert properties["metrics_address"] == "http://127.0.0.1:8083"
    assert (properties["grpc_inference_address"], properties["grpc_inference_port"]) == ("127.0.0.1", "8084")
    assert (properties["grpc_management_address"], properties["grpc_management_port"]) == ("127.0.0.1", "8085")
    assert properties["default_workers_per_model"] == "2"
    assert properties["disable_system_metrics"] == "true"
    assert f"file://{tmp_path / 'log4j2.xml'}" in properties["vmargs"]
    assert '<Logger name="TS_METRICS" level="off"' in LOG4J2 and '<Logger name="MODEL_METRICS" level="off"' in LOG4J2


def test_torchserve_batches_eight_requests_for_at_most_ten_milliseconds():
    settings = dict(line.split(": ") for line in model_config().splitlines())
    assert settings == {"minWorkers": "2", "maxWorkers": "2", "batchSize": "8", "maxBatchDelay": "10",
                        "responseTimeout": "120"}


def test_every_peer_gets_the_cards_preprocessing_and_the_shared_settings():
    config = peer_config(FILES, onnx_model="model.onnx", port=9000)
    assert json.loads(json.dumps(config)) == {
        "onnx_model": "model.onnx", "resize_size": 256, "input_size": 224, "mean": [0.5] * 3, "std": [0.5] * 3,
        "labels": ["cat", "dog"], "port": 9000, "workers": 2, "threads": 1, "max_batch_size": 8,
        "batch_timeout_ms": 10}


def test_the_peers_resize_and_crop_gives_our_services_pixels():
    for name, data in sample_photos():
        with Image.open(io.BytesIO(data)) as image:
            theirs = resize_and_crop(image.convert("RGB"), 256, 224)
        ours = fit_to_model(decode_image(data, 10**8), 256, 224)
        assert theirs.shape == (224, 224, 3), name
        assert np.abs(theirs.astype(int) - ours.astype(int)).max() <= 1, name


def test_answers_are_the_five_most_probable_labels_most_probable_first():
    probabilities = np.array([0.06, 0.4, 0.12, 0.3, 0.02, 0.1])
    answer = top_labels(probabilities, list("abcdef"))
    assert list(answer) == ["b", "d", "c", "f", "a"]
    assert Peer().top1(json.dumps(answer).encode()) == "b"
    assert Peer().top1(json.dumps([answer]).encode()) == "b"


def test_our_answer_is_read_from_predictions():
    payload = json.dumps({"success": True, "predictions": [{"label": "tabby", "probability": 0.9}]}).encode()
    assert Ours().top1(payload) == "tabby"


def test_unknown_peers_bad_client_counts_and_no_rounds_are_refused():
    with pytest.raises(SystemExit):
        parse_arguments(["--peers", "ours,tritonserver"])
    with pytest.raises(SystemExit):
        parse_arguments(["--clients", "0,16"])
    with pytest.raises(SystemExit):
        parse_arguments(["--rounds", "0"])
    assert parse_arguments(["--clients", "16,1,4"]).clients == [1, 4, 16]


def test_stopping_a_peer_ends_its_whole_process_group_even_a_child_that_ignores_sigterm():
    # The leader forks a child that ignores SIGTERM (as a wedged worker would) and outlives it.
    leader = subprocess.Popen(["sh", "-c", "(trap '' TERM; sleep 60) & echo $!; sleep 60"], stdout=subprocess.PIPE,
                              start_new_session=True, text=True)
    child = int(leader.stdout.readline())
    assert child in live_members(leader.pid)
    started = time.monotonic()
    stop_group(leader, grace=0.5)
    assert leader.poll() is not None
    assert live_members(leader.pid) == []
    assert time.monotonic() - started < 10


def test_a_venv_with_these_requirements_installed_is_not_installed_again(tmp_path):
    requirements = tmp_path / "peer.txt"
    requirements.write_text("litserve==0.2.19\n")
    venv = tmp_path / "peer"
    venv.mkdir()
    (venv / "installed-requirements.sha256").write_text(requirements_digest(requirements))
    assert ensure_venv(venv, requirements, python="false") == venv / "bin" / "python"  # `false` was never run


def test_a_failed_install_is_a_clear_message_naming_its_log(tmp_path):
    requirements = tmp_path / "peer.txt"
    requirements.write_text("litserve==0.2.19\n")
    with pytest.raises(PeerUnavailable, match=r"false -m venv .* failed \(exit 1\); log .*peer.install.log"):
        ensure_venv(tmp_path / "peer", requirements, python="false")


def test_a_peer_that_exits_while_starting_is_reported_with_its_logs_end(tmp_path):
    log = tmp_path / "server.log"
    log.write_text("starting\nImportError: No module named 'yaml'\n")
    client = Client(f"http://127.0.0.1:{free_port()}/predict", sample_photos()[:1], timeout=5)
    with pytest.raises(PeerUnavailable, match="exited while starting; log .* ends:\nstarting\nImportError"):
        wait_until_answering(client, Serving(client.path, log, alive=lambda: False), timeout=30)


def test_a_peer_that_cannot_start_keeps_its_row_and_the_sitting_goes_on(tmp_path):
    class Unstartable(Peer):
        name = title = "unstartable"

        def serve(self, folder, files, python):
            raise PeerUnavailable("no Java")

    sitting = Sitting([], {}, FILES, [1], 1.0, 0.0, "python3", work=tmp_path)
    result = run_system(Unstartable(), sitting)
    assert (result.rounds, result.refused) == ([], "no Java")


def test_the_figures_file_holds_each_runs_report_and_each_refusal():
    measured = Result("peer", is_peer=True, rounds=[{16: report(100, 160, 280)}, {16: report(90, 170, 290)}])
    assert [r["16"]["throughput_rps"] for r in measured.to_json()["rounds"]] == [100, 90]
    assert Result("broken", is_peer=True, refused="no Java").to_json() == {
        "system": "broken", "is_peer": True, "rounds": None, "refused": "no Java"}


def test_over_rounds_a_row_shows_its_median_round_and_the_median_of_its_ratios_within_rounds():
    # The machine's speed moves between rounds: the ratio of the two medians (90 / 95) would say ours is slower,
    # the ratios within each round (1.2, 1.1, 0.95) that it leads in two rounds of three.
    ours = Result("ours", is_peer=False, rounds=[{16: report(120, 150, 300)}, {16: report(66, 250, 400)},
                                                  {16: report(90, 200, 350)}])
    peer = Result("peer", is_peer=True, rounds=[{16: report(100, 160, 280)}, {16: report(60, 270, 420)},
                                                {16: report(95, 210, 330)}])
    lines = markdown_table([ours, peer], [16]).splitlines()
    assert lines[0].endswith("| vs best peer | c=16 req/s, each round |")
    assert lines[2] == "| ours | 90.0 (200 / 350 ms) | 90.0 | 1.10 | 120.0, 66.0, 90.0 |"
    assert lines[3] == "| peer | 95.0 (210 / 330 ms) | 95.0 | 1.00 | 100.0, 60.0, 95.0 |"


def test_each_round_starts_one_system_later_and_a_refused_system_is_not_run_again(tmp_path, monkeypatch):
    from scripts.bench_peers import driver

    class Named(Peer):
        def __init__(self, name: str, requirements: str | None):
            self.name = self.title = name
            self.requirements = requirements

    ran = []

    def run_once(peer, sitting):
        ran.append(peer.name)
        if peer.name == "broken":
            return Result(peer.title, is_peer=True, refused="wrong answers")
        return Result(peer.title, is_peer=True, rounds=[{16: report(10 * len(ran), 100, 200)}])

    monkeypatch.setattr(driver, "run_system", run_once)
    sitting = Sitting([], {}, FILES, [16], 1.0, 0.0, "python3", work=tmp_path)
    chosen = [Named("ours", None), Named("peer", "peer"), Named("broken", "broken")]
    results = driver.sit(chosen, sitting, rounds=3)
    assert ran == ["ours", "peer", "broken", "peer", "ours", "ours", "peer"]
    assert [len(r.rounds) for r in results] == [3, 3, 0]
    assert results[2].refused == "wrong answers"
