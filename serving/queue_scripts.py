"""The Lua scripts of a message's way through a version's queue, from its admission to its answer, each beside
its one typed call (as rq/scripts.py).

Every script is given every key it touches, all under the version's hash tag (serving.protocol.Keys), so each runs
on one Redis Cluster node, never CROSSSLOT. No script sees an image's pixels: they wait in a key of their own
(Keys.pixels), written by a plain SET in ENQUEUE's transaction; the scripts move only messages of a few hundred
bytes. The order of each script's KEYS and ARGV is written once, in its function.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from serving.protocol import REDIS_NOW, EncodedRequest, Keys, redis_seconds
from serving.redis_client import RedisClient, RedisPipeline

# What the API needs before it takes an upload, in one round trip: the served model (nil: no worker), the
# depth of the version's lanes together and Redis's TIME, read on the node that holds the queue (on a Redis
# Cluster, another node's clock may differ). KEYS: model key, high, normal and low lanes.
_ADMISSION = """
local depth = redis.call('LLEN', KEYS[2]) + redis.call('LLEN', KEYS[3]) + redis.call('LLEN', KEYS[4])
return {redis.call('GET', KEYS[1]), depth, redis.call('TIME')}
"""


@dataclass(frozen=True)
class Admission:
    """The state of a version's queue as a request comes in."""
    model_info: bytes | None  # the heartbeat's model description; None: no live worker announces one
    depth: int  # messages queued in all its lanes together
    redis_now: float  # Redis's time, by the clock of the node that holds the queue


def queue_admission(pipe: RedisPipeline, *, keys: Keys) -> None:
    """Add the admission read to `pipe`, behind whatever else the request's round trip carries (its client's
    charge, whose key may lie on another Cluster node): admission_reply reads its reply.

    A plain EVAL: redis-py's Redis Cluster pipelines have no eval(), but route EVAL by its key.
    """
    pipe.execute_command("EVAL", _ADMISSION, 4, keys.model, *keys.lanes)


def admission_reply(reply: list) -> Admission:
    """queue_admission's reply, among its pipeline's."""
    model_info, depth, redis_time = reply
    return Admission(model_info, int(depth), redis_seconds(redis_time))


ENQUEUE_FULL, ENQUEUE_NO_WORKER = -1, -2

# Queue the messages of one client request (one per image) in its lane, all or none, while the version is
# served and they fit under MAX_QUEUE, which counts the version's lanes together: checked and pushed in one
# step, so concurrent API threads cannot overshoot the limit, and nothing is queued once the last worker of
# the version has closed it (STOPPING deletes the model key before that worker drains the lanes, so the lanes
# it finds empty stay empty). The wake list gets its one element, for a worker blocked on it. A refused request's
# pixels, which its transaction has just written, go at once.
# KEYS: the request's lane, model key, wake list, high, normal and low lanes, each message's pixels.
# ARGV: max queued, message, ...
_ENQUEUE = """
local function refuse(outcome)
  redis.call('DEL', unpack(KEYS, 7))
  return outcome
end
if redis.call('EXISTS', KEYS[2]) == 0 then return refuse(-2) end
local depth = redis.call('LLEN', KEYS[4]) + redis.call('LLEN', KEYS[5]) + redis.call('LLEN', KEYS[6])
if depth + #ARGV - 1 > tonumber(ARGV[1]) then return refuse(-1) end
redis.call('LPUSH', KEYS[1], unpack(ARGV, 2))
redis.call('LPUSH', KEYS[3], 1)
redis.call('LTRIM', KEYS[3], 0, 0)
return depth + #ARGV - 1
"""


def enqueue(client: RedisClient, *, keys: Keys, lane: str, max_queue: int, requests: Sequence[EncodedRequest]) -> int:
    """Write each image's pixels and queue its message in `lane`, in one transaction and one round trip: the new
    depth of all lanes, or ENQUEUE_FULL, or ENQUEUE_NO_WORKER (and then no pixels stay behind).

    A MULTI, not a pipeline: redis-py's Cluster client sends a failed pipeline's commands again one by one,
    which would queue a request twice; it sends a transaction once (tests/integration/test_no_blind_retries.py).
    """
    pipe = client.pipeline(transaction=True)
    for request in requests:
        pipe.set(keys.pixels(request.job_id), request.pixels, px=request.expire_ms)
    # A plain EVAL: Cluster pipelines have no eval(), but route EVAL by its key.
    pipe.execute_command("EVAL", _ENQUEUE, 6 + len(requests), lane, keys.model, keys.wake, *keys.lanes,
                         *(keys.pixels(request.job_id) for request in requests), max_queue,
                         *(request.message for request in requests))
    return int(pipe.execute()[-1])


