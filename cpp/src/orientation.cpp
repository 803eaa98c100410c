#include "orientation.h"

#include <cctype>
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

namespace {

// Pillow's regular expression tiff:Orientation(="|>)([0-9]), searched for by hand.
unsigned xmp_orientation(const std::string& xmp) {
  static const std::string kName = "tiff:Orientation";
  for (size_t at = xmp.find(kName); at != std::string::npos; at = xmp.find(kName, at + 1)) {
    size_t value = at + kName.size();
    if (xmp.compare(value, 2, "=\"") == 0)
      value += 2;
    else if (xmp.compare(value, 1, ">") == 0)
      value += 1;
    else
      continue;
    if (value < xmp.size() && std::isdigit(static_cast<unsigned char>(xmp[value]))) return unsigned(xmp[value] - '0');
  }
  return 1;
}

}  // namespace

unsigned metadata_orientation(const std::optional<std::string>& exif, const std::optional<std::string>& xmp) {
  if (exif) {
    auto tag = exif_orientation_tag(reinterpret_cast<const uint8_t*>(exif->data()), exif->size());
    if (tag) return *tag;
  }
  return xmp ? xmp_orientation(*xmp) : 1;
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
