// JPEG specifics: the scale the service decodes a JPEG at, and decoding one straight to RGB.
#pragma once

#include <cstdint>
#include <vector>

#include <opencv2/core.hpp>

namespace classify {

bool is_jpeg(const std::vector<uint8_t>& bytes);

// OpenCV's imdecode flag for a JPEG at the service's draft scale (see draft_denominator in jpeg.cpp):
// IMREAD_REDUCED_COLOR_2/4/8 or IMREAD_COLOR, all of which apply the EXIF orientation.
int opencv_draft_flag(const std::vector<uint8_t>& bytes, int min_side);

// A JPEG decoded by libjpeg(-turbo) to RGB at the service's draft scale and turned upright by its EXIF
// orientation; empty when libjpeg cannot (CMYK, a broken file) or the build has no libjpeg headers
// (CMakeLists.txt), and the caller lets OpenCV try.
cv::Mat decode_jpeg_rgb(const std::vector<uint8_t>& bytes, int min_side);

}  // namespace classify
