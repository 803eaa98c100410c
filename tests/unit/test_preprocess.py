import io
import threading
import time

import numpy as np
import pytest
import torchvision.transforms as T
from PIL import Image

from serving.preprocess import SPNG_MAX_PIXELS, ImageError, decode, decode_image, fit_to_model, prepare, read_header
from tests.images import (
    PHOTOS,
    PNG_ORIENTATION_CARRIERS,
    animated_gif,
    encode,
    exif_orientation,
    half_red_half_blue,
    jpeg_with_orientation,
    photo_bytes,
    png_chunk_moved_after_pixels,
    png_claiming_size,
    png_oriented_by,
    png_rgb16,
)

LIMIT = 40_000_000


@pytest.mark.parametrize("name", ["chelsea.png", "coffee.png", "rocket.jpg", "astronaut.png", "camera.png"])
def test_geometry_matches_torchvision_resize_then_center_crop(name):
    image = decode_image((PHOTOS / name).read_bytes(), LIMIT)
    expected = np.asarray(T.Compose([T.Resize(256), T.CenterCrop(224)])(image), dtype=int)
    ours = fit_to_model(image, 256, 224).astype(int)
    assert ours.shape == (224, 224, 3)
    assert np.abs(ours - expected).max() <= 1  # rounding of the bilinear filter only


def test_geometry_matches_torchvision_for_a_portrait_photo_too():
    image = decode_image((PHOTOS / "coffee.png").read_bytes(), LIMIT).transpose(Image.Transpose.ROTATE_90)
    assert image.height > image.width
    expected = np.asarray(T.Compose([T.Resize(256), T.CenterCrop(224)])(image), dtype=int)
    assert np.abs(fit_to_model(image, 256, 224).astype(int) - expected).max() <= 1


@pytest.mark.parametrize("size", [(1, 1), (20000, 3), (3, 20000), (300, 200), (224, 224)])
def test_any_size_becomes_the_model_input(size):
    pixels = fit_to_model(Image.new("RGB", size, (10, 20, 30)), 256, 224)
    assert pixels.shape == (224, 224, 3) and pixels.dtype == np.uint8
    assert (pixels == (10, 20, 30)).all()


def png_with_orientation(image: Image.Image, orientation: int) -> bytes:
    return encode(image, "PNG", exif=exif_orientation(orientation))  # an eXIf chunk


@pytest.mark.parametrize("encoder", [jpeg_with_orientation, png_with_orientation], ids=["jpeg", "png"])
def test_exif_orientation_is_applied(encoder):
    upright = half_red_half_blue(64, 32)  # red left, blue right
    rotated = encoder(upright.transpose(Image.Transpose.ROTATE_90), orientation=6)
    image = decode_image(rotated, LIMIT)
    assert image.size == (64, 32)
    left, right = image.getpixel((5, 16)), image.getpixel((58, 16))
    assert left[0] > 200 > left[2] and right[2] > 200 > right[0]


@pytest.mark.parametrize("mode, colour, expected", [
    ("L", 128, (128, 128, 128)),
    ("RGBA", (0, 0, 0, 0), (255, 255, 255)),  # fully transparent shows as white, not as hidden black
    ("RGBA", (0, 255, 0, 255), (0, 255, 0)),
    ("LA", (0, 0), (255, 255, 255)),
    ("CMYK", (0, 255, 255, 0), (255, 0, 0)),
])
def test_colour_modes_convert_to_rgb(mode, colour, expected):
    image = decode_image(encode(Image.new(mode, (8, 8), colour), "TIFF"), LIMIT)
    assert image.mode == "RGB" and image.getpixel((0, 0)) == expected


