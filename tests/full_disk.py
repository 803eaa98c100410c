"""A real filesystem with no space left, for the tests of a full disk: a small tmpfs, mounted and filled.

Mounting needs root (CAP_SYS_ADMIN), as `make test` runs here; without it the test fails and says so
(a full disk faked by a mock would not show what torch's C++ writers do when the kernel says ENOSPC).
"""

from __future__ import annotations

import contextlib
import errno
import subprocess
from collections.abc import Iterator
from pathlib import Path

SIZE_KIB = 64


@contextlib.contextmanager
def full_filesystem(mount_point: Path) -> Iterator[Path]:
    """`mount_point`, a fresh tmpfs whose every byte is taken: writing any data fails with ENOSPC."""
    mount_point.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE_KIB}k", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        raise RuntimeError(f"cannot mount a tmpfs at {mount_point} (root needed): {mounted.stderr.strip()}")
    try:
        _fill(mount_point / "filler")
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def _fill(path: Path) -> None:
    with open(path, "wb", buffering=0) as filler:
        try:
            while True:
                filler.write(bytes(4096))
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
