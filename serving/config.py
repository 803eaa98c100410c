"""Every setting of the service: its environment variable, default and meaning.

This is the only module that reads the environment. The API, the worker, the
launcher and model_tools all receive a `Settings`; each setting records which of
them read it (PROGRAMS). docs/configuration.md's table and each program's --help
are generated from it (`python -m serving.config`); tests keep the table in step
and check each record against the code (tests/unit/test_config_readers.py).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import sys
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

MODEL_ID_PART = re.compile(r"[A-Za-z0-9._-]{1,64}")  # a model's name or version: safe in a key, a URL and a log
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"  # of API and worker alike, at LOG_LEVEL
Channels = tuple[float, float, float]  # one number per colour channel, R,G,B: MEAN and STD


def channel_values(text: str, name: str, positive: bool = False) -> Channels | None:
    """MEAN or STD (or model_tools' --mean, --std) as three floats, None when unset; ConfigError for anything else.

    The one parser of both: Settings.from_env parses MEAN and STD with it, once, and the worker takes the floats.
    """
    if not text:
        return None
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) for v in values) or (positive and min(values) <= 0):
        raise ConfigError(f"{name}={text!r}: expected three comma-separated numbers (R,G,B), like 0.485,0.456,0.406"
                          + (", each above 0" if positive else ""))
    return values


# The programs that read settings, as each setting's record names them: the docs' table has a column of them, and
# each program's --help lists its own.
API = "API"  # gunicorn -c python:app.gunicorn_conf 'app:create_app()'
WORKER = "worker"  # python -m worker
LAUNCHER = "launcher"  # python -m stack, what `make run` runs; it hands every setting on to the API and the workers
MODEL_TOOLS = "model_tools"  # python -m model_tools route and forget
PROGRAMS = (API, WORKER, LAUNCHER, MODEL_TOOLS)


def _setting(env: str, default, help: str, read_by: tuple[str, ...], parse: Callable[[str, str], object] | None = None):
    """One setting; `parse(raw, env)` turns its variable's text into its value where its type alone does not say how."""
    return field(default=default, metadata={"env": env, "help": help, "read_by": read_by, "parse": parse})


@dataclass(frozen=True)
class Settings:
    redis_url: str = _setting(
        "REDIS_URL", "redis://127.0.0.1:6379/0",
        "Redis to use: `redis://[:password@]host:port/db`; through Sentinel "
        "`redis+sentinel://[:password@]host:port[,host:port...]/master_name[/db]`; a Cluster "
        "`redis+cluster://[:password@]host:port[,host:port...]`; `rediss` in place of `redis` for TLS. "
        "`make run` starts a private Redis when this is unset.", read_by=(API, WORKER, LAUNCHER, MODEL_TOOLS))
    key_prefix: str = _setting(
        "KEY_PREFIX", "imgcls",
        "Namespace of every Redis key: a model version's are `{imgcls:name@version}:queue`... (the braces are "
        "a Redis Cluster hash tag: one queue's keys share a slot), the fleet's `{imgcls}:models`, "
        "`{imgcls}:routes:name`.", read_by=(API, WORKER, LAUNCHER, MODEL_TOOLS))
    host: str = _setting("HOST", "127.0.0.1", "Address the API listens on.", read_by=(API, LAUNCHER))
    port: int = _setting("PORT", 5000, "Port the API listens on.", read_by=(API, LAUNCHER))
    proxy: str = _setting(
        "PROXY", "none",
        "`nginx`: `make run` puts nginx in front of the API on PORT (deploy/nginx/), so slow clients hold "
        "nginx connections rather than API threads; `none`: the API itself listens on PORT.", read_by=(LAUNCHER,))
    api_processes: int = _setting(
        "API_PROCESSES", 2, "gunicorn worker processes of the API.", read_by=(API,))
    api_threads: int = _setting(
        "API_THREADS", 16,
        "Threads per API process; each waiting request holds one.", read_by=(API,))
    max_upload_mb: float = _setting(
        "MAX_UPLOAD_MB", 10.0, "Largest accepted request body, in MiB (413 above).", read_by=(API, LAUNCHER))
    max_image_pixels: int = _setting(
        "MAX_IMAGE_PIXELS", 40_000_000,
        "Largest accepted image, width x height, checked before decoding (413 above).", read_by=(API,))
    decode_pixel_budget: int = _setting(
        "DECODE_PIXEL_BUDGET", 80_000_000,
        "Pixels one API process may be decoding at once (about 12 bytes of memory each at the peak); an upload "
        "that does not fit waits up to 1 s, then gets 503 decoder_busy. At least MAX_IMAGE_PIXELS.", read_by=(API,))
    request_timeout: float = _setting(
        "REQUEST_TIMEOUT", 10.0,
        "Seconds a request may wait for its answer (504 after).", read_by=(API, WORKER, LAUNCHER))
    redis_timeout: float = _setting(
        "REDIS_TIMEOUT", 1.0,
        "Seconds the API waits on Redis for anything but a result (503 after).", read_by=(API, WORKER, MODEL_TOOLS))
    max_queue: int = _setting(
        "MAX_QUEUE", 200,
        "Queued images above which the API answers 503 with Retry-After at once instead of queueing.", read_by=(API,))
    top_k: int = _setting("TOP_K", 5, "Predictions returned per image, where the request asks for no other number "
                          "(`top_k`, 1 to the model's classes).", read_by=(API,))
    max_images_per_request: int = _setting(
        "MAX_IMAGES_PER_REQUEST", 32,
        "Most images one request may carry (400 too_many_images above); each is one queue message, so a "
        "smaller MAX_QUEUE is the limit.", read_by=(API,))
    api_keys_file: str = _setting(
        "API_KEYS_FILE", "",
        "Who may call: a file of lines `NAME SHA256_OF_KEY [RATE [BURST [DAILY [PRIORITY]]]]` (`python -m app.keys "
        "new NAME` makes a key and its line); every route but the probes and the demo page then needs "
        "`Authorization: Bearer KEY`. Re-read when it changes. Empty: no key needed "
        "(docs/operations.md, \"API keys, rate limits and quotas\").", read_by=(API,))
    metrics_need_key: bool = _setting(
        "METRICS_NEED_KEY", False,
        "With API_KEYS_FILE set, whether `GET /metrics` needs a key too (off: Prometheus scrapes it without one).",
        read_by=(API,))
    low_lane_every: int = _setting(
        "LOW_LANE_EVERY", 4,
        "Workers take high-priority keys' images before normal ones before low ones (API_KEYS_FILE's PRIORITY); "
        "every this many batches they take from the low lane first, so that it is never starved.", read_by=(WORKER,))
    workers: int = _setting(
        "WORKERS", 2,
        "Worker processes `make run` starts. Two, so that while one unpacks or answers a batch the other "
        "computes (measured: docs/performance.md, Levers measured).", read_by=(LAUNCHER,))
    batch_size: int = _setting(
        "BATCH_SIZE", 8, "Most images the worker runs in one forward pass.", read_by=(WORKER,))
    batch_wait_ms: float = _setting(
        "BATCH_WAIT_MS", 0.0,
        "After the first image, how long the worker waits for more to fill a batch "
        "(0: take what is queued; under load the queue fills while the model runs).", read_by=(WORKER,))
    worker_timeout: float = _setting(
        "WORKER_TIMEOUT", 5.0,
        "Seconds without a heartbeat after which a worker counts as dead and its unfinished "
        "requests are queued again. Heartbeats go on while a batch computes, so it need not exceed the longest batch.",
        read_by=(API, WORKER, LAUNCHER, MODEL_TOOLS))
    max_attempts: int = _setting(
        "MAX_ATTEMPTS", 2,
        "Deliveries of one request to workers that died on it before it is answered with an error (500). Two: a "
        "batch-mate of an image that kills workers dies with it once, then is served alone; the killer dies "
        "alone the second time.", read_by=(WORKER, LAUNCHER))
    model_path: str = _setting(
        "MODEL_PATH", "models/efficientnet_lite0.pth",
        "Checkpoint the worker serves (built by `make run` when missing).", read_by=(WORKER,))
    model_name: str = _setting(
        "MODEL_NAME", "",
        "Name the worker serves its model under (`POST /models/<name>/predict`; empty: the name in the model "
        "file's card, else the file's name without its suffix, never the architecture). "
        "Letters, digits, `.`, `_`, `-`.", read_by=(WORKER,))
    model_version: str = _setting(
        "MODEL_VERSION", "1",
        "Version of that name the worker serves; each name@version has its own queue, and "
        "`python -m model_tools route` shares a name's requests among its versions.", read_by=(WORKER,))
    default_model: str = _setting(
        "DEFAULT_MODEL", "",
        "Model name `POST /predict` and `GET /model` use (empty: the first name that was served alone, while any "
        "of its versions has a live worker; else the only name with a live worker).", read_by=(API,))
    forget_after: float = _setting(
        "FORGET_AFTER", 86400.0,
        "Seconds a model version may go without a live worker and without a route to it before the registry "
        "forgets it (`GET /models` no longer lists it); `python -m model_tools forget` does it at once.",
        read_by=(WORKER,))
    cors_origins: str = _setting(
        "CORS_ORIGINS", "",
        "Browser origins allowed to call the API from their pages (CORS), comma-separated, e.g. "
        "`https://app.example.com,http://localhost:3000`, or `*` for any; empty: none (no CORS headers, "
        "preflights are 405).", read_by=(API,))
    model_arch: str = _setting(
        "MODEL_ARCH", "",
        "Architecture (`resnet50`, `resnext101_32x8d`, `efficientnet_lite0`, ...), where the model file does not "
        "name one: needed by a bare state_dict; gives its published weights' preprocessing as the default.",
        read_by=(WORKER,))
    model_trusted: bool = _setting(
        "MODEL_TRUSTED", False,
        "Allow a model file that is code: pickled, TorchScript or `torch.export` (.pt2), or ONNX with custom "
        "operators or data outside its folder (`python -m model_tools import` turns one into a file that needs "
        "no trust).", read_by=(WORKER,))
    labels_path: str = _setting(
        "LABELS_PATH", "",
        "Class names, where the model file has none: a text file with one name per line, a JSON list, or "
        "TorchServe's `index_to_name.json`. Without any: ImageNet's names for 1000 outputs, else `class_N`.",
        read_by=(WORKER,))
    input_size: int = _setting(
        "INPUT_SIZE", 0,
        "Side of the square crop the model takes, where the model file does not say (0: the architecture's "
        "default, else 224).", read_by=(WORKER,))
    resize_size: int = _setting(
        "RESIZE_SIZE", 0,
        "The shorter image side is resized to this before the crop, where the model file does not say (0: the "
        "architecture's default, else 256).", read_by=(WORKER,))
    mean: Channels | None = _setting(
        "MEAN", None,
        "Per-channel mean (R,G,B, of pixels scaled to 0-1) the model was trained with, where the model file "
        "does not say (empty: the architecture's default, else ImageNet's 0.485,0.456,0.406).", read_by=(WORKER,),
        parse=channel_values)
    std: Channels | None = _setting(
        "STD", None,
        "Per-channel standard deviation (R,G,B), like MEAN (empty: the architecture's default, else ImageNet's "
        "0.229,0.224,0.225).", read_by=(WORKER,), parse=functools.partial(channel_values, positive=True))
    engine_cache_dir: str = _setting(
        "ENGINE_CACHE_DIR", "models/engine-cache",
        "Where verified engine exports (ONNX, TorchScript) are kept, keyed by the model file's content and the "
        "engine's version, so a restart does not export again (empty: no cache).", read_by=(WORKER,))
    device: str = _setting(
        "DEVICE", "auto", "`auto` (cuda when available, else cpu), `cpu`, `cuda`, `cuda:1` ...", read_by=(WORKER,))
    backend: str = _setting(
        "BACKEND", "auto",
        "Engine that runs the model: `torch`, `torchscript`, `onnxruntime`, `openvino`, or `auto` (on a GPU "
        "`torch`; on the CPU the fastest installed engine whose answers match eager PyTorch).", read_by=(WORKER,))
    precision: str = _setting(
        "PRECISION", "fp32",
        "What the model computes in: `fp32`; `bf16` (BACKEND=openvino or auto, on a CPU with BF16 instructions; "
        "refused elsewhere); `int8` (MODEL_PATH a file `python -m model_tools quantize` wrote). A reduced precision "
        "serves only if its answers agree with float32's (PRECISION_MIN_AGREEMENT; docs/precision.md).",
        read_by=(WORKER,))
    precision_min_agreement: float = _setting(
        "PRECISION_MIN_AGREEMENT", 0.95,
        "Least share of images, among those where float32's top-1 leads its second by at least 0.1, on which a "
        "reduced PRECISION must give float32's top-1; below it the worker refuses to start, naming the numbers.",
        read_by=(WORKER,))
    inference_threads: int = _setting(
        "INFERENCE_THREADS", 0,
        "Threads each worker's engine computes with; 0: half the cores, at least one (the API processes "
        "decoding uploads need the rest; measured: docs/performance.md, Levers measured).", read_by=(WORKER,))
    log_level: str = _setting("LOG_LEVEL", "INFO", "Python log level of API and worker.", read_by=(API, WORKER))

    def __post_init__(self):
        """Values that would break the service are configuration errors at start, not failures later."""
        for name, lowest in _AT_LEAST.items():
            if getattr(self, name) < lowest:
                raise ConfigError(f"{self.env_name(name)}={getattr(self, name)!r}: must be at least {lowest}")
        for name in _ABOVE_ZERO:
            if not getattr(self, name) > 0:  # NaN too
                raise ConfigError(f"{self.env_name(name)}={getattr(self, name)!r}: must be above 0")
        if self.forget_after <= self.worker_timeout:
            raise ConfigError(f"FORGET_AFTER={self.forget_after:g} must exceed WORKER_TIMEOUT={self.worker_timeout:g}: "
                              "a live version would be forgotten between its heartbeats")
        if self.decode_pixel_budget < self.max_image_pixels:
            raise ConfigError(f"DECODE_PIXEL_BUDGET={self.decode_pixel_budget} is below MAX_IMAGE_PIXELS="
                              f"{self.max_image_pixels}: the largest accepted image could never be decoded")
        for name in ("model_name", "model_version", "default_model"):
            value = getattr(self, name)
            if value or name == "model_version":
                check_model_id_part(value, self.env_name(name))
        if not self.key_prefix or set(self.key_prefix) & set("{}"):
            raise ConfigError(f"KEY_PREFIX={self.key_prefix!r}: must be non-empty, without braces (the keys put it "
                              "between braces themselves, as their Redis Cluster hash tag)")
        if self.port > 65535:
            raise ConfigError(f"PORT={self.port}: must be at most 65535")
        if self.proxy not in PROXIES:
            raise ConfigError(f"PROXY={self.proxy!r}: expected one of {', '.join(PROXIES)}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"PRECISION={self.precision!r}: expected one of {', '.join(PRECISIONS)}")
        if not 0 <= self.precision_min_agreement <= 1:  # NaN too
            raise ConfigError(f"PRECISION_MIN_AGREEMENT={self.precision_min_agreement!r}: expected a share, 0 to 1")
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"LOG_LEVEL={self.log_level!r}: expected one of {', '.join(LOG_LEVELS)}")
        parse_redis_url(self.redis_url)  # a malformed URL is a configuration error at start
        for origin in self.allowed_origins:
            if origin != "*" and not ORIGIN.fullmatch(origin):
                raise ConfigError(f"CORS_ORIGINS: {origin!r} is not an origin like https://app.example.com[:port]")

    @classmethod
    def env_name(cls, field_name: str) -> str:
        return next(f.metadata["env"] for f in dataclasses.fields(cls) if f.name == field_name)

    @property
    def redis_url_redacted(self) -> str:
        """REDIS_URL fit for a log or a terminal: its password, if any, replaced by ***."""
        parts = urllib.parse.urlsplit(self.redis_url)
        if parts.password is None:
            return self.redis_url
        user = f"{parts.username}:" if parts.username else ":"
        host = parts.netloc.rsplit("@", 1)[1]
        return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}***@{host}"))

    @property
    def allowed_origins(self) -> tuple[str, ...]:
        """CORS_ORIGINS as a tuple of origins (`*`: any)."""
        return tuple(origin.strip() for origin in self.cors_origins.split(",") if origin.strip())

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def compute_threads(self) -> int:
        """INFERENCE_THREADS, with 0 resolved for this machine."""
        return self.inference_threads or max(1, (os.cpu_count() or 2) // 2)

    @property
    def heartbeat_seconds(self) -> float:
        """How often a worker announces itself: often enough that one late beat is not a death."""
        return self.worker_timeout / 5

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> "Settings":
        """Settings from the environment; `overrides` (field names) win over it."""
        environ = os.environ if environ is None else environ
        _refuse_removed(environ)
        values = {}
        for f in dataclasses.fields(cls):
            raw = environ.get(f.metadata["env"])
            if raw is not None and raw != "":
                values[f.name] = _parse(f, raw)
        values.update(overrides)
        return cls(**values)

    def as_env(self) -> dict[str, str]:
        """These settings as environment variables, to hand to a child process."""
        return {f.metadata["env"]: _format(getattr(self, f.name)) for f in dataclasses.fields(self)}


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
ORIGIN = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?")  # what a browser sends as Origin: no path
PROXIES = ("none", "nginx")
PRECISIONS = ("fp32", "bf16", "int8")
# Smallest workable value of each count and size (0 where 0 means "not set" or "none").
_AT_LEAST = {"port": 1, "api_processes": 1, "api_threads": 1, "max_image_pixels": 1, "max_queue": 1, "top_k": 1,
             "max_images_per_request": 1, "low_lane_every": 1,
             "workers": 0, "batch_size": 1, "batch_wait_ms": 0, "max_attempts": 1, "input_size": 0,
             "resize_size": 0, "inference_threads": 0}
# Durations and sizes that must be above zero: a WORKER_TIMEOUT of 0 would count every worker dead.
_ABOVE_ZERO = ("max_upload_mb", "request_timeout", "redis_timeout", "worker_timeout", "forget_after")


class ConfigError(ValueError):
    """An environment variable holds a value of the wrong kind."""


# Settings that were removed, and what replaced them: one still set was meant to change something, and now would
# not, so it is refused rather than ignored.
REMOVED = {
    "MODEL_FORMAT": "every file is read as MODEL_FORMAT=auto read it (tensors only unless MODEL_TRUSTED=1)",
    "RESULT_TTL": ("the API takes each answer as soon as it is written; an unread one expires after "
                   "serving.protocol.RESULT_TTL_SECONDS"),
}


def _refuse_removed(environ: Mapping[str, str]) -> None:
    for name, instead in REMOVED.items():
        if environ.get(name):
            raise ConfigError(f"{name} is no longer a setting ({instead}): unset it")


def check_model_id_part(value: object, what: str, error: type[ValueError] = ConfigError) -> str:
    """`value` if it may be a model's name or version (MODEL_ID_PART), else `error` naming `what`.

    The one rule for MODEL_NAME, MODEL_VERSION, DEFAULT_MODEL, a model card's name and a heartbeat's:
    each goes into Redis keys (inside a Cluster hash tag, where a brace would move the slot), URLs and logs.
    """
    if not isinstance(value, str) or not MODEL_ID_PART.fullmatch(value):
        raise error(f"{what}={value!r}: expected 1-64 letters, digits, '.', '_' or '-'")
    return value


@dataclass(frozen=True)
class RedisAddress:
    """REDIS_URL taken apart: which kind of deployment, where, and how to authenticate.

    `server` is one Redis (redis-py reads `url` itself, query options included); `sentinel` names the
    Sentinels to ask for the master called `master`; `cluster` names some nodes of a Redis Cluster.
    """

    kind: str  # "server", "sentinel" or "cluster"
    url: str
    nodes: tuple[tuple[str, int], ...] = ()
    master: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    tls_options: tuple[tuple[str, str], ...] = ()  # ssl_ca_certs=..., passed on to redis-py


REDIS_SCHEMES = {"redis": ("server", False), "rediss": ("server", True), "unix": ("server", False),
                 "redis+sentinel": ("sentinel", False), "rediss+sentinel": ("sentinel", True),
                 "redis+cluster": ("cluster", False), "rediss+cluster": ("cluster", True)}
DEFAULT_PORTS = {"sentinel": 26379, "cluster": 6379}
TLS_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs")


def parse_redis_url(url: str) -> RedisAddress:
    """REDIS_URL as a RedisAddress; ConfigError naming what is wrong (never the password)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in REDIS_SCHEMES:
        raise ConfigError(f"REDIS_URL: scheme {parts.scheme + '://' if parts.scheme else 'missing'}; expected one of "
                          + ", ".join(f"{scheme}://" for scheme in REDIS_SCHEMES))
    kind, tls = REDIS_SCHEMES[parts.scheme]
    if kind == "server":
        return RedisAddress("server", url, tls=tls)
    credentials, _, hosts = parts.netloc.rpartition("@")
    username, _, password = credentials.partition(":")
    nodes = tuple(_host_and_port(node, DEFAULT_PORTS[kind], parts.scheme) for node in hosts.split(","))
    path = [segment for segment in parts.path.split("/") if segment]
    if kind == "sentinel":
        if not 1 <= len(path) <= 2:
            raise ConfigError(f"REDIS_URL: {parts.scheme}:// needs the master's name after the hosts, "
                              "like redis+sentinel://host:26379,host2:26379/mymaster/0")
        master, db = path[0], _database(path[1:])
    else:
        if _database(path) != 0 or len(path) > 1:
            raise ConfigError(f"REDIS_URL: {parts.scheme}:// has no database to choose (a cluster has only 0)")
        master, db = "", 0
    options = urllib.parse.parse_qsl(parts.query)
    unknown = sorted({name for name, _ in options} - set(TLS_OPTIONS))
    if unknown:
        raise ConfigError(f"REDIS_URL: unknown option {', '.join(unknown)}; {parts.scheme}:// takes "
                          + ", ".join(TLS_OPTIONS))
    return RedisAddress(kind, url, nodes, master, db, urllib.parse.unquote(username) or None,
                        urllib.parse.unquote(password) or None, tls, tuple(options))


def _host_and_port(node: str, default_port: int, scheme: str) -> tuple[str, int]:
    host, colon, port = node.rpartition(":") if not node.endswith("]") else (node, "", "")
    if not colon:
        host, port = node, str(default_port)
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"REDIS_URL: {node!r} is not host:port in a {scheme}:// list of hosts")
    return host, int(port)


def _database(path: list[str]) -> int:
    if not path:
        return 0
    if not path[0].isdigit():
        raise ConfigError(f"REDIS_URL: database {path[0]!r} is not a number")
    return int(path[0])


def _parse(f: dataclasses.Field, raw: str):
    if f.metadata["parse"]:
        return f.metadata["parse"](raw, f.metadata["env"])
    kind = {"str": str, "int": int, "float": float, "bool": bool}[f.type]  # string annotations
    try:
        if kind is bool:
            lowered = raw.strip().lower()
            if lowered not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                raise ValueError(raw)
            return lowered in ("1", "true", "yes", "on")
        return kind(raw)
    except ValueError:
        raise ConfigError(f"{f.metadata['env']}={raw!r} is not a valid {kind.__name__}") from None


def _format(value) -> str:
    """A value as its environment variable spells it (`_parse` reads it back)."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if value is None:
        return ""
    if isinstance(value, tuple):
        return ",".join(str(part) for part in value)
    return str(value)


def program_settings(program: str, what: str, reader: str, argv: list[str]) -> Settings:
    """The settings of a program that takes no arguments but --help; `reader` is its name among PROGRAMS.

    Exits 0 after printing its usage for --help, and 2 after one line for a configuration error.
    """
    if {"-h", "--help"} & set(argv):
        print(usage(program, what, reader))
        raise SystemExit(0)
    try:
        return Settings.from_env()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def usage(program: str, what: str, reader: str) -> str:
    """`--help` text of a program that takes no arguments: what it does, then the settings `reader` reads."""
    return "\n".join([f"usage: {program}", "", what, "", settings_help(reader)])


def settings_help(reader: str) -> str:
    """The settings `reader` (one of PROGRAMS) reads, each with its default and meaning, for its --help."""
    lines = ["Configuration (environment variables; docs/configuration.md, Configuration):"]
    for f in read_by(reader):
        lines.append(f"  {f.metadata['env']}={_shown_default(f)}\n      {f.metadata['help']}")
    return "\n".join(lines)


def read_by(reader: str) -> list[dataclasses.Field]:
    """The settings one of PROGRAMS reads, in the table's order."""
    return [f for f in dataclasses.fields(Settings) if reader in f.metadata["read_by"]]


TABLE_HEADER = "| Variable | Default | Read by | Meaning |"


def settings_table() -> str:
    """The markdown table of every variable, as docs/configuration.md shows it."""
    rows = [TABLE_HEADER, "| --- | --- | --- | --- |"]
    for f in dataclasses.fields(Settings):
        rows.append(f"| `{f.metadata['env']}` | `{_shown_default(f)}` | {', '.join(f.metadata['read_by'])} "
                    f"| {f.metadata['help']} |")
    return "\n".join(rows)


def _shown_default(f: dataclasses.Field) -> str:
    return _format(f.default) or "(empty)"


def rewrite_settings_table(document: str) -> str:
    """The document's text with its configuration table replaced by the current one."""
    lines = document.split("\n")
    start = lines.index(TABLE_HEADER)
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return "\n".join(lines[:start] + settings_table().split("\n") + lines[end:])


if __name__ == "__main__":
    # `python -m serving.config` prints the table; `... --update docs/configuration.md` rewrites it in place.
    if sys.argv[1:2] == ["--update"]:
        with open(sys.argv[2]) as f:
            text = rewrite_settings_table(f.read())
        with open(sys.argv[2], "w") as f:
            f.write(text)
    else:
        sys.stdout.write(settings_table() + "\n")
