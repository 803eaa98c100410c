"""The private Redis's password; REDIS_URL with a password and with TLS (rediss://): the service works through each;
a hostile model file stops the worker at start and does nothing; a card name that would break the keys is refused."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest
import redis

from model_files.architectures import Preprocessing
from model_files.card import ModelCard
from serving.protocol import Keys, model_id
from stack.processes import REPO_ROOT, WORKER_ARGUMENTS, Stack, StartupError
from tests.hostile_models import WritesAFileInForward, hostile_torchscript
from tests.images import CAT_LABELS, photo_bytes
from tests.integration.client import post_image
from tests.integration.conftest import stack_settings
from tests.model_files import save_classic
from tests.unit.test_model_card import LABELS, FourClasses


def classify_chelsea(stack: Stack) -> str:
    response = post_image(stack.url, photo_bytes("chelsea.png"))
    assert response.status_code == 200, response.text
    return response.json()["predictions"][0]["label"]


def stranger_reply(port: int, command: list[str]) -> bytes:
    """What Redis answers a client that sends `command` as its first words, as redis-cli would (RESP)."""
    request = f"*{len(command)}\r\n" + "".join(f"${len(word.encode())}\r\n{word}\r\n" for word in command)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        connection.sendall(request.encode())
        return connection.recv(4096)


def test_the_private_redis_answers_only_clients_with_its_password_which_no_command_line_shows(tmp_path):
    """Whoever reaches loopback without the password can neither read a queued upload nor push a forged answer."""
    stack = Stack(stack_settings(), workers=1, log_dir=tmp_path)
    with stack:
        assert classify_chelsea(stack) in CAT_LABELS
        keys = Keys(stack.settings.key_prefix, model_id("efficientnet_lite0", "1"))
        stack.redis().lpush(keys.queue + ":parked", b"an upload's pixels")  # a key no worker takes from
        for command in (["PING"], ["LRANGE", keys.queue + ":parked", "0", "-1"],
                        ["LPUSH", keys.result("someone-elses-job"), '{"success": true}']):
            assert stranger_reply(stack.redis_port(), command).startswith(b"-NOAUTH"), command
        assert not stack.redis().exists(keys.result("someone-elses-job"))
        password = urllib.parse.urlsplit(stack.settings.redis_url).password
        assert len(password) >= 32
        children = [stack.redis_process, stack.api_process, *stack.worker_processes]
        assert not [p.pid for p in children if password.encode() in Path(f"/proc/{p.pid}/cmdline").read_bytes()]
        assert stack.redis_url_file.read_text().strip() == stack.settings.redis_url
        assert stack.redis_url_file.stat().st_mode & 0o777 == 0o600
    assert not [log.name for log in tmp_path.glob("*.log") if password in log.read_text()]


def test_a_password_of_ones_own_redis_with_characters_to_escape(tmp_path):
    stack = Stack(stack_settings(), workers=1, log_dir=tmp_path, redis_arguments=("--requirepass", "s3cret pass"),
                  redis_url_template="redis://:s3cret%20pass@127.0.0.1:{port}/0")
    with stack:
        assert classify_chelsea(stack) in CAT_LABELS
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
                  redis_url_template=f"rediss://:{{password}}@127.0.0.1:{{port}}/0?ssl_ca_certs={cert}")
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


def test_a_worker_refuses_to_serve_under_a_card_name_that_model_names_rule_refuses(tmp_path):
    """A card's name becomes the served name, inside Redis keys and URLs: a brace would move the keys' hash tag."""
    card = ModelCard("odd/name}x", "", tuple(LABELS), Preprocessing(32, 32, (0.5,) * 3, (0.5,) * 3))
    model = save_classic(FourClasses().eval(), tmp_path / "odd.pth", card)
    env = {**os.environ, **stack_settings(model_path=str(model), model_trusted=True, backend="torch",
                                          engine_cache_dir="").as_env(), "PYTHONPATH": str(REPO_ROOT)}
    refused = subprocess.run([sys.executable, *WORKER_ARGUMENTS], cwd=REPO_ROOT, env=env, capture_output=True,
                             text=True, timeout=120)
    assert refused.returncode == 2, refused.stderr
    assert "cannot serve the model: the model card's name='odd/name}x'" in refused.stderr
    assert "set MODEL_NAME" in refused.stderr
