// json_check: reads one JSON document on stdin with src/json.cpp and writes it back on stdout as JSON (numbers
// with 17 significant digits, so they read back as the same double), or `error: <what>` on stderr with exit
// status 1 when the reader refuses it. Any other way out (a crash, an exception other than std::runtime_error)
// breaks the reader's contract. tests/repo/test_cpp_json.py compares its output with Python's json module and
// feeds it what the reader must refuse, a card nested 100,000 deep among them. Built by fuzz/build.sh.
#include <cstdio>
#include <iostream>
#include <iterator>
#include <stdexcept>
#include <string>

#include "json.h"

namespace {

void write_json(std::ostream& out, const classify::Json& value) {
  switch (value.kind) {
    case classify::Json::Null: out << "null"; return;
    case classify::Json::Bool: out << (value.boolean ? "true" : "false"); return;
    case classify::Json::String: out << classify::json_quote(value.text); return;
    case classify::Json::Number: {
      char buffer[32];
      std::snprintf(buffer, sizeof buffer, "%.17g", value.number);
      out << buffer;
      return;
    }
    case classify::Json::Array: {
      const char* separator = "";
      out << '[';
      for (const classify::Json& item : value.items) {
        out << separator;
        write_json(out, item);
        separator = ",";
      }
      out << ']';
      return;
    }
    case classify::Json::Object: {
      const char* separator = "";
      out << '{';
      for (const auto& field : value.fields) {
        out << separator << classify::json_quote(field.first) << ':';
        write_json(out, field.second);
        separator = ",";
      }
      out << '}';
      return;
    }
  }
}

}  // namespace

int main() {
  std::string text((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
  try {
    classify::Json value = classify::parse_json(text);
    write_json(std::cout, value);
    std::cout << '\n';
    return 0;
  } catch (const std::runtime_error& e) {
    std::cerr << "error: " << e.what() << '\n';
    return 1;
  }
}
