// JPEGs straight through libjpeg(-turbo), the library OpenCV and Pillow use: decoded to RGB at the draft
// scale, where OpenCV 4.6 decodes to RGB and then swaps every pixel to BGR in a plain byte loop (its
// largest cost after the IDCT here), only for us to swap the crop back.
#include "jpeg.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include <opencv2/imgcodecs.hpp>

#ifdef CLASSIFY_HAVE_LIBJPEG
#include <csetjmp>
#include <cstdio>  // before jpeglib.h, which uses FILE without declaring it

#include <jpeglib.h>
#endif

#include "orientation.h"

namespace classify {
namespace {

// Width and height a JPEG stores (before EXIF rotation), from its start-of-frame marker; 0, 0 if none.
std::pair<int, int> jpeg_size(const std::vector<uint8_t>& b) {
  size_t i = 2;
  while (i + 9 < b.size()) {
    if (b[i] != 0xFF) return {0, 0};
    uint8_t marker = b[i + 1];
    if (marker == 0xFF) {
      ++i;
      continue;
    }
    size_t length = (size_t(b[i + 2]) << 8) | b[i + 3];
    bool start_of_frame = marker >= 0xC0 && marker <= 0xCF && marker != 0xC4 && marker != 0xC8 && marker != 0xCC;
    if (start_of_frame) return {(b[i + 7] << 8) | b[i + 8], (b[i + 5] << 8) | b[i + 6]};
    i += 2 + length;
  }
  return {0, 0};
}

// The scale the service decodes a JPEG at (Pillow's draft mode, serving/preprocess.py), as the
// denominator of 1/8, 1/4, 1/2 or 1/1: the largest of 8, 4, 2 that keeps both stored sides at
// least min_side, else 1 (also for unknown sizes). libjpeg does the scaling inside the DCT, for
// Pillow and for OpenCV's IMREAD_REDUCED_COLOR_* alike.
int draft_denominator(int width, int height, int min_side) {
  if (width <= 0 || height <= 0 || min_side <= 0) return 1;
  int scale = std::min(width / min_side, height / min_side);
  return scale >= 8 ? 8 : scale >= 4 ? 4 : scale >= 2 ? 2 : 1;
}

}  // namespace

bool is_jpeg(const std::vector<uint8_t>& bytes) { return bytes.size() > 2 && bytes[0] == 0xFF && bytes[1] == 0xD8; }

int opencv_draft_flag(const std::vector<uint8_t>& bytes, int min_side) {
  auto [width, height] = jpeg_size(bytes);
  switch (draft_denominator(width, height, min_side)) {
    case 8: return cv::IMREAD_REDUCED_COLOR_8;
    case 4: return cv::IMREAD_REDUCED_COLOR_4;
    case 2: return cv::IMREAD_REDUCED_COLOR_2;
    default: return cv::IMREAD_COLOR;
  }
}

#ifdef CLASSIFY_HAVE_LIBJPEG
namespace {

// The EXIF orientation of a JPEG's APP1 segment; 1 when there is none or it is unreadable.
unsigned exif_orientation(const std::vector<uint8_t>& b) {
  size_t i = 2;
  while (i + 4 <= b.size() && b[i] == 0xFF) {
    uint8_t marker = b[i + 1];
    size_t length = (size_t(b[i + 2]) << 8) | b[i + 3];
    if (marker == 0xDA || length < 2) break;  // start of scan: no more metadata
    size_t start = i + 4, end = std::min(b.size(), i + 2 + length);
    if (marker == 0xE1 && end - start >= 14 && std::memcmp(&b[start], "Exif\0\0", 6) == 0)
      return exif_orientation_tag(&b[start], end - start).value_or(1);
    i += 2 + length;
  }
  return 1;
}

struct JpegErrorJump {
  jpeg_error_mgr manager;
  std::jmp_buf jump;
};

}  // namespace

cv::Mat decode_jpeg_rgb(const std::vector<uint8_t>& bytes, int min_side) {
  jpeg_decompress_struct info;
  JpegErrorJump error;
  info.err = jpeg_std_error(&error.manager);
  error.manager.error_exit = [](j_common_ptr common) {
    std::longjmp(reinterpret_cast<JpegErrorJump*>(common->err)->jump, 1);
  };
  error.manager.output_message = [](j_common_ptr) {};  // warnings (a truncated file) as OpenCV: quietly
  cv::Mat image;  // constructed before setjmp: nothing with a destructor is created between setjmp and longjmp
  if (setjmp(error.jump)) {
    jpeg_destroy_decompress(&info);
    return {};
  }
  jpeg_create_decompress(&info);
  jpeg_mem_src(&info, bytes.data(), static_cast<unsigned long>(bytes.size()));
  jpeg_read_header(&info, TRUE);
  if (info.jpeg_color_space != JCS_YCbCr && info.jpeg_color_space != JCS_GRAYSCALE &&
      info.jpeg_color_space != JCS_RGB) {
    jpeg_destroy_decompress(&info);
    return {};
  }
  info.out_color_space = JCS_RGB;
  info.scale_num = 1;
  info.scale_denom = static_cast<unsigned>(
      draft_denominator(static_cast<int>(info.image_width), static_cast<int>(info.image_height), min_side));
  jpeg_start_decompress(&info);
  image.create(static_cast<int>(info.output_height), static_cast<int>(info.output_width), CV_8UC3);
  while (info.output_scanline < info.output_height) {
    JSAMPROW row = image.ptr<uint8_t>(static_cast<int>(info.output_scanline));
    jpeg_read_scanlines(&info, &row, 1);
  }
  jpeg_finish_decompress(&info);
  jpeg_destroy_decompress(&info);
  return apply_orientation(image, exif_orientation(bytes));
}
#else
cv::Mat decode_jpeg_rgb(const std::vector<uint8_t>&, int) { return {}; }
#endif

}  // namespace classify
