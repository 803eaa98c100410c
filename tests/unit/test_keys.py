"""API_KEYS_FILE and `python -m app.keys`: what a line says, what is refused, and when the file is read again."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest

from app import keys
from app.keys import ApiKey, KeyFileError, KeyRing, key_line, parse_keys

DIGEST = hashlib.sha256(b"secret").hexdigest()


def test_a_line_gives_a_name_a_digest_and_optional_rate_burst_daily_and_priority():
    alice, bob, carol = parse_keys(f"alice {DIGEST}\nbob {DIGEST.replace('a', 'b')} 2.5 5 1000 high  # a comment\n"
                                   f"carol {DIGEST.replace('a', 'c')} - - 50 low\n\n# only a comment\n")
    assert alice == ApiKey("alice", bytes.fromhex(DIGEST)) and not alice.limited
    assert (bob.rate, bob.burst, bob.daily, bob.priority) == (2.5, 5, 1000, "high")
    assert (carol.rate, carol.burst, carol.daily, carol.priority) == (0.0, 0, 50, "low") and carol.limited


def test_a_rate_without_a_burst_holds_one_second_of_it_and_at_least_one_image():
    assert parse_keys(f"a {DIGEST} 12")[0].burst == 12
    assert parse_keys(f"a {DIGEST} 0.2")[0].burst == 1


@pytest.mark.parametrize("line, complaint", [
    ("alice secret", "SHA-256"),  # a key in clear is refused, not hashed
    (f"alice {DIGEST.upper()}", "SHA-256"),
    (f"al/ice {DIGEST}", "name"),
    (f"alice {DIGEST} 0", "above 0"),
    (f"alice {DIGEST} nan", "above 0"),
    (f"alice {DIGEST} 1 2.5", "invalid literal"),
    (f"alice {DIGEST} - 5", "BURST without a RATE"),
    (f"alice {DIGEST} - - - urgent", "priority"),
    (f"alice {DIGEST} 1 1 1 low extra", "7 fields"),
    (f"alice {DIGEST}\nalice {DIGEST}", "more than one line"),
])
def test_a_wrong_line_is_refused_naming_its_line_and_why(line, complaint):
    with pytest.raises(KeyFileError, match=complaint):
        parse_keys(f"# header\n{line}")


def test_the_key_ring_finds_a_key_by_its_digest_and_nothing_else(tmp_path):
    path = tmp_path / "keys"
    path.write_text(f"alice {DIGEST}\nbob {hashlib.sha256(b'other').hexdigest()} 3\n")
    ring = KeyRing(str(path))
    assert ring.find("secret").name == "alice" and ring.find("other").rate == 3
    assert ring.find(DIGEST) is None and ring.find("") is None and ring.find("secret ") is None


def test_a_missing_or_wrong_file_at_start_is_a_configuration_error(tmp_path):
    with pytest.raises(KeyFileError, match="cannot be read"):
        KeyRing(str(tmp_path / "absent"))
    (tmp_path / "bad").write_text("alice secret\n")
    with pytest.raises(KeyFileError, match="line 1"):
        KeyRing(str(tmp_path / "bad"))


def test_a_changed_file_is_read_again_and_a_broken_one_keeps_the_keys_before(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(keys, "RECHECK_SECONDS", 0.0)
    path = tmp_path / "keys"
    path.write_text(f"alice {DIGEST}\n")
    ring = KeyRing(str(path))
    path.write_text(f"bob {DIGEST}\n")
    os.utime(path, ns=(1, 1))  # a new stamp even within the file system's time resolution
    assert ring.find("secret").name == "bob"
    path.write_text("bob secret\n")
    assert ring.find("secret").name == "bob" and "keeping the 1 keys read before" in caplog.text
    path.unlink()  # a Secret's symlink swapped, or the file removed: the keys stay until a good file is back
    assert ring.find("secret").name == "bob"


def test_the_new_command_prints_a_key_once_and_the_line_that_accepts_it():
    done = subprocess.run([sys.executable, "-m", "app.keys", "new", "ci-bot", "--rate", "10", "--burst", "20",
                           "--daily", "5000000", "--priority", "low"], capture_output=True, text=True, check=True)
    key = done.stdout.split("shown once; the file keeps only its SHA-256): ")[1].split()[0]
    line = done.stdout.strip().splitlines()[-1]
    assert key not in line and line.endswith(" 10 20 5000000 low")
    (found,) = parse_keys(line)
    assert found.digest == hashlib.sha256(key.encode()).digest() and found.name == "ci-bot"


def test_the_new_command_refuses_a_bad_name_or_limit_with_usage():
    for arguments in (["new", "a b"], ["new", "ok", "--burst", "3"]):
        done = subprocess.run([sys.executable, "-m", "app.keys", *arguments], capture_output=True, text=True)
        assert done.returncode == 2 and "error:" in done.stderr and "key (shown once" not in done.stdout


def test_key_line_leaves_unset_fields_as_dashes_and_drops_trailing_ones():
    assert key_line("a", "k", None, None, None, "high").split()[2:] == ["-", "-", "-", "high"]
    assert len(key_line("a", "k", None, None, None, "normal").split()) == 2
