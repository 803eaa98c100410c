"""API keys: the file of who may call (API_KEYS_FILE), and the command that makes a key.

The file holds one line per key, `NAME SHA256_HEX_OF_KEY [RATE [BURST [DAILY [PRIORITY]]]]`, and never a key
in clear, so it can be a Kubernetes Secret mounted as a file, readable by whoever deploys without leaking
what clients send. RATE is images per second (with a bucket of BURST images, RATE's ceiling at least 1 when
unset), DAILY images per UTC day, PRIORITY `high`, `normal` or `low`; `-` leaves a field unset (no limit,
normal). `#` starts a comment. The API re-reads the file when it changes; a file that no longer parses keeps
the keys of the last one that did, with an error in the log, so a bad edit neither opens the door nor locks
every client out.

    python -m app.keys new NAME [--rate R] [--burst B] [--daily D] [--priority high|low]

prints a new key once, and the line to add to the file.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import logging
import math
import os
import re
import secrets
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from serving.protocol import PRIORITIES

log = logging.getLogger("api")

UNSET = "-"
KEY_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")  # a key's name: safe in a Redis key, a log line and a metric label
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# How often a process looks at the file's modification: a changed Secret takes effect within this.
RECHECK_SECONDS = 1.0
KEY_BYTES = 32  # of randomness in a new key: as much as the SHA-256 that stands for it


class KeyFileError(ValueError):
    """API_KEYS_FILE cannot be used; the message names the line and what is wrong with it."""


@dataclass(frozen=True)
class ApiKey:
    """One line of API_KEYS_FILE: who the caller is and what it may use."""
    name: str
    digest: bytes  # SHA-256 of the key
    rate: float = 0.0  # images per second; 0: no rate limit
    burst: int = 0  # images the bucket holds: a request of more is refused whatever the wait
    daily: int = 0  # images per UTC day; 0: no quota
    priority: str = "normal"

    @property
    def limited(self) -> bool:
        return self.rate > 0 or self.daily > 0


def digest_of(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def parse_keys(text: str, source: str = "API_KEYS_FILE") -> list[ApiKey]:
    """Every key the file's text names; KeyFileError naming the first line that is wrong."""
    keys: list[ApiKey] = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split("#", 1)[0].split()
        if fields:
            try:
                keys.append(_parse_line(fields))
            except (KeyFileError, ValueError) as exc:
                raise KeyFileError(f"{source} line {number}: {exc}") from None
    names = [key.name for key in keys]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise KeyFileError(f"{source}: the name {repeated[0]} is on more than one line")
    return keys


def _parse_line(fields: list[str]) -> ApiKey:
    if not 2 <= len(fields) <= 6:
        raise KeyFileError(f"{len(fields)} fields; expected NAME SHA256_HEX [RATE [BURST [DAILY [PRIORITY]]]]")
    name, digest, *limits = fields
    limits += [UNSET] * (4 - len(limits))
    if not KEY_NAME.fullmatch(name):
        raise KeyFileError(f"name {name[:70]!r}: expected 1-64 letters, digits, '.', '_' or '-'")
    if not _SHA256_HEX.fullmatch(digest):
        raise KeyFileError(f"key {name}: the second field must be the key's SHA-256 in 64 lowercase hex digits "
                           "(python -m app.keys new NAME prints it), never the key itself")
    rate = _number(limits[0], float, "RATE")
    burst = _number(limits[1], int, "BURST") or (max(1, math.ceil(rate)) if rate else 0)
    if limits[1] != UNSET and not rate:
        raise KeyFileError(f"key {name}: BURST without a RATE")
    priority = limits[3] if limits[3] != UNSET else "normal"
    if priority not in PRIORITIES:
        raise KeyFileError(f"key {name}: priority {priority[:20]!r}; expected one of {', '.join(PRIORITIES)}")
    return ApiKey(name, bytes.fromhex(digest), rate, burst, _number(limits[2], int, "DAILY"), priority)


