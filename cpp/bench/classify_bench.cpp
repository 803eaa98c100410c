// classify-bench: classify plus switches that turn off, one at a time, what makes the client fast, to
// measure what each is worth (scripts/bench_cpp.py; docs/cpp-client.md, "Why libtorch looked slower").
// Same library, same compiler flags as classify: with none of these switches it is classify.
#include <functional>
#include <string>

#include "options.h"
#include "run.h"

namespace {

const char* const kMeasurementHelp =
    "measurement switches (docs/cpp-client.md, \"Why libtorch looked slower\"):\n"
    "  --no-warmup    time the first calls too (the TorchScript executor profiles and optimizes them)\n"
    "  --grad-mode M  inference (default: c10::InferenceMode) | no-grad (NoGradGuard) | enabled (autograd on)\n"
    "  --overlap, --no-overlap  decode the next batch on a second thread while the model runs, or not\n"
    "                 (default: overlap when --threads leaves a core free)\n"
    "  --malloc-default  leave glibc's malloc as it is: large blocks are mmap'ed and unmapped again on\n"
    "                 every forward pass, and the kernel zero-fills their pages each time\n"
    "  --resize R     pillow (default: the service's filter, exactly) | opencv (INTER_AREA)\n";

classify::GradMode parse_grad_mode(const std::string& mode) {
  if (mode == "inference") return classify::GradMode::Inference;
  if (mode == "no-grad") return classify::GradMode::NoGrad;
  if (mode == "enabled") return classify::GradMode::Enabled;
  throw classify::UsageError("--grad-mode expects inference, no-grad or enabled");
}

classify::Resize parse_resize(const std::string& method) {
  if (method == "pillow") return classify::Resize::Pillow;
  if (method == "opencv") return classify::Resize::OpenCV;
  throw classify::UsageError("--resize expects pillow or opencv");
}

bool parse_measurement_switch(const std::string& flag, const std::function<std::string()>& value,
                              classify::Options& options) {
  classify::Tuning& tuning = options.tuning;
  if (flag == "--no-warmup")
    tuning.warmup = false;
  else if (flag == "--grad-mode")
    tuning.grad_mode = parse_grad_mode(value());
  else if (flag == "--overlap")
    tuning.overlap = classify::Overlap::On;
  else if (flag == "--no-overlap")
    tuning.overlap = classify::Overlap::Off;
  else if (flag == "--malloc-default")
    tuning.keep_memory = false;
  else if (flag == "--resize")
    tuning.resize = parse_resize(value());
  else
    return false;
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string usage =
      std::string("usage: classify-bench [classify's options] [measurement switches] image_dir\n") +
      classify::kOptionsHelp + kMeasurementHelp;
  return classify::run_command_line(argc, argv, usage, parse_measurement_switch);
}
