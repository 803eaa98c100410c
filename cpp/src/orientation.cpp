#include "orientation.h"

#include <cstring>

namespace classify {

std::optional<unsigned> exif_orientation_tag(const uint8_t* block, size_t size) {
  while (size >= 6 && std::memcmp(block, "Exif\0\0", 6) == 0) {
    block += 6;
    size -= 6;
  }
  if (size < 8) return std::nullopt;
  bool little = block[0] == 'I';
  auto u16 = [&](size_t at) -> unsigned {
    return at + 2 > size ? 0 : little ? block[at] | block[at + 1] << 8 : block[at] << 8 | block[at + 1];
  };
  auto u32 = [&](size_t at) -> size_t {
    return little ? u16(at) | size_t(u16(at + 2)) << 16 : size_t(u16(at)) << 16 | u16(at + 2);
  };
  size_t ifd = u32(4);
  unsigned entries = u16(ifd);
  for (unsigned e = 0; e < entries; ++e) {
    size_t entry = ifd + 2 + 12 * size_t(e);
    if (entry + 12 > size) break;
    if (u16(entry) == 0x0112) return u16(entry + 8);
  }
  return std::nullopt;
}

cv::Mat apply_orientation(cv::Mat image, unsigned orientation) {
  cv::Mat out;
  switch (orientation) {
    case 2: cv::flip(image, out, 1); return out;
    case 3: cv::flip(image, out, -1); return out;
    case 4: cv::flip(image, out, 0); return out;
    case 5: cv::transpose(image, out); return out;
    case 6:
      cv::transpose(image, out);
      cv::flip(out, out, 1);
      return out;
    case 7:
      cv::transpose(image, out);
      cv::flip(out, out, -1);
      return out;
    case 8:
      cv::transpose(image, out);
      cv::flip(out, out, 0);
      return out;
    default: return image;
  }
}

}  // namespace classify
