// The model card: what the TorchScript file says about its model (model_tools writes it as model_card.json).
#pragma once

#include <string>
#include <vector>

namespace classify {

// The name of the TorchScript extra file that holds the card.
extern const char* const kCardFile;

struct ModelCard {
  std::string name;
  std::vector<std::string> class_names;
  int resize_size = 0;  // the shorter side is resized to this
  int input_size = 0;   // then the center crop of this side is the model's input
};

// The card in `text` (JSON); throws std::runtime_error when it is not JSON, lacks a field or is implausible.
ModelCard parse_card(const std::string& text);

}  // namespace classify