def test_cmyk_jpeg_decodes():
    image = decode_image(encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG"), LIMIT)
    red, green, blue = image.getpixel((8, 8))
    assert red > 200 and green < 60 and blue < 60


def test_palette_gif_with_transparency_decodes():
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image = decode_image(encode(palette, "GIF", transparency=0), LIMIT)
    assert image.getpixel((0, 0)) == (255, 0, 0)


def test_the_transparent_colour_of_a_palette_image_shows_as_white():
    palette = Image.new("P", (8, 8), 0)  # index 0: black, and transparent
    palette.paste(1, (4, 0, 8, 8))  # index 1: red
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image = decode_image(encode(palette, "GIF", transparency=0), LIMIT)
    assert image.getpixel((0, 0)) == (255, 255, 255) and image.getpixel((7, 7)) == (255, 0, 0)


def test_sixteen_bit_png_is_scaled_not_clipped():
    image = decode_image(encode(Image.new("I;16", (8, 8), 32768), "PNG"), LIMIT)
    assert image.getpixel((0, 0)) == (128, 128, 128)


@pytest.mark.parametrize("data, code", [
    (b"", "empty_image"),
    (b"hello, I am a text file\n", "invalid_image"),
    (encode(Image.new("RGB", (64, 64)), "JPEG")[:200], "invalid_image"),  # truncated
    (png_claiming_size(30000, 30000), "image_too_large"),
    (png_claiming_size(7000, 7000), "image_too_large"),  # under Pillow's own limit, over ours
], ids=["empty", "text", "truncated-jpeg", "bomb", "over-limit"])
def test_bad_uploads_raise_a_coded_image_error(data, code):
    with pytest.raises(ImageError) as caught:
        decode_image(data, LIMIT)
    assert caught.value.code == code


def test_max_pixels_is_the_largest_image_accepted_and_a_refusal_says_why():
    assert read_header(png_claiming_size(100, 50), max_pixels=5000).header.size == (100, 50)
    with pytest.raises(ImageError) as caught:
        read_header(png_claiming_size(100, 50), max_pixels=4999)
    assert str(caught.value) == "image is 100x50 pixels; the limit is 4999 pixels"
    with pytest.raises(ImageError) as caught:
        read_header(png_claiming_size(30000, 30000), LIMIT)  # past Pillow's own bomb limit too
    assert str(caught.value) == f"image is larger than the limit of {LIMIT} pixels"
    with pytest.raises(ImageError) as caught:
        read_header(b"", LIMIT)
    assert str(caught.value) == "the uploaded file is empty"


def test_prepare_goes_from_bytes_to_model_input():
    pixels = prepare((PHOTOS / "chelsea.png").read_bytes(), 256, 224, LIMIT)
    assert pixels.shape == (224, 224, 3) and pixels.dtype == np.uint8


def test_sixteen_bit_rgb_png_decodes_to_its_8_bit_colour():
    assert decode_image(png_rgb16(4, 4, 32768), LIMIT).getpixel((0, 0)) == (128, 128, 128)


def test_an_animated_gif_is_classified_by_its_first_frame():
    assert decode_image(animated_gif(), LIMIT).getpixel((0, 0)) == (255, 0, 0)


def test_a_large_jpeg_is_decoded_at_reduced_scale_but_never_below_the_resize_size():
    photo = Image.open(PHOTOS / "chelsea.png").convert("RGB").resize((1804, 1200))  # 4x: libjpeg may halve twice
    data = encode(photo, "JPEG", quality=95)
    assert decode_image(data, LIMIT, min_side=256).size == (451, 300)
    assert decode_image(data, LIMIT, min_side=400).size == (902, 600)
    assert decode_image(data, LIMIT).size == (1804, 1200)


def test_reduced_scale_decoding_changes_the_model_input_only_slightly():
    photo = Image.open(PHOTOS / "coffee.png").convert("RGB").resize((2400, 1600))
    data = encode(photo, "JPEG", quality=95)
    full = fit_to_model(decode_image(data, LIMIT), 256, 224).astype(int)
    reduced = prepare(data, 256, 224, LIMIT).astype(int)
    assert np.abs(full - reduced).mean() < 2.0


def pillow_rgb(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.mark.parametrize("name", ["chelsea.png", "coffee.png", "astronaut.png", "motorcycle_left.png"])
def test_plain_pngs_are_decoded_by_libspng_to_exactly_pillows_pixels(name):
    upload = read_header(photo_bytes(name), LIMIT)
    assert upload.for_libspng
    assert np.array_equal(np.asarray(decode(upload)), pillow_rgb(upload.data))


def test_an_interlaced_rgba_png_takes_the_fast_path_and_is_composited_on_white():
    image = Image.new("RGBA", (40, 30), (255, 0, 0, 255))
    image.paste((0, 0, 255, 0), (20, 0, 40, 30))  # right half fully transparent
    upload = read_header(encode(image, "PNG", interlace=1), LIMIT)
    assert upload.for_libspng
    decoded = decode(upload)
    assert decoded.getpixel((0, 0)) == (255, 0, 0) and decoded.getpixel((39, 0)) == (255, 255, 255)


@pytest.mark.parametrize("data", [
    png_rgb16(4, 4, 32768),
    encode(Image.new("P", (8, 8)), "PNG"),
    encode(Image.new("L", (8, 8)), "PNG"),
], ids=["16-bit", "palette", "grey"])
def test_other_pngs_are_left_to_pillow(data):
    assert not read_header(data, LIMIT).for_libspng


def turned_png(carrier: str) -> tuple[Image.Image, bytes]:
    upright = half_red_half_blue(64, 32)
    return upright, png_oriented_by(carrier, upright.transpose(Image.Transpose.ROTATE_90), orientation=6)


@pytest.mark.parametrize("carrier", PNG_ORIENTATION_CARRIERS)
def test_a_png_turned_by_any_chunk_pillow_reads_before_its_pixels_is_decoded_by_libspng_upright(carrier):
    upright, data = turned_png(carrier)
    upload = read_header(data, LIMIT)
    assert upload.for_libspng
    assert np.array_equal(np.asarray(decode(upload)), np.asarray(upright))


@pytest.mark.parametrize("carrier", PNG_ORIENTATION_CARRIERS)
def test_a_png_turned_by_a_chunk_after_its_pixels_is_left_to_pillow_which_reads_it_when_decoding(carrier):
    upright, data = turned_png(carrier)
    upload = read_header(png_chunk_moved_after_pixels(data, PNG_ORIENTATION_CARRIERS[carrier]), LIMIT)
    assert not upload.for_libspng
    assert np.array_equal(np.asarray(decode(upload)), np.asarray(upright))



def test_a_png_over_the_libspng_limit_decodes_in_pillow_and_lets_the_processs_other_threads_run():
    """libspng holds the GIL while it decodes: a 36-megapixel scan froze every thread of its API process for
    seconds (another request's Redis call, a health check). Pillow's decoder releases it: a thread that wakes
    every 2 ms keeps waking while the large PNG decodes (beside libspng it slept through the whole inflate)."""
    side = int(SPNG_MAX_PIXELS ** 0.5) * 2
    noise = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)  # costly to inflate, as photos
    upload = read_header(encode(Image.fromarray(noise), "PNG", compress_level=1), LIMIT)
    assert not upload.for_libspng
    wakes, decoding = [], threading.Event()

    def wake_every_2_ms():
        while decoding.is_set():
            time.sleep(0.002)
            wakes.append(time.perf_counter())

    decoding.set()
    waker = threading.Thread(target=wake_every_2_ms)
    waker.start()
    started = time.perf_counter()
    decoded = decode(upload)
    finished = time.perf_counter()
    decoding.clear()
    waker.join()
    assert np.array_equal(np.asarray(decoded), pillow_rgb(upload.data))
    during = [wake for wake in wakes if started < wake < finished]
    longest_wait = max(np.diff([started, *during, finished]))
    assert longest_wait < (finished - started) / 4, (longest_wait, finished - started)


def test_a_truncated_plain_png_is_an_invalid_image():
    data = photo_bytes("chelsea.png")
    upload = read_header(data[:len(data) // 2], LIMIT)
    assert upload.for_libspng
    with pytest.raises(ImageError) as caught:
        decode(upload)
    assert caught.value.code == "invalid_image"
