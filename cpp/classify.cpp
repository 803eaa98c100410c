// classify: the C++ client of the image-classification service.
//
//   ./build/classify [--model M] [--topk K] [--batch N] [--threads T] [--json] image_dir
//
// Runs the TorchScript export of the serving model (python -m model_tools trace) on every image
// in a folder: uint8 RGB pixels in, probabilities out, normalization inside the model. The model
// card inside the .pt file (model_card.json) gives the class names and the resize and crop.
// Preprocessing is the service's (serving/preprocess.py), pixel for pixel: shorter side to
// resize_size with Pillow's bilinear filter (reimplemented below), center crop to input_size.
// Speed (docs/cpp-client.md "The C++ client"): JPEGs decoded by libjpeg straight to RGB at Pillow's draft
// scale, freed memory kept in the heap, the next batch decoded during inference when a core is free.
//
// Exit status: 0 every image file classified; 1 some image files skipped, each named on stderr with
// why (a GIF, a float TIFF, a broken file), the rest classified; 2 bad usage, missing model or
// folder, no image to classify; 3 inference failed. Files without an image file name are not read
// (one note line), and do not change the status.

#include <ATen/Parallel.h>
#include <torch/script.h>
#include <torch/version.h>

#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#ifdef CLASSIFY_HAVE_LIBJPEG
#include <csetjmp>
#include <jpeglib.h>
#endif

#include <algorithm>
#include <cctype>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <future>
#include <iomanip>
#include <iostream>
#include <malloc.h>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <unistd.h>
#include <vector>

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

constexpr int kUsageError = 2;
constexpr int kUndecodable = 1;
constexpr int kInferenceError = 3;
const char* const kCardFile = "model_card.json";

// Bad usage (exit status 2); show_usage: the message is followed by the usage text.
struct UsageError : std::runtime_error {
  explicit UsageError(const std::string& what, bool show_usage = false)
      : std::runtime_error(what), show_usage(show_usage) {}
  bool show_usage;
};

// ---------------------------------------------------------------------------------------------
// The model card: a small JSON object. A minimal reader for the JSON model_tools writes.

struct Json {
  enum Kind { Null, Bool, Number, String, Array, Object } kind = Null;
  double number = 0;
  bool boolean = false;
  std::string text;
  std::vector<Json> items;
  std::map<std::string, Json> fields;

  const Json& at(const std::string& key) const {
    auto found = fields.find(key);
    if (kind != Object || found == fields.end()) throw std::runtime_error("no field '" + key + "'");
    return found->second;
  }
};

class JsonReader {
 public:
  explicit JsonReader(const std::string& text) : s_(text) {}

  Json document() {
    Json value = parse();
    skip_space();
    if (pos_ != s_.size()) fail("text after the JSON value");
    return value;
  }

 private:
  const std::string& s_;
  size_t pos_ = 0;

  [[noreturn]] void fail(const std::string& what) const {
    throw std::runtime_error("invalid JSON at offset " + std::to_string(pos_) + ": " + what);
  }
  void skip_space() {
    while (pos_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[pos_]))) ++pos_;
  }
  char peek() {
    skip_space();
    if (pos_ >= s_.size()) fail("unexpected end");
    return s_[pos_];
  }
  void expect(char c) {
    if (peek() != c) fail(std::string("expected '") + c + "'");
    ++pos_;
  }
  bool consume_word(const char* word) {
    size_t n = std::strlen(word);
    if (s_.compare(pos_, n, word) != 0) return false;
    pos_ += n;
    return true;
  }

  Json parse() {
    Json value;
    char c = peek();
    if (c == '{') {
      value.kind = Json::Object;
      ++pos_;
      if (peek() == '}') { ++pos_; return value; }
      while (true) {
        std::string key = parse_string();
        expect(':');
        value.fields[key] = parse();
        if (peek() == ',') { ++pos_; continue; }
        expect('}');
        return value;
      }
    }
    if (c == '[') {
      value.kind = Json::Array;
      ++pos_;
      if (peek() == ']') { ++pos_; return value; }
      while (true) {
        value.items.push_back(parse());
        if (peek() == ',') { ++pos_; continue; }
        expect(']');
        return value;
      }
    }
    if (c == '"') {
      value.kind = Json::String;
      value.text = parse_string();
      return value;
    }
    if (consume_word("true") || consume_word("false")) {
      value.kind = Json::Bool;
      value.boolean = s_[pos_ - 1] == 'e' && s_[pos_ - 2] == 'u';
      return value;
    }
    if (consume_word("null")) return value;
    const char* start = s_.c_str() + pos_;
    char* end = nullptr;
    value.number = std::strtod(start, &end);
    if (end == start) fail("unexpected character");
    value.kind = Json::Number;
    pos_ += static_cast<size_t>(end - start);
    return value;
  }

  std::string parse_string() {
    expect('"');
    std::string out;
    while (true) {
      if (pos_ >= s_.size()) fail("unterminated string");
      char c = s_[pos_++];
      if (c == '"') return out;
      if (c != '\\') { out += c; continue; }
      if (pos_ >= s_.size()) fail("unterminated escape");
      char e = s_[pos_++];
      switch (e) {
        case 'n': out += '\n'; break;
        case 't': out += '\t'; break;
        case 'r': out += '\r'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'u': append_utf8(out, parse_code_point()); break;
        default: out += e;  // \" \\ \/
      }
    }
  }

  unsigned parse_hex4() {
    if (pos_ + 4 > s_.size()) fail("short \\u escape");
    unsigned value = static_cast<unsigned>(std::stoul(s_.substr(pos_, 4), nullptr, 16));
    pos_ += 4;
    return value;
  }
  unsigned parse_code_point() {
    unsigned first = parse_hex4();
    if (first >= 0xD800 && first < 0xDC00 && s_.compare(pos_, 2, "\\u") == 0) {
      pos_ += 2;
      unsigned second = parse_hex4();
      return 0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00);
    }
    return first;
  }
  static void append_utf8(std::string& out, unsigned cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }
};