def _number(text: str, kind: type, what: str):
    if text == UNSET:
        return kind(0)
    value = kind(text)
    if not (math.isfinite(value) and value > 0):
        raise KeyFileError(f"{what}={text}: expected a number above 0, or - for none")
    return value


class KeyRing:
    """The keys of API_KEYS_FILE as this process last read them, read again when the file changes.

    A change is seen by the file's modification time, size and inode (a Kubernetes Secret is updated by
    swapping a symlink), looked at no more often than RECHECK_SECONDS, so a request costs no file system call.
    """

    def __init__(self, path: str):
        self.path = Path(path)
        self._keys = self._read()  # a file that is missing or wrong at start is a configuration error
        self._seen = self._stamp()
        self._checked_at = time.monotonic()
        self._lock = threading.Lock()

    def find(self, presented: str) -> ApiKey | None:
        """The key whose digest is the presented key's, compared with every key in constant time."""
        self._reload_if_changed()
        digest = digest_of(presented)
        found = None
        for key in self._keys:  # no early exit: the time taken says nothing about which digest matched
            if hmac.compare_digest(key.digest, digest):
                found = key
        return found

    def _reload_if_changed(self) -> None:
        if time.monotonic() - self._checked_at < RECHECK_SECONDS:
            return
        with self._lock:
            if time.monotonic() - self._checked_at < RECHECK_SECONDS:
                return
            self._checked_at = time.monotonic()
            stamp = self._stamp()
            if stamp == self._seen:
                return
            try:
                self._keys = self._read()
            except KeyFileError as exc:
                log.error("%s; keeping the %d keys read before", exc, len(self._keys))
            else:
                log.info("re-read %s: %d keys", self.path, len(self._keys))
            self._seen = stamp

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            status = os.stat(self.path)
        except OSError:
            return None
        return status.st_mtime_ns, status.st_size, status.st_ino

    def _read(self) -> list[ApiKey]:
        try:
            text = self.path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise KeyFileError(f"API_KEYS_FILE={self.path}: cannot be read ({exc})") from None
        return parse_keys(text, f"API_KEYS_FILE={self.path}")


def key_line(name: str, key: str, rate: float | None, burst: int | None, daily: int | None,
             priority: str) -> str:
    """The file's line for a key: its digest and limits, `-` where unset, trailing unset fields left off."""
    fields = [name, hashlib.sha256(key.encode()).hexdigest(),
              *(UNSET if value is None else f"{value:g}" if isinstance(value, float) else str(value)
                for value in (rate, burst, daily)),
              UNSET if priority == "normal" else priority]
    while fields[-1] == UNSET:
        fields.pop()
    line = " ".join(fields)
    parse_keys(line)  # what this prints, the API reads
    return line


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.keys", description="Make an API key for API_KEYS_FILE.")
    commands = parser.add_subparsers(dest="command", required=True)
    new = commands.add_parser("new", help="print a new key once, and its line for API_KEYS_FILE")
    new.add_argument("name", help="who the key is for: 1-64 letters, digits, '.', '_' or '-' (logs and metrics "
                     "show it)")
    new.add_argument("--rate", type=float, help="images per second (default: no limit)")
    new.add_argument("--burst", type=int, help="images at once above the rate (default: the rate, at least 1)")
    new.add_argument("--daily", type=int, help="images per UTC day (default: no quota)")
    new.add_argument("--priority", choices=PRIORITIES, default="normal", help="queue lane under load")
    arguments = parser.parse_args(argv)
    key = secrets.token_urlsafe(KEY_BYTES)
    try:
        line = key_line(arguments.name, key, arguments.rate, arguments.burst, arguments.daily, arguments.priority)
    except KeyFileError as exc:
        parser.error(str(exc).removeprefix("API_KEYS_FILE line 1: "))
    print(f"key (shown once; the file keeps only its SHA-256): {key}")
    print(f"line for API_KEYS_FILE:\n{line}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
