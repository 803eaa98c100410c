"""The C++ client (cpp/build/classify): built by `make cpp`, it agrees with the service and fails clearly.

Building is part of the test (the cpp_build fixture): a missing compiler, libtorch or OpenCV is a failure, not a skip.
The measurement switches belong to cpp/build/classify-bench, the same client built with them.
"""

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model_files import CARD_FILE
from serving.preprocess import prepare
from tests.images import (
    CAT_LABELS,
    PHOTOS,
    PNG_ORIENTATION_CARRIERS,
    encode,
    exif_orientation,
    jpeg_with_orientation,
    png_chunk_moved_after_pixels,
    png_oriented_by,
    xmp_with_orientation,
)
from tests.reference import COLOUR_PHOTOS, reference_top3

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TS = ROOT / "models" / "efficientnet_lite0.ts.pt"
PNG_PHOTOS = [name for name in COLOUR_PHOTOS if name.endswith(".png")]


@pytest.fixture(scope="module")
def classify(cpp_build) -> Path:
    assert (cpp_build / "classify").is_file() and DEFAULT_TS.is_file()
    return cpp_build / "classify"


@pytest.fixture(scope="module")
def classify_bench(cpp_build) -> Path:
    assert (cpp_build / "classify-bench").is_file()
    return cpp_build / "classify-bench"


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for name in COLOUR_PHOTOS:
        shutil.copy(PHOTOS / name, folder / name)
    return folder


