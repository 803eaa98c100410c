// What the client prints on stdout: each image's labels, then a summary of the run, as text or JSON.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include <torch/types.h>

#include "card.h"

namespace classify {

// The top `topk` labels of one image's probabilities.
void print_predictions(const ModelCard& card, const std::string& file, const torch::Tensor& probabilities, int topk,
                       bool json);

// How a run went; times in milliseconds of steady_clock, except cpu_ms (clock(), all threads).
struct Summary {
  size_t classified = 0, undecodable = 0, batches = 0;
  int batch = 0, threads = 0;
  double wall_ms = 0, decode_ms = 0, decode_wait_ms = 0, inference_ms = 0, cpu_ms = 0;
  bool overlap = false;
  bool warmup = false;
  std::vector<double> warmup_ms;  // each warm-up call
};

void print_summary(const Summary& summary, bool json);

}  // namespace classify
