// The little JSON the client needs: reading the model card model_tools writes, quoting strings for --json.
#pragma once

#include <map>
#include <string>
#include <vector>

namespace classify {

struct Json {
  enum Kind { Null, Bool, Number, String, Array, Object } kind = Null;
  double number = 0;
  bool boolean = false;
  std::string text;
  std::vector<Json> items;
  std::map<std::string, Json> fields;

  // The field `key` of an object; throws std::runtime_error when there is none.
  const Json& at(const std::string& key) const;
};

// The one JSON value `text` holds; throws std::runtime_error, naming the offset, when it is not valid JSON or
// nests arrays and objects deeper than 64 levels (kMaxDepth in json.cpp). Never anything else, whatever `text` is.
Json parse_json(const std::string& text);

// `text` as a JSON string literal, quotes included.
std::string json_quote(const std::string& text);

}  // namespace classify