std::string json_quote(const std::string& text) {
  std::string out = "\"";
  for (unsigned char c : text) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20) {
      char buffer[8];
      std::snprintf(buffer, sizeof buffer, "\\u%04x", c);
      out += buffer;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "\"";
}

struct ModelCard {
  std::string name;
  std::vector<std::string> class_names;
  int resize_size = 0;
  int input_size = 0;
};

ModelCard parse_card(const std::string& text) {
  Json json = JsonReader(text).document();
  ModelCard card;
  card.name = json.at("name").text;
  for (const Json& item : json.at("class_names").items) card.class_names.push_back(item.text);
  card.resize_size = static_cast<int>(json.at("resize_size").number);
  card.input_size = static_cast<int>(json.at("input_size").number);
  if (card.class_names.empty() || card.input_size <= 0 || card.resize_size < card.input_size)
    throw std::runtime_error("implausible card: no class names, or sizes " + std::to_string(card.resize_size) +
                             "/" + std::to_string(card.input_size));
  return card;
}

// ---------------------------------------------------------------------------------------------
// Preprocessing: the service's, pixel for pixel.
//
// The service (serving/preprocess.py, fit_to_model) computes torchvision's Resize(resize_size) +
// CenterCrop(input_size) by asking Pillow to resample just the crop's box with its BILINEAR
// filter. Pillow's bilinear is not OpenCV's INTER_LINEAR: when it shrinks, it widens the
// triangle filter by the scale factor (an antialiasing filter), computes the weights in
// double, rounds them to 22-bit fixed point, filters rows first into an 8-bit image, then
// columns. The functions below are that algorithm (Pillow's libImaging/Resample.c); on PNG
// photos the crops equal the service's bit for bit. OpenCV's INTER_AREA (`--resize opencv`)
// is the nearest built-in: a box filter instead of a triangle.

constexpr int kPrecisionBits = 32 - 8 - 2;

struct Coefficients {
  int taps = 0;                // weights per output pixel
  std::vector<int> first;      // first input pixel of each output pixel
  std::vector<int> count;      // input pixels used
  std::vector<int32_t> fixed;  // weights, taps per output pixel, in fixed point
};

// Pillow takes the box as C floats (single precision) and subtracts them as floats.
Coefficients bilinear_coefficients(int in_size, float in0, float in1, int out_size) {
  double scale = static_cast<double>(in1 - in0) / out_size;
  double filter_scale = std::max(scale, 1.0);
  double support = 1.0 * filter_scale;  // the bilinear (triangle) filter's support is 1
  Coefficients c;
  c.taps = static_cast<int>(std::ceil(support)) * 2 + 1;
  c.first.resize(out_size);
  c.count.resize(out_size);
  c.fixed.assign(static_cast<size_t>(out_size) * c.taps, 0);
  std::vector<double> weights(c.taps);
  const double reciprocal_scale = 1.0 / filter_scale;  // Pillow multiplies by it; dividing rounds differently
  for (int xx = 0; xx < out_size; ++xx) {
    double center = in0 + (xx + 0.5) * scale;
    int xmin = std::max(static_cast<int>(center - support + 0.5), 0);
    int xmax = std::min(static_cast<int>(center + support + 0.5), in_size) - xmin;
    double total = 0;
    for (int x = 0; x < xmax; ++x) {
      double distance = std::fabs((x + xmin - center + 0.5) * reciprocal_scale);
      weights[x] = distance < 1.0 ? 1.0 - distance : 0.0;
      total += weights[x];
    }
    for (int x = 0; x < xmax; ++x) {
      double w = total != 0.0 ? weights[x] / total : weights[x];
      double scaled = w * (1 << kPrecisionBits);
      c.fixed[static_cast<size_t>(xx) * c.taps + x] = static_cast<int32_t>(scaled < 0 ? scaled - 0.5 : scaled + 0.5);
    }
    c.first[xx] = xmin;
    c.count[xx] = xmax;
  }
  return c;
}