# A worker's take: up to ARGV[1] messages moved to its processing list, oldest first, from the lanes in the
# order given, the first lane emptied before the next is touched. While messages remain in the lanes or the retry
# list, the wake list keeps its element, so that another idle worker wakes for them. One command, so a timeout
# reaches the worker, which then serves what its list holds (a pipeline of LMOVEs on a Redis Cluster is sent again
# command by command after a timeout, by redis-py itself, taking more messages while the first ones stay in the
# list). KEYS: processing list, wake list, retry list, the lanes in the order to take from.
# ARGV: most messages to take.
_TAKE = """
local taken = {}
for lane = 4, #KEYS do
  while #taken < tonumber(ARGV[1]) do
    local message = redis.call('LMOVE', KEYS[lane], KEYS[1], 'RIGHT', 'LEFT')
    if not message then break end
    taken[#taken + 1] = message
  end
end
local left = 0
for list = 3, #KEYS do left = left + redis.call('LLEN', KEYS[list]) end
if left == 0 then
  redis.call('DEL', KEYS[2])
else
  redis.call('LPUSH', KEYS[2], 1)
  redis.call('LTRIM', KEYS[2], 0, 0)
end
return taken
"""


def take(client: RedisClient, *, keys: Keys, worker_id: str, lanes: Sequence[str], count: int) -> list[bytes]:
    """Move up to `count` queued messages, oldest first, from `lanes` in that order into the worker's processing
    list, without blocking; the messages moved."""
    return client.eval(_TAKE, 3 + len(lanes), keys.processing(worker_id), keys.wake, keys.retry, *lanes, count)


# A worker's answers to the messages it handled, each published only if the message is still in its processing list,
# which it leaves in the same step with its delivery count and its pixels. A message no longer there was taken back
# by a reaper (its worker looked dead: a stall, or a cut network whose packets reach Redis late) and is another
# worker's to answer, so a request gets one answer. KEYS: processing list, attempts hash, then each message's result
# key and pixels key, in the messages' order. ARGV: result TTL in ms, then per message: the message, its job id
# ('' if it names none) and its answer ('' for none: nobody waits).
_PUBLISH = """
local answered = 0
for i = 1, (#ARGV - 1) / 3 do
  local message, job, answer = ARGV[3 * i - 1], ARGV[3 * i], ARGV[3 * i + 1]
  if redis.call('LREM', KEYS[1], 1, message) == 1 and job ~= '' then
    if answer ~= '' then
      redis.call('RPUSH', KEYS[2 * i + 1], answer)
      redis.call('PEXPIRE', KEYS[2 * i + 1], ARGV[1])
      answered = answered + 1
    end
    redis.call('HDEL', KEYS[2], job)
    redis.call('DEL', KEYS[2 * i + 2])
  end
end
return answered
"""


def publish(client: RedisClient, *, keys: Keys, worker_id: str,
            handled: Sequence[tuple[bytes, str | None, bytes | None]], ttl_ms: int) -> int:
    """Answer each (message, job id, answer) the worker still holds and drop the message from its processing list;
    how many answers went out. An answer goes behind any already there (RPUSH; the API pops the left end)."""
    job_keys = [key for _, job_id, _ in handled  # a message without a job id: its slot's tag, which is never touched
                for key in ((keys.result(job_id), keys.pixels(job_id)) if job_id else (keys.tag, keys.tag))]
    arguments = [argument for message, job_id, answer in handled for argument in (message, job_id or "", answer or "")]
    return client.eval(_PUBLISH, 2 + len(job_keys), keys.processing(worker_id), keys.attempts, *job_keys, ttl_ms,
                       *arguments)


