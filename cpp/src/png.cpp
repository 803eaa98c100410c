#include "png.h"

#include <zlib.h>

#include <cctype>
#include <cstring>
#include <optional>
#include <string>

#include "orientation.h"

namespace classify {
namespace {

// Pillow's limit on a text chunk's inflated size (ImageFile's MAX_TEXT_CHUNK); a larger one is not read.
constexpr size_t kMaxText = 1 << 20;

size_t be32(const std::vector<uint8_t>& b, size_t at) {
  return size_t(b[at]) << 24 | size_t(b[at + 1]) << 16 | size_t(b[at + 2]) << 8 | b[at + 3];
}

// zlib data inflated, or nothing when it is broken or inflates past kMaxText.
std::optional<std::string> inflated(const std::string& data) {
  z_stream stream{};
  if (inflateInit(&stream) != Z_OK) return std::nullopt;
  stream.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
  stream.avail_in = static_cast<uInt>(data.size());
  std::string out(kMaxText + 1, '\0');
  stream.next_out = reinterpret_cast<Bytef*>(out.data());
  stream.avail_out = static_cast<uInt>(out.size());
  int status = inflate(&stream, Z_FINISH);
  size_t produced = out.size() - stream.avail_out;
  inflateEnd(&stream);
  if (status != Z_STREAM_END || produced > kMaxText) return std::nullopt;
  out.resize(produced);
  return out;
}

struct TextChunk {
  std::string keyword, text;
};

// The keywords of the text chunks Pillow reads an orientation from.
const std::string kExifKeyword = "exif", kRawProfileKeyword = "Raw profile type exif",
                  kXmpKeyword = "XML:com.adobe.xmp";

// A tEXt, zTXt or iTXt chunk's keyword and text, read as Pillow reads each (PngImagePlugin.chunk_*Xt); nothing
// for a chunk under any other keyword, which is never inflated.
std::optional<TextChunk> orientation_text(const std::string& kind, const std::string& data) {
  size_t nul = data.find('\0');
  std::string keyword = data.substr(0, nul);
  if (keyword != kExifKeyword && keyword != kRawProfileKeyword && keyword != kXmpKeyword) return std::nullopt;
  std::string rest = nul == std::string::npos ? "" : data.substr(nul + 1);
  if (kind == "tEXt") return TextChunk{keyword, rest};
  if (kind == "zTXt") {  // a compression method byte (0: zlib), then the compressed text
    if (rest.empty()) return TextChunk{keyword, ""};
    auto text = inflated(rest.substr(1));
    return TextChunk{keyword, text.value_or("")};
  }
  // iTXt: compression flag and method, a language tag and a translated keyword (each NUL-ended), the text
  if (nul == std::string::npos || rest.size() < 2) return std::nullopt;
  bool compressed = rest[0] != 0;
  size_t language_end = rest.find('\0', 2);
  size_t translated_end = language_end == std::string::npos ? language_end : rest.find('\0', language_end + 1);
  if (translated_end == std::string::npos) return std::nullopt;
  std::string text = rest.substr(translated_end + 1);
  if (!compressed) return TextChunk{keyword, text};
  if (rest[1] != 0) return std::nullopt;
  auto inflated_text = inflated(text);
  if (!inflated_text) return std::nullopt;
  return TextChunk{keyword, *inflated_text};
}

// The bytes of ImageMagick's raw profile: a blank line, the profile's name and its length, then hex digits over
// many lines, which Pillow joins after the third line break and reads with bytes.fromhex (no digits: no bytes).
// Nothing when a character is neither hex nor space: Pillow's getexif raises, and the service leaves the image.
std::optional<std::string> raw_profile_bytes(const std::string& text) {
  size_t at = 0;
  for (int line = 0; line < 3; ++line) {
    at = text.find('\n', at);
    if (at == std::string::npos) return std::string();
    ++at;
  }
  std::string bytes, digits;
  for (char c : text.substr(at)) {
    if (std::isspace(static_cast<unsigned char>(c))) continue;
    if (!std::isxdigit(static_cast<unsigned char>(c))) return std::nullopt;
    digits += c;
    if (digits.size() == 2) {
      bytes += static_cast<char>(std::stoi(digits, nullptr, 16));
      digits.clear();
    }
  }
  if (!digits.empty()) return std::nullopt;
  return bytes;
}

}  // namespace

bool is_png(const std::vector<uint8_t>& bytes) {
  return bytes.size() >= 8 && std::memcmp(bytes.data(), "\x89PNG\r\n\x1a\n", 8) == 0;
}

unsigned png_orientation(const std::vector<uint8_t>& bytes) {
  std::optional<std::string> exif, raw_profile, xmp;
  for (size_t at = 8; at + 8 <= bytes.size();) {
    size_t length = be32(bytes, at);
    std::string kind(bytes.begin() + at + 4, bytes.begin() + at + 8);
    if (kind == "IEND" || length > bytes.size() - at - 8) break;
    auto data = [&] { return std::string(bytes.begin() + at + 8, bytes.begin() + at + 8 + length); };
    if (kind == "eXIf") {
      exif = data();
    } else if (kind == "tEXt" || kind == "zTXt" || kind == "iTXt") {
      auto chunk = orientation_text(kind, data());
      if (chunk && chunk->keyword == kExifKeyword && kind == "tEXt") exif = chunk->text;
      if (chunk && chunk->keyword == kRawProfileKeyword) raw_profile = chunk->text;
      if (chunk && chunk->keyword == kXmpKeyword) xmp = chunk->text;
    }
    at += 8 + length + 4;  // the header, the data, the CRC
  }
  if (!exif && raw_profile) {
    exif = raw_profile_bytes(*raw_profile);
    if (!exif) return 1;
  }
  return metadata_orientation(exif, xmp);
}

}  // namespace classify
