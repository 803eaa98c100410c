"""Images the tests make: odd modes, EXIF rotation, broken files, headers that lie about their size."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import skimage
from PIL import Image, PngImagePlugin

# scikit-image's real sample photos: chelsea.png is a cat, coffee.png an espresso, ...
PHOTOS = Path(skimage.data_dir)
CAT_LABELS = {"tabby", "tiger cat", "Egyptian cat"}


def photo_bytes(name: str) -> bytes:
    return (PHOTOS / name).read_bytes()


def encode(image: Image.Image, format: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **params)
    return buffer.getvalue()


def half_red_half_blue(width: int = 64, height: int = 32) -> Image.Image:
    """Left half red, right half blue: orientation and channel order both show."""
    image = Image.new("RGB", (width, height), (255, 0, 0))
    image.paste((0, 0, 255), (width // 2, 0, width, height))
    return image


def exif_orientation(orientation: int) -> bytes:
    """An EXIF block that says only how the picture is turned."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def jpeg_with_orientation(image: Image.Image, orientation: int) -> bytes:
    return encode(image, "JPEG", exif=exif_orientation(orientation), quality=100, subsampling=0)


def xmp_with_orientation(orientation: int) -> str:
    """An XMP packet that says only how the picture is turned (tiff:Orientation, as an attribute)."""
    return ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF><rdf:Description '
            f'xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="{orientation}"/></rdf:RDF></x:xmpmeta>')


# Each place Pillow reads a PNG's orientation from (png_oriented_by writes one), and the type of its chunk.
PNG_ORIENTATION_CARRIERS = {"eXIf": b"eXIf", "tEXt raw profile": b"tEXt", "zTXt raw profile": b"zTXt",
                            "iTXt XMP": b"iTXt"}


def png_oriented_by(carrier: str, image: Image.Image, orientation: int) -> bytes:
    """A PNG that says how it is turned in one of the chunks Pillow reads an orientation from: an eXIf chunk,
    ImageMagick's hex "raw profile" in a tEXt or zTXt chunk, or XMP's tiff:Orientation in an iTXt chunk."""
    exif = exif_orientation(orientation)
    if carrier == "eXIf":
        return encode(image, "PNG", exif=exif)
    info = PngImagePlugin.PngInfo()
    if carrier in ("tEXt raw profile", "zTXt raw profile"):
        info.add_text("Raw profile type exif", f"\nexif\n{len(exif):8d}\n{exif.hex()}\n", zip=carrier.startswith("z"))
    elif carrier == "iTXt XMP":
        info.add_itxt("XML:com.adobe.xmp", xmp_with_orientation(orientation))
    else:
        raise ValueError(carrier)
    return encode(image, "PNG", pnginfo=info)


def png_chunk_moved_after_pixels(data: bytes, kind: bytes) -> bytes:
    """The PNG with its first chunk of type `kind` moved to just before IEND, where encoders may also put it."""
    chunks, position = [], 8
    while position < len(data):
        length = struct.unpack(">I", data[position:position + 4])[0]
        chunks.append(data[position:position + 12 + length])
        position += 12 + length
    moved = next(chunk for chunk in chunks if chunk[4:8] == kind)
    chunks.remove(moved)
    return data[:8] + b"".join(chunks[:-1]) + moved + chunks[-1]


def png_claiming_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb's calling card)."""
    data = bytearray(encode(Image.new("L", (1, 1)), "PNG"))
    ihdr_start = 8 + 4  # signature, then the IHDR chunk's length field
    data[ihdr_start + 4:ihdr_start + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr_start:ihdr_start + 4 + 13]))
    data[ihdr_start + 4 + 13:ihdr_start + 4 + 17] = struct.pack(">I", crc)
    return bytes(data)


def png_rgb16(width: int, height: int, sample: int) -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write one), every sample equal to `sample`."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    row = b"\0" + struct.pack(">H", sample) * 3 * width
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(row * height)) + chunk(b"IEND", b""))


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (32, 32), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


MULTIPART_CONTENT_TYPE = "multipart/form-data; boundary=b"  # upload_of_size's


def upload_of_size(size: int) -> bytes:
    """A multipart/form-data body of exactly `size` bytes with one field `image`: zeros, not an image."""
    head = b'--b\r\nContent-Disposition: form-data; name="image"; filename="x"\r\n\r\n'
    tail = b"\r\n--b--\r\n"
    return head + b"\0" * (size - len(head) - len(tail)) + tail