inline uint8_t clip8(int32_t accumulated) {
  int32_t value = accumulated >> kPrecisionBits;
  return static_cast<uint8_t>(std::clamp(value, 0, 255));
}

// Pillow's Image.resize((out_w, out_h), BILINEAR, box=(x0, y0, x1, y1)) of an 8-bit 3-channel image.
cv::Mat pillow_bilinear(const cv::Mat& image, double x0, double y0, double x1, double y1, int out_w, int out_h) {
  Coefficients horizontal = bilinear_coefficients(image.cols, static_cast<float>(x0), static_cast<float>(x1), out_w);
  Coefficients vertical = bilinear_coefficients(image.rows, static_cast<float>(y0), static_cast<float>(y1), out_h);
  int row_first = vertical.first.front();
  int row_last = vertical.first.back() + vertical.count.back();
  cv::Mat rows(row_last - row_first, out_w, CV_8UC3);  // horizontal pass, only the rows used
  for (int y = 0; y < rows.rows; ++y) {
    const uint8_t* in = image.ptr<uint8_t>(y + row_first);
    uint8_t* out = rows.ptr<uint8_t>(y);
    for (int xx = 0; xx < out_w; ++xx) {
      const int32_t* k = &horizontal.fixed[static_cast<size_t>(xx) * horizontal.taps];
      int32_t s0 = 1 << (kPrecisionBits - 1), s1 = s0, s2 = s0;
      const uint8_t* p = in + 3 * horizontal.first[xx];
      for (int x = 0; x < horizontal.count[xx]; ++x, p += 3) {
        s0 += p[0] * k[x];
        s1 += p[1] * k[x];
        s2 += p[2] * k[x];
      }
      out[3 * xx] = clip8(s0);
      out[3 * xx + 1] = clip8(s1);
      out[3 * xx + 2] = clip8(s2);
    }
  }
  cv::Mat result(out_h, out_w, CV_8UC3);  // vertical pass: whole rows at a time, which vectorizes
  std::vector<int32_t> sums(static_cast<size_t>(out_w) * 3);
  for (int yy = 0; yy < out_h; ++yy) {
    const int32_t* k = &vertical.fixed[static_cast<size_t>(yy) * vertical.taps];
    int first = vertical.first[yy] - row_first;
    std::fill(sums.begin(), sums.end(), 1 << (kPrecisionBits - 1));
    for (int y = 0; y < vertical.count[yy]; ++y) {
      const uint8_t* in = rows.ptr<uint8_t>(first + y);
      const int32_t weight = k[y];
      for (size_t i = 0; i < sums.size(); ++i) sums[i] += in[i] * weight;
    }
    uint8_t* out = result.ptr<uint8_t>(yy);
    for (size_t i = 0; i < sums.size(); ++i) out[i] = clip8(sums[i]);
  }
  return result;
}

enum class Resize { Pillow, OpenCV };

// Shorter side to resize_size, center crop input_size: serving/preprocess.py's fit_to_model.
cv::Mat fit_to_model(const cv::Mat& image, int resize_size, int input_size, Resize method) {
  int width = image.cols, height = image.rows, shorter = std::min(width, height);
  // torchvision's resized size: the longer side is truncated
  int resized_w = width == shorter ? resize_size : static_cast<int>(double(resize_size) * width / shorter);
  int resized_h = height == shorter ? resize_size : static_cast<int>(double(resize_size) * height / shorter);
  // Python's round(): halves to even, as nearbyint does in the default rounding mode
  int left = static_cast<int>(std::nearbyint((resized_w - input_size) / 2.0));
  int top = static_cast<int>(std::nearbyint((resized_h - input_size) / 2.0));
  if (method == Resize::OpenCV) {
    bool shrinking = resized_w <= width && resized_h <= height;
    cv::Mat resized;
    cv::resize(image, resized, cv::Size(resized_w, resized_h), 0, 0, shrinking ? cv::INTER_AREA : cv::INTER_LINEAR);
    return resized(cv::Rect(left, top, input_size, input_size)).clone();
  }
  double x_scale = double(width) / resized_w, y_scale = double(height) / resized_h;
  return pillow_bilinear(image, left * x_scale, top * y_scale, (left + input_size) * x_scale,
                         (top + input_size) * y_scale, input_size, input_size);
}

