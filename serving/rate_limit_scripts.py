"""The Lua scripts of an API key's limits, its token bucket and its day's quota, each beside its one typed call.

Both touch only keys under the API key's own hash tag (serving.protocol.ClientKeys), shared by every model version
and API process, so each runs on one Redis Cluster node, maybe not the one of the request's queue: the take is sent
in the same pipeline as the queue's admission (app/queue_client.py), one round trip per node. Times are Redis's
own (REDIS_NOW), so API hosts whose clocks disagree share one bucket.

A request is charged at most once. redis-py's cluster pipeline sends every command of a node whose reply timed out
again, one by one, after the pipeline (redis/cluster.py, PipelineStrategy._send_cluster_commands: a command whose
result is a ConnectionError or TimeoutError is resent with execute_command, whatever the client's retry policy), so
a take whose reply came late runs twice. Each take therefore carries its request's charge id, made by the API and
never the client's, and remembers it: a take that finds its id already charged takes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from serving.protocol import REDIS_NOW, ClientKeys
from serving.redis_client import RedisClient, RedisPipeline

TAKEN, RATE_LIMITED, OVER_QUOTA = 1, 0, -1

# How long a charge id is remembered after its take: a resend comes within the pipeline's own call, one read
# timeout (REDIS_TIMEOUT) after the first send, and even a node paused with both in its buffers runs them together.
# A minute is far past either; it costs one small key per request while it lasts.
CHARGE_MEMORY_MS = 60_000


@dataclass(frozen=True)
class Allowance:
    """The take's verdict on one request."""
    verdict: int  # TAKEN, RATE_LIMITED or OVER_QUOTA
    tokens: float  # left in the bucket after the verdict
    seconds: float  # taken: until the bucket is full again; refused: until a retry can pass
    left_today: int  # images the key may still send today (with a daily quota)
    day_seconds: float  # until the day's quota starts again


# Take `cost` tokens from an API key's bucket and add `cost` images to its day, by Redis's clock; all or nothing,
# and once per charge id: a take whose charge key is there (a resend of one that was taken) answers taken and takes
# nothing. The bucket holds at most `burst` tokens and gains `rate` a second; the day is Redis's UTC day.
# KEYS: limits hash, charge key. ARGV: cost, rate (0: no bucket), burst, daily images (0: no quota), charge memory
# in ms. Returns {verdict, tokens left, seconds, images left today, seconds until the day ends} (fractions as
# strings): verdict 1 taken (seconds: until the bucket is full again), 0 rate limited (seconds: until the tokens
# are there), -1 over the day's quota (seconds: until the day ends).
_TAKE_TOKENS = REDIS_NOW + """
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
local function taken()
  return answer(1, rate > 0 and (burst - tokens) / rate or 0)
end
if redis.call('EXISTS', KEYS[2]) == 1 then return taken() end
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
redis.call('SET', KEYS[2], cost, 'PX', ARGV[5])
return taken()
"""


def take_tokens(pipe: RedisPipeline, *, keys: ClientKeys, charge_id: str, cost: int, rate: float, burst: int,
                daily: int) -> None:
    """Queue the take of charge `charge_id` in `pipe` (a plain EVAL: Cluster pipelines have no eval(), but route
    EVAL by its key); decode_allowance reads its reply among the pipeline's."""
    pipe.execute_command("EVAL", _TAKE_TOKENS, 2, keys.limits, keys.charge(charge_id), cost, repr(float(rate)), burst,
                         daily, CHARGE_MEMORY_MS)


def decode_allowance(reply: list) -> Allowance:
    verdict, tokens, seconds, left_today, day_seconds = reply
    return Allowance(int(verdict), float(tokens), float(seconds), int(left_today), float(day_seconds))


# Give back what a take took for a request that was then refused for another reason (no worker, a full queue, a
# top_k the model cannot answer): the refusal costs the client nothing. KEYS: limits hash. ARGV: cost, rate (0: no
# bucket), burst.
_REFUND_TOKENS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return end
local cost, rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if rate > 0 then
  local tokens = math.min(burst, tonumber(redis.call('HGET', KEYS[1], 'tokens')) + cost)
  redis.call('HSET', KEYS[1], 'tokens', tostring(tokens))
end
redis.call('HSET', KEYS[1], 'used', math.max(0, tonumber(redis.call('HGET', KEYS[1], 'used')) - cost))
"""


def refund_tokens(client: RedisClient, *, keys: ClientKeys, cost: int, rate: float, burst: int) -> None:
    """Give `cost` tokens and images back to the key (nothing when its bucket has gone: it was full again)."""
    client.eval(_REFUND_TOKENS, 1, keys.limits, cost, repr(float(rate)), burst)
