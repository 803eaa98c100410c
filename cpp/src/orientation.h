// How an image says it is turned (its EXIF orientation, 1-8) and turning it upright, as the service does with
// Pillow's ImageOps.exif_transpose.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include <opencv2/core.hpp>

namespace classify {

// The orientation tag of an EXIF block: a TIFF header and its first IFD, with or without the "Exif\0\0" that
// JPEG's APP1 segment and ImageMagick's raw profile put before it. Empty when the block has no such tag.
std::optional<unsigned> exif_orientation_tag(const uint8_t* block, size_t size);

// The orientation Pillow's Image.getexif finds in an image's metadata: the EXIF block's tag, else (no block, or
// one without the tag) the first digit of XMP's tiff:Orientation, written as an attribute or an element. 1 when
// neither says anything.
unsigned metadata_orientation(const std::optional<std::string>& exif, const std::optional<std::string>& xmp);

// Turn a decoded image upright as orientation 1-8 says (as OpenCV's IMREAD_COLOR does); other values leave it.
cv::Mat apply_orientation(cv::Mat image, unsigned orientation);

}  // namespace classify
