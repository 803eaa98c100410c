#include "options.h"

#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <system_error>

namespace fs = std::filesystem;

namespace classify {

const char* const kOptionsHelp =
    "  --model M      TorchScript file from `python -m model_tools trace` (default: the repository's\n"
    "                 models/efficientnet_lite0.ts.pt, built by `make cpp`)\n"
    "  --topk K       labels printed per image (default 5)\n"
    "  --batch N      images per forward pass (default 8)\n"
    "  --threads T    intra-op threads (default: libtorch's, one per physical core)\n"
    "  --json         one JSON object per image and a final summary object, instead of text\n"
    "  --save-crops D write each image's model input (the resized, cropped RGB) as D/<name>.png\n";

namespace {

// models/efficientnet_lite0.ts.pt of this checkout: ../../models from the executable (cpp/build/classify),
// else relative to the working directory (cpp/).
std::string default_model() {
  std::error_code error;
  fs::path exe = fs::read_symlink("/proc/self/exe", error);
  fs::path beside = exe.parent_path().parent_path().parent_path() / "models" / "efficientnet_lite0.ts.pt";
  if (!error && fs::exists(beside)) return beside.string();
  return "../models/efficientnet_lite0.ts.pt";
}

// An integer of at least `minimum` for `flag`; throws UsageError.
int parse_int(const std::string& flag, const std::string& value, int minimum) {
  try {
    size_t used = 0;
    int parsed = std::stoi(value, &used);
    if (used == value.size() && parsed >= minimum) return parsed;
  } catch (const std::exception&) {
  }
  throw UsageError(flag + " expects an integer >= " + std::to_string(minimum) + ", got '" + value + "'");
}

}  // namespace

Options parse_options(const std::vector<std::string>& args, const std::string& usage, const MoreSwitches& more) {
  Options o;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= args.size()) throw UsageError(a + " expects a value");
      return args[++i];
    };
    if (a == "-h" || a == "--help") {
      std::cout << usage;
      std::exit(0);
    } else if (a == "--model") {
      o.model = value();
    } else if (a == "--topk") {
      o.topk = parse_int(a, value(), 1);
    } else if (a == "--batch") {
      o.batch = parse_int(a, value(), 1);
    } else if (a == "--threads") {
      o.threads = parse_int(a, value(), 0);
    } else if (a == "--json") {
      o.json = true;
    } else if (a == "--save-crops") {
      o.save_crops = value();
    } else if (more && more(a, value, o)) {
      continue;
    } else if (!a.empty() && a[0] == '-') {
      throw UsageError("unknown option " + a, /*show_usage=*/true);
    } else if (o.images.empty()) {
      o.images = a;
    } else {
      throw UsageError("one image folder or file expected, got '" + o.images + "' and '" + a + "'");
    }
  }
  if (o.images.empty()) throw UsageError("no image folder or file given", /*show_usage=*/true);
  if (o.model.empty()) o.model = default_model();
  return o;
}

}  // namespace classify