def run(classify: Path, *args, cwd=ROOT / "cpp") -> subprocess.CompletedProcess:
    return subprocess.run([str(classify), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300)


def results(completed: subprocess.CompletedProcess) -> tuple[dict[str, list[dict]], dict]:
    lines = [json.loads(line) for line in completed.stdout.splitlines()]
    return {line["file"]: line["predictions"] for line in lines if "file" in line}, lines[-1]


def test_it_agrees_with_the_service_on_the_sample_photos(classify, photo_folder):
    completed = run(classify, "--json", "--topk", 3, "--batch", 4, photo_folder)  # default model, from cpp/
    assert completed.returncode == 0, completed.stderr
    predictions, summary = results(completed)
    assert sorted(predictions) == sorted(COLOUR_PHOTOS)  # every photo, in sorted order
    assert list(predictions) == sorted(COLOUR_PHOTOS)
    expected = reference_top3([(PHOTOS / name).read_bytes() for name in sorted(COLOUR_PHOTOS)])
    for name, top3 in zip(sorted(COLOUR_PHOTOS), expected):
        ours = predictions[name][0]
        assert ours["index"] == top3[0][0], name
        assert abs(ours["probability"] - top3[0][1]) <= 0.05, name
    assert predictions["chelsea.png"][0]["label"] in CAT_LABELS
    assert predictions["coffee.png"][0]["label"] == "espresso"
    assert summary["images"] == len(COLOUR_PHOTOS) and summary["images_per_s"] > 0
    assert summary["batches"] == 3 and len(summary["warmup_ms"]) == 4  # batch shapes 4 and 2, twice each


def test_its_preprocessing_is_the_services_pixel_for_pixel(classify, photo_folder, tmp_path):
    completed = run(classify, "--json", "--save-crops", tmp_path, photo_folder)
    assert completed.returncode == 0, completed.stderr
    for name in COLOUR_PHOTOS:
        ours = np.asarray(Image.open(tmp_path / f"{name}.png").convert("RGB"), dtype=np.int16)
        service = prepare((PHOTOS / name).read_bytes(), 256, 224, 10**9).astype(np.int16)
        difference = np.abs(ours - service)
        if name in PNG_PHOTOS:  # same pixels decoded: the resampling is Pillow's, bit for bit
            assert difference.max() <= 1 and (difference > 0).mean() < 0.001, name
        else:  # libjpeg versions differ in their last bit here and there
            assert difference.mean() < 1.0, name


def test_jpegs_are_turned_upright_by_their_exif_orientation(classify, tmp_path):
    photos, crops = tmp_path / "photos", tmp_path / "crops"
    photos.mkdir()
    rocket = Image.open(PHOTOS / "rocket.jpg")
    for orientation in range(1, 9):
        (photos / f"{orientation}.jpg").write_bytes(jpeg_with_orientation(rocket, orientation))
    completed = run(classify, "--json", "--save-crops", crops, photos)
    assert completed.returncode == 0, completed.stderr
    for orientation in range(1, 9):
        ours = np.asarray(Image.open(crops / f"{orientation}.jpg.png").convert("RGB"), dtype=np.int16)
        service = prepare((photos / f"{orientation}.jpg").read_bytes(), 256, 224, 10**9).astype(np.int16)
        assert np.abs(ours - service).max() <= 1, orientation


def assert_crops_are_the_services_of_turned_chelseas(classify: Path, photos: Path, crops: Path) -> None:
    """Every photo in the folder is chelsea.png stored turned: the client's crop of it is the service's, which is
    not the upright photo's (the service did turn it)."""
    completed = run(classify, "--json", "--save-crops", crops, photos)
    assert completed.returncode == 0, completed.stderr
    upright = prepare((PHOTOS / "chelsea.png").read_bytes(), 256, 224, 10**9)
    for photo in sorted(photos.iterdir()):
        ours = np.asarray(Image.open(crops / f"{photo.name}.png").convert("RGB"), dtype=np.int16)
        service = prepare(photo.read_bytes(), 256, 224, 10**9).astype(np.int16)
        assert not np.array_equal(service, upright), photo.name
        assert np.abs(ours - service).max() <= 1, photo.name


def test_pngs_are_turned_upright_wherever_the_service_reads_their_orientation(classify, tmp_path):
    """Pillow reads a PNG's orientation from an eXIf chunk, ImageMagick's raw EXIF profile (tEXt, zTXt) or XMP
    (iTXt), before the pixels or after them; OpenCV reads none of them, so the client does."""
    photos = tmp_path / "photos"
    photos.mkdir()
    chelsea = Image.open(PHOTOS / "chelsea.png").convert("RGB")
    for carrier, kind in PNG_ORIENTATION_CARRIERS.items():
        for orientation in (3, 6, 7):
            turned = png_oriented_by(carrier, chelsea, orientation)
            name = f"{carrier.replace(' ', '-')}-{orientation}"
            (photos / f"{name}-before.png").write_bytes(turned)
            (photos / f"{name}-after.png").write_bytes(png_chunk_moved_after_pixels(turned, kind))
    assert_crops_are_the_services_of_turned_chelseas(classify, photos, tmp_path / "crops")


def test_webps_and_tiffs_are_turned_upright_as_the_service_turns_them(classify, tmp_path):
    """A WebP by its EXIF chunk or, without one, its XMP chunk (OpenCV reads neither); a TIFF by its orientation
    tag, which libtiff applies under OpenCV."""
    photos = tmp_path / "photos"
    photos.mkdir()
    chelsea = Image.open(PHOTOS / "chelsea.png").convert("RGB")
    for orientation in (3, 6, 7):
        (photos / f"exif-{orientation}.webp").write_bytes(
            encode(chelsea, "WEBP", lossless=True, exif=exif_orientation(orientation)))
        (photos / f"xmp-{orientation}.webp").write_bytes(
            encode(chelsea, "WEBP", lossless=True, xmp=xmp_with_orientation(orientation).encode()))
        (photos / f"tag-{orientation}.tiff").write_bytes(encode(chelsea, "TIFF", exif=exif_orientation(orientation)))
    assert_crops_are_the_services_of_turned_chelseas(classify, photos, tmp_path / "crops")


def test_batch_size_does_not_change_the_answers(classify, photo_folder):
    one, _ = results(run(classify, "--json", "--batch", 1, "--threads", 1, photo_folder))
    eight, _ = results(run(classify, "--json", "--batch", 8, photo_folder))
    for name in COLOUR_PHOTOS:
        assert [p["index"] for p in one[name]] == [p["index"] for p in eight[name]]
        assert np.allclose([p["probability"] for p in one[name]], [p["probability"] for p in eight[name]], atol=1e-4)


def test_overlapped_decoding_and_kept_memory_do_not_change_the_answers(classify_bench, photo_folder):
    fast, summary = results(run(classify_bench, "--json", "--batch", 3, "--threads", 1, "--overlap", photo_folder))
    plain, plain_summary = results(run(classify_bench, "--json", "--batch", 3, "--threads", 1, "--no-overlap",
                                       "--malloc-default", photo_folder))
    assert summary["overlap"] is True and plain_summary["overlap"] is False
    assert list(fast) == list(plain) == sorted(COLOUR_PHOTOS)
    assert fast == plain  # same batches, same kernels: identical probabilities


MEASUREMENT_SWITCHES = [["--no-warmup"], ["--grad-mode", "no-grad"], ["--overlap"], ["--no-overlap"],
                        ["--malloc-default"], ["--resize", "opencv"]]


@pytest.mark.parametrize("switch", MEASUREMENT_SWITCHES, ids=lambda switch: switch[0])
def test_the_measurement_switches_are_classify_benchs_not_classifys(classify, classify_bench, tmp_path, switch):
    completed = run(classify, *switch, tmp_path)
    assert completed.returncode == 2 and f"unknown option {switch[0]}" in completed.stderr
    assert switch[0] not in run(classify, "--help").stdout
    assert switch[0] in run(classify_bench, "--help").stdout


def test_classify_bench_runs_with_the_measurement_switches(classify_bench, photo_folder):
    completed = run(classify_bench, "--json", "--no-warmup", "--grad-mode", "enabled", "--resize", "opencv",
                    photo_folder)
    assert completed.returncode == 0, completed.stderr
    predictions, summary = results(completed)
    assert list(predictions) == sorted(COLOUR_PHOTOS) and summary["warmup_ms"] == []
    assert predictions["coffee.png"][0]["label"] == "espresso"


def test_the_text_output_names_each_image_and_its_labels(classify, photo_folder):
    completed = run(classify, "--topk", 2, photo_folder)
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    assert lines[0] == "astronaut.png" and lines[-1].startswith("summary: 10 images")
    assert "images/s" in lines[-1] and "warm-up" in lines[-1]
    cat = lines[lines.index("chelsea.png") + 1]
    assert any(label in cat for label in CAT_LABELS)


def test_a_corrupt_image_is_a_warning_and_the_rest_is_classified(classify, tmp_path):
    shutil.copy(PHOTOS / "coffee.png", tmp_path / "coffee.png")
    (tmp_path / "broken.jpg").write_bytes((PHOTOS / "rocket.jpg").read_bytes()[:300])
    (tmp_path / "notes.txt").write_text("not an image")
    completed = run(classify, "--json", tmp_path)
    assert completed.returncode == 1
    assert "note: 1 file(s) without an image file name not read: notes.txt" in completed.stderr
    assert "skipping broken.jpg: OpenCV cannot decode it" in completed.stderr
    predictions, summary = results(completed)
    assert list(predictions) == ["coffee.png"] and summary["undecodable"] == 1


@pytest.mark.parametrize("args, message", [
    (["--model", "missing.ts.pt", "{folder}"], "model file missing.ts.pt does not exist"),
    (["{folder}/nowhere"], "image folder or file {folder}/nowhere does not exist"),
    (["{empty}"], "no image files in"),
    ([], "no image folder or file given"),
    (["--model", "{checkpoint}", "{folder}"], "a .pth checkpoint is no TorchScript file: export one with "
                                               "`python -m model_tools trace --checkpoint"),
    (["--batch", "0", "{folder}"], "--batch expects an integer >= 1"),
    (["--frobnicate", "{folder}"], "unknown option --frobnicate"),
])
def test_bad_usage_exits_2_with_a_clear_message(classify, photo_folder, tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    fields = {"folder": photo_folder, "empty": tmp_path / "empty",
              "checkpoint": ROOT / "models" / "efficientnet_lite0.pth"}
    completed = run(classify, *[a.format(**fields) for a in args])
    assert completed.returncode == 2
    assert message.format(**fields) in completed.stderr


def test_one_photo_is_classified_as_it_is_in_a_folder(classify, photo_folder):
    in_folder, _ = results(run(classify, "--json", photo_folder))
    alone = run(classify, "--json", photo_folder / "chelsea.png")
    assert alone.returncode == 0, alone.stderr
    predictions, summary = results(alone)
    assert list(predictions) == ["chelsea.png"] and summary["images"] == 1
    # A batch of one, not of the folder's eight: the same classes, probabilities to float rounding.
    one, batched = predictions["chelsea.png"], in_folder["chelsea.png"]
    assert [p["index"] for p in one] == [p["index"] for p in batched]
    assert np.allclose([p["probability"] for p in one], [p["probability"] for p in batched], atol=1e-4)


def default_model_with(path: Path, extra_files: dict[str, str]) -> Path:
    """The default TorchScript model saved again at `path` with `extra_files` instead of its own card."""
    torch.jit.save(torch.jit.load(str(DEFAULT_TS)), str(path), _extra_files=extra_files)
    return path


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.load/save are deprecated, still what libtorch reads
def test_a_model_file_without_a_card_is_refused(classify, photo_folder, tmp_path):
    bare = default_model_with(tmp_path / "bare.pt", {})
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"PK\x03\x04 not really a zip")
    completed = run(classify, "--model", bare, photo_folder)
    assert completed.returncode == 2 and f"carries no {CARD_FILE}" in completed.stderr
    completed = run(classify, "--model", junk, photo_folder)
    assert completed.returncode == 2 and "is not a TorchScript file" in completed.stderr


BAD_CARDS = {
    "nested 100,000 deep": ('{"name": "deep", "class_names": ' + "[" * 100_000 + "]" * 100_000 + "}",
                            "nested deeper than 64 levels"),
    "cut short": ('{"name": "efficientnet_lite0", "class_names": ["tench", "goldf', "unterminated string"),
    "a lone surrogate": ('{"name": "\\ud800", "class_names": ["a"], "resize_size": 256, "input_size": 224}',
                         "high surrogate without a low one after it"),
}


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("card, fault", BAD_CARDS.values(), ids=BAD_CARDS.keys())
def test_a_card_that_is_not_json_exits_2_with_one_error_line(classify, photo_folder, tmp_path, card, fault):
    """A bad card is refused before any image is read: exit status 2 and one line, never a crash (the deep card was
    a stack overflow, SIGSEGV)."""
    model = default_model_with(tmp_path / "bad_card.pt", {CARD_FILE: card})
    completed = run(classify, "--model", model, photo_folder)
    assert completed.returncode == 2, completed.stderr[-2000:]
    assert completed.stderr.startswith(f"error: {model}: unreadable {CARD_FILE}: invalid JSON at offset ")
    assert fault in completed.stderr and completed.stderr.count("\n") == 1 and completed.stdout == ""


def test_scikit_images_folder_as_the_readme_runs_it_names_each_skipped_file_in_one_line(classify):
    """The README's example: the photos are classified; a GIF and a float TIFF are skipped, one line each."""
    completed = run(classify, "--topk", 1, PHOTOS)
    assert completed.returncode == 1
    warnings = [line for line in completed.stderr.splitlines() if not line.startswith("libpng warning")]
    warnings = [re.sub(r"OpenCV [\d.]+ has", "OpenCV has", line) for line in warnings]
    assert warnings == [
        "note: 9 file(s) without an image file name not read: README.txt, __init__.py, __init__.pyi, "
        "_binary_blobs.py, ...",
        "warning: skipping multipage_rgb.tif: OpenCV cannot decode it: Unsupported depth of input image: "
        "'VDepth::contains(depth)' where 'depth' is 6 (CV_64F)",
        "warning: skipping no_time_for_that_tiny.gif: GIF is not among the formats this client decodes "
        "(OpenCV has no GIF reader)",
        "error: 2 image file(s) skipped, each named above; the other 27 were classified"], completed.stderr
    assert "chelsea.png\n    0.3773  Egyptian cat (285)" in completed.stdout

