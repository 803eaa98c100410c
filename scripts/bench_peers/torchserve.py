"""TorchServe 0.12: the stock image_classifier handler on TorchScript, and ONNX Runtime in a handler of its own.

Both in one venv (torchserve, torch-model-archiver, torch and torchvision, onnxruntime), each model archived with
torch-model-archiver and served by `torchserve --foreground` with a config.properties and a log4j2 configuration
written here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from scripts.bench_peers.peer import (
    BATCH_TIMEOUT_MS,
    MAX_BATCH_SIZE,
    SERVERS,
    WORKERS,
    ModelFiles,
    Peer,
    Serving,
    peer_config,
    python_environment,
    run_server,
    write_config,
)
from scripts.bench_peers.processes import PeerUnavailable, last_lines
from stack.processes import free_port

MODEL_NAME = "efficientnet_lite0"
ARCHIVE_TIMEOUT_SECONDS = 300.0
# Per-request logging cut to the access log: TorchServe's own log, the model workers' output and both metrics logs
# (a line per request and metric by default) only at WARN; the access log keeps one line per request.
LOG4J2 = """<?xml version="1.0" encoding="UTF-8"?>
<Configuration>
  <Appenders>
    <Console name="STDOUT" target="SYSTEM_OUT"><PatternLayout pattern="%d{ISO8601} [%-5p] %c - %m%n"/></Console>
    <RollingFile name="access_log" fileName="{folder}/access_log.log" filePattern="{folder}/access_log.%i.log">
      <PatternLayout pattern="%d{ISO8601} - %m%n"/><Policies><SizeBasedTriggeringPolicy size="100 MB"/></Policies>
    </RollingFile>
  </Appenders>
  <Loggers>
    <Logger name="ACCESS_LOG" level="info" additivity="false"><AppenderRef ref="access_log"/></Logger>
    <Logger name="MODEL_LOG" level="warn"/>
    <Logger name="MODEL_METRICS" level="off" additivity="false"/>
    <Logger name="TS_METRICS" level="off" additivity="false"/>
    <Root level="warn"><AppenderRef ref="STDOUT"/></Root>
  </Loggers>
</Configuration>
"""


def config_properties(folder: Path, ports: tuple[int, int, int, int, int]) -> str:
    """TorchServe's settings: every listener (its gRPC ones too) on a free loopback port, no token, no system
    metrics, 2 workers; the batching is the model's (model_config)."""
    inference, management, metrics, grpc_inference, grpc_management = ports
    return "\n".join([
        f"inference_address=http://127.0.0.1:{inference}",
        f"management_address=http://127.0.0.1:{management}",
        f"metrics_address=http://127.0.0.1:{metrics}",
        "grpc_inference_address=127.0.0.1",
        f"grpc_inference_port={grpc_inference}",
        "grpc_management_address=127.0.0.1",
        f"grpc_management_port={grpc_management}",
        f"model_store={folder / 'model-store'}",
        f"load_models={MODEL_NAME}.mar",
        f"default_workers_per_model={WORKERS}",
        "disable_token_authorization=true",
        "disable_system_metrics=true",
        "enable_envvars_config=false",
        "install_py_dep_per_model=false",
        f"vmargs=-Xmx1g -XX:+UseContainerSupport -Dlog4j.configurationFile=file://{folder / 'log4j2.xml'}",
    ]) + "\n"


def model_config() -> str:
    """The archive's model-config.yaml: 2 workers, batches of up to 8 gathered for at most 10 ms."""
    return (f"minWorkers: {WORKERS}\nmaxWorkers: {WORKERS}\nbatchSize: {MAX_BATCH_SIZE}\n"
            f"maxBatchDelay: {BATCH_TIMEOUT_MS}\nresponseTimeout: 120\n")


