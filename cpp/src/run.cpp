#include "run.h"

#include <malloc.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <climits>
#include <ctime>
#include <filesystem>
#include <future>
#include <iostream>
#include <set>
#include <thread>
#include <vector>

#include <ATen/Parallel.h>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "decode.h"
#include "model.h"
#include "report.h"
#include "resize.h"

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace classify {
namespace {

constexpr int kUndecodable = 1;
constexpr int kUsageError = 2;
constexpr int kInferenceError = 3;

double ms_since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

std::vector<fs::path> list_files(const std::string& folder) {
  if (!fs::is_directory(folder)) throw UsageError("image folder or file " + folder + " does not exist");
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(folder))
    if (entry.is_regular_file()) files.push_back(entry.path());
  std::sort(files.begin(), files.end(),
            [](const fs::path& a, const fs::path& b) { return a.filename().string() < b.filename().string(); });
  return files;
}

bool has_image_extension(const fs::path& path) {
  static const std::set<std::string> extensions{".jpg",  ".jpeg", ".jpe", ".png", ".bmp", ".dib", ".tif",
                                                ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm", ".pxm",
                                                ".jp2",  ".exr",  ".hdr", ".pic", ".sr",  ".ras", ".gif"};
  std::string ext = path.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  return extensions.count(ext) > 0;
}

// One image file as it is (whatever its name), else the folder's files with an image file name, sorted by name.
// The others are named in one note line: a folder of photos often holds notes and sidecar files too.
std::vector<fs::path> image_files(const std::string& folder) {
  if (fs::is_regular_file(folder)) return {fs::path(folder)};
  std::vector<fs::path> candidates;
  std::vector<std::string> not_images;
  for (const fs::path& file : list_files(folder)) {
    if (has_image_extension(file))
      candidates.push_back(file);
    else
      not_images.push_back(file.filename().string());
  }
  if (!not_images.empty()) {
    std::cerr << "note: " << not_images.size() << " file(s) without an image file name not read: " << not_images[0];
    for (size_t i = 1; i < std::min<size_t>(not_images.size(), 4); ++i) std::cerr << ", " << not_images[i];
    std::cerr << (not_images.size() > 4 ? ", ...\n" : "\n");
  }
  if (candidates.empty()) throw UsageError("no image files in " + folder);
  return candidates;
}

// glibc serves blocks above its mmap threshold (at most 32 MB) with fresh mmap()s and returns them on
// free(); a batch of 8 needs such blocks for its activations, so without this every forward pass
// page-faults a few hundred MB of zero-filled pages back in. Keep them instead.
void keep_freed_memory() {
  mallopt(M_MMAP_MAX, 0);
  mallopt(M_TRIM_THRESHOLD, INT_MAX);
}

// Whether to decode the next batch during inference: by default only when the intra-op threads leave a core free.
bool decide_overlap(Overlap overlap) {
  if (overlap == Overlap::Auto)
    return static_cast<unsigned>(at::get_num_threads()) < std::thread::hardware_concurrency();
  return overlap == Overlap::On;
}

// Warm-up, outside the timed region: the TorchScript executor profiles the first call of each input
// shape and optimizes on the next, so run each batch shape this folder will use twice. The time of each call.
std::vector<double> warm_up(Model& model, const Options& o, size_t images) {
  std::set<int64_t> shapes{std::min<int64_t>(o.batch, images)};
  if (images % o.batch) shapes.insert(images % o.batch);
  std::vector<double> call_ms;
  for (int64_t n : shapes) {
    for (int call = 0; call < 2; ++call) {
      auto start = Clock::now();
      forward(model.module, torch::zeros({n, model.card.input_size, model.card.input_size, 3}, torch::kUInt8),
              o.tuning.grad_mode);
      call_ms.push_back(ms_since(start));
    }
  }
  return call_ms;
}

// A batch of decoded, preprocessed images, ready for the model.
struct Batch {
  std::vector<std::string> names;
  torch::Tensor images;  // uint8 NHWC RGB, names.size() images
  size_t undecodable = 0;
  double decode_ms = 0;
};

// The crop as the model's input, RGB, written straight into its slot of the batch tensor (and saved
// for --save-crops).
void put_in_slot(const cv::Mat& crop, bool rgb, cv::Mat& slot, const Options& o, const fs::path& file) {
  if (rgb)
    crop.copyTo(slot);
  else
    cv::cvtColor(crop, slot, cv::COLOR_BGR2RGB);
  if (!o.save_crops.empty()) {
    cv::Mat bgr;
    cv::cvtColor(slot, bgr, cv::COLOR_RGB2BGR);
    cv::imwrite((fs::path(o.save_crops) / (file.filename().string() + ".png")).string(), bgr);
  }
}

// The next batch: up to o.batch decodable images from candidates[next...]; advances next.
Batch prepare_batch(const Options& o, const ModelCard& card, const std::vector<fs::path>& candidates, size_t& next) {
  auto start = Clock::now();
  Batch batch;
  batch.images = torch::empty({o.batch, card.input_size, card.input_size, 3}, torch::kUInt8);
  while (next < candidates.size() && static_cast<int>(batch.names.size()) < o.batch) {
    const fs::path& file = candidates[next++];
    Decoded image = decode_image(file, card.resize_size);
    if (image.pixels.empty()) {
      std::cerr << "warning: skipping " << file.filename().string() << ": " << image.why_not << "\n";
      ++batch.undecodable;
      continue;
    }
    cv::Mat crop = fit_to_model(image.pixels, card.resize_size, card.input_size, o.tuning.resize);
    cv::Mat slot(card.input_size, card.input_size, CV_8UC3,
                 batch.images[static_cast<int64_t>(batch.names.size())].data_ptr());
    put_in_slot(crop, image.rgb, slot, o, file);
    batch.names.push_back(file.filename().string());
  }
  batch.images = batch.images.narrow(0, 0, static_cast<int64_t>(batch.names.size()));
  batch.decode_ms = ms_since(start);
  return batch;
}

// The timed region: decode, preprocess and classify every candidate, printing each image's labels.
Summary classify_all(Model& model, const Options& o, const std::vector<fs::path>& candidates, bool overlap) {
  const ModelCard& card = model.card;
  Summary s;
  s.batch = o.batch;
  s.threads = at::get_num_threads();
  s.overlap = overlap;
  const auto wall_start = Clock::now();
  const std::clock_t cpu_start = std::clock();
  size_t next = 0;  // the next candidate to decode; only the thread preparing a batch touches it
  Batch current = prepare_batch(o, card, candidates, next);
  s.decode_wait_ms += current.decode_ms;
  while (true) {
    s.decode_ms += current.decode_ms;
    s.undecodable += current.undecodable;
    if (current.names.empty()) break;  // nothing decodable was left
    // With overlap, the next batch is decoded on a second thread while the model runs this one.
    std::future<Batch> upcoming;
    if (next < candidates.size())
      upcoming = std::async(s.overlap ? std::launch::async : std::launch::deferred,
                            [&] { return prepare_batch(o, card, candidates, next); });
    auto start = Clock::now();
    torch::Tensor probabilities = forward(model.module, current.images, o.tuning.grad_mode);
    s.inference_ms += ms_since(start);
    ++s.batches;
    for (size_t i = 0; i < current.names.size(); ++i)
      print_predictions(card, current.names[i], probabilities[i], o.topk, o.json);
    s.classified += current.names.size();
    if (!upcoming.valid()) break;
    start = Clock::now();
    current = upcoming.get();
    s.decode_wait_ms += ms_since(start);
  }
  s.wall_ms = ms_since(wall_start);
  s.cpu_ms = 1000.0 * double(std::clock() - cpu_start) / CLOCKS_PER_SEC;
  return s;
}

// Classifies o.images as `o` says; returns 0 or kUndecodable, throws UsageError or, for inference, other exceptions.
int run(const Options& o) {
  if (o.tuning.keep_memory) keep_freed_memory();
  if (o.threads > 0) at::set_num_threads(o.threads);
  const bool overlap = decide_overlap(o.tuning.overlap);
  Model model = load_model(o.model);
  std::vector<fs::path> candidates = image_files(o.images);
  if (!o.save_crops.empty()) fs::create_directories(o.save_crops);
  std::vector<double> warmup_ms;
  if (o.tuning.warmup) warmup_ms = warm_up(model, o, candidates.size());
  Summary s = classify_all(model, o, candidates, overlap);
  if (s.classified == 0)
    throw UsageError("none of the " + std::to_string(candidates.size()) + " image files in " + o.images +
                     " could be decoded");
  s.warmup = o.tuning.warmup;
  s.warmup_ms = warmup_ms;
  print_summary(s, o.json);
  if (s.undecodable) {
    std::cerr << "error: " << s.undecodable << " image file(s) skipped, each named above; the other " << s.classified
              << " were classified\n";
    return kUndecodable;
  }
  return 0;
}

}  // namespace

int run_command_line(int argc, char** argv, const std::string& usage, const MoreSwitches& more) {
  try {
    return run(parse_options(std::vector<std::string>(argv + 1, argv + argc), usage, more));
  } catch (const UsageError& e) {
    std::cerr << "error: " << e.what() << "\n";
    if (e.show_usage) std::cerr << usage;
    return kUsageError;
  } catch (const std::exception& e) {
    std::string what = e.what();
    std::cerr << "error: inference failed: " << what.substr(0, what.find('\n')) << "\n";
    return kInferenceError;
  }
}

}  // namespace classify
