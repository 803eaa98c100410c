"""`make mutants`: break each guarantee on purpose and check that a test fails.

First a named list of hand-written mutants: each is a change to the code that carries a guarantee
(the Redis protocol and its Lua scripts, batching, recovery, the worker loop, preprocessing, the
serving model, the model card, the engines' choice and cache), and the tests that must catch it. The change is
made in the working tree and undone after its run, whatever happens. A mutant is killed when its
tests fail; one that survives names a guarantee no test holds. Not part of `make test`.

Then mutmut ([tool.mutmut] in pyproject.toml) mutates the Python modules among them operator by
operator, in a copy (./mutants/), and runs the unit tests that reach each change. Its survivors
are checked against ACCEPTED_SURVIVORS below, each with the reason it may live; any other
survivor fails the run (`mutmut show NAME` prints its change).

    python -m scripts.mutants [--only SUBSTRING] [--hand-written | --generated] [--children N]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    original: str  # must occur exactly once in the file
    replacement: str
    tests: tuple[str, ...]


TWO_STEP_TAKE = '''        lanes = self.keys.lanes[::-1] if low_first else self.keys.lanes'''
# A take in two steps: read, then trim (LRANGE + LTRIM), which two workers can interleave.
TWO_STEP_TAKE_MUTATED = '''        taken = self.client.lrange(self.keys.queue, -max_size, -1)
        if taken:
            self.client.ltrim(self.keys.queue, 0, -len(taken) - 1)
            self.client.lpush(self.processing, *taken)
        return taken[::-1]
        lanes = self.keys.lanes[::-1] if low_first else self.keys.lanes'''

MUTANTS = (
    Mutant("a batch is taken by reading, then trimming (not atomic)", "worker/queue.py",
           TWO_STEP_TAKE, TWO_STEP_TAKE_MUTATED,
           ("tests/unit/test_batching.py", "tests/integration/test_redis_protocol.py")),
    Mutant("a worker answers a message a reaper took back from it (Lua)", "serving/queue_scripts.py",
           "  if redis.call('LREM', KEYS[1], 1, message) == 1 and job ~= '' then",
           "  redis.call('LREM', KEYS[1], 1, message)\n  if job ~= '' then", ("tests/unit/test_batching.py",)),
    Mutant("a publish deletes the whole processing list (Lua)", "serving/queue_scripts.py",
           "redis.call('LREM', KEYS[1], 1, message) == 1", "redis.call('DEL', KEYS[1]) >= 0",
           ("tests/unit/test_batching.py", "tests/unit/test_worker.py")),
    Mutant("after a Redis error the worker takes new work before what it holds", "worker/loop.py",
           "        if held:\n", "        if False:\n", ("tests/unit/test_worker.py",)),
    Mutant("a retried request is batched with the queue", "worker/loop.py",
           "messages = self.queue.take_retry() or self.queue.take_batch(",
           "messages = self.queue.take_batch(", ("tests/unit/test_worker.py",)),
    Mutant("the low lane never goes first: low keys starve under load", "worker/loop.py",
           "low_first=self._low_lane_turn())", "low_first=False)", ("tests/unit/test_worker.py",)),
    Mutant("deadlines compared with the worker host's clock", "worker/loop.py",
           "taken_at = self.heartbeat.clock.now()", "taken_at = time.time()",
           ("tests/integration/test_reliability.py::test_workers_whose_clocks_are_20s_off_answer_every_request_and_"
            "reap_nobody",)),
    Mutant("the reaper's script does not check the heartbeat again (Lua)", "serving/queue_scripts.py",
           "  if beat and tonumber(beat) >= now - tonumber(ARGV[4]) then return {-1, 0} end\n", "",
           ("tests/unit/test_recovery.py",)),
    Mutant("a dead worker's requests are requeued without counting the attempt (Lua)", "serving/queue_scripts.py",
           "redis.call('HINCRBY', KEYS[6], id, 1)", "redis.call('HINCRBY', KEYS[6], id, 0)",
           ("tests/unit/test_recovery.py",)),
    Mutant("MAX_QUEUE lets one more in than it says (Lua)", "serving/queue_scripts.py",
           "if depth + #ARGV - 1 > tonumber(ARGV[1]) then return refuse(-1) end",
           "if depth + #ARGV - 2 > tonumber(ARGV[1]) then return refuse(-1) end",
           ("tests/unit/test_api.py", "tests/unit/test_native_api.py")),
    Mutant("a take that redis-py's cluster pipeline resends charges the key again (Lua)",
           "serving/rate_limit_scripts.py", "if redis.call('EXISTS', KEYS[2]) == 1 then return taken() end\n", "",
           ("tests/unit/test_rate_limits.py",)),
    Mutant("a request refused after its charge keeps it spent", "app/access.py",
           "            charge.refund(client)\n", "            pass\n",
           ("tests/unit/test_rate_limits.py", "tests/unit/test_api.py")),
    Mutant("a 429 is given back the tokens it never took", "app/access.py",
           "    except OverLimit:\n        raise\n", "", ("tests/unit/test_rate_limits.py",)),
    Mutant("a top_k below 1 is charged before it is refused", "app/inference.py",
           "    _check_top_k_asked(options.top_k)", "    pass", ("tests/unit/test_rate_limits.py",)),
    Mutant("a crafted 'shape': [1e999] escapes the decoder", "serving/protocol.py",
           "except (TypeError, ValueError, OverflowError) as exc:",
           "except (TypeError, ValueError) as exc:", ("tests/unit/test_protocol.py",)),
    Mutant("normalization constants in reversed channel order", "model_files/serving_model.py",
           "mean_tensor = torch.tensor(mean, dtype=torch.float32)",
           "mean_tensor = torch.tensor(mean[::-1], dtype=torch.float32)", ("tests/unit/test_serving_model.py",)),
    Mutant("transparent pixels shown on black", "serving/preprocess.py",
           'Image.new("RGBA", image.size, (255, 255, 255, 255))', 'Image.new("RGBA", image.size, (0, 0, 0, 255))',
           ("tests/unit/test_preprocess.py",)),
    Mutant("images handed to the decode threads without taking the decode budget", "app/decode_pool.py",
           "                self.budget.take(pixels)\n", "", ("tests/unit/test_decode_budget.py",)),
    Mutant("a request refused decoder_busy still decodes its images not yet started", "app/decode_pool.py",
           "                if future.cancel():", "                if False:", ("tests/unit/test_decode_budget.py",)),
    Mutant("a decoded JPEG outlives its share of the decode budget", "app/inference.py",
           "        encoded.header.close()", "        pass", ("tests/unit/test_decode_budget.py",)),
    Mutant("EXIF orientation ignored", "serving/preprocess.py",
           "ImageOps.exif_transpose(image, in_place=True)", "pass", ("tests/unit/test_preprocess.py",)),
    Mutant("libspng's image not turned by what Pillow read before its pixels", "serving/preprocess.py",
           "image.info.update(encoded.header.info)", "pass", ("tests/unit/test_preprocess.py",)),
    Mutant("a PNG that says how it is turned after its pixels decoded unrotated by libspng", "serving/preprocess.py",
           "        if pixels_seen and _png_chunk_may_carry_orientation(data, position, kind):",
           "        if False:", ("tests/unit/test_preprocess.py",)),
    Mutant("a PNG's XMP and raw EXIF profile not looked for after its pixels", "serving/preprocess.py",
           'return kind == b"eXIf" or (kind in', 'return kind == b"eXIf" and (kind in',
           ("tests/unit/test_preprocess.py",)),
    Mutant("16-bit samples clipped instead of scaled", "serving/preprocess.py",
           ".point(lambda v: v / 256)", ".point(lambda v: v)", ("tests/unit/test_preprocess.py",)),
    Mutant("a label count other than the model's outputs accepted", "model_files/card.py",
           "    if len(names) != num_outputs:", "    if False:", ("tests/unit/test_model_card.py",)),
    Mutant("configuration silently wins over what the model file says", "model_files/card.py",
           "if configured is not None and _differs(from_file, configured):", "if False:",
           ("tests/unit/test_model_card.py",)),
    Mutant("the engine cache ignores the model file's content", "engines/cache.py",
           "parts = [self.model_digest, ", "parts = [", ("tests/unit/test_engine_cache.py",)),
    Mutant("BACKEND=auto gives up at an engine that fails to build instead of trying the next", "engines/choose.py",
           "        except Exception as exc:\n            reason = first_line(exc)",
           "        except EngineError as exc:\n            reason = first_line(exc)",
           ("tests/unit/test_engines.py",)),
    Mutant("an engine that failed to build is tried again at every start", "engines/choose.py",
           "            entry.remember_failure(first_line(exc))\n", "            pass\n",
           ("tests/unit/test_engine_cache.py",)),
    Mutant("a passing failure of an export (an out-of-memory) is remembered as a verdict", "engines/choose.py",
           "        except ExportError as exc:", "        except Exception as exc:",
           ("tests/unit/test_engine_cache.py",)),
    Mutant("a cached export is opened though its file changed since it was verified", "engines/cache.py",
           "        if verdict.verified and not self._holds(digest):", "        if False:",
           ("tests/unit/test_engine_cache.py",)),
    Mutant("an engine cache on a full disk costs the engine, not only the cache", "engines/choose.py",
           "reference, cache, compute)\n        except OSError as exc:",
           "reference, cache, compute)\n        except ZeroDivisionError as exc:",
           ("tests/unit/test_engine_cache.py",)),
    Mutant("torch's serializers write into the file themselves (a full disk aborts the process)",
           "model_files/files.py",
           "    serialize(buffer)\n"
           "    return write_atomically(path, lambda partial: partial.write_bytes(buffer.getbuffer()))",
           "    return write_atomically(path, lambda partial: serialize(str(partial)))",  # torch.jit.save to a path
           ("tests/unit/test_export.py",)),
    Mutant("model_tools import writes --out before checking it", "model_tools/importer.py",
           "    with written_aside(out) as candidate:", "    candidate = out\n    if True:",
           ("tests/unit/test_import.py",)),
    Mutant("a queue's keys under no common hash tag (CROSSSLOT on a Redis Cluster)", "serving/protocol.py",
           'return "{" + f"{self.prefix}:{self.model_id}" + "}"', 'return f"{self.prefix}:{self.model_id}"',
           ("tests/unit/test_protocol.py",)),
    Mutant("an exhausted request is answered by every worker that finds it", "serving/queue_scripts.py",
           "if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end\n", "",
           ("tests/unit/test_recovery.py",)),
    Mutant("the last worker of a version leaves its queue behind when it stops", "worker/loop.py",
           "            self.drain_if_last()\n", "            pass\n", ("tests/unit/test_worker.py",)),
    Mutant("the last worker of a version leaves it open when it stops (Lua)", "serving/fleet_scripts.py",
           "if staying == 0 then redis.call('DEL', KEYS[3], KEYS[4]) end\n", "", ("tests/unit/test_worker.py",)),
    Mutant("a request is queued for a version whose last worker has left (Lua)", "serving/queue_scripts.py",
           "if redis.call('EXISTS', KEYS[2]) == 0 then return refuse(-2) end\n", "", ("tests/unit/test_api.py",)),
    Mutant("a request refused by ENQUEUE leaves its pixels behind (Lua)", "serving/queue_scripts.py",
           "  redis.call('DEL', unpack(KEYS, 7))\n", "", ("tests/unit/test_batching.py",)),
    Mutant("a handed-back request loses its lane (Lua)", "serving/queue_scripts.py",
           "== 1 and KEYS[3] or lane, raw)", "== 1 and KEYS[3] or KEYS[9], raw)", ("tests/unit/test_recovery.py",)),
    Mutant("a handed-back request wakes nobody (Lua)", "serving/queue_scripts.py",
           "if returned > 0 then\n  redis.call('LPUSH', KEYS[7], 1)",
           "if false then\n  redis.call('LPUSH', KEYS[7], 1)", ("tests/unit/test_recovery.py",)),
    Mutant("a repeated delivery's answer hides the first one (Lua)", "serving/queue_scripts.py",
           "redis.call('RPUSH', KEYS[2 * i + 1], answer)", "redis.call('LPUSH', KEYS[2 * i + 1], answer)",
           ("tests/unit/test_worker.py",)),
    Mutant("an answered image's pixels stay in Redis (Lua)", "serving/queue_scripts.py",
           "    redis.call('DEL', KEYS[2 * i + 2])\n", "", ("tests/unit/test_worker.py",)),
    Mutant("a new version gets traffic before it is routed to (highest, not lowest)", "serving/routing.py",
           "return min(live_versions, key=version_order)", "return max(live_versions, key=version_order)",
           ("tests/unit/test_models.py",)),
    Mutant("a newcomer name takes the default from a live one (Lua)", "serving/fleet_scripts.py",
           "  if string.match(model, '^(.*)@') ~= ARGV[2] then return 0 end\n", "", ("tests/unit/test_models.py",)),
    Mutant("another model joins a live name@version (Lua)", "serving/fleet_scripts.py",
           "if held and held ~= ARGV[4] then return {tostring(now), -1, held} end\n", "",
           ("tests/unit/test_models.py",)),
    Mutant("a route to versions without workers strands its name", "serving/routing.py",
           "    return min(live_versions, key=version_order) if live_versions else None\n",
           "    return next(iter(weights), None) if weights else (min(live_versions, key=version_order) if "
           "live_versions else None)\n", ("tests/unit/test_models.py",)),
    Mutant("a version closed since the last registry read answers 503 while another serves", "app/fleet.py",
           "            again = self.queue_for(name, fresh=True)\n", "            again = self.queue_for(name)\n",
           ("tests/unit/test_fleet.py",)),
    Mutant("a request waiting for its process's registry read gives up on a clock of its own", "app/fleet.py",
           "        return read.result()\n", "        return read.result(timeout=0.5)\n",
           ("tests/unit/test_fleet.py",)),
    Mutant("a PNG of any size goes to libspng, which holds the GIL", "serving/preprocess.py",
           "and width * height <= SPNG_MAX_PIXELS and ", "and ", ("tests/unit/test_preprocess.py",)),
    Mutant("an empty upload whose blank line and delimiter share one CRLF swallows the next part", "app/multipart.py",
           "content_end = body.find(delimiter, content_start - len(_CRLF))",
           "content_end = body.find(delimiter, content_start)", ("tests/unit/test_multipart.py",)),
    Mutant("a form may have one part more than MAX_FORM_PARTS", "app/multipart.py",
           "if max_parts is not None and index >= max_parts:",
           "if max_parts is not None and index > max_parts:", ("tests/unit/test_multipart.py",)),
)


def run_mutant(mutant: Mutant) -> tuple[bool, float]:
    """(killed, seconds): apply the change, run its tests, undo the change."""
    path = ROOT / mutant.path
    source = path.read_text()
    if source.count(mutant.original) != 1:
        raise SystemExit(f"mutant {mutant.name!r}: its original text is not in {mutant.path} exactly once; "
                         "update scripts/mutants.py with the code")
    started = time.monotonic()
    try:
        path.write_text(source.replace(mutant.original, mutant.replacement))
        finished = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                                   *mutant.tests], cwd=ROOT, capture_output=True, text=True, timeout=900)
    finally:
        path.write_text(source)
    return finished.returncode == 1, time.monotonic() - started  # 1: tests failed; 2-5: pytest itself did


# mutmut's survivors that may live, by the name mutmut gives them (module, function, number within the function;
# a change to a function renumbers its mutants), each with the reason. docs/tests.md sums them up.
_ACCEPTED: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Redis reads command names and LMOVE's directions case-insensitively", (
        "worker.queue.xǁWorkerQueueǁtake_batch__mutmut_13",
        "worker.queue.xǁWorkerQueueǁtake_batch__mutmut_15",
        "worker.queue.xǁWorkerQueueǁtake_retry__mutmut_11",
        "worker.queue.xǁWorkerQueueǁtake_retry__mutmut_13",
    )),
    ("a message moves into an empty processing list (a batch is taken, or a retry, only when the list is empty),"
     " so the end it lands at (LMOVE's default RIGHT) does not matter", (
        "worker.queue.xǁWorkerQueueǁtake_batch__mutmut_11",
        "worker.queue.xǁWorkerQueueǁtake_retry__mutmut_9",
    )),
    ("two lengths read together need no MULTI: a transaction (True) or not (None) changes no outcome", (
        "worker.queue.xǁWorkerQueueǁqueued__mutmut_2",
        "worker.queue.xǁWorkerQueueǁqueued__mutmut_3",
    )),
    ("RETURN_UNFINISHED reads the worker timeout only when it counts a failure, and compares the flag with '1' "
     "(None and 'XX0XX' are not '1' either)", (
        "worker.queue.xǁWorkerQueueǁreturn_unfinished__mutmut_1",
        "worker.queue.xǁWorkerQueueǁreturn_unfinished__mutmut_35",
        "worker.queue.xǁWorkerQueueǁsign_off__mutmut_3",
    )),
    ("< or <= against a monotonic deadline, or a request's deadline, in float seconds", (
        "worker.queue.xǁWorkerQueueǁtake_batch__mutmut_25",
        "worker.loop.xǁWorkerǁ_admit__mutmut_16",
        "worker.loop.xǁWorkerǁdrain_if_last__mutmut_5",
    )),
    ("feeds only the batch's log line (batch count, oldest wait, answered count) or the statistics of a batch "
     "that ran nothing, which record no inference time", (
        "worker.loop.xǁWorkerǁ__init____mutmut_29",
        "worker.loop.xǁWorkerǁprocess__mutmut_19",
        "worker.loop.xǁWorkerǁprocess__mutmut_27",
        "worker.loop.xǁWorkerǁprocess__mutmut_28",
        "worker.loop.xǁWorkerǁprocess__mutmut_29",
        "worker.loop.xǁWorkerǁprocess__mutmut_30",
        "worker.loop.xǁWorkerǁprocess__mutmut_31",
        "worker.loop.xǁWorkerǁprocess__mutmut_37",
        "worker.loop.xǁWorkerǁprocess__mutmut_38",
        "worker.loop.xǁWorkerǁprocess__mutmut_40",
        "worker.loop.xǁWorkerǁprocess__mutmut_41",
        "worker.loop.xǁWorkerǁprocess__mutmut_42",
        "worker.loop.xǁWorkerǁprocess__mutmut_43",
        "worker.loop.xǁWorkerǁprocess__mutmut_45",
    )),
    ("None for False: falsy wherever it is read", (
        "worker.loop.xǁWorkerǁ__init____mutmut_37",
        "worker.loop.xǁWorkerǁserve_once__mutmut_18",
        "worker.heartbeat.xǁHeartbeatǁ__init____mutmut_8",
    )),
    ("BATCH_WAIT_MS / 1001 instead of / 1000: 0.1% of a wait", (
        "worker.loop.xǁWorkerǁserve_once__mutmut_16",
    )),
    ("the heartbeat thread's name and daemon flag: cosmetic, and run() ends (joins) the thread before it returns", (
        "worker.heartbeat.xǁHeartbeatǁstart__mutmut_4",
        "worker.heartbeat.xǁHeartbeatǁstart__mutmut_5",
        "worker.heartbeat.xǁHeartbeatǁstart__mutmut_8",
        "worker.heartbeat.xǁHeartbeatǁstart__mutmut_9",
        "worker.heartbeat.xǁHeartbeatǁstart__mutmut_10",
        "worker.heartbeat.xǁHeartbeatǁstart__mutmut_11",
        "worker.heartbeat.xǁHeartbeatǁstart__mutmut_12",
    )),
    ("the heartbeat's thread before start(): start() sets it before end() joins it", (
        "worker.heartbeat.xǁHeartbeatǁ__init____mutmut_11",
    )),
    ("the worker id handed to the Redis-error retry only names the worker in its log line", (
        "worker.loop.xǁWorkerǁserve__mutmut_3",
        "worker.heartbeat.xǁHeartbeatǁ_beat_or_stop__mutmut_3",
    )),
    ("7 hex digits of a uuid in the worker id instead of 6", (
        "worker.loop.x_new_worker_id__mutmut_1",
    )),
    ("the clock's offset before its first reading: every user reads TIME before it asks the time", (
        "serving.protocol.xǁRedisClockǁ__init____mutmut_2",
    )),
    ("the JSON parser's messages are all shorter than 200 characters", (
        "serving.protocol.x_decode_request__mutmut_6",
    )),
    ("'UTF-8' and 'utf-8' name one codec", (
        "serving.protocol.x_leading_job_id__mutmut_12",
    )),
    ("partition or rpartition: neither a name nor a version may hold '@' (MODEL_ID_PART)", (
        "serving.protocol.x_split_model_id__mutmut_3",
    )),
    ("float('INF') is float('inf')", (
        "serving.worker_stats.x__bucket_field__mutmut_9",
    )),
    ("split/rsplit variants: a bucket field holds one colon", (
        "serving.worker_stats.x_decode_worker_stats__mutmut_22",
        "serving.worker_stats.x_decode_worker_stats__mutmut_23",
        "serving.worker_stats.x_decode_worker_stats__mutmut_25",
    )),
    ("decode()'s default min_side: every caller passes one", (
        "serving.preprocess.x_decode__mutmut_1",
    )),
    ("draft()'s mode only asks libjpeg for a colour space; the scale is what matters and _to_rgb converts anyway", (
        "serving.preprocess.x_decode__mutmut_10",
        "serving.preprocess.x_decode__mutmut_14",
        "serving.preprocess.x_decode__mutmut_15",
    )),
    ("convert(None) keeps 'I' / 'I;16', and the scaled values (<= 255) reach RGB the same", (
        "serving.preprocess.x__to_rgb__mutmut_3",
        "serving.preprocess.x__to_rgb__mutmut_5",
    )),
    ("also converts L/RGB images with a tRNS colour key to RGBA, which would honour it: a behaviour change "
     "(arguably an improvement), not a gap", (
        "serving.preprocess.x__to_rgb__mutmut_13",
    )),
    ("convert(None) of a palette image with transparency is RGBA", (
        "serving.preprocess.x__to_rgb__mutmut_21",
    )),
    ("Pillow clips 256 to 255", (
        "serving.preprocess.x__to_rgb__mutmut_38",
        "serving.preprocess.x__to_rgb__mutmut_39",
        "serving.preprocess.x__to_rgb__mutmut_40",
        "serving.preprocess.x__to_rgb__mutmut_41",
    )),
    ("converting an RGB image to RGB again: a copy", (
        "serving.preprocess.x__to_rgb__mutmut_47",
        "serving.preprocess.x__to_rgb__mutmut_50",
        "serving.preprocess.x__to_rgb__mutmut_51",
    )),
    ("int(resize_size * side / side) is resize_size", (
        "serving.preprocess.x_fit_to_model__mutmut_8",
        "serving.preprocess.x_fit_to_model__mutmut_15",
    )),
    ("Pillow's RGB pixels are uint8 already", (
        "serving.preprocess.x_fit_to_model__mutmut_51",
        "serving.preprocess.x_fit_to_model__mutmut_53",
    )),
    ("every warning becomes an error, not only DecompressionBombWarning; Pillow warns of nothing else while "
     "reading a header", (
        "serving.preprocess.x_read_header__mutmut_11",
        "serving.preprocess.x_read_header__mutmut_13",
    )),
    ("view(3, 1, 1) broadcasts over NCHW as view(1, 3, 1, 1) does; torch makes Python floats float32 anyway", (
        "model_files.serving_model.xǁServingModelǁ__init____mutmut_7",
        "model_files.serving_model.xǁServingModelǁ__init____mutmut_12",
        "model_files.serving_model.xǁServingModelǁ__init____mutmut_14",
        "model_files.serving_model.xǁServingModelǁ__init____mutmut_24",
        "model_files.serving_model.xǁServingModelǁ__init____mutmut_29",
        "model_files.serving_model.xǁServingModelǁ__init____mutmut_31",
    )),
)
ACCEPTED_SURVIVORS = {name: reason for reason, names in _ACCEPTED for name in names}

# mutmut's verdicts; a timeout counts as killed (the change made the tests hang, and they noticed).
NOT_KILLED = {"survived", "no tests", "suspicious", "not checked", "skipped"}


def run_mutmut(children: int) -> tuple[int, list[str]]:
    """Run mutmut afresh over [tool.mutmut]'s modules: (mutants generated, names of those not killed)."""
    mutmut = str(Path(sys.executable).with_name("mutmut"))
    shutil.rmtree(ROOT / "mutants", ignore_errors=True)  # a fresh run: nothing cached from older code
    subprocess.run([mutmut, "run", "--max-children", str(children)], cwd=ROOT, check=True)
    listed = subprocess.run([mutmut, "results", "--all", "true"], cwd=ROOT, check=True, capture_output=True,
                            text=True).stdout
    verdicts = dict(line.strip().rsplit(": ", 1) for line in listed.splitlines() if ": " in line)
    return len(verdicts), sorted(name for name, verdict in verdicts.items() if verdict in NOT_KILLED)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="run the hand-written mutants whose name contains this")
    stage = parser.add_mutually_exclusive_group()
    stage.add_argument("--hand-written", action="store_true", help="only the hand-written mutants")
    stage.add_argument("--generated", action="store_true", help="only mutmut's")
    parser.add_argument("--children", type=int, default=2, help="mutmut's parallel test runs (default 2)")
    args = parser.parse_args(argv)
    failed = False
    if not args.generated:
        survivors = []
        for mutant in (m for m in MUTANTS if args.only in m.name):
            killed, seconds = run_mutant(mutant)
            print(f"{'killed  ' if killed else 'SURVIVED'} {seconds:5.1f}s  {mutant.name}  ({mutant.path})",
                  flush=True)
            if not killed:
                survivors.append(mutant)
        print(f"{len(survivors)} of {sum(args.only in m.name for m in MUTANTS)} hand-written mutants survived",
              flush=True)
        failed = bool(survivors)
    if not args.hand_written:
        started = time.monotonic()
        generated, survivors = run_mutmut(args.children)
        unexpected = [name for name in survivors if name not in ACCEPTED_SURVIVORS]
        for name in survivors:
            print(f"accepted  {name}: {ACCEPTED_SURVIVORS[name]}" if name in ACCEPTED_SURVIVORS else
                  f"SURVIVED  {name}  (mutmut show '{name}')")
        print(f"mutmut: {generated} mutants in {(time.monotonic() - started) / 60:.0f} min, "
              f"{generated - len(survivors)} killed, {len(survivors) - len(unexpected)} accepted survivors, "
              f"{len(unexpected)} unexpected")
        stale = sorted(set(ACCEPTED_SURVIVORS) - set(survivors))
        if stale:
            print(f"killed now, drop from ACCEPTED_SURVIVORS: {', '.join(stale)}")
        failed = failed or bool(unexpected)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
