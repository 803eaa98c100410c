"""The Redis protocol between API and worker: key names and message formats.

Nothing outside this module spells a key or a message field.

Flow of one request (`{prefix}` here is short for a model version's hash tag, `{KEY_PREFIX:name@version}`):
  API:    LPUSH {prefix}:queue[:high|:low] <request JSON> ...   (ENQUEUE, one per image, in the lane of the
          client's API key: while the version is served, unless MAX_QUEUE would be passed; and one element
          in {prefix}:wake)
  worker: LMOVE {prefix}:retry -> {prefix}:processing:<worker id>    (one retried message alone, if any)
          else TAKE: LMOVEs from the lanes, high first -> {prefix}:processing:<worker id>   (atomic take
               of a batch, one script; with nothing queued, BLPOP {prefix}:wake first, then TAKE again)
  worker: LPUSH {prefix}:result:<job id> <result JSON>, EXPIRE it,
          LREM the answered messages from its processing list,
          HDEL their delivery counts                              (one transaction)
  API:    BLPOP {prefix}:result:<job id> until the request's deadline
Every heartbeat (HEARTBEAT, from a thread of its own, so it goes on while a
batch computes however long that takes), a worker refreshes {prefix}:model, the
served model's description, with a TTL of WORKER_TIMEOUT (the API reads its
preprocessing from it; its absence means no worker is up), and its own score in
the sorted set {prefix}:workers (worker id -> time of its last heartbeat). A
sorted set makes "which workers are dead" one range query, where TTL keys per
worker would need a scan. Heartbeat times and the cutoffs they are compared with
are Redis's own clock (TIME inside the scripts), never a host's: hosts whose
clocks disagree can neither reap a live worker nor keep a dead one. When a
worker's heartbeat is older than WORKER_TIMEOUT, any live worker runs
RETURN_UNFINISHED on it, which checks the score again inside the script: its
processing list goes back to the queues, each message's count of failed
deliveries raised by one in {prefix}:attempts (a hash by job id, beside the
message: the script moves the message's bytes untouched), and a message whose
count has reached MAX_ATTEMPTS is answered with an error instead (at-least-once
delivery, bounded).

Images travel as base64 of raw uint8 HWC pixels inside JSON: no pickle ever
crosses Redis, and a message is a quarter of the float32 the seed sent.
"""

from __future__ import annotations

import binascii
import dataclasses
import json
import math
import re
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import pybase64

from serving.config import check_model_id_part

ATTEMPTS_EXHAUSTED = "attempts_exhausted"
PRIORITIES = ("high", "normal", "low")  # an API key's lane; workers take from them in this order under load


def model_id(name: str, version: str) -> str:
    """One model version's id, `name@version`: its queue's name and its entry in the fleet's registry."""
    return f"{name}@{version}"


def split_model_id(model: str) -> tuple[str, str]:
    name, _, version = model.rpartition("@")
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
    def limits(self) -> str:
        """Hash: the token bucket (tokens, at) and the day's count of images (day, used)."""
        return "{" + f"{self.prefix}:client:{self.name}" + "}:limits"


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


def encode_request(request: InferenceRequest) -> bytes:
    pixels = np.ascontiguousarray(request.pixels, dtype=np.uint8)
    header = json.dumps({
        "id": request.job_id,
        "shape": list(pixels.shape),
        "dtype": "uint8",
        "enqueued_at": request.enqueued_at,
        "deadline": request.deadline,
        "top_k": request.top_k,
        "probabilities": request.probabilities,
    }).encode()
    # The base64 alphabet needs no JSON escaping, so the 200 KB string is appended as it is rather
    # than scanned by json.dumps (0.4 ms of the API's CPU per request); decode_request counts on it.
    return header[:-1] + _IMAGE_FIELD + pybase64.b64encode(pixels.data) + b'"}'


_IMAGE_FIELD = b', "image": "'
# The job id as encode_request writes it, first: what the reaper's Lua script reads (string.match with the
# same pattern, in RETURN_UNFINISHED) to count a message's failed deliveries without decoding it.
_LEADING_JOB_ID = re.compile(rb'^\{"id": "([^"\\]+)"')


