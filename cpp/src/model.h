// The model: a TorchScript export of the serving model with its card, and one forward pass.
#pragma once

#include <string>

#include <torch/script.h>

#include "card.h"
#include "options.h"

namespace classify {

struct Model {
  torch::jit::Module module;
  ModelCard card;
};

// The model and its card; throws UsageError when the file is missing, not TorchScript or without a card.
Model load_model(const std::string& path);

// Probabilities for a batch of uint8 NHWC RGB images, under the given autograd setting.
torch::Tensor forward(torch::jit::Module& module, const torch::Tensor& images, GradMode grad_mode);

}  // namespace classify
