"""The Redis protocol between API and worker: key names and message formats.

Nothing outside this module spells a key or a message field. The Lua scripts that use them sit each beside
its one typed call: serving/queue_scripts.py for a message's way through a queue (ADMISSION to
ANSWER_EXHAUSTED), serving/fleet_scripts.py for heartbeats, stops and the registry of model versions.

Flow of one request (`{prefix}` here is short for a model version's hash tag, `{KEY_PREFIX:name@version}`):
  API:    SET {prefix}:pixels:<job id> <raw pixels> PX <until the deadline>, one per image, then
          LPUSH {prefix}:queue[:high|:low] <small JSON message> ...   (ENQUEUE, in the lane of the client's API
          key: while the version is served, unless MAX_QUEUE would be passed, else it deletes the pixels; and one
          element in {prefix}:wake), all in one MULTI
  worker: LMOVE {prefix}:retry -> {prefix}:processing:<worker id>    (one retried message alone, if any)
          else TAKE: LMOVEs from the lanes, high first -> {prefix}:processing:<worker id>   (atomic take
               of a batch, one script; with nothing queued, BLPOP {prefix}:wake first, then TAKE again)
  worker: MGET {prefix}:pixels:<job id> ...                        (the pixels of the messages it will run)
  worker: LREM each answered message from its processing list and, if it was there,
          RPUSH {prefix}:result:<job id> <result JSON>, EXPIRE it (RESULT_TTL_SECONDS),
          HDEL its delivery count, DEL its pixels                     (one script, PUBLISH)
  API:    BLPOP {prefix}:result:<job id> until the request's deadline
Only messages of a few hundred bytes move between lists and through Lua; an image's pixels stay in their own key
from the API's SET to the answer's DEL (as rq keeps a job's payload in its hash and moves only ids), so no script
copies them and the reaper's maintenance never rewrites them.
Every heartbeat (HEARTBEAT in serving/fleet_scripts.py, from a thread of its own,
so it goes on while a batch computes however long that takes), a worker refreshes {prefix}:model, the
served model's description, with a TTL of WORKER_TIMEOUT (the API reads its
preprocessing from it; its absence means no worker is up), and its own score in
the sorted set {prefix}:workers (worker id -> time of its last heartbeat). A
sorted set makes "which workers are dead" one range query, where TTL keys per
worker would need a scan. Heartbeat times and the cutoffs they are compared with
are Redis's own clock (TIME inside the scripts), never a host's: hosts whose
clocks disagree can neither reap a live worker nor keep a dead one. When a
worker's heartbeat is older than WORKER_TIMEOUT, any live worker runs
return_unfinished (serving/queue_scripts.py) on it, which checks the score again inside the script: its
processing list goes back to the queues, each message's count of failed
deliveries raised by one in {prefix}:attempts (a hash by job id, beside the
message: the script moves the message's bytes untouched), and a message whose
count has reached MAX_ATTEMPTS is answered with an error instead (at-least-once
delivery, bounded).

Images travel as raw uint8 HWC pixels in a key of their own, their description as JSON in the message: no pickle
ever crosses Redis, and no base64.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import pybase64

from serving.config import PRECISIONS, check_model_id_part

ATTEMPTS_EXHAUSTED = "attempts_exhausted"
PRIORITIES = ("high", "normal", "low")  # an API key's lane; workers take from them in this order under load


def model_id(name: str, version: str) -> str:
    """One model version's id, `name@version`: its queue's name and its entry in the fleet's registry."""
    return f"{name}@{version}"


def split_model_id(model_id: str) -> tuple[str, str]:
    name, _, version = model_id.rpartition("@")
    return name, version


