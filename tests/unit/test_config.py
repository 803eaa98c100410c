import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from serving.config import (
    LAUNCHER,
    MODEL_TOOLS,
    WORKER,
    ConfigError,
    Settings,
    parse_redis_url,
    read_by,
    settings_table,
)

CONFIGURATION = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_defaults_apply_when_the_environment_is_empty():
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.host == "127.0.0.1"  # nothing listens beyond loopback unless configured
    assert settings.top_k == 5 and settings.max_upload_mb == 10


def test_environment_variables_override_defaults_with_their_types():
    settings = Settings.from_env({"PORT": "8080", "REQUEST_TIMEOUT": "2.5", "MODEL_TRUSTED": "yes",
                                  "REDIS_URL": "rediss://:secret@example:6380/1"})
    assert settings.port == 8080
    assert settings.request_timeout == 2.5
    assert settings.model_trusted is True
    assert settings.redis_url == "rediss://:secret@example:6380/1"


def test_empty_variables_count_as_unset():
    assert Settings.from_env({"PORT": ""}).port == 5000


@pytest.mark.parametrize("name, value", [("PORT", "http"), ("BATCH_SIZE", "1.5"), ("MODEL_TRUSTED", "maybe")])
def test_a_malformed_value_is_refused_naming_its_variable(name, value):
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


@pytest.mark.parametrize("name", ["MODEL_FORMAT", "RESULT_TTL"])
def test_a_removed_setting_still_set_is_refused_saying_what_replaced_it(name):
    with pytest.raises(ConfigError, match=rf"^{name} is no longer a setting \(.+\): unset it$"):
        Settings.from_env({name: "state_dict"})


def test_settings_survive_the_trip_through_a_child_environment():
    settings = Settings.from_env({"PORT": "6000", "MODEL_TRUSTED": "1", "BATCH_WAIT_MS": "3.5", "MEAN": "0.4,0.5,0.6"})
    assert Settings.from_env(settings.as_env()) == settings
    assert Settings.from_env(Settings().as_env()) == Settings()  # an unset MEAN stays unset


def test_mean_and_std_are_parsed_once_into_three_numbers_each():
    settings = Settings.from_env({"MEAN": "0.4, 0.5,0.6", "STD": "0.2,0.25,0.3"})
    assert (settings.mean, settings.std) == ((0.4, 0.5, 0.6), (0.2, 0.25, 0.3))
    assert Settings().mean is None and Settings().std is None  # the model file's or the architecture's, then


def test_the_configuration_page_lists_every_variable_exactly_as_the_code_defines_it():
    assert settings_table() in CONFIGURATION.read_text(), \
        "run `python -m serving.config --update docs/configuration.md`"


@pytest.mark.parametrize("variable, value, complaint", [
    ("TOP_K", "0", "at least 1"), ("BATCH_SIZE", "0", "at least 1"), ("INFERENCE_THREADS", "-1", "at least 0"),
    ("REDIS_TIMEOUT", "0", "above 0"), ("WORKER_TIMEOUT", "0", "above 0"), ("REQUEST_TIMEOUT", "nan", "above 0"),
    ("MAX_QUEUE", "-5", "at least 1"), ("INPUT_SIZE", "-224", "at least 0"), ("PORT", "70000", "at most 65535"),
    ("LOG_LEVEL", "LOUD", "expected one of DEBUG"), ("KEY_PREFIX", "{a}", "without braces"),
])
def test_settings_that_would_break_the_service_are_configuration_errors(variable, value, complaint):
    with pytest.raises(ConfigError, match=f"{variable}=.*{complaint}"):
        Settings.from_env({variable: value})


@pytest.mark.parametrize("program", ["stack", "worker"])
def test_the_launcher_and_the_worker_say_a_configuration_error_in_one_line(program):
    finished = subprocess.run([sys.executable, "-m", program], env={**os.environ, "BATCH_SIZE": "0"},
                              capture_output=True, text=True, timeout=120)
    assert finished.returncode == 2
    assert finished.stderr.strip().splitlines() == ["configuration error: BATCH_SIZE=0: must be at least 1"]