def leading_job_id(raw: bytes) -> str | None:
    """The job id a message starts with, read as the reaper's script reads it; None if it starts otherwise."""
    found = _LEADING_JOB_ID.match(raw)
    return found.group(1).decode("utf-8", "replace") if found else None


def _fields_and_image(raw: bytes) -> tuple[object, bytes | None]:
    """The message's JSON fields and its base64 image, which encode_request writes last.

    The image is cut off rather than scanned by json.loads (0.3 ms of the worker's CPU per image).
    A message laid out otherwise has no image to the decoder (the fields still name the job, for its
    error answer): nothing else writes the queue, and nothing rewrites a message on the way.
    """
    head, separator, image = raw.rpartition(_IMAGE_FIELD)
    if separator and image.endswith(b'"}'):
        return json.loads(head + b"}"), image[:-2]
    return json.loads(raw), None


def decode_request(raw: bytes) -> InferenceRequest:
    """Parse and validate one queue message; raises MalformedMessage, and nothing else, for any bytes at all."""
    try:
        fields, image = _fields_and_image(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:  # deep nesting: RecursionError
        raise MalformedMessage(f"not JSON: {type(exc).__name__}: {str(exc)[:200]}") from None
    if not isinstance(fields, dict):
        raise MalformedMessage("not a JSON object")
    job_id = fields.get("id")
    if not isinstance(job_id, str) or not job_id:
        raise MalformedMessage("no job id")
    try:
        shape = tuple(int(n) for n in fields["shape"])
        if fields["dtype"] != "uint8":
            raise ValueError(f"dtype {str(fields['dtype'])[:50]!r}, expected 'uint8'")
        if len(shape) != 3 or shape[2] != 3 or min(shape) <= 0:
            raise ValueError(f"shape {list(shape)[:4]}, expected [height, width, 3]")
        if image is None:
            raise KeyError("image")
        data = pybase64.b64decode(image, validate=True)
        if len(data) != shape[0] * shape[1] * shape[2]:
            raise ValueError(f"{len(data)} pixel bytes for shape {list(shape)}")
        pixels = np.frombuffer(data, dtype=np.uint8).reshape(shape)
        enqueued_at, deadline = _finite(fields["enqueued_at"]), _finite(fields["deadline"])
        top_k, probabilities = fields["top_k"], fields["probabilities"]
        if type(top_k) is not int or top_k < 1:
            raise ValueError(f"top_k {str(top_k)[:20]!r}, expected a whole number of at least 1")
        if not isinstance(probabilities, bool):
            raise ValueError(f"probabilities {str(probabilities)[:20]!r}, expected true or false")
        return InferenceRequest(job_id, pixels, enqueued_at, deadline, top_k, probabilities)
    except KeyError as exc:
        raise MalformedMessage(f"missing field {exc}", job_id) from None
    except (TypeError, ValueError, OverflowError, binascii.Error) as exc:  # "shape": [1e999] overflows int()
        raise MalformedMessage(f"{type(exc).__name__}: {str(exc)[:200]}", job_id) from None


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


# Queue the messages of one client request (one per image) in its lane, all or none, while the version is
# served and they fit under MAX_QUEUE, which counts the version's lanes together: checked and pushed in one
# step, so concurrent API threads cannot overshoot the limit, and nothing is queued once the last worker of
# the version has closed it (STOPPING deletes the model key before that worker drains the lanes, so the lanes
# it finds empty stay empty). The wake list gets its one element, for a worker blocked on it.
# KEYS: the request's lane, model key, wake list, high, normal and low lanes. ARGV: max queued, message, ...
# Returns the new depth of all lanes, or ENQUEUE_FULL, or ENQUEUE_NO_WORKER.
ENQUEUE_FULL, ENQUEUE_NO_WORKER = -1, -2
ENQUEUE = """
if redis.call('EXISTS', KEYS[2]) == 0 then return -2 end
local depth = redis.call('LLEN', KEYS[4]) + redis.call('LLEN', KEYS[5]) + redis.call('LLEN', KEYS[6])
if depth + #ARGV - 1 > tonumber(ARGV[1]) then return -1 end
redis.call('LPUSH', KEYS[1], unpack(ARGV, 2))
redis.call('LPUSH', KEYS[3], 1)
redis.call('LTRIM', KEYS[3], 0, 0)
return depth + #ARGV - 1
"""

# What the API needs before it takes an upload, in one round trip: the served model (nil: no worker), the
# depth of the version's lanes together and Redis's TIME, read on the node that holds the queue (on a Redis
# Cluster, another node's clock may differ). KEYS: model key, high, normal and low lanes.
ADMISSION = """
local depth = redis.call('LLEN', KEYS[2]) + redis.call('LLEN', KEYS[3]) + redis.call('LLEN', KEYS[4])
return {redis.call('GET', KEYS[1]), depth, redis.call('TIME')}
"""

# A worker's take: up to ARGV[1] messages moved to its processing list, oldest first, from the lanes in the
# order given, the first lane emptied before the next is touched. While messages remain, the wake list keeps
# its element, so that another idle worker wakes for them. One command, so a timeout reaches the worker,
# which then serves what its list holds (a pipeline of LMOVEs on a Redis Cluster is sent again command by
# command after a timeout, by redis-py itself, taking more messages while the first ones stay in the list).
# KEYS: processing list, wake list, the lanes in the order to take from. ARGV: most messages to take.
TAKE = """
local taken = {}
for lane = 3, #KEYS do
  while #taken < tonumber(ARGV[1]) do
    local message = redis.call('LMOVE', KEYS[lane], KEYS[1], 'RIGHT', 'LEFT')
    if not message then break end
    taken[#taken + 1] = message
  end
end
local left = 0
for lane = 3, #KEYS do left = left + redis.call('LLEN', KEYS[lane]) end
if left == 0 then
  redis.call('DEL', KEYS[2])
else
  redis.call('LPUSH', KEYS[2], 1)
  redis.call('LTRIM', KEYS[2], 0, 0)
end
return taken
"""


# Redis's clock in seconds, as the scripts below read it.
_NOW = "local clock = redis.call('TIME'); local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000\n"

# A worker's heartbeat: its score at Redis's time and, unless it is stopping, the model description and the
# model's fingerprint with their TTL (a stopping worker serves only what is already queued; the last one of a
# version has deleted both, and its heartbeats must not bring them back: STOPPING). A worker whose fingerprint
# differs from the one the version's live workers hold is refused before it counts as one of them: checked and
# set in one step, so of two different models starting at once one joins and the other is refused; a dead
# member's fingerprint expires with its heartbeat. KEYS: model key, workers set, stopping set, fingerprint key.
# ARGV: worker id, model description (JSON), TTL in ms, fingerprint. Returns {Redis's time as a string (a Lua
# number would be cut to an integer), for the worker's RedisClock; 1 if it announced the model, 0 if it is
# stopping, -1 if refused; the fingerprint the version's live workers hold, when refused}.
HEARTBEAT = _NOW + """
if redis.call('SISMEMBER', KEYS[3], ARGV[1]) == 1 then
  redis.call('ZADD', KEYS[2], now, ARGV[1])
  return {tostring(now), 0}
end
local held = redis.call('GET', KEYS[4])
if held and held ~= ARGV[4] then return {tostring(now), -1, held} end
redis.call('ZADD', KEYS[2], now, ARGV[1])
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('SET', KEYS[4], ARGV[4], 'PX', ARGV[3])
return {tostring(now), 1}
"""

# Workers whose last heartbeat is at most ARGV[1] seconds old by Redis's clock. KEYS: workers set.
LIVE_WORKERS = _NOW + "return redis.call('ZCOUNT', KEYS[1], now - tonumber(ARGV[1]), '+inf')"


def count_live_workers(client, keys: Keys, worker_timeout: float):
    """Queue or run LIVE_WORKERS on a client or pipeline (a pipeline returns itself, the count comes at execute).

    As a plain EVAL command: redis-py's Redis Cluster pipelines have no eval(), but route EVAL by its key.
    """
    return client.execute_command("EVAL", LIVE_WORKERS, 1, keys.workers, worker_timeout)


# A worker's entry in the fleet's registry of model versions, at the registry's own clock (on a Redis
# Cluster it may sit on another node than the version's queue). The default name (FleetKeys.default) goes to
# this worker's name when no other name has a live version: the first name served alone keeps it while any of
# its versions is live, and a newcomer never takes it from a live one. KEYS: models set, default key.
# ARGV: model id, its name, worker timeout in s.
REGISTER_MODEL = _NOW + """
redis.call('ZADD', KEYS[1], now, ARGV[1])
for _, model in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[3]), '+inf')) do
  if string.match(model, '^(.*)@') ~= ARGV[2] then return 0 end
end
redis.call('SET', KEYS[2], ARGV[2])
return 1
"""


def register_model(client, fleet: FleetKeys, model: str, worker_timeout: float) -> None:
    """Count a model version live at Redis's time now, and give its name the default if no other name is live."""
    client.eval(REGISTER_MODEL, 2, fleet.models, fleet.default, model, split_model_id(model)[0], worker_timeout)


# A version's last worker has left cleanly: its registry entry goes just past WORKER_TIMEOUT, not live from
# now on, its idle time for FORGET_MODEL counted from now. KEYS: models set. ARGV: model id, worker timeout in s.
RETIRE_MODEL = _NOW + "redis.call('ZADD', KEYS[1], 'XX', now - tonumber(ARGV[2]) - 1, ARGV[1])"


def retire_model(client, fleet: FleetKeys, model: str, worker_timeout: float) -> None:
    """Have the registry count a model version as not live from now on: its last worker has left cleanly.

    Its entry stays, so that the version is still known (a request pinned to it gets no_worker, not
    unknown_model) until it is forgotten (forget_model). A worker of the version whose heartbeat lands just
    before this is counted live again at its next one, a heartbeat period later.
    """
    client.eval(RETIRE_MODEL, 1, fleet.models, model, worker_timeout)


# Forget one model version: its registry entry and its weight go, and with its name's last version the name's
# routes and, if it has it, the default. Refused (0) while the version was heard from within ARGV[4] seconds
# (its workers are live, or were lately), and with ARGV[5] = 1 while a route gives it traffic: checked in the
# same step, so a heartbeat that lands first keeps it. KEYS: models set, the name's routes hash, default key.
# ARGV: model id, version, name, idle seconds, 1 to keep a routed version. Returns 1 if forgotten, else 0.
FORGET_MODEL = _NOW + """
local beat = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not beat or now - tonumber(beat) < tonumber(ARGV[4]) then return 0 end
if ARGV[5] == '1' and tonumber(redis.call('HGET', KEYS[2], ARGV[2]) or '0') > 0 then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[2])
for _, model in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if string.match(model, '^(.*)@') == ARGV[3] then return 1 end
end
redis.call('DEL', KEYS[2])
if redis.call('GET', KEYS[3]) == ARGV[3] then redis.call('DEL', KEYS[3]) end
return 1
"""


def forget_model(client, fleet: FleetKeys, model: str, idle_seconds: float, keep_routed: bool) -> bool:
    """Remove a model version from the registry (FORGET_MODEL) and, if it went, its queue's keys; whether it went.

    What its queue still held goes with it: with no live worker for longer than REQUEST_TIMEOUT, every client of
    those messages has had its 504. Its workers' processing lists go too (the workers set names them).
    """
    name, version = split_model_id(model)
    if not client.eval(FORGET_MODEL, 3, fleet.models, fleet.routes(name), fleet.default, model, version, name,
                       idle_seconds, 1 if keep_routed else 0):
        return False
    keys = Keys(fleet.prefix, model)
    workers = [worker.decode() for worker in client.zrange(keys.workers, 0, -1)]
    client.delete(*keys.lanes, keys.wake, keys.model, keys.fingerprint, keys.retry, keys.exhausted, keys.attempts,
                  keys.workers, keys.stopping, keys.worker_stats, *(keys.processing(worker) for worker in workers))
    return True


# Every model version the registry knows, with the age of its last heartbeat by Redis's clock:
# {id, age in seconds (as a string), id, age, ...}. KEYS: models set.
MODEL_AGES = _NOW + """
local entries = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local ages = {}
for i = 1, #entries, 2 do
  ages[#ages + 1] = entries[i]
  ages[#ages + 1] = tostring(now - tonumber(entries[i + 1]))
end
return ages
"""


def model_ages(client, fleet: FleetKeys) -> dict[str, float]:
    """Every model version ever announced under this prefix -> seconds since its last heartbeat."""
    raw = client.eval(MODEL_AGES, 1, fleet.models)
    return {raw[i].decode(): float(raw[i + 1]) for i in range(0, len(raw), 2)}


# Mark a worker as stopping and count the live workers of its version that are not: the workers that
# will go on serving its queue. With none, the version closes in the same step: its model description
# goes, so the API answers no_worker at once (ADMISSION) and queues nothing more (ENQUEUE), and what the
# last worker then drains is all there is. A worker of the version that starts later announces it again.
# Its fingerprint goes too, so that another model may take the version at once.
# KEYS: workers set, stopping set, model key, fingerprint key. ARGV: worker id, worker timeout in s.
STOPPING = _NOW + """
redis.call('SADD', KEYS[2], ARGV[1])
local staying = 0
for _, worker in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[2]), '+inf')) do
  if redis.call('SISMEMBER', KEYS[2], worker) == 0 then staying = staying + 1 end
end
if staying == 0 then redis.call('DEL', KEYS[3], KEYS[4]) end
return staying
"""


# Workers whose last heartbeat is older than ARGV[1] seconds by Redis's clock. KEYS: workers set.
SILENT_WORKERS = _NOW + "return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - tonumber(ARGV[1])))"

# Atomically empty one worker's processing list back onto the queues and drop the worker from the
# registry. Run by live workers on dead ones (count_attempt=1) and by a worker stopping cleanly
# (count_attempt=0, nothing failed). A dead one's heartbeat is checked again here, by Redis's clock:
# one that came in since the caller found it silent means it is alive, and nothing happens ({-1, 0}).
# A message that was being processed when a worker died, or had been before, goes to the retry list,
# which workers serve one message at a time and before the queue: an image that kills workers then
# dies alone instead of taking its batch-mates down with it. Failed deliveries are counted in the
# attempts hash under the job id the message starts with (leading_job_id's pattern); the message's
# bytes move untouched. One whose count reaches max_attempts goes to the exhausted list instead, where a
# worker answers it with an error (ANSWER_EXHAUSTED). Messages that never failed go back to the queue's
# consuming end, taken next, oldest first; so do messages without a readable id, which a worker answers.
# Either way the worker leaves the registry and the stopping set.
# KEYS: processing list, queue, workers set, retry list, exhausted list, stopping set, attempts hash.
# ARGV: worker id, count_attempt (0/1), max_attempts, worker timeout in s.
RETURN_UNFINISHED = _NOW + """
if ARGV[2] == '1' then
  local beat = redis.call('ZSCORE', KEYS[3], ARGV[1])
  if beat and tonumber(beat) >= now - tonumber(ARGV[4]) then return {-1, 0} end
end
local returned, exhausted = 0, 0
while true do
  local raw = redis.call('LPOP', KEYS[1])
  if not raw then break end
  local id = string.match(raw, '^{"id": "([^"\\\\]+)"')
  if not id then
    redis.call('RPUSH', KEYS[2], raw)
    returned = returned + 1
  elseif ARGV[2] == '1' then
    if redis.call('HINCRBY', KEYS[7], id, 1) >= tonumber(ARGV[3]) then
      redis.call('RPUSH', KEYS[5], raw)
      exhausted = exhausted + 1
    else
      redis.call('RPUSH', KEYS[4], raw)
      returned = returned + 1
    end
  else
    redis.call('RPUSH', redis.call('HEXISTS', KEYS[7], id) == 1 and KEYS[4] or KEYS[2], raw)
    returned = returned + 1
  end
end
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('SREM', KEYS[6], ARGV[1])
return {returned, exhausted}
"""

# Answer one exhausted message, once: of two workers answering the same one, only the first finds
# it in the list. KEYS: exhausted list, the job's result key, attempts hash.
# ARGV: message, answer, TTL in ms, job id.
ANSWER_EXHAUSTED = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
redis.call('LPUSH', KEYS[2], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('HDEL', KEYS[3], ARGV[4])
return 1
"""


# Take `cost` tokens from an API key's bucket and add `cost` images to its day, by Redis's clock; all or
# nothing. The bucket holds at most `burst` tokens and gains `rate` a second; the day is Redis's UTC day.
# KEYS: limits hash. ARGV: cost, rate (0: no bucket), burst, daily images (0: no quota).
# Returns {verdict, tokens left, seconds, images left today, seconds until the day ends} (fractions as strings):
# verdict 1 taken (seconds: until the bucket is full again), 0 rate limited (seconds: until the tokens are
# there), -1 over the day's quota (seconds: until the day ends).
TAKE_TOKENS = _NOW + """
local cost, rate, burst, daily = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at', 'day', 'used')
local tokens = burst
if state[1] then tokens = math.min(burst, tonumber(state[1]) + (now - tonumber(state[2])) * rate) end
local day = math.floor(now / 86400)
local used = 0
if state[3] and tonumber(state[3]) == day then used = tonumber(state[4]) end
local day_left = (day + 1) * 86400 - now
local function answer(verdict, seconds)
  return {verdict, tostring(tokens), tostring(seconds), daily - used, tostring(day_left)}
end
if daily > 0 and used + cost > daily then return answer(-1, day_left) end
if rate > 0 and tokens < cost then return answer(0, (cost - tokens) / rate) end
if rate > 0 then tokens = tokens - cost end
used = used + cost
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now), 'day', day, 'used', used)
-- Kept while it says more than its absence would: a full bucket and a fresh day are what no hash means.
local keep = 0
if rate > 0 then keep = (burst - tokens) / rate end
if daily > 0 then keep = math.max(keep, day_left) end
redis.call('PEXPIRE', KEYS[1], math.ceil(keep * 1000) + 1000)
return answer(1, rate > 0 and (burst - tokens) / rate or 0)
"""


@dataclass(frozen=True)
class Allowance:
    """TAKE_TOKENS's verdict on one request."""
    verdict: int  # TAKEN, RATE_LIMITED or OVER_QUOTA
    tokens: float  # left in the bucket after the verdict
    seconds: float  # taken: until the bucket is full again; refused: until a retry can pass
    left_today: int  # images the key may still send today (with a daily quota)
    day_seconds: float  # until the day's quota starts again


