"""The Lua scripts of the fleet: workers' heartbeats, stops and silences, and the registry of model versions, each
beside its one typed call (as serving/queue_scripts.py holds those of a message's way through a queue).

Every heartbeat time and every cutoff compared with one is Redis's own clock (REDIS_NOW, TIME inside the script),
never a host's: hosts whose clocks disagree can neither reap a live worker nor keep a dead one. A version's scripts
touch only keys under its hash tag (Keys); the registry's only keys under the prefix's (FleetKeys), maybe on another
Redis Cluster node, so no script spans the two. The order of each script's KEYS and ARGV is written once, in its
function.
"""

from __future__ import annotations

from dataclasses import dataclass

from serving.protocol import REDIS_NOW, FleetKeys, Keys, split_model_id
from serving.redis_client import RedisClient, RedisPipeline

# A worker's heartbeat: its score at Redis's time and, unless it is stopping, the model description and the
# model's fingerprint with their TTL (a stopping worker serves only what is already queued; the last one of a
# version has deleted both, and its heartbeats must not bring them back: _STOPPING). A worker whose fingerprint
# differs from the one the version's live workers hold is refused before it counts as one of them: checked and
# set in one step, so of two different models starting at once one joins and the other is refused; a dead
# member's fingerprint expires with its heartbeat. KEYS: model key, workers set, stopping set, fingerprint key.
# ARGV: worker id, model description (JSON), TTL in ms, fingerprint. Returns {Redis's time as a string (a Lua
# number would be cut to an integer); 1 if it announced the model, 0 if it is stopping, -1 if refused; the
# fingerprint the version's live workers hold, when refused}.
_HEARTBEAT = REDIS_NOW + """
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


@dataclass(frozen=True)
class HeartbeatOutcome:
    """What one heartbeat did."""
    redis_now: float  # Redis's time as it ran, for the worker's RedisClock
    announced: bool  # the model's description and fingerprint were renewed (not when stopping or refused)
    refused_by: str | None  # the fingerprint of the model the version's live workers serve, when it is not ours


def heartbeat(client: RedisClient, *, keys: Keys, worker_id: str, model_info: bytes, fingerprint: str,
              ttl_ms: int) -> HeartbeatOutcome:
    """Renew the worker's registry score and, unless it is stopping or its model differs from the live workers',
    the version's model description and fingerprint, for ttl_ms."""
    redis_now, announced, *held = client.eval(
        _HEARTBEAT, 4, keys.model, keys.workers, keys.stopping, keys.fingerprint, worker_id, model_info, ttl_ms,
        fingerprint)
    return HeartbeatOutcome(float(redis_now), announced == 1, held[0].decode() if held else None)


# Workers whose last heartbeat is at most ARGV[1] seconds old by Redis's clock. KEYS: workers set.
_LIVE_WORKERS = REDIS_NOW + "return redis.call('ZCOUNT', KEYS[1], now - tonumber(ARGV[1]), '+inf')"


def queue_live_worker_count(pipe: RedisPipeline, *, keys: Keys, worker_timeout: float) -> None:
    """Add to `pipe` the count of the version's workers heard from within worker_timeout: an int among the replies
    of its execute(). A pipeline, as its callers read several versions, or the version's other keys, in one round
    trip. A plain EVAL: redis-py's Redis Cluster pipelines have no eval(), but route EVAL by its key."""
    pipe.execute_command("EVAL", _LIVE_WORKERS, 1, keys.workers, worker_timeout)


def live_worker_counts(client: RedisClient, *, prefix: str, model_ids: list[str],
                       worker_timeout: float) -> dict[str, int]:
    """Each model version's count of workers heard from within worker_timeout, all in one round trip."""
    pipe = client.pipeline(transaction=False)
    for model_id in model_ids:
        queue_live_worker_count(pipe, keys=Keys(prefix, model_id), worker_timeout=worker_timeout)
    return dict(zip(model_ids, pipe.execute()))


# Workers whose last heartbeat is older than ARGV[1] seconds by Redis's clock. KEYS: workers set.
_SILENT_WORKERS = REDIS_NOW + "return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - tonumber(ARGV[1])))"


def silent_workers(client: RedisClient, *, keys: Keys, worker_timeout: float) -> list[str]:
    """The version's workers not heard from for longer than worker_timeout: the reaper's candidates."""
    return [worker.decode() for worker in client.eval(_SILENT_WORKERS, 1, keys.workers, worker_timeout)]


# Mark a worker as stopping and count the live workers of its version that are not: the workers that
# will go on serving its queue. With none, the version closes in the same step: its model description
# goes, so the API answers no_worker at once (ADMISSION) and queues nothing more (ENQUEUE), and what the
# last worker then drains is all there is. A worker of the version that starts later announces it again.
# Its fingerprint goes too, so that another model may take the version at once.
# KEYS: workers set, stopping set, model key, fingerprint key. ARGV: worker id, worker timeout in s.
_STOPPING = REDIS_NOW + """
redis.call('SADD', KEYS[2], ARGV[1])
local staying = 0
for _, worker in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[2]), '+inf')) do
  if redis.call('SISMEMBER', KEYS[2], worker) == 0 then staying = staying + 1 end
end
if staying == 0 then redis.call('DEL', KEYS[3], KEYS[4]) end
return staying
"""


