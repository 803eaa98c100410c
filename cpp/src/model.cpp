#include "model.h"

#include <exception>
#include <filesystem>
#include <vector>

#include <torch/version.h>

namespace classify {

namespace {

// What to run instead, for the file people pass by mistake: the checkpoint the service serves is no TorchScript.
std::string not_torchscript_hint(const std::filesystem::path& path) {
  if (path.extension() != ".pth") return "";
  return "\n(a .pth checkpoint is no TorchScript file: export one with `python -m model_tools trace --checkpoint " +
         path.string() + " --out " + path.stem().string() + ".ts.pt`)";
}

}  // namespace

Model load_model(const std::string& path) {
  if (!std::filesystem::is_regular_file(path))
    throw UsageError("model file " + path +
                     " does not exist (`make cpp` builds the default one; "
                     "`python -m model_tools trace --checkpoint C --out M` exports another)");
  torch::jit::ExtraFilesMap extra{{kCardFile, ""}};
  Model model;
  try {
    model.module = torch::jit::load(path, torch::kCPU, extra);
  } catch (const std::exception& e) {
    std::string what = e.what();
    throw UsageError(path + " is not a TorchScript file libtorch " + TORCH_VERSION +
                     " can load: " + what.substr(0, what.find('\n')) + not_torchscript_hint(path));
  }
  model.module.eval();
  if (extra[kCardFile].empty())
    throw UsageError(path + " carries no " + kCardFile + ": export it with `python -m model_tools trace`");
  try {
    model.card = parse_card(extra[kCardFile]);
  } catch (const std::exception& e) {
    throw UsageError(path + ": unreadable " + kCardFile + ": " + e.what());
  }
  return model;
}

torch::Tensor forward(torch::jit::Module& module, const torch::Tensor& images, GradMode grad_mode) {
  std::vector<torch::jit::IValue> inputs{images};
  if (grad_mode == GradMode::Inference) {
    c10::InferenceMode guard;
    return module.forward(inputs).toTensor();
  }
  if (grad_mode == GradMode::NoGrad) {
    torch::NoGradGuard guard;
    return module.forward(inputs).toTensor();
  }
  return module.forward(inputs).toTensor().detach();  // autograd on: the graph is recorded, then dropped
}

}  // namespace classify