// Width and height a JPEG stores (before EXIF rotation), from its start-of-frame marker; 0, 0 if none.
std::pair<int, int> jpeg_size(const std::vector<uint8_t>& b) {
  size_t i = 2;
  while (i + 9 < b.size()) {
    if (b[i] != 0xFF) return {0, 0};
    uint8_t marker = b[i + 1];
    if (marker == 0xFF) { ++i; continue; }
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

// OpenCV's imdecode flag for that scale.
int jpeg_draft_flag(const std::vector<uint8_t>& bytes, int min_side) {
  auto [width, height] = jpeg_size(bytes);
  switch (draft_denominator(width, height, min_side)) {
    case 8: return cv::IMREAD_REDUCED_COLOR_8;
    case 4: return cv::IMREAD_REDUCED_COLOR_4;
    case 2: return cv::IMREAD_REDUCED_COLOR_2;
    default: return cv::IMREAD_COLOR;
  }
}

#ifdef CLASSIFY_HAVE_LIBJPEG
// JPEGs straight through libjpeg(-turbo), the library OpenCV and Pillow use: decoded to RGB at
// the draft scale, where OpenCV 4.6 decodes to RGB and then swaps every pixel to BGR in a plain
// byte loop (its largest cost after the IDCT here), only for us to swap the crop back.

// The EXIF orientation (1-8) of a JPEG's APP1 segment; 1 when there is none or it is unreadable.
int exif_orientation(const std::vector<uint8_t>& b) {
  size_t i = 2;
  while (i + 4 <= b.size() && b[i] == 0xFF) {
    uint8_t marker = b[i + 1];
    size_t length = (size_t(b[i + 2]) << 8) | b[i + 3];
    if (marker == 0xDA || length < 2) break;  // start of scan: no more metadata
    size_t start = i + 4, end = std::min(b.size(), i + 2 + length);
    if (marker == 0xE1 && end - start >= 14 && std::memcmp(&b[start], "Exif\0\0", 6) == 0) {
      const uint8_t* tiff = &b[start + 6];
      size_t size = end - start - 6;
      bool little = tiff[0] == 'I';
      auto u16 = [&](size_t at) -> unsigned {
        return at + 2 > size ? 0 : little ? tiff[at] | tiff[at + 1] << 8 : tiff[at] << 8 | tiff[at + 1];
      };
      auto u32 = [&](size_t at) -> size_t { return little ? u16(at) | size_t(u16(at + 2)) << 16
                                                          : size_t(u16(at)) << 16 | u16(at + 2); };
      size_t ifd = u32(4);
      unsigned entries = u16(ifd);
      for (unsigned e = 0; e < entries; ++e) {
        size_t entry = ifd + 2 + 12 * e;
        if (u16(entry) == 0x0112) {
          unsigned value = u16(entry + 8);
          return value >= 1 && value <= 8 ? static_cast<int>(value) : 1;
        }
      }
      return 1;
    }
    i += 2 + length;
  }
  return 1;
}

// Turn a decoded image upright as its EXIF orientation says (as OpenCV's IMREAD_COLOR does).
cv::Mat apply_orientation(cv::Mat image, int orientation) {
  cv::Mat out;
  switch (orientation) {
    case 2: cv::flip(image, out, 1); return out;
    case 3: cv::flip(image, out, -1); return out;
    case 4: cv::flip(image, out, 0); return out;
    case 5: cv::transpose(image, out); return out;
    case 6: cv::transpose(image, out); cv::flip(out, out, 1); return out;
    case 7: cv::transpose(image, out); cv::flip(out, out, -1); return out;
    case 8: cv::transpose(image, out); cv::flip(out, out, 0); return out;
    default: return image;
  }
}

struct JpegErrorJump {
  jpeg_error_mgr manager;
  std::jmp_buf jump;
};

// An RGB JPEG decoded at Pillow's draft scale, upright; empty when libjpeg cannot (the caller
// then lets OpenCV try, which also covers CMYK).
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
#endif


// An image as decoded: 8-bit, 3 channels, in OpenCV's BGR order or (JPEGs through libjpeg) RGB;
// or no pixels and why not.
struct Decoded {
  cv::Mat pixels;
  bool rgb = false;
  std::string why_not;
};

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
    if (!blank) detail += c;
    else if (!detail.empty() && detail.back() != ' ') detail += ' ';
  }
  while (!detail.empty() && detail.back() == ' ') detail.pop_back();
  return "OpenCV cannot decode it: " + detail.substr(0, 160);
}

// Decode as the service does: JPEGs at a reduced scale when the resize allows it, EXIF
// orientation applied, 16-bit scaled to 8, transparency on white, grey to colour. Resampling
// treats channels alike, so only the small crop is put in RGB order. Empty pixels when the
// file cannot be decoded.
Decoded decode_image(const fs::path& path, int min_side) {
  std::ifstream file(path, std::ios::binary | std::ios::ate);
  if (!file) return {{}, false, "cannot open it"};
  std::vector<uint8_t> bytes(static_cast<size_t>(file.tellg()));
  file.seekg(0);
  if (bytes.empty() || !file.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(bytes.size())))
    return {{}, false, bytes.empty() ? "the file is empty" : "cannot read it"};
  bool jpeg = bytes.size() > 2 && bytes[0] == 0xFF && bytes[1] == 0xD8;
