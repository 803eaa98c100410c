"""The C++ client's JSON reader (cpp/src/json.cpp), which reads the model card: built alone by cpp/fuzz/build.sh.

json_check is the reader compiled as the client is (-O3, no sanitizer): what it reads must be what Python's json
module reads, and what it refuses must be one `error:` line and exit status 1, never a crash. A card nested 100,000
deep used to overflow the stack (SIGSEGV); the reader now refuses nesting past kMaxDepth. json_fuzz is libFuzzer's
harness (cpp/fuzz/json_fuzz.cpp) under ASan and UBSan, run here on a seed corpus of cards, then fuzzing for a
bounded time. No libtorch is needed: both build in seconds with g++ and clang++ (`make test-tools` installs clang).
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from model_files.architectures import imagenet_class_names
from model_files.card import IMAGENET_CONVENTION, ModelCard, card_to_json

ROOT = Path(__file__).resolve().parents[2]
DEPTH_LIMIT = 64  # kMaxDepth in cpp/src/json.cpp
FUZZ_SECONDS = 20


@pytest.fixture(scope="module")
def json_programs(tmp_path_factory) -> Path:
    """The folder holding json_check and json_fuzz, freshly built from this checkout's sources."""
    assert shutil.which("clang++"), "no clang++: `make test-tools` installs Debian's clang and libclang-rt-14-dev"
    build = tmp_path_factory.mktemp("build-json")
    built = subprocess.run([str(ROOT / "cpp" / "fuzz" / "build.sh")], env={**os.environ, "BUILD_DIR": str(build)},
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, f"cpp/fuzz/build.sh failed:\n{built.stdout[-3000:]}\n{built.stderr[-3000:]}"
    return build


def read_with_cpp(programs: Path, text: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(programs / "json_check")], input=text.encode(), capture_output=True, timeout=120)


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def real_card() -> str:
    """The default model's card as `python -m model_tools trace` writes it into the TorchScript file."""
    card = ModelCard("efficientnet_lite0", "efficientnet_lite0", tuple(imagenet_class_names()), IMAGENET_CONVENTION)
    return card_to_json(card, {"method": "trace", "frozen": True})


def deep_card(depth: int = 100_000) -> str:
    return '{"name": "deep", "class_names": ' + nested(depth) + ', "resize_size": 256, "input_size": 224}'


def assert_refused(completed: subprocess.CompletedProcess, message: str) -> None:
    """Refused the way the client reports a bad card: exit status 1 (no signal) and one line naming the fault."""
    stderr = completed.stderr.decode()
    assert completed.returncode == 1, f"exit status {completed.returncode}, not 1 (negative: a signal): {stderr}"
    assert stderr.startswith("error: invalid JSON at offset ") and stderr.count("\n") == 1, stderr
    assert message in stderr


def test_a_card_nested_100000_deep_is_a_one_line_error_naming_the_limit(json_programs):
    assert_refused(read_with_cpp(json_programs, deep_card()), f"nested deeper than {DEPTH_LIMIT} levels")


def test_nesting_up_to_the_limit_is_read_and_one_level_more_is_refused(json_programs):
    at_limit = read_with_cpp(json_programs, nested(DEPTH_LIMIT))
    assert at_limit.returncode == 0 and at_limit.stdout.decode() == nested(DEPTH_LIMIT) + "\n"
    beyond = read_with_cpp(json_programs, '{"a": ' + nested(DEPTH_LIMIT) + "}")  # the last '[' opens level 65
    assert_refused(beyond, f"offset {6 + DEPTH_LIMIT - 1}: arrays and objects nested deeper than {DEPTH_LIMIT} levels")


VALID = {
    "the default model's card": real_card(),
    "escapes": r'["\"\\\/\b\f\n\r\t", "\u00e9\u4e2d", "\ud83d\ude00 and \uD83D\uDE00"]',
    "raw UTF-8": '["Ünïcödé 中文 😀"]',
    "numbers": "[0, -0, 7, -12, 0.5, -0.5e-3, 1E+2, 1e-2, 1.7976931348623157e308, 5e-324, 123456789012345678]",
    "literals and empty containers": ' { "t" : true , "f" : false , "n" : null , "a" : [ ] , "o" : { } } \r\n\t',
    "a repeated key (the last one wins, as in Python)": '{"k": 1, "k": 2}',
}


@pytest.mark.parametrize("text", VALID.values(), ids=VALID.keys())
def test_it_reads_what_pythons_json_module_reads(json_programs, text):
    completed = read_with_cpp(json_programs, text)
    assert completed.returncode == 0, completed.stderr.decode()
    # Numbers compared as doubles, which is what the reader keeps.
    assert json.loads(completed.stdout, parse_int=float) == json.loads(text, parse_int=float)


