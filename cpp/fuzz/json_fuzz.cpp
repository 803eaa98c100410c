// json_fuzz: libFuzzer's harness for the JSON reader (src/json.cpp) alone, built with ASan and UBSan by
// fuzz/build.sh. Every input must either parse or throw std::runtime_error: a crash, a sanitizer report, any
// other exception (which ends the process) or a string that json_quote does not round-trip is a finding.
// tests/repo/test_cpp_json.py runs it for a bounded time from a seed corpus of cards; to fuzz longer by hand:
//   cpp/fuzz/build.sh && cpp/build-json/json_fuzz -max_total_time=600 CORPUS_DIR
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "json.h"

namespace {

// Each string in `value` comes back unchanged through json_quote and the reader: --json's output stays readable.
void check_strings_round_trip(const classify::Json& value) {
  if (value.kind == classify::Json::String && classify::parse_json(classify::json_quote(value.text)).text != value.text)
    std::abort();
  for (const classify::Json& item : value.items) check_strings_round_trip(item);
  for (const auto& field : value.fields) {
    check_strings_round_trip(classify::Json{classify::Json::String, 0, false, field.first, {}, {}});
    check_strings_round_trip(field.second);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    check_strings_round_trip(classify::parse_json(std::string(reinterpret_cast<const char*>(data), size)));
  } catch (const std::runtime_error&) {
    // the reader's one way to refuse an input
  }
  return 0;
}
