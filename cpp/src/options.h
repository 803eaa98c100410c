// The command line: what to classify and how to print it, plus the run's tuning.
#pragma once

#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "resize.h"

namespace classify {

// Bad usage (exit status 2); show_usage: the message is followed by the usage text.
struct UsageError : std::runtime_error {
  explicit UsageError(const std::string& what, bool show_usage = false)
      : std::runtime_error(what), show_usage(show_usage) {}
  bool show_usage;
};

enum class GradMode { Inference, NoGrad, Enabled };  // c10::InferenceMode, torch::NoGradGuard, autograd on
enum class Overlap { Auto, On, Off };

// How a run is carried out. classify always runs these defaults, the fast and exact settings;
// classify-bench (cpp/bench) has a switch for each, to measure what it is worth
// (docs/cpp-client.md, "Why libtorch looked slower").
struct Tuning {
  bool warmup = true;  // run each batch shape twice before the clock starts
  GradMode grad_mode = GradMode::Inference;
  // Decode the next batch on another thread while this one runs: yes, no, or (the default) only
  // when a core is left over by the intra-op threads; on a full machine it slows inference more.
  Overlap overlap = Overlap::Auto;
  bool keep_memory = true;  // keep freed memory in the heap instead of handing it back to the kernel
  Resize resize = Resize::Pillow;
};

struct Options {
  std::string model;
  std::string images;  // a folder of images, or one image file
  int topk = 5;
  int batch = 8;
  int threads = 0;  // 0: libtorch's default (one per physical core)
  bool json = false;
  std::string save_crops;  // a folder for each image's model input, or none
  Tuning tuning;
};

// The help text of the options above, under a usage line of the executable's own.
extern const char* const kOptionsHelp;

// Parses the switches of one more kind (classify-bench's): returns false when `flag` is not one of
// them; `value()` takes the switch's value from the command line.
using MoreSwitches =
    std::function<bool(const std::string& flag, const std::function<std::string()>& value, Options& options)>;

// The options of a command line (argv[1:]); throws UsageError. --help prints `usage` and exits 0.
Options parse_options(const std::vector<std::string>& args, const std::string& usage,
                      const MoreSwitches& more = nullptr);

}  // namespace classify