@pytest.mark.parametrize("url, shown", [
    ("redis://:s3cret@10.1.2.3:6379/0", "redis://:***@10.1.2.3:6379/0"),
    ("rediss://app:s3cret@redis.internal:6380/1", "rediss://app:***@redis.internal:6380/1"),
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ("redis+sentinel://:s3cret@a:26379,b:26379/main/0", "redis+sentinel://:***@a:26379,b:26379/main/0"),
])
def test_the_redis_url_is_shown_without_its_password(url, shown):
    assert Settings(redis_url=url).redis_url_redacted == shown


def test_a_sentinel_url_names_the_sentinels_the_master_and_the_database():
    address = parse_redis_url("redis+sentinel://:p%40ss@10.0.0.1:26380,sentinel-b,[fd00::3]:26381/main/2")
    assert (address.kind, address.master, address.db, address.password, address.tls) == ("sentinel", "main", 2,
                                                                                          "p@ss", False)
    assert address.nodes == (("10.0.0.1", 26380), ("sentinel-b", 26379), ("fd00::3", 26381))  # 26379: Sentinel's


def test_a_cluster_url_names_its_seed_nodes_and_tls_options():
    address = parse_redis_url("rediss+cluster://app:pw@n1:7000,n2:7001?ssl_ca_certs=/etc/ca.pem")
    assert (address.kind, address.username, address.password, address.tls) == ("cluster", "app", "pw", True)
    assert address.nodes == (("n1", 7000), ("n2", 7001))
    assert address.tls_options == (("ssl_ca_certs", "/etc/ca.pem"),)


def test_a_plain_url_is_left_to_redis_py():
    assert parse_redis_url("rediss://:pw@host:6380/3?ssl_cert_reqs=none").kind == "server"


@pytest.mark.parametrize("url, complaint", [
    ("http://host:6379", "scheme http://; expected one of redis://"),
    ("host:6379", "expected one of"),
    ("redis+sentinel://a:26379,b:26379", "needs the master's name"),
    ("redis+sentinel://a:26379/main/zero", "database 'zero' is not a number"),
    ("redis+sentinel://a:port/main", "'a:port' is not host:port"),
    ("redis+cluster://a:7000,,b:7001", "'' is not host:port"),
    ("redis+cluster://a:7000/1", "a cluster has only 0"),
    ("redis+cluster://a:7000?timeout=3", "unknown option timeout"),
])
def test_a_malformed_redis_url_is_a_configuration_error_that_says_what_is_wrong(url, complaint):
    with pytest.raises(ConfigError, match=re.escape(complaint)):
        Settings(redis_url=url)


@pytest.mark.parametrize("program, reader", [("stack", LAUNCHER), ("worker", WORKER), ("model_tools", MODEL_TOOLS)])
def test_help_prints_usage_and_the_settings_that_program_reads_and_starts_nothing(program, reader):
    finished = subprocess.run([sys.executable, "-m", program, "--help"], capture_output=True, text=True, timeout=60)
    assert finished.returncode == 0 and finished.stdout.startswith(f"usage: python -m {program}")
    assert "REDIS_URL=redis://127.0.0.1:6379/0" in finished.stdout
    listed = re.findall(r"^  ([A-Z_]+)=", finished.stdout, re.MULTILINE)
    assert listed == [f.metadata["env"] for f in read_by(reader)]  # each once, in the table's order


def test_forget_after_must_outlast_a_heartbeat_so_no_live_version_is_forgotten():
    with pytest.raises(ConfigError, match="FORGET_AFTER=5 must exceed WORKER_TIMEOUT=5"):
        Settings(forget_after=5, worker_timeout=5)
