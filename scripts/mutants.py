"""`make mutants`: break each guarantee on purpose and check that a test fails.

Each mutant is a named, hand-written change to the code that carries a guarantee (the Redis
protocol and its Lua scripts, batching, recovery, the worker loop, preprocessing, the serving
model, the model card, the engine cache), and the tests that must catch it. The change is made
in the working tree and undone after its run, whatever happens. A mutant is killed when its
tests fail; one that survives names a guarantee no test holds. Not part of `make test`.

    python -m scripts.mutants [--only SUBSTRING]
"""

from __future__ import annotations

import argparse
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


SEED_TAKE = '''    processing = keys.processing(worker_id)
    first = client.blmove(keys.queue, processing, block_seconds, "RIGHT", "LEFT")'''
SEED_TAKE_MUTATED = '''    processing = keys.processing(worker_id)
    taken = client.lrange(keys.queue, -max_size, -1)  # the seed's take: read, then trim
    if taken:
        client.ltrim(keys.queue, 0, -len(taken) - 1)
        client.lpush(processing, *taken)
    return taken[::-1]
    first = client.blmove(keys.queue, processing, block_seconds, "RIGHT", "LEFT")'''

MUTANTS = (
    Mutant("a batch is taken by reading, then trimming (not atomic)", "worker/batching.py",
           SEED_TAKE, SEED_TAKE_MUTATED, ("tests/unit/test_batching.py",)),
    Mutant("results and the removal of their messages leave without a transaction", "worker/batching.py",
           "pipe = client.pipeline(transaction=True)", "pipe = client.pipeline(transaction=False)",
           ("tests/unit/test_batching.py",)),
    Mutant("a publish deletes the whole processing list", "worker/batching.py",
           "pipe.lrem(keys.processing(worker_id), 1, message)", "pipe.delete(keys.processing(worker_id))",
           ("tests/unit/test_batching.py", "tests/unit/test_worker.py")),
    Mutant("after a Redis error the worker takes new work before what it holds", "worker/loop.py",
           "        if held:\n", "        if False:\n", ("tests/unit/test_worker.py",)),
    Mutant("a retried request is batched with the queue", "worker/loop.py",
           "messages = take_retry(self.client, self.keys, self.worker_id) or take_batch(",
           "messages = take_batch(", ("tests/unit/test_worker.py",)),
    Mutant("deadlines compared with the worker host's clock", "worker/loop.py",
           "taken_at = self.clock.now()", "taken_at = time.time()",
           ("tests/integration/test_reliability.py::test_workers_whose_clocks_are_20s_off_answer_every_request_and_"
            "reap_nobody",)),
    Mutant("the reaper's script does not check the heartbeat again (Lua)", "serving/protocol.py",
           "  if beat and tonumber(beat) >= now - tonumber(ARGV[6]) then return {-1, 0} end\n", "",
           ("tests/unit/test_recovery.py",)),
    Mutant("a dead worker's requests are requeued without counting the attempt (Lua)", "serving/protocol.py",
           "message['attempts'] = (tonumber(message['attempts']) or 0) + 1",
           "message['attempts'] = (tonumber(message['attempts']) or 0)", ("tests/unit/test_recovery.py",)),
    Mutant("MAX_QUEUE lets one more in than it says (Lua)", "serving/protocol.py",
           "if redis.call('LLEN', KEYS[1]) >= tonumber(ARGV[1]) then return -1 end",
           "if redis.call('LLEN', KEYS[1]) > tonumber(ARGV[1]) then return -1 end", ("tests/unit/test_api.py",)),
    Mutant("a crafted 'attempts': 1e999 escapes the decoder", "serving/protocol.py",
           "except (TypeError, ValueError, OverflowError, binascii.Error)",
           "except (TypeError, ValueError, binascii.Error)", ("tests/unit/test_protocol.py",)),
    Mutant("normalization constants in reversed channel order", "model_tools/serving_model.py",
           "mean_tensor = torch.tensor(mean, dtype=torch.float32)",
           "mean_tensor = torch.tensor(mean[::-1], dtype=torch.float32)", ("tests/unit/test_serving_model.py",)),
    Mutant("transparent pixels shown on black", "serving/preprocess.py",
           'Image.new("RGBA", image.size, (255, 255, 255, 255))', 'Image.new("RGBA", image.size, (0, 0, 0, 255))',
           ("tests/unit/test_preprocess.py",)),
    Mutant("EXIF orientation ignored", "serving/preprocess.py",
           "ImageOps.exif_transpose(image, in_place=True)", "pass", ("tests/unit/test_preprocess.py",)),
    Mutant("PNGs with an eXIf chunk decoded unrotated by libspng", "serving/preprocess.py",
           '\n                and b"eXIf" not in self.data)', ")", ("tests/unit/test_preprocess.py",)),
    Mutant("16-bit samples clipped instead of scaled", "serving/preprocess.py",
           ".point(lambda v: v / 256)", ".point(lambda v: v)", ("tests/unit/test_preprocess.py",)),
    Mutant("a label count other than the model's outputs accepted", "model_tools/card.py",
           "    if len(names) != num_outputs:", "    if False:", ("tests/unit/test_model_card.py",)),
    Mutant("configuration silently wins over what the model file says", "model_tools/card.py",
           "if configured is not None and _differs(from_file, configured):", "if False:",
           ("tests/unit/test_model_card.py",)),
    Mutant("the engine cache ignores the model file's content", "worker/engine_cache.py",
           "parts = [self.model_digest, ", "parts = [", ("tests/unit/test_engine_cache.py",)),
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="run the mutants whose name contains this")
    args = parser.parse_args(argv)
    survivors = []
    for mutant in (m for m in MUTANTS if args.only in m.name):
        killed, seconds = run_mutant(mutant)
        print(f"{'killed  ' if killed else 'SURVIVED'} {seconds:5.1f}s  {mutant.name}  ({mutant.path})", flush=True)
        if not killed:
            survivors.append(mutant)
    print(f"{len(survivors)} of {sum(args.only in m.name for m in MUTANTS)} mutants survived")
    return 1 if survivors else 0


if __name__ == "__main__":
    raise SystemExit(main())