#ifdef CLASSIFY_HAVE_LIBJPEG
  if (jpeg) {
    cv::Mat rgb = decode_jpeg_rgb(bytes, min_side);
    if (!rgb.empty()) return {rgb, true, ""};
  }
#endif
  // JPEG: IMREAD_COLOR (and REDUCED) apply the EXIF orientation. Others: IMREAD_UNCHANGED keeps alpha and depth.
  // OpenCV prints a page about a file it cannot read to std::cerr; it becomes part of one warning line instead.
  std::ostringstream opencv_said;
  std::streambuf* stderr_buffer = std::cerr.rdbuf(opencv_said.rdbuf());
  cv::Mat image = cv::imdecode(bytes, jpeg ? jpeg_draft_flag(bytes, min_side) : cv::IMREAD_UNCHANGED);
  std::cerr.rdbuf(stderr_buffer);
  if (image.empty()) return {{}, false, undecodable_reason(bytes, opencv_said.str())};
  if (image.depth() == CV_16U) image.convertTo(image, CV_8U, 1.0 / 256.0);
  if (image.depth() != CV_8U) return {{}, false, "samples of OpenCV depth " + std::to_string(image.depth()) +
                                                      " (not 8 or 16 bit) are not decoded by this client"};
  cv::Mat bgr;
  switch (image.channels()) {
    case 1: cv::cvtColor(image, bgr, cv::COLOR_GRAY2BGR); break;
    case 3: bgr = image; break;
    case 4: {
      cv::Mat bgra[4];
      cv::split(image, bgra);
      cv::Mat alpha, white_weight;
      bgra[3].convertTo(alpha, CV_32F, 1.0 / 255.0);
      white_weight = 1.0 - alpha;
      for (int c = 0; c < 3; ++c) {
        cv::Mat channel;
        bgra[c].convertTo(channel, CV_32F);
        channel = channel.mul(alpha) + white_weight * 255.0;
        channel.convertTo(bgra[c], CV_8U);
      }
      cv::merge(bgra, 3, bgr);
      break;
    }
    default: return {{}, false, std::to_string(image.channels()) + " channels are not decoded by this client"};
  }
  return {bgr, false, ""};
}

// ---------------------------------------------------------------------------------------------
// Command line

struct Options {
  std::string model;
  std::string folder;
  int topk = 5;
  int batch = 8;
  int threads = 0;  // 0: libtorch's default (one per physical core)
  bool json = false;
  bool warmup = true;
  std::string grad_mode = "inference";  // inference | no-grad | enabled (the last two only to measure their cost)
  // Decode the next batch on another thread while this one runs: yes, no, or (the default) only
  // when a core is left over by the intra-op threads; on a full machine it slows inference more.
  enum class Overlap { Auto, On, Off } overlap = Overlap::Auto;
  bool keep_memory = true;     // keep freed memory in the heap instead of handing it back to the kernel
  Resize resize = Resize::Pillow;
  std::string save_crops;
};

std::string default_model() {
  // models/efficientnet_lite0.ts.pt of this checkout: ../../models from the executable (cpp/build/classify)
  std::error_code error;
  fs::path exe = fs::read_symlink("/proc/self/exe", error);
  fs::path beside = exe.parent_path().parent_path().parent_path() / "models" / "efficientnet_lite0.ts.pt";
  if (!error && fs::exists(beside)) return beside.string();
  return "../models/efficientnet_lite0.ts.pt";
}

const char* const kUsage =
    "usage: classify [--model M] [--topk K] [--batch N] [--threads T] [--json] image_dir\n"
    "  --model M      TorchScript file from `python -m model_tools trace` (default: the repository's\n"
    "                 models/efficientnet_lite0.ts.pt, built by `make cpp`)\n"
    "  --topk K       labels printed per image (default 5)\n"
    "  --batch N      images per forward pass (default 8)\n"
    "  --threads T    intra-op threads (default: libtorch's, one per physical core)\n"
    "  --json         one JSON object per image and a final summary object, instead of text\n"
    "  --save-crops D write each image's model input (the resized, cropped RGB) as D/<name>.png\n"
    "measurement switches (docs/cpp-client.md, \"Why libtorch looked slower\"):\n"
    "  --no-warmup    time the first calls too (the TorchScript executor profiles and optimizes them)\n"
    "  --grad-mode M  inference (default: c10::InferenceMode) | no-grad (NoGradGuard) | enabled (autograd on)\n"
    "  --overlap, --no-overlap  decode the next batch on a second thread while the model runs, or not\n"
    "                 (default: overlap when --threads leaves a core free)\n"
    "  --malloc-default  leave glibc's malloc as it is: large blocks are mmap'ed and unmapped again on\n"
    "                 every forward pass, and the kernel zero-fills their pages each time\n"
    "  --resize R     pillow (default: the service's filter, exactly) | opencv (INTER_AREA)\n";