@dataclass(frozen=True)
class Keys:
    """Every key of one model version's queue, all under the hash tag `{prefix:name@version}`.

    Redis Cluster places a key by the part between its first braces, so every key of a queue lies in one
    slot: the transactions, scripts and BLMOVEs that span them work on a cluster as on one server
    (CROSSSLOT otherwise). Each model version has its own queue, so its own tag, and may live on
    another node.
    """

    prefix: str
    model_id: str  # model_id(name, version)

    @property
    def tag(self) -> str:
        return "{" + f"{self.prefix}:{self.model_id}" + "}"

    @property
    def queue(self) -> str:
        return f"{self.tag}:queue"

    def lane(self, priority: str) -> str:
        """The queue of one priority lane: `normal` is the queue itself, `high` and `low` lie beside it."""
        return self.queue if priority == "normal" else f"{self.tag}:queue:{priority}"

    @property
    def lanes(self) -> tuple[str, str, str]:
        """Every lane's queue, the order workers take from under load: high, normal, low."""
        return tuple(self.lane(priority) for priority in PRIORITIES)

    @property
    def wake(self) -> str:
        """A list of at most one element, pushed with every enqueue: what an idle worker blocks on, since one
        BLMOVE can wait on one lane only."""
        return f"{self.tag}:wake"

    @property
    def model(self) -> str:
        return f"{self.tag}:model"

    @property
    def retry(self) -> str:
        """Messages whose worker died while holding them: served one at a time, before the queue."""
        return f"{self.tag}:retry"

    @property
    def exhausted(self) -> str:
        """Messages whose workers died on them MAX_ATTEMPTS times, each waiting for its error answer."""
        return f"{self.tag}:exhausted"

    @property
    def attempts(self) -> str:
        """Hash of job id -> deliveries that ended with the worker dying; only messages that failed have one."""
        return f"{self.tag}:attempts"

    @property
    def workers(self) -> str:
        return f"{self.tag}:workers"

    @property
    def stopping(self) -> str:
        """Set of workers that have been told to stop and serve on only to empty the queue."""
        return f"{self.tag}:stopping"

    @property
    def worker_stats(self) -> str:
        return f"{self.tag}:worker_stats"

    @property
    def fingerprint(self) -> str:
        """The fingerprint (model file and card) of the model this version's live workers serve, with their TTL:
        a worker whose model differs refuses to join (HEARTBEAT)."""
        return f"{self.tag}:fingerprint"

    def processing(self, worker_id: str) -> str:
        return f"{self.tag}:processing:{worker_id}"

    def result(self, job_id: str) -> str:
        return f"{self.tag}:result:{job_id}"

    def pixels(self, job_id: str) -> str:
        """One queued image's raw pixels, beside its message: written once, read by the worker that runs it, deleted
        with its answer, expiring after its deadline if nobody answers it."""
        return f"{self.tag}:pixels:{job_id}"

    def all_keys_pattern(self) -> str:
        return f"{self.tag}:*"


@dataclass(frozen=True)
class FleetKeys:
    """The keys shared by every model of a prefix: which model versions are served, and how names route."""

    prefix: str

    @property
    def models(self) -> str:
        """Sorted set: model id -> Redis time of the last heartbeat of any of its workers (0: its last one left)."""
        return "{" + self.prefix + "}:models"

    def routes(self, name: str) -> str:
        """Hash: version -> weight, the share of the name's requests that version gets (absent: RoutingTable)."""
        return "{" + self.prefix + "}:routes:" + name

    @property
    def default(self) -> str:
        """The name `POST /predict` goes to without DEFAULT_MODEL: the first name that was the only one live keeps it
        while any of its versions is live (REGISTER_MODEL)."""
        return "{" + self.prefix + "}:default"


@dataclass(frozen=True)
class ClientKeys:
    """The keys of one API key's limits, under the tag `{prefix:client:name}`: shared by every model version and
    API process, so each key's bucket has a slot of its own on a Redis Cluster (not its requests' queue's)."""

    prefix: str
    name: str  # the API key's name in API_KEYS_FILE, never the key

    @property
    def tag(self) -> str:
        return "{" + f"{self.prefix}:client:{self.name}" + "}"

    @property
    def limits(self) -> str:
        """Hash: the token bucket (tokens, at) and the day's count of images (day, used)."""
        return f"{self.tag}:limits"

    def charge(self, charge_id: str) -> str:
        """One request's charge, remembered for a while after its take (its cost), so that a resend of the take
        takes nothing (serving/rate_limit_scripts.py)."""
        return f"{self.tag}:charge:{charge_id}"


class MalformedMessage(ValueError):
    """A queue message that cannot be decoded; `job_id` is set when it could be read."""

    def __init__(self, reason: str, job_id: str | None = None):
        super().__init__(reason)
        self.job_id = job_id


class RedisClock:
    """This host's reading of Redis's clock: the local clock plus the offset measured at the last TIME.

    Times that cross hosts (a message's enqueue time and deadline) are written and compared in
    Redis's clock, so an API and a worker whose clocks disagree still agree on what has expired.
    The offset's error is half a round trip, a millisecond or less.
    """

    def __init__(self):
        self.offset = 0.0  # Redis's time minus this host's, in seconds

    def observe(self, redis_seconds: float, sent_at: float, received_at: float) -> None:
        """Record a reading of Redis's TIME, made between the local times sent_at and received_at."""
        self.offset = redis_seconds - (sent_at + received_at) / 2

    def now(self) -> float:
        return time.time() + self.offset


