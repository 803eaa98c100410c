// A minimal recursive-descent reader of RFC 8259 JSON: objects, arrays, strings (with \u escapes), numbers, true,
// false, null. Whatever the input, it returns a value or throws std::runtime_error, and its work is bounded: the
// recursion by kMaxDepth, everything else linear in the input's length (fuzz/json_fuzz.cpp checks it).
#include "json.h"

#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <stdexcept>

namespace classify {

const Json& Json::at(const std::string& key) const {
  auto found = fields.find(key);
  if (kind != Object || found == fields.end()) throw std::runtime_error("no field '" + key + "'");
  return found->second;
}

namespace {

// How deeply arrays and objects may nest. A model card nests two levels deep; each level costs the reader a few
// hundred bytes of stack, so 64 keeps it far from the stack's end (the main thread's 8 MB, ASan's larger frames)
// where a card nested 100,000 deep would overflow it and crash the client.
constexpr int kMaxDepth = 64;

class JsonReader {
 public:
  explicit JsonReader(const std::string& text) : s_(text) {}

  Json document() {
    Json value = parse(0);
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
  // JSON's four blanks only (std::isspace would also skip \v and \f, which JSON does not allow).
  void skip_space() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r')) ++pos_;
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
  // Steps past c if it comes next (after blanks).
  bool consume(char c) {
    if (peek() != c) return false;
    ++pos_;
    return true;
  }
  bool consume_word(const char* word) {
    size_t n = std::strlen(word);
    if (s_.compare(pos_, n, word) != 0) return false;
    pos_ += n;
    return true;
  }

  // The value at pos_, inside `depth` arrays and objects.
  Json parse(int depth) {
    char c = peek();
    if (c == '{' || c == '[') {
      if (depth == kMaxDepth)
        fail("arrays and objects nested deeper than " + std::to_string(kMaxDepth) + " levels (the reader's limit)");
      return c == '{' ? parse_object(depth + 1) : parse_array(depth + 1);
    }
    Json value;
    if (c == '"') {
      value.kind = Json::String;
      value.text = parse_string();
    } else if (consume_word("true")) {
      value.kind = Json::Bool;
      value.boolean = true;
    } else if (consume_word("false")) {
      value.kind = Json::Bool;
    } else if (!consume_word("null")) {
      value.kind = Json::Number;
      value.number = parse_number();
    }
    return value;
  }

  Json parse_object(int depth) {
    Json value;
    value.kind = Json::Object;
    expect('{');
    if (consume('}')) return value;
    do {
      std::string key = parse_string();
      expect(':');
      value.fields[key] = parse(depth);
    } while (consume(','));
    expect('}');
    return value;
  }

  Json parse_array(int depth) {
    Json value;
    value.kind = Json::Array;
    expect('[');
    if (consume(']')) return value;
    do {
      value.items.push_back(parse(depth));
    } while (consume(','));
    expect(']');
    return value;
  }

  // Steps past c if it is the next character (no blanks skipped: a number is spelled without them).
  bool step_over(char c) {
    if (pos_ >= s_.size() || s_[pos_] != c) return false;
    ++pos_;
    return true;
  }
  // Steps past the digits at pos_ and says how many there were.
  size_t skip_digits() {
    size_t start = pos_;
    while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') ++pos_;
    return pos_ - start;
  }
  // A number as JSON spells it: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?, so no NaN, Infinity, hex,
  // leading + or leading zeros; one that a double cannot hold (1e400) is refused, not turned into infinity.
  double parse_number() {
    size_t start = pos_;
    step_over('-');
    if (!step_over('0') && skip_digits() == 0) fail("unexpected character");
    if (step_over('.') && skip_digits() == 0) fail("no digit after the decimal point");
    if (step_over('e') || step_over('E')) {
      if (!step_over('+')) step_over('-');
      if (skip_digits() == 0) fail("no digit in the exponent");
    }
    double number = 0;
    // from_chars, unlike strtod, ignores the locale (a decimal comma would cut 0.5 short).
    auto [end, error] = std::from_chars(s_.data() + start, s_.data() + pos_, number);
    if (error != std::errc() || end != s_.data() + pos_ || !std::isfinite(number)) {
      pos_ = start;
      fail("number out of the range of a double");
    }
    return number;
  }

  std::string parse_string() {
    expect('"');
    std::string out;
    while (true) {
      if (pos_ >= s_.size()) fail("unterminated string");
      char c = s_[pos_++];
      if (c == '"') return out;
      if (static_cast<unsigned char>(c) < 0x20) {
        --pos_;
        fail("control character in a string (JSON escapes them)");
      }
      if (c != '\\') {
        out += c;
        continue;
      }
      if (pos_ >= s_.size()) fail("unterminated escape");
      char e = s_[pos_++];
      switch (e) {
        case '"':
        case '\\':
        case '/': out += e; break;
        case 'n': out += '\n'; break;
        case 't': out += '\t'; break;
        case 'r': out += '\r'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'u': append_utf8(out, parse_code_point()); break;
        default: --pos_; fail(std::string("unknown escape \\") + e);
      }
    }
  }

  // 0 to 15, or -1 for a character that is not a hex digit.
  static int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  }
  // The four hex digits of a \u escape at pos_.
  unsigned parse_hex4() {
    unsigned value = 0;
    for (int i = 0; i < 4; ++i, ++pos_) {
      if (pos_ >= s_.size()) fail("unterminated \\u escape");
      int digit = hex_digit(s_[pos_]);
      if (digit < 0) fail("\\u wants four hex digits");
      value = value * 16 + static_cast<unsigned>(digit);
    }
    return value;
  }
  // A \u escape's code point; a UTF-16 surrogate pair (two escapes) is one code point, and half of one alone
  // is refused: it has no UTF-8 spelling.
  unsigned parse_code_point() {
    unsigned first = parse_hex4();
    if (first >= 0xDC00 && first < 0xE000) fail("low surrogate without a high one before it");
    if (first < 0xD800 || first >= 0xDC00) return first;
    if (s_.compare(pos_, 2, "\\u") != 0) fail("high surrogate without a low one after it");
    pos_ += 2;
    unsigned second = parse_hex4();
    if (second < 0xDC00 || second >= 0xE000) fail("high surrogate without a low one after it");
    return 0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00);
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

}  // namespace

Json parse_json(const std::string& text) { return JsonReader(text).document(); }

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

}  // namespace classify