int parse_int(const std::string& flag, const std::string& value, int minimum) {
  try {
    size_t used = 0;
    int parsed = std::stoi(value, &used);
    if (used == value.size() && parsed >= minimum) return parsed;
  } catch (const std::exception&) {
  }
  throw UsageError(flag + " expects an integer >= " + std::to_string(minimum) + ", got '" + value + "'");
}

Options parse_options(int argc, char** argv) {
  Options o;
  std::vector<std::string> args(argv + 1, argv + argc);
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= args.size()) throw UsageError(a + " expects a value");
      return args[++i];
    };
    if (a == "-h" || a == "--help") {
      std::cout << kUsage;
      std::exit(0);
    } else if (a == "--model") {
      o.model = value();
    } else if (a == "--topk") {
      o.topk = parse_int(a, value(), 1);
    } else if (a == "--batch") {
      o.batch = parse_int(a, value(), 1);
    } else if (a == "--threads") {
      o.threads = parse_int(a, value(), 0);
    } else if (a == "--json") {
      o.json = true;
    } else if (a == "--save-crops") {
      o.save_crops = value();
    } else if (a == "--no-warmup") {
      o.warmup = false;
    } else if (a == "--grad-mode") {
      o.grad_mode = value();
      if (o.grad_mode != "inference" && o.grad_mode != "no-grad" && o.grad_mode != "enabled")
        throw UsageError("--grad-mode expects inference, no-grad or enabled");
    } else if (a == "--overlap") {
      o.overlap = Options::Overlap::On;
    } else if (a == "--no-overlap") {
      o.overlap = Options::Overlap::Off;
    } else if (a == "--malloc-default") {
      o.keep_memory = false;
    } else if (a == "--resize") {
      std::string r = value();
      if (r != "pillow" && r != "opencv") throw UsageError("--resize expects pillow or opencv");
      o.resize = r == "pillow" ? Resize::Pillow : Resize::OpenCV;
    } else if (!a.empty() && a[0] == '-') {
      throw UsageError("unknown option " + a, /*show_usage=*/true);
    } else if (o.folder.empty()) {
      o.folder = a;
    } else {
      throw UsageError("one image folder expected, got '" + o.folder + "' and '" + a + "'");
    }
  }
  if (o.folder.empty()) throw UsageError("no image folder given", /*show_usage=*/true);
  if (o.model.empty()) o.model = default_model();
  return o;
}

// ---------------------------------------------------------------------------------------------

struct Model {
  torch::jit::Module module;
  ModelCard card;
};

Model load_model(const std::string& path) {
  if (!fs::is_regular_file(path))
    throw UsageError("model file " + path + " does not exist (`make cpp` builds the default one; "
                     "`python -m model_tools trace --checkpoint C --out M` exports another)");
  torch::jit::ExtraFilesMap extra{{kCardFile, ""}};
  Model model;
  try {
    model.module = torch::jit::load(path, torch::kCPU, extra);
  } catch (const std::exception& e) {
    std::string what = e.what();
    throw UsageError(path + " is not a TorchScript file libtorch " + TORCH_VERSION + " can load: " +
                     what.substr(0, what.find('\n')));
  }
  model.module.eval();
  if (extra[kCardFile].empty())
    throw UsageError(path + " carries no " + kCardFile + ": export it with `python -m model_tools trace`");
  try {
    model.card = parse_card(extra[kCardFile]);
  } catch (const std::exception& e) {
    throw UsageError(path + ": unreadable " + kCardFile + ": " + e.what());
  }
  return model;
}

std::vector<fs::path> list_files(const std::string& folder) {
  if (!fs::is_directory(folder)) throw UsageError("image folder " + folder + " does not exist or is not a folder");
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(folder))
    if (entry.is_regular_file()) files.push_back(entry.path());
  std::sort(files.begin(), files.end(), [](const fs::path& a, const fs::path& b) {
    return a.filename().string() < b.filename().string();
  });
  return files;
}

bool has_image_extension(const fs::path& path) {
  static const std::set<std::string> extensions{".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".dib", ".tif", ".tiff",
                                                ".webp", ".ppm", ".pgm", ".pbm", ".pnm", ".pxm", ".jp2", ".exr",
                                                ".hdr", ".pic", ".sr", ".ras", ".gif"};
  std::string ext = path.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  return extensions.count(ext) > 0;
}

double ms_since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

torch::Tensor forward(torch::jit::Module& module, const torch::Tensor& images, const std::string& grad_mode) {
  std::vector<torch::jit::IValue> inputs{images};
  if (grad_mode == "inference") {
    c10::InferenceMode guard;
    return module.forward(inputs).toTensor();
  }
  if (grad_mode == "no-grad") {
    torch::NoGradGuard guard;
    return module.forward(inputs).toTensor();
  }
  return module.forward(inputs).toTensor().detach();
}