TAKEN, RATE_LIMITED, OVER_QUOTA = 1, 0, -1


def take_tokens(client, keys: ClientKeys, cost: int, rate: float, burst: int, daily: int):
    """Queue or run TAKE_TOKENS on a client or pipeline (plain EVAL: Cluster pipelines route it by its key);
    decode_allowance reads its reply."""
    return client.execute_command("EVAL", TAKE_TOKENS, 1, keys.limits, cost, repr(float(rate)), burst, daily)


def decode_allowance(reply) -> Allowance:
    verdict, tokens, seconds, left_today, day_seconds = reply
    return Allowance(int(verdict), float(tokens), float(seconds), int(left_today), float(day_seconds))


# Give back what TAKE_TOKENS took for a request that was then refused for another reason (no worker, a full
# queue): a 503 costs a client nothing. KEYS: limits hash. ARGV: cost, rate (0: no bucket), burst.
REFUND_TOKENS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local cost, rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if rate > 0 then
  local tokens = math.min(burst, tonumber(redis.call('HGET', KEYS[1], 'tokens')) + cost)
  redis.call('HSET', KEYS[1], 'tokens', tostring(tokens))
end
redis.call('HSET', KEYS[1], 'used', math.max(0, tonumber(redis.call('HGET', KEYS[1], 'used')) - cost))
return 1
"""


def refund_tokens(client, keys: ClientKeys, cost: int, rate: float, burst: int) -> None:
    client.eval(REFUND_TOKENS, 1, keys.limits, cost, repr(float(rate)), burst)


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

    def __post_init__(self):
        for name in ("name", "version"):
            check_model_id_part(getattr(self, name), f"model {name}", MalformedModelInfo)
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


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