# Redis's clock in seconds, as the scripts below read it.
# Atomically empty one worker's processing list back onto the queues and drop the worker from the
# registry. Run by live workers on dead ones (count_attempt=1) and by a worker stopping cleanly
# (count_attempt=0, nothing failed). A dead one's heartbeat is checked again here, by Redis's clock:
# one that came in since the caller found it silent means it is alive, and nothing happens ({-1, 0}).
# A message that was being processed when a worker died, or had been before, goes to the retry list,
# which workers serve one message at a time and before the lanes: an image that kills workers then
# dies alone instead of taking its batch-mates down with it. Failed deliveries are counted in the
# attempts hash under the job id the message starts with (leading_job_id's pattern); the message's
# bytes move untouched. One whose count reaches max_attempts goes to the exhausted list instead, where a
# worker answers it with an error (answer_exhausted). Messages that never failed go back to their own lane (the
# priority that follows the id, as encode_request lays it out), at the consuming end, taken next, oldest first;
# messages without a readable id go to the normal lane, where a worker answers them. Whatever went back wakes an
# idle worker (the wake list), as an enqueue does. Either way the worker leaves the registry and the stopping set.
# KEYS: processing list, workers set, retry list, exhausted list, stopping set, attempts hash, wake list,
# high, normal and low lanes. ARGV: worker id, count_attempt (0/1), max_attempts, worker timeout in s.
_RETURN_UNFINISHED = REDIS_NOW + """
if ARGV[2] == '1' then
  local beat = redis.call('ZSCORE', KEYS[2], ARGV[1])
  if beat and tonumber(beat) >= now - tonumber(ARGV[4]) then return {-1, 0} end
end
local lanes = {high = KEYS[8], normal = KEYS[9], low = KEYS[10]}
local returned, exhausted = 0, 0
while true do
  local raw = redis.call('LPOP', KEYS[1])
  if not raw then break end
  local id = string.match(raw, '^{"id": "([^"\\\\]+)"')
  local lane = lanes[string.match(raw, '^{"id": "[^"\\\\]+", "priority": "(%l+)"') or 'normal'] or KEYS[9]
  if not id then
    redis.call('RPUSH', KEYS[9], raw)
    returned = returned + 1
  elseif ARGV[2] == '1' then
    if redis.call('HINCRBY', KEYS[6], id, 1) >= tonumber(ARGV[3]) then
      redis.call('RPUSH', KEYS[4], raw)
      exhausted = exhausted + 1
    else
      redis.call('RPUSH', KEYS[3], raw)
      returned = returned + 1
    end
  else
    redis.call('RPUSH', redis.call('HEXISTS', KEYS[6], id) == 1 and KEYS[3] or lane, raw)
    returned = returned + 1
  end
end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('SREM', KEYS[5], ARGV[1])
if returned > 0 then
  redis.call('LPUSH', KEYS[7], 1)
  redis.call('LTRIM', KEYS[7], 0, 0)
end
return {returned, exhausted}
"""


def return_unfinished(client: RedisClient, *, keys: Keys, worker_id: str, count_as_failure: bool,
                      max_attempts: int, worker_timeout: float) -> tuple[int, int] | None:
    """Empty a worker's processing list back onto the queues: (requeued, exhausted); None when the worker, taken
    for dead (count_as_failure), heartbeat within worker_timeout by the time the script ran: nothing was touched."""
    returned, exhausted = client.eval(
        _RETURN_UNFINISHED, 10, keys.processing(worker_id), keys.workers, keys.retry, keys.exhausted, keys.stopping,
        keys.attempts, keys.wake, *keys.lanes, worker_id, "1" if count_as_failure else "0", max_attempts,
        worker_timeout)
    return None if returned < 0 else (int(returned), int(exhausted))


# Answer one exhausted message, once: of two workers answering the same one, only the first finds it in the list.
# Its delivery count and its pixels go with it. KEYS: exhausted list, the job's result key, attempts hash, the job's
# pixels. ARGV: message, answer, TTL in ms, job id.
_ANSWER_EXHAUSTED = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('HDEL', KEYS[3], ARGV[4])
redis.call('DEL', KEYS[4])
return 1
"""


def answer_exhausted(client: RedisClient, *, keys: Keys, message: bytes, job_id: str, answer: bytes,
                     ttl_ms: int) -> bool:
    """Answer one message of the exhausted list with `answer`; False if another worker already had."""
    return bool(client.eval(_ANSWER_EXHAUSTED, 4, keys.exhausted, keys.result(job_id), keys.attempts,
                            keys.pixels(job_id), message, answer, ttl_ms, job_id))