void print_predictions(const Options& o, const ModelCard& card, const std::string& file, const torch::Tensor& probs) {
  int k = std::min<int>(o.topk, static_cast<int>(probs.size(0)));
  auto [values, indices] = probs.topk(k);
  auto value = values.accessor<float, 1>();
  auto index = indices.accessor<int64_t, 1>();
  if (o.json) {
    std::ostringstream line;
    line << "{\"file\": " << json_quote(file) << ", \"predictions\": [";
    for (int i = 0; i < k; ++i) {
      line << (i ? ", " : "") << "{\"index\": " << index[i] << ", \"label\": " << json_quote(card.class_names.at(index[i]))
           << ", \"probability\": " << std::setprecision(8) << value[i] << "}";
    }
    std::cout << line.str() << "]}\n";
    return;
  }
  std::cout << file << "\n";
  for (int i = 0; i < k; ++i) {
    char line[64];
    std::snprintf(line, sizeof line, "  %8.4f  ", value[i]);
    std::cout << line << card.class_names.at(index[i]) << " (" << index[i] << ")\n";
  }
}

// A batch of decoded, preprocessed images, ready for the model.
struct Batch {
  std::vector<std::string> names;
  torch::Tensor images;  // uint8 NHWC RGB, names.size() images
  size_t undecodable = 0;
  double decode_ms = 0;
};

// The next batch: up to o.batch decodable images from candidates[next...]; advances next.
Batch prepare_batch(const Options& o, const ModelCard& card, const std::vector<fs::path>& candidates, size_t& next) {
  auto start = Clock::now();
  Batch batch;
  batch.images = torch::empty({o.batch, card.input_size, card.input_size, 3}, torch::kUInt8);
  while (next < candidates.size() && static_cast<int>(batch.names.size()) < o.batch) {
    const fs::path& file = candidates[next++];
    Decoded image = decode_image(file, card.resize_size);
    if (image.pixels.empty()) {
      std::cerr << "warning: skipping " << file.filename().string() << ": " << image.why_not << "\n";
      ++batch.undecodable;
      continue;
    }
    cv::Mat crop = fit_to_model(image.pixels, card.resize_size, card.input_size, o.resize);
    // RGB straight into this image's slot of the batch tensor
    cv::Mat slot(card.input_size, card.input_size, CV_8UC3,
                 batch.images[static_cast<int64_t>(batch.names.size())].data_ptr());
    if (image.rgb)
      crop.copyTo(slot);
    else
      cv::cvtColor(crop, slot, cv::COLOR_BGR2RGB);
    if (!o.save_crops.empty()) {
      cv::Mat bgr;
      cv::cvtColor(slot, bgr, cv::COLOR_RGB2BGR);
      cv::imwrite((fs::path(o.save_crops) / (file.filename().string() + ".png")).string(), bgr);
    }
    batch.names.push_back(file.filename().string());
  }
  batch.images = batch.images.narrow(0, 0, static_cast<int64_t>(batch.names.size()));
  batch.decode_ms = ms_since(start);
  return batch;
}