# The start of every script that reads the time: Redis's clock, in seconds, as `now` (never a host's).
REDIS_NOW = "local clock = redis.call('TIME'); local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000\n"


def redis_seconds(reply: tuple[int, int]) -> float:
    """The reply of Redis's TIME command as epoch seconds."""
    seconds, microseconds = reply
    return int(seconds) + int(microseconds) / 1e6


@dataclass(frozen=True)
class InferenceRequest:
    job_id: str  # the API makes one per image; its answer waits under Keys.result(job_id)
    pixels: np.ndarray  # uint8, height x width x 3
    enqueued_at: float  # epoch seconds, by Redis's clock (RedisClock)
    deadline: float  # epoch seconds by Redis's clock, after which the client no longer waits
    top_k: int  # predictions the answer carries (at most the model's classes)
    probabilities: bool = False  # whether the answer carries every class's probability too (Open Inference Protocol)
    priority: str = "normal"  # the lane it is queued in (PRIORITIES), and returned to when its worker hands it back


@dataclass(frozen=True)
class QueuedRequest:
    """One image's message as the lanes, processing lists and the reaper hold it: the request but its pixels."""
    job_id: str
    shape: tuple[int, int, int]
    enqueued_at: float
    deadline: float
    top_k: int
    probabilities: bool
    priority: str


@dataclass(frozen=True)
class EncodedRequest:
    """A request as it goes into Redis: a small message that moves between lists, and its pixels, which stay put."""
    job_id: str
    message: bytes  # JSON, a few hundred bytes: what ENQUEUE, TAKE and the reaper move
    pixels: bytes  # raw uint8 HWC, written once under Keys.pixels(job_id) and never seen by a script
    expire_ms: int  # the pixels' lifetime: until the deadline and PIXELS_GRACE_SECONDS, then nobody needs them


# How long an image's pixels outlive its deadline: room for a worker that took its message just before the deadline
# (clocks read with a round trip's error) to fetch them. After the deadline a worker skips the message unread.
PIXELS_GRACE_SECONDS = 5.0
# How long an answer waits in Redis to be read. The API pops it the moment it is pushed (BLPOP on every key it waits
# for), so only answers nobody waits for stay: their deadline passed, or they repeat an answer already read.
RESULT_TTL_SECONDS = 30.0


def encode_request(request: InferenceRequest) -> EncodedRequest:
    """The message first names the job, then its lane: what the reaper's script reads (RETURN_UNFINISHED, with
    leading_job_id's pattern) to count failed deliveries and to hand a message back to its own lane."""
    pixels = np.ascontiguousarray(request.pixels, dtype=np.uint8)
    message = json.dumps({
        "id": request.job_id,
        "priority": request.priority,
        "shape": list(pixels.shape),
        "enqueued_at": request.enqueued_at,
        "deadline": request.deadline,
        "top_k": request.top_k,
        "probabilities": request.probabilities,
    }).encode()
    lifetime = max(request.deadline - request.enqueued_at, 0) + PIXELS_GRACE_SECONDS
    return EncodedRequest(request.job_id, message, pixels.tobytes(), math.ceil(lifetime * 1000))


_LEADING_JOB_ID = re.compile(rb'^\{"id": "([^"\\]+)"')


def leading_job_id(raw: bytes) -> str | None:
    """The job id a message starts with, read as the reaper's script reads it; None if it starts otherwise."""
    found = _LEADING_JOB_ID.match(raw)
    return found.group(1).decode("utf-8", "replace") if found else None


class MissingPixels(MalformedMessage):
    """A message whose pixels are no longer in Redis: expired (its deadline long past), or answered by another worker
    (a delivery repeated after a reap)."""


