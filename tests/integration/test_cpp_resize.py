"""The C++ client's resampler (cpp/src/resize.cpp) against Pillow's own output, value for value.

Pillow resizes a few photos here; cpp/build/test_resize resizes the same inputs with the port and compares
(cpp/tests/test_resize.cpp). The comparison is exact: the port does Pillow's fixed-point arithmetic step for
step, so a pixel off by 1 is a departure from it, not noise. Inputs are PNGs so that both sides start from the
same pixels; the cases shrink, enlarge, cut fractional boxes and run the service's fit_to_model geometry.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
from PIL import Image

from serving.preprocess import RESIZE_FILTER, fit_to_model
from tests.images import PHOTOS


def photo(name: str) -> Image.Image:
    return Image.open(PHOTOS / name).convert("RGB")


# (case name, input image, what to do): ("fit", resize_size, input_size) is serving/preprocess.py's
# fit_to_model; ("pillow", box, (width, height)) is Image.resize with Pillow's bilinear filter. Pillow 13
# filters columns first when the height loses more than twice as many pixels as the width (resize.cpp), which
# changes the last bit of many pixels: the portrait and the three cases after rocket's are on either side of that.
CASES = [
    ("chelsea-fit", lambda: photo("chelsea.png"), ("fit", 256, 224)),  # landscape 451x300
    ("astronaut-fit", lambda: photo("astronaut.png"), ("fit", 256, 224)),  # square 512x512
    ("coffee-portrait-fit", lambda: photo("coffee.png").transpose(Image.Transpose.ROTATE_90), ("fit", 256, 224)),
    ("camera-grey-fit", lambda: photo("camera.png"), ("fit", 320, 299)),
    ("small-enlarged-fit", lambda: photo("chelsea.png").crop((150, 60, 210, 100)), ("fit", 256, 224)),
    ("strip-fit", lambda: photo("coffee.png").crop((0, 180, 600, 210)), ("fit", 256, 224)),  # 600x30
    ("coffee-fractional-box", lambda: photo("coffee.png"), ("pillow", (10.25, 20.5, 590.75, 380.125), (123, 77))),
    ("astronaut-shrunk-16x-30x", lambda: photo("astronaut.png"), ("pillow", (0, 0, 512, 512), (31, 17))),
    ("rocket-enlarged-box", lambda: photo("rocket.jpg"), ("pillow", (100.5, 50.25, 300.75, 250.125), (300, 310))),
    ("chelsea-same-size", lambda: photo("chelsea.png"), ("pillow", (0, 0, 451, 300), (451, 300))),
    ("chelsea-wider-and-lower", lambda: photo("chelsea.png"), ("pillow", (0, 0, 451, 300), (600, 200))),
    ("astronaut-rows-first-at-the-limit", lambda: photo("astronaut.png"), ("pillow", (0, 0, 512, 512), (312, 112))),
    ("astronaut-columns-first-past-it", lambda: photo("astronaut.png"), ("pillow", (0, 0, 512, 512), (313, 112))),
]


def pillows_output(image: Image.Image, what: tuple) -> Image.Image:
    if what[0] == "fit":
        return Image.fromarray(fit_to_model(image, what[1], what[2]))
    box, size = what[1], what[2]
    return image.resize(size, RESIZE_FILTER, box=box)


def case_line(name: str, what: tuple) -> str:
    parameters = what[1:] if what[0] == "fit" else (*what[1], *what[2])
    return " ".join([what[0], f"{name}.png", f"{name}.expected.png", *map(repr, parameters)])


def write_cases(folder: Path, cases) -> Path:
    """Each case's input and Pillow's output as PNGs, and the list test_resize reads."""
    lines = []
    for name, make_input, what in cases:
        image = make_input()
        image.save(folder / f"{name}.png")
        pillows_output(image, what).save(folder / f"{name}.expected.png")
        lines.append(case_line(name, what))
    (folder / "cases.txt").write_text("\n".join(lines) + "\n")
    return folder / "cases.txt"


def run_test_resize(cpp_build: Path, cases: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(cpp_build / "test_resize"), str(cases)], capture_output=True, text=True, timeout=120)


def test_the_resampler_equals_pillow_exactly(cpp_build, tmp_path):
    completed = run_test_resize(cpp_build, write_cases(tmp_path, CASES))
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert sum(line.startswith("ok ") for line in completed.stdout.splitlines()) == len(CASES), completed.stdout
    assert completed.stdout.splitlines()[-1] == f"{len(CASES)} passed, 0 failed"


def test_a_single_value_off_by_one_fails(cpp_build, tmp_path):
    """The comparison itself: one value of Pillow's output changed by 1 is reported, with where it stands."""
    cases = write_cases(tmp_path, CASES[:1])
    expected = tmp_path / f"{CASES[0][0]}.expected.png"
    pixels = np.asarray(Image.open(expected)).copy()
    pixels[100, 50, 1] ^= 1
    Image.fromarray(pixels).save(expected)
    completed = run_test_resize(cpp_build, cases)
    assert completed.returncode == 1, completed.stdout + completed.stderr
    assert "FAIL fit chelsea-fit.png" in completed.stdout
    assert "1 of 150528 values differ, by up to 1" in completed.stdout
