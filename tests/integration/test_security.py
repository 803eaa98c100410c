"""REDIS_URL with a password and with TLS (rediss://): the whole service works through both; a hostile model file
stops the worker at start and does nothing."""

from __future__ import annotations

import subprocess

import pytest
import redis

from stack.processes import Stack, StartupError
from tests.hostile_models import WritesAFileInForward, hostile_torchscript
from tests.images import CAT_LABELS, photo_bytes
from tests.integration.client import post_image
from tests.integration.conftest import stack_settings

pytestmark = pytest.mark.integration


def classify_chelsea(stack: Stack) -> str:
    response = post_image(stack.url, photo_bytes("chelsea.png"))
    assert response.status_code == 200, response.text
    return response.json()["predictions"][0]["label"]


def test_a_password_protected_redis(tmp_path):
    stack = Stack(stack_settings(), workers=1, log_dir=tmp_path, redis_arguments=("--requirepass", "s3cret pass"),
                  redis_url_template="redis://:s3cret%20pass@127.0.0.1:{port}/0")
    with stack:
        assert classify_chelsea(stack) in CAT_LABELS
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=stack.redis_port()).ping()  # really protected
    assert not [log.name for log in tmp_path.glob("*.log") if "s3cret" in log.read_text()]


def self_signed_certificate(folder) -> tuple[str, str]:
    key, cert = folder / "redis.key", folder / "redis.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return str(key), str(cert)


def test_a_tls_redis(tmp_path):
    key, cert = self_signed_certificate(tmp_path)
    tls = ("--port", "0", "--tls-port", "{port}", "--tls-cert-file", cert, "--tls-key-file", key,
           "--tls-ca-cert-file", cert, "--tls-auth-clients", "no")
    stack = Stack(stack_settings(), workers=1, log_dir=tmp_path, redis_arguments=tls,
                  redis_url_template=f"rediss://127.0.0.1:{{port}}/0?ssl_ca_certs={cert}")
    with stack:
        assert classify_chelsea(stack) in CAT_LABELS
        with pytest.raises(redis.ConnectionError):
            redis.Redis(port=stack.redis_port(), socket_timeout=2).ping()  # plain text is not accepted


def test_a_worker_refuses_a_hostile_torchscript_model_untrusted_and_its_file_is_never_written(tmp_path):
    """The issue's attack: forward calls torch.from_file(shared=True), and the worker runs forward at warm-up."""
    target = tmp_path / "written-by-the-model"
    model = hostile_torchscript(WritesAFileInForward, tmp_path / "hostile.ts.pt", target)
    with pytest.raises(StartupError, match="worker0 exited with code 2"):
        Stack(stack_settings(model_path=str(model)), workers=1, log_dir=tmp_path / "logs").__enter__()
    log = (tmp_path / "logs" / "worker0.log").read_text()
    assert f"cannot serve the model: {model} is TorchScript, whose code runs while torch loads it" in log
    assert "MODEL_TRUSTED=1" in log
    assert not target.exists()