def decode_message(raw: bytes) -> QueuedRequest:
    """Parse and validate one queue message; raises MalformedMessage, and nothing else, for any bytes at all."""
    try:
        fields = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:  # deep nesting: RecursionError
        raise MalformedMessage(f"not JSON: {type(exc).__name__}: {str(exc)[:200]}") from None
    if not isinstance(fields, dict):
        raise MalformedMessage("not a JSON object")
    job_id = fields.get("id")
    if not isinstance(job_id, str) or not job_id:
        raise MalformedMessage("no job id")
    try:
        shape = tuple(int(n) for n in fields["shape"])
        if len(shape) != 3 or shape[2] != 3 or min(shape) <= 0:
            raise ValueError(f"shape {list(shape)[:4]}, expected [height, width, 3]")
        enqueued_at, deadline = _finite(fields["enqueued_at"]), _finite(fields["deadline"])
        top_k, probabilities, priority = fields["top_k"], fields["probabilities"], fields["priority"]
        if type(top_k) is not int or top_k < 1:
            raise ValueError(f"top_k {str(top_k)[:20]!r}, expected a whole number of at least 1")
        if not isinstance(probabilities, bool):
            raise ValueError(f"probabilities {str(probabilities)[:20]!r}, expected true or false")
        if priority not in PRIORITIES:
            raise ValueError(f"priority {str(priority)[:20]!r}, expected one of {', '.join(PRIORITIES)}")
        return QueuedRequest(job_id, shape, enqueued_at, deadline, top_k, probabilities, priority)
    except KeyError as exc:
        raise MalformedMessage(f"missing field {exc}", job_id) from None
    except (TypeError, ValueError, OverflowError) as exc:  # "shape": [1e999] overflows int()
        raise MalformedMessage(f"{type(exc).__name__}: {str(exc)[:200]}", job_id) from None


def decode_request(queued: QueuedRequest, pixels: bytes | None) -> InferenceRequest:
    """The request of a decoded message and the pixels read from Keys.pixels(job_id) (None: the key was gone);
    MissingPixels or MalformedMessage when they do not make one."""
    if pixels is None:
        raise MissingPixels("the image's pixels are no longer in Redis", queued.job_id)
    height, width, channels = queued.shape
    if len(pixels) != height * width * channels:
        raise MalformedMessage(f"{len(pixels)} pixel bytes for shape {list(queued.shape)}", queued.job_id)
    return InferenceRequest(queued.job_id, np.frombuffer(pixels, dtype=np.uint8).reshape(queued.shape),
                            queued.enqueued_at, queued.deadline, queued.top_k, queued.probabilities, queued.priority)


def _finite(value) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{value!r} is not a finite time")
    return number


@dataclass(frozen=True)
class Prediction:
    index: int  # the class's output position
    label: str
    probability: float


@dataclass(frozen=True)
class Failure:
    code: str  # machine-readable, e.g. inference_failed, attempts_exhausted
    message: str  # for a person; never an exception's text (it may name files, devices, memory)


@dataclass(frozen=True)
class InferenceResult:
    """A worker's answer for one image: its predictions, or the failure that stopped it.

    On the wire, JSON: {"id", "success", "model", "version", "predictions": [{"index", "label", "probability"}],
    "timing": {"queue_ms", "inference_ms", "batch_size"}} plus "probabilities" (base64 of float32, every class, when
    the request asked for them); a failure is {"id", "success": false, "error": {"code", "message"}}.
    """

    job_id: str
    model: str = ""
    version: str = ""
    predictions: tuple[Prediction, ...] = ()
    timing: dict[str, float] = field(default_factory=dict)  # queue_ms, inference_ms, batch_size
    probabilities: np.ndarray | None = None  # float32, one per class, when asked for
    error: Failure | None = None

    @property
    def success(self) -> bool:
        return self.error is None


def encode_result(result: InferenceResult) -> bytes:
    if result.error is not None:
        return json.dumps({"id": result.job_id, "success": False, "error": asdict(result.error)}).encode()
    fields = {"id": result.job_id, "success": True, "model": result.model, "version": result.version,
              "predictions": [asdict(p) for p in result.predictions], "timing": result.timing}
    if result.probabilities is not None:
        fields["probabilities"] = pybase64.b64encode(np.ascontiguousarray(result.probabilities, "<f4").data).decode()
    return json.dumps(fields).encode()


def encode_failure(job_id: str, code: str, message: str) -> bytes:
    """The encoded answer of a job that failed: what workers and the reaper's error answers write."""
    return encode_result(InferenceResult(job_id, error=Failure(code, message)))


def decode_result(raw: bytes) -> InferenceResult:
    """A worker's answer, as encode_result wrote it (workers are trusted to write only that)."""
    fields = json.loads(raw)
    if not fields["success"]:
        return InferenceResult(fields["id"], error=Failure(**fields["error"]))
    probabilities = fields.get("probabilities")
    return InferenceResult(
        fields["id"], fields["model"], fields["version"], tuple(Prediction(**p) for p in fields["predictions"]),
        fields["timing"],
        np.frombuffer(pybase64.b64decode(probabilities), "<f4") if probabilities is not None else None)


