#include "decode.h"

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <fstream>
#include <iostream>
#include <sstream>
#include <vector>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "jpeg.h"
#include "orientation.h"
#include "png.h"
#include "webp.h"

namespace classify {
namespace {

// Why OpenCV gave no pixels, in one line: its own exception text it prints to stderr, or the format.
std::string undecodable_reason(const std::vector<uint8_t>& bytes, const std::string& opencv_said) {
  static const std::string kGif = "GIF8";
  if (bytes.size() >= kGif.size() && std::equal(kGif.begin(), kGif.end(), bytes.begin()))
    return "GIF is not among the formats this client decodes (OpenCV " CV_VERSION " has no GIF reader)";
  static const std::string kMarker = "error: ";
  auto at = opencv_said.find(kMarker);
  if (at == std::string::npos) return "OpenCV cannot decode it as an image";
  auto unsupported = opencv_said.find("Unsupported");  // past the function signature, to what went wrong
  std::string detail;  // its layout ("> " quoting, line breaks, indents) folded into single spaces
  for (char c : opencv_said.substr(unsupported != std::string::npos ? unsupported : at + kMarker.size())) {
    bool blank = c == '>' || std::isspace(static_cast<unsigned char>(c));
    if (!blank)
      detail += c;
    else if (!detail.empty() && detail.back() != ' ')
      detail += ' ';
  }
  while (!detail.empty() && detail.back() == ' ') detail.pop_back();
  return "OpenCV cannot decode it: " + detail.substr(0, 160);
}

// The whole file, or why not.
bool read_file(const std::filesystem::path& path, std::vector<uint8_t>& bytes, std::string& why_not) {
  std::ifstream file(path, std::ios::binary | std::ios::ate);
  if (!file) {
    why_not = "cannot open it";
    return false;
  }
  bytes.resize(static_cast<size_t>(file.tellg()));
  file.seekg(0);
  if (bytes.empty() || !file.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()))) {
    why_not = bytes.empty() ? "the file is empty" : "cannot read it";
    return false;
  }
  return true;
}

// OpenCV's imdecode: JPEGs with IMREAD_COLOR (or REDUCED), which applies the EXIF orientation; others
// with IMREAD_UNCHANGED, which keeps alpha and depth. OpenCV prints a page about a file it cannot read
// to std::cerr; that is captured into `opencv_said` to become part of one warning line instead.
cv::Mat opencv_decode(const std::vector<uint8_t>& bytes, int min_side, std::string& opencv_said) {
  std::ostringstream said;
  std::streambuf* stderr_buffer = std::cerr.rdbuf(said.rdbuf());
  cv::Mat image = cv::imdecode(bytes, is_jpeg(bytes) ? opencv_draft_flag(bytes, min_side) : cv::IMREAD_UNCHANGED);
  std::cerr.rdbuf(stderr_buffer);
  opencv_said = said.str();
  return image;
}

// BGRA to BGR over a white background, as the service composites transparency.
cv::Mat on_white(const cv::Mat& bgra_image) {
  cv::Mat bgra[4];
  cv::split(bgra_image, bgra);
  cv::Mat alpha, white_weight;
  bgra[3].convertTo(alpha, CV_32F, 1.0 / 255.0);
  white_weight = 1.0 - alpha;
  for (int c = 0; c < 3; ++c) {
    cv::Mat channel;
    bgra[c].convertTo(channel, CV_32F);
    channel = channel.mul(alpha) + white_weight * 255.0;
    channel.convertTo(bgra[c], CV_8U);
  }
  cv::Mat bgr;
  cv::merge(bgra, 3, bgr);
  return bgr;
}

Decoded not_decoded(const std::string& why_not) { return {cv::Mat(), false, why_not}; }

}  // namespace

Decoded decode_image(const std::filesystem::path& path, int min_side) {
  std::vector<uint8_t> bytes;
  std::string why_not;
  if (!read_file(path, bytes, why_not)) return not_decoded(why_not);
  if (is_jpeg(bytes)) {
    cv::Mat rgb = decode_jpeg_rgb(bytes, min_side);
    if (!rgb.empty()) return {rgb, true, ""};
  }
  std::string opencv_said;
  cv::Mat image = opencv_decode(bytes, min_side, opencv_said);
  if (image.empty()) return not_decoded(undecodable_reason(bytes, opencv_said));
  // IMREAD_UNCHANGED applies no orientation, and OpenCV reads none from a PNG or a WebP (libtiff turns a TIFF)
  if (is_png(bytes)) image = apply_orientation(image, png_orientation(bytes));
  if (is_webp(bytes)) image = apply_orientation(image, webp_orientation(bytes));
  if (image.depth() == CV_16U) image.convertTo(image, CV_8U, 1.0 / 256.0);
  if (image.depth() != CV_8U)
    return not_decoded("samples of OpenCV depth " + std::to_string(image.depth()) +
                       " (not 8 or 16 bit) are not decoded by this client");
  switch (image.channels()) {
    case 1: {
      cv::Mat bgr;
      cv::cvtColor(image, bgr, cv::COLOR_GRAY2BGR);
      return {bgr, false, ""};
    }
    case 3: return {image, false, ""};
    case 4: return {on_white(image), false, ""};
    default: return not_decoded(std::to_string(image.channels()) + " channels are not decoded by this client");
  }
}

}  // namespace classify
