// A minimal recursive-descent reader: objects, arrays, strings (with \u escapes), numbers, true, false, null.
#include "json.h"

#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

namespace classify {

const Json& Json::at(const std::string& key) const {
  auto found = fields.find(key);
  if (kind != Object || found == fields.end()) throw std::runtime_error("no field '" + key + "'");
  return found->second;
}

namespace {

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

  Json parse() {
    char c = peek();
    if (c == '{') return parse_object();
    if (c == '[') return parse_array();
    Json value;
    if (c == '"') {
      value.kind = Json::String;
      value.text = parse_string();
    } else if (consume_word("true") || consume_word("false")) {
      value.kind = Json::Bool;
      value.boolean = s_[pos_ - 1] == 'e' && s_[pos_ - 2] == 'u';
    } else if (!consume_word("null")) {
      value.kind = Json::Number;
      value.number = parse_number();
    }
    return value;
  }

  Json parse_object() {
    Json value;
    value.kind = Json::Object;
    expect('{');
    if (consume('}')) return value;
    do {
      std::string key = parse_string();
      expect(':');
      value.fields[key] = parse();
    } while (consume(','));
    expect('}');
    return value;
  }

  Json parse_array() {
    Json value;
    value.kind = Json::Array;
    expect('[');
    if (consume(']')) return value;
    do {
      value.items.push_back(parse());
    } while (consume(','));
    expect(']');
    return value;
  }

  double parse_number() {
    const char* start = s_.c_str() + pos_;
    char* end = nullptr;
    double number = std::strtod(start, &end);
    if (end == start) fail("unexpected character");
    pos_ += static_cast<size_t>(end - start);
    return number;
  }

  std::string parse_string() {
    expect('"');
    std::string out;
    while (true) {
      if (pos_ >= s_.size()) fail("unterminated string");
      char c = s_[pos_++];
      if (c == '"') return out;
      if (c != '\\') {
        out += c;
        continue;
      }
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
  // A \u escape's code point; a UTF-16 surrogate pair (two escapes) is one code point.
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