# Largest resize or crop side a model may take. The API sizes every request's crop (input_size² x 3 bytes) from
# the heartbeat, so the bound keeps a forged or garbled one from making it allocate gigabytes; torchvision's
# largest published weights take 600.
MAX_IMAGE_SIDE = 2048


class MalformedModelInfo(ValueError):
    """A model description (a heartbeat's {prefix}:model) that is not one, or one the API could not serve from."""


@dataclass(frozen=True)
class ModelInfo:
    """What a worker publishes about the model it serves; a reader ignores fields it does not know (upgrades).

    Every field is checked when one is made, by the worker that announces it (which then refuses to start)
    and by the API that reads it from Redis (which then counts it as no usable worker).
    """
    name: str  # MODEL_NAME, or the card's
    arch: str
    num_classes: int
    input_size: int  # side of the square crop the model takes
    resize_size: int  # the shorter image side is resized to this before cropping
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    device: str
    batch_size: int
    backend: str = "torch"  # engine that runs the model (BACKEND); heartbeats from before this field mean eager torch
    sources: dict[str, str] = field(default_factory=dict)  # card field -> where its value came from
    version: str = "1"  # MODEL_VERSION
    precision: str = "fp32"  # what the model computes in (PRECISION); heartbeats from before this field mean fp32
    agreement: str | None = None  # a reduced precision's agreement report with float32, the card's as compact JSON

    def __post_init__(self):
        for name in ("name", "version"):
            check_model_id_part(getattr(self, name), f"model {name}", MalformedModelInfo)
        if self.precision not in PRECISIONS:
            raise MalformedModelInfo(f"precision={self.precision!r}: expected one of {', '.join(PRECISIONS)}")
        if self.agreement is not None and not (isinstance(self.agreement, str)
                                               and len(self.agreement) <= MAX_AGREEMENT_CHARS):
            raise MalformedModelInfo(f"agreement: expected a report of at most {MAX_AGREEMENT_CHARS} characters")
        if not all(isinstance(getattr(self, name), str) for name in ("arch", "device", "backend")):
            raise MalformedModelInfo("arch, device and backend must be strings")
        for name in ("num_classes", "batch_size"):
            if not _is_count(getattr(self, name)) or getattr(self, name) < 1:
                raise MalformedModelInfo(f"{name}={getattr(self, name)!r}: expected a whole number of at least 1")
        if not (_is_count(self.input_size) and _is_count(self.resize_size)
                and 1 <= self.input_size <= self.resize_size <= MAX_IMAGE_SIDE):
            raise MalformedModelInfo(f"input_size={self.input_size!r}, resize_size={self.resize_size!r}: expected "
                                     f"whole numbers, 1 <= input_size <= resize_size <= {MAX_IMAGE_SIDE}")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) != 3 or not all(_is_number(v) and (name == "mean" or v > 0) for v in values):
                raise MalformedModelInfo(f"{name}={values!r}: expected three finite numbers"
                                         + (", each above 0" if name == "std" else ""))
        if not isinstance(self.sources, dict) or not all(isinstance(item, str) for pair in self.sources.items()
                                                          for item in pair):
            raise MalformedModelInfo("sources must map card fields to strings")

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> "ModelInfo":
        """The description a heartbeat left in Redis; MalformedModelInfo, and nothing else, for any other bytes."""
        try:
            fields = json.loads(raw)
            fields["mean"], fields["std"] = tuple(fields["mean"]), tuple(fields["std"])
            return cls(**{name: value for name, value in fields.items() if name in _MODEL_INFO_FIELDS})
        except MalformedModelInfo:
            raise
        except (ValueError, TypeError, KeyError, RecursionError) as exc:  # not JSON, not an object, a field missing
            raise MalformedModelInfo(f"not a model description: {type(exc).__name__}: {str(exc)[:200]}") from None


_MODEL_INFO_FIELDS = {f.name for f in dataclasses.fields(ModelInfo)}
# A report is a few numbers and a description of at most 300 characters (model_files/precision.py): the heartbeat
# that carries it stays small, and a forged one cannot make every reader of the fleet hold a large string.
MAX_AGREEMENT_CHARS = 1000


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