def mark_stopping(client: RedisClient, *, keys: Keys, worker_id: str, worker_timeout: float) -> int:
    """Mark a worker as stopping; how many live workers of its version stay (with none, the version is closed)."""
    return int(client.eval(_STOPPING, 4, keys.workers, keys.stopping, keys.model, keys.fingerprint, worker_id,
                           worker_timeout))


# A worker's entry in the fleet's registry of model versions, at the registry's own clock (on a Redis
# Cluster it may sit on another node than the version's queue). The default name (FleetKeys.default) goes to
# this worker's name when no other name has a live version: the first name served alone keeps it while any of
# its versions is live, and a newcomer never takes it from a live one. KEYS: models set, default key.
# ARGV: model id, its name, worker timeout in s.
_REGISTER_MODEL = REDIS_NOW + """
redis.call('ZADD', KEYS[1], now, ARGV[1])
for _, model in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[3]), '+inf')) do
  if string.match(model, '^(.*)@') ~= ARGV[2] then return 0 end
end
redis.call('SET', KEYS[2], ARGV[2])
return 1
"""


def register_model(client: RedisClient, *, fleet: FleetKeys, model_id: str, worker_timeout: float) -> None:
    """Count a model version live at Redis's time now, and give its name the default if no other name is live."""
    client.eval(_REGISTER_MODEL, 2, fleet.models, fleet.default, model_id, split_model_id(model_id)[0],
                worker_timeout)


# A version's last worker has left cleanly: its registry entry goes just past WORKER_TIMEOUT, not live from
# now on, its idle time for _FORGET_MODEL counted from now. KEYS: models set. ARGV: model id, worker timeout in s.
_RETIRE_MODEL = REDIS_NOW + "redis.call('ZADD', KEYS[1], 'XX', now - tonumber(ARGV[2]) - 1, ARGV[1])"


def retire_model(client: RedisClient, *, fleet: FleetKeys, model_id: str, worker_timeout: float) -> None:
    """Have the registry count a model version as not live from now on: its last worker has left cleanly.

    Its entry stays, so that the version is still known (a request pinned to it gets no_worker, not
    unknown_model) until it is forgotten (forget_model). A worker of the version whose heartbeat lands just
    before this is counted live again at its next one, a heartbeat period later.
    """
    client.eval(_RETIRE_MODEL, 1, fleet.models, model_id, worker_timeout)


# Forget one model version: its registry entry and its weight go, and with its name's last version the name's
# routes and, if it has it, the default. Refused (0) while the version was heard from within ARGV[4] seconds
# (its workers are live, or were lately), and with ARGV[5] = 1 while a route gives it traffic: checked in the
# same step, so a heartbeat that lands first keeps it. KEYS: models set, the name's routes hash, default key.
# ARGV: model id, version, name, idle seconds, 1 to keep a routed version. Returns 1 if forgotten, else 0.
_FORGET_MODEL = REDIS_NOW + """
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


def forget_model(client: RedisClient, *, fleet: FleetKeys, model_id: str, idle_seconds: float,
                 keep_routed: bool) -> bool:
    """Remove a model version from the registry and, if it went, its queue's keys; whether it went.

    What its queue still held goes with it: with no live worker for longer than REQUEST_TIMEOUT, every client of
    those messages has had its 504. Its workers' processing lists go too (the workers set names them).
    """
    name, version = split_model_id(model_id)
    if not client.eval(_FORGET_MODEL, 3, fleet.models, fleet.routes(name), fleet.default, model_id, version, name,
                       idle_seconds, 1 if keep_routed else 0):
        return False
    keys = Keys(fleet.prefix, model_id)
    workers = [worker.decode() for worker in client.zrange(keys.workers, 0, -1)]
    client.delete(*keys.lanes, keys.wake, keys.model, keys.fingerprint, keys.retry, keys.exhausted, keys.attempts,
                  keys.workers, keys.stopping, keys.worker_stats, *(keys.processing(worker) for worker in workers))
    return True


# Every model version the registry knows, with the age of its last heartbeat by Redis's clock:
# {id, age in seconds (as a string), id, age, ...}. KEYS: models set.
_MODEL_AGES = REDIS_NOW + """
local entries = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local ages = {}
for i = 1, #entries, 2 do
  ages[#ages + 1] = entries[i]
  ages[#ages + 1] = tostring(now - tonumber(entries[i + 1]))
end
return ages
"""


def model_ages(client: RedisClient, *, fleet: FleetKeys) -> dict[str, float]:
    """Every model version ever announced under this prefix -> seconds since its last heartbeat."""
    raw = client.eval(_MODEL_AGES, 1, fleet.models)
    return {raw[i].decode(): float(raw[i + 1]) for i in range(0, len(raw), 2)}