class TorchServe(Peer):
    protocol = "torchserve"  # the image as the raw body, as `curl --data-binary` sends it
    requirements = "torchserve"
    handler = ""  # the handler file under servers/
    _SETTINGS = (f"{WORKERS} workers, batchSize {MAX_BATCH_SIZE}, maxBatchDelay {BATCH_TIMEOUT_MS} ms "
                 "(model-config.yaml), OMP_NUM_THREADS=1, system metrics off, log4j2 cut to the access log")

    def serialized_file(self, files: ModelFiles) -> Path:
        raise NotImplementedError

    @contextmanager
    def serve(self, folder: Path, files: ModelFiles, python: Path | None) -> Iterator[Serving]:
        ports = (free_port(), free_port(), free_port(), free_port(), free_port())
        self.archive(folder, files, python)
        (folder / "log4j2.xml").write_text(LOG4J2.replace("{folder}", str(folder)))
        (folder / "config.properties").write_text(config_properties(folder, ports))
        bin_dir = python.parent
        command = [str(bin_dir / "torchserve"), "--start", "--foreground", "--ncs", "--disable-token-auth",
                   "--model-store", str(folder / "model-store"), "--ts-config", str(folder / "config.properties")]
        (folder / "tmp").mkdir()
        # TMPDIR: TorchServe keeps its pid file in the temporary folder and refuses to start beside another
        # instance's (another user's on this machine, say); this one's is its own.
        environment = {**python_environment(folder / "peer.json"), "PATH": f"{bin_dir}:{os.environ['PATH']}",
                       "TMPDIR": str(folder / "tmp")}
        url = f"http://127.0.0.1:{ports[0]}/predictions/{MODEL_NAME}"
        with run_server(command, folder, environment, url) as served:
            yield served

    def archive(self, folder: Path, files: ModelFiles, python: Path) -> None:
        """The .mar: the model file, the handler, the shared helpers, the labels and the peer's config."""
        store = folder / "model-store"
        shutil.rmtree(store, ignore_errors=True)
        store.mkdir(parents=True)
        serialized = self.serialized_file(files)
        write_config(folder, peer_config(files, onnx_model=serialized.name))
        (folder / "index_to_name.json").write_text(json.dumps({str(i): label for i, label in enumerate(files.labels)}))
        (folder / "model-config.yaml").write_text(model_config())
        extra = [SERVERS / "classify.py", folder / "peer.json", folder / "index_to_name.json"]
        command = [str(python.parent / "torch-model-archiver"), "--model-name", MODEL_NAME, "--version", "1.0",
                   "--serialized-file", str(serialized), "--handler", str(SERVERS / self.handler),
                   "--extra-files", ",".join(map(str, extra)), "--config-file", str(folder / "model-config.yaml"),
                   "--export-path", str(store)]
        log = folder / "archive.log"
        with log.open("w") as out:
            done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, timeout=ARCHIVE_TIMEOUT_SECONDS)
        if done.returncode != 0:
            raise PeerUnavailable(f"torch-model-archiver failed (exit {done.returncode}):\n{last_lines(log)}")


class TorchServeStock(TorchServe):
    name = "torchserve-torchscript"
    title = f"TorchServe 0.12, TorchScript, stock image_classifier, {WORKERS} workers"
    handler = "torchserve_stock.py"
    configuration = ("the stock `image_classifier` handler (ImageClassifier) with its transform set to the card's "
                     "(Resize 256, CenterCrop 224, mean and std 0.5: the stock one hard-codes ImageNet's), on the "
                     "network traced and frozen as TorchScript; " + TorchServe._SETTINGS)

    def serialized_file(self, files: ModelFiles) -> Path:
        return files.torchscript


class TorchServeOnnx(TorchServe):
    name = "torchserve-onnx"
    title = f"TorchServe 0.12, ONNX Runtime in its handler, {WORKERS} workers"
    handler = "torchserve_onnx.py"
    configuration = ("a BaseHandler whose preprocess/inference/postprocess run Pillow's resize and crop, an ONNX "
                     "Runtime session (one intra-op thread, no spinning) and the stock top-5 answer, on our ONNX "
                     "export; " + TorchServe._SETTINGS)

    def serialized_file(self, files: ModelFiles) -> Path:
        return files.onnx
