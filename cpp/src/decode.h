// Reading an image file as the service decodes an upload (serving/preprocess.py).
#pragma once

#include <filesystem>
#include <string>

#include <opencv2/core.hpp>

namespace classify {

// An image as decoded: 8-bit, 3 channels, in OpenCV's BGR order or (JPEGs through libjpeg) RGB;
// or no pixels and why not.
struct Decoded {
  cv::Mat pixels;
  bool rgb = false;
  std::string why_not;
};

// Decode as the service does: JPEGs at a reduced scale when both sides stay at least min_side, EXIF
// orientation applied, 16-bit scaled to 8, transparency on white, grey to colour. Resampling treats
// channels alike, so only the small crop is put in RGB order. Empty pixels when the file cannot be decoded.
Decoded decode_image(const std::filesystem::path& path, int min_side);

}  // namespace classify