INVALID = {
    "nothing": ("  ", "unexpected end"),
    "an unterminated string": ('{"name": "effici', "unterminated string"),
    "an unterminated \\u escape": (r'"\u00', r"unterminated \u escape"),
    "a \\u escape without hex digits": (r'"\uzzzz"', r"\u wants four hex digits"),
    "a \\u escape spelled with 0x": (r'"\u0x41"', r"\u wants four hex digits"),
    "a \\u escape with a sign": (r'"\u+041"', r"\u wants four hex digits"),
    "a high surrogate alone": (r'"\ud83d"', "high surrogate without a low one after it"),
    "a high surrogate before a letter": (r'"\ud83d\u0041"', "high surrogate without a low one after it"),
    "a low surrogate alone": (r'"\ude00"', "low surrogate without a high one before it"),
    "an unknown escape": (r'"\x41"', r"unknown escape \x"),
    "a raw control character in a string": ('"tab\there"', "control character in a string"),
    "a number too large for a double": ("[1e400]", "number out of the range of a double"),
    "a number of a million digits": ("1" * 1_000_000, "number out of the range of a double"),
    "a number too small for a double": ("[-1e-400]", "number out of the range of a double"),
    "NaN": ("[NaN]", "unexpected character"),
    "Infinity": ("[-Infinity]", "unexpected character"),
    "hex": ("[0x10]", "expected ']'"),
    "a leading zero": ("[007]", "expected ']'"),
    "a leading plus": ("[+1]", "unexpected character"),
    "no digit before the point": ("[.5]", "unexpected character"),
    "no digit after the point": ("[1.]", "no digit after the decimal point"),
    "no digit in the exponent": ("[1e+]", "no digit in the exponent"),
    "a trailing comma": ("[1, 2,]", "unexpected character"),
    "a vertical tab as a blank": ("[1,\v2]", "unexpected character"),
    "text after the value": ('{"name": "x"} {}', "text after the JSON value"),
}


@pytest.mark.parametrize("text, message", INVALID.values(), ids=INVALID.keys())
def test_what_is_not_json_is_a_one_line_error_naming_the_fault(json_programs, text, message):
    assert_refused(read_with_cpp(json_programs, text), message)


def write_seed_corpus(folder: Path) -> list[Path]:
    folder.mkdir()
    seeds = {"card.json": real_card(), "deep_card.json": deep_card(), "escapes.json": VALID["escapes"],
             "numbers.json": VALID["numbers"], "literals.json": VALID["literals and empty containers"]}
    for name, text in seeds.items():
        (folder / name).write_text(text, encoding="utf-8")
    return sorted(folder.iterdir())


def run_fuzzer(programs: Path, tmp_path: Path, *args) -> subprocess.CompletedProcess:
    # -artifact_prefix: a crashing input is written under tmp_path (kept when the test fails), not into the cwd.
    return subprocess.run([str(programs / "json_fuzz"), f"-artifact_prefix={tmp_path}/", *map(str, args)],
                          capture_output=True, text=True, timeout=FUZZ_SECONDS * 10)


def test_the_fuzz_harness_reads_every_seed_card_without_a_sanitizer_report(json_programs, tmp_path):
    """Each seed whole, under ASan and UBSan: the 100,000-deep card was a stack overflow."""
    completed = run_fuzzer(json_programs, tmp_path, *write_seed_corpus(tmp_path / "seeds"))
    assert completed.returncode == 0, completed.stderr[-5000:]
    assert completed.stderr.count("Executed ") == 5


def test_fuzzing_the_reader_from_the_cards_finds_no_crash(json_programs, tmp_path):
    """libFuzzer mutates the seeds for FUZZ_SECONDS; a crash, sanitizer report or input over 10 s fails the test.

    Inputs are cut at 4 KB (a 4 KB prefix of the deep card is still 4,096 levels deep): three times more runs than
    with the 200 KB card whole, which the test above reads.
    """
    write_seed_corpus(tmp_path / "corpus")
    completed = run_fuzzer(json_programs, tmp_path, f"-max_total_time={FUZZ_SECONDS}", "-max_len=4096", "-timeout=10",
                           "-rss_limit_mb=2048", tmp_path / "corpus")
    assert completed.returncode == 0, completed.stderr[-5000:]
    runs = int(completed.stderr.rsplit("Done ", 1)[1].split()[0])
    assert runs >= 10_000, completed.stderr[-2000:]  # it fuzzed (about 250,000 runs on an idle core)
