#include "card.h"

#include <stdexcept>

#include "json.h"

namespace classify {

const char* const kCardFile = "model_card.json";

ModelCard parse_card(const std::string& text) {
  Json json = parse_json(text);
  ModelCard card;
  card.name = json.at("name").text;
  for (const Json& item : json.at("class_names").items) card.class_names.push_back(item.text);
  card.resize_size = static_cast<int>(json.at("resize_size").number);
  card.input_size = static_cast<int>(json.at("input_size").number);
  if (card.class_names.empty() || card.input_size <= 0 || card.resize_size < card.input_size)
    throw std::runtime_error("implausible card: no class names, or sizes " + std::to_string(card.resize_size) + "/" +
                             std::to_string(card.input_size));
  return card;
}

}  // namespace classify
