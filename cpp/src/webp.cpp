#include "webp.h"

#include <cstring>
#include <optional>
#include <string>

#include "orientation.h"

namespace classify {

bool is_webp(const std::vector<uint8_t>& bytes) {
  return bytes.size() >= 12 && std::memcmp(bytes.data(), "RIFF", 4) == 0 &&
         std::memcmp(bytes.data() + 8, "WEBP", 4) == 0;
}

unsigned webp_orientation(const std::vector<uint8_t>& bytes) {
  std::optional<std::string> exif, xmp;
  // RIFF chunks after the 12-byte header: a fourcc, a little-endian size, the data, a pad byte to an even size
  for (size_t at = 12; at + 8 <= bytes.size();) {
    size_t size =
        bytes[at + 4] | size_t(bytes[at + 5]) << 8 | size_t(bytes[at + 6]) << 16 | size_t(bytes[at + 7]) << 24;
    if (size > bytes.size() - at - 8) break;
    std::string fourcc(bytes.begin() + at, bytes.begin() + at + 4);
    auto data = [&] { return std::string(bytes.begin() + at + 8, bytes.begin() + at + 8 + size); };
    if (fourcc == "EXIF") exif = data();
    if (fourcc == "XMP ") xmp = data();
    at += 8 + size + (size & 1);
  }
  return metadata_orientation(exif, xmp);
}

}  // namespace classify
