// WebP specifics: how a WebP says it is turned, read where Pillow reads it.
#pragma once

#include <cstdint>
#include <vector>

namespace classify {

bool is_webp(const std::vector<uint8_t>& bytes);

// The orientation the service applies to a WebP: its EXIF chunk's, else its XMP chunk's (Pillow reads both
// into the image's info). 1 when neither says anything; OpenCV applies neither.
unsigned webp_orientation(const std::vector<uint8_t>& bytes);

}  // namespace classify