int run(const Options& o) {
  if (o.keep_memory) {
    // glibc serves blocks above its mmap threshold (at most 32 MB) with fresh mmap()s and returns
    // them on free(); a batch of 8 needs such blocks for its activations, so without this every
    // forward pass page-faults a few hundred MB of zero-filled pages back in. Keep them instead.
    mallopt(M_MMAP_MAX, 0);
    mallopt(M_TRIM_THRESHOLD, INT_MAX);
  }
  if (o.threads > 0) at::set_num_threads(o.threads);
  const bool overlap = o.overlap == Options::Overlap::Auto
                           ? static_cast<unsigned>(at::get_num_threads()) < std::thread::hardware_concurrency()
                           : o.overlap == Options::Overlap::On;
  Model model = load_model(o.model);
  const ModelCard& card = model.card;
  std::vector<fs::path> candidates;
  std::vector<std::string> not_images;
  for (const fs::path& file : list_files(o.folder)) {
    if (has_image_extension(file))
      candidates.push_back(file);
    else
      not_images.push_back(file.filename().string());
  }
  if (!not_images.empty()) {  // one line: a folder of photos often holds notes and sidecar files too
    std::cerr << "note: " << not_images.size() << " file(s) without an image file name not read: " << not_images[0];
    for (size_t i = 1; i < std::min<size_t>(not_images.size(), 4); ++i) std::cerr << ", " << not_images[i];
    std::cerr << (not_images.size() > 4 ? ", ...\n" : "\n");
  }
  if (candidates.empty()) throw UsageError("no image files in " + o.folder);
  if (!o.save_crops.empty()) fs::create_directories(o.save_crops);

  // Warm-up, outside the timed region: the TorchScript executor profiles the first call of each
  // input shape and optimizes on the next, so run each batch shape this folder will use twice.
  std::vector<double> warmup_ms;
  if (o.warmup) {
    std::set<int64_t> shapes{std::min<int64_t>(o.batch, candidates.size())};
    if (candidates.size() % o.batch) shapes.insert(candidates.size() % o.batch);
    for (int64_t n : shapes) {
      for (int call = 0; call < 2; ++call) {
        auto start = Clock::now();
        forward(model.module, torch::zeros({n, card.input_size, card.input_size, 3}, torch::kUInt8), o.grad_mode);
        warmup_ms.push_back(ms_since(start));
      }
    }
  }

  size_t classified = 0, undecodable = 0, batches = 0;
  double decode_ms = 0, decode_wait_ms = 0, inference_ms = 0;
  const auto wall_start = Clock::now();
  const std::clock_t cpu_start = std::clock();
  size_t next = 0;  // the next candidate to decode; only the thread preparing a batch touches it
  Batch current = prepare_batch(o, card, candidates, next);
  decode_wait_ms += current.decode_ms;
  while (true) {
    decode_ms += current.decode_ms;
    undecodable += current.undecodable;
    if (current.names.empty()) break;  // nothing decodable was left
    // With overlap, the next batch is decoded on a second thread while the model runs this one.
    std::future<Batch> upcoming;
    if (next < candidates.size())
      upcoming = std::async(overlap ? std::launch::async : std::launch::deferred,
                            [&] { return prepare_batch(o, card, candidates, next); });
    auto start = Clock::now();
    torch::Tensor probabilities = forward(model.module, current.images, o.grad_mode);
    inference_ms += ms_since(start);
    ++batches;
    for (size_t i = 0; i < current.names.size(); ++i) print_predictions(o, card, current.names[i], probabilities[i]);
    classified += current.names.size();
    if (!upcoming.valid()) break;
    start = Clock::now();
    current = upcoming.get();
    decode_wait_ms += ms_since(start);
  }
  const double wall_ms = ms_since(wall_start);
  const double cpu_ms = 1000.0 * double(std::clock() - cpu_start) / CLOCKS_PER_SEC;
  if (classified == 0) throw UsageError("none of the " + std::to_string(candidates.size()) + " image files in " +
                                        o.folder + " could be decoded");

  const double per_second = classified / (wall_ms / 1000.0);
  double warmup_total = 0;
  for (double ms : warmup_ms) warmup_total += ms;
  std::ostringstream summary;
  summary << std::fixed << std::setprecision(2);
  if (o.json) {
    summary << "{\"summary\": true, \"images\": " << classified << ", \"undecodable\": " << undecodable
            << ", \"batches\": " << batches << ", \"batch\": " << o.batch << ", \"threads\": " << at::get_num_threads()
            << ", \"wall_ms\": " << wall_ms << ", \"decode_preprocess_ms\": " << decode_ms
            << ", \"decode_wait_ms\": " << decode_wait_ms << ", \"inference_ms\": " << inference_ms
            << ", \"overlap\": " << (overlap ? "true" : "false") << ", \"clock_cpu_ms\": " << cpu_ms
            << ", \"images_per_s\": " << per_second << ", \"warmup_ms\": [";
    for (size_t i = 0; i < warmup_ms.size(); ++i) summary << (i ? ", " : "") << warmup_ms[i];
    summary << "]}";
  } else {
    summary << "summary: " << classified << " images in " << batches << " batches of up to " << o.batch << " on "
            << at::get_num_threads() << " threads: " << per_second << " images/s (steady_clock wall time "
            << wall_ms << " ms = inference " << inference_ms << " ms + waiting for decode+preprocess "
            << decode_wait_ms << " ms, of " << decode_ms << " ms"
            << (overlap ? " run on a second thread during inference; " : "; ")
            << (o.warmup ? "warm-up of " + std::to_string(warmup_ms.size()) + " calls, " +
                               std::to_string(static_cast<int>(warmup_total)) + " ms, excluded"
                         : std::string("no warm-up: first calls included"))
            << "; clock() would say " << cpu_ms << " ms, the CPU time of all threads)";
  }
  std::cout << summary.str() << std::endl;
  if (undecodable) {
    std::cerr << "error: " << undecodable << " image file(s) skipped, each named above; the other " << classified
              << " were classified\n";
    return kUndecodable;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse_options(argc, argv));
  } catch (const UsageError& e) {
    std::cerr << "error: " << e.what() << "\n";
    if (e.show_usage) std::cerr << kUsage;
    return kUsageError;
  } catch (const std::exception& e) {
    std::string what = e.what();
    std::cerr << "error: inference failed: " << what.substr(0, what.find('\n')) << "\n";
    return kInferenceError;
  }
}
