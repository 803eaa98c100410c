#include "report.h"

#include <algorithm>
#include <cstdio>
#include <iomanip>
#include <iostream>
#include <numeric>
#include <sstream>

#include "json.h"

namespace classify {

void print_predictions(const ModelCard& card, const std::string& file, const torch::Tensor& probabilities, int topk,
                       bool json) {
  int k = std::min<int>(topk, static_cast<int>(probabilities.size(0)));
  auto [values, indices] = probabilities.topk(k);
  auto value = values.accessor<float, 1>();
  auto index = indices.accessor<int64_t, 1>();
  if (json) {
    std::ostringstream line;
    line << "{\"file\": " << json_quote(file) << ", \"predictions\": [";
    for (int i = 0; i < k; ++i) {
      line << (i ? ", " : "") << "{\"index\": " << index[i]
           << ", \"label\": " << json_quote(card.class_names.at(index[i]))
           << ", \"probability\": " << std::setprecision(8) << value[i] << "}";
    }
    std::cout << line.str() << "]}\n";
    return;
  }
  std::cout << file << "\n";
  for (int i = 0; i < k; ++i) {
    char line[64];
    std::snprintf(line, sizeof line, "  %8.4f  ", value[i]);
    std::cout << line << card.class_names.at(index[i]) << " (" << index[i] << ")\n";
  }
}

namespace {

double images_per_second(const Summary& s) { return s.classified / (s.wall_ms / 1000.0); }

void write_json(std::ostream& out, const Summary& s) {
  out << "{\"summary\": true, \"images\": " << s.classified << ", \"undecodable\": " << s.undecodable
      << ", \"batches\": " << s.batches << ", \"batch\": " << s.batch << ", \"threads\": " << s.threads
      << ", \"wall_ms\": " << s.wall_ms << ", \"decode_preprocess_ms\": " << s.decode_ms
      << ", \"decode_wait_ms\": " << s.decode_wait_ms << ", \"inference_ms\": " << s.inference_ms
      << ", \"overlap\": " << (s.overlap ? "true" : "false") << ", \"clock_cpu_ms\": " << s.cpu_ms
      << ", \"images_per_s\": " << images_per_second(s) << ", \"warmup_ms\": [";
  for (size_t i = 0; i < s.warmup_ms.size(); ++i) out << (i ? ", " : "") << s.warmup_ms[i];
  out << "]}";
}

void write_text(std::ostream& out, const Summary& s) {
  const double warmup_total = std::accumulate(s.warmup_ms.begin(), s.warmup_ms.end(), 0.0);
  out << "summary: " << s.classified << " images in " << s.batches << " batches of up to " << s.batch << " on "
      << s.threads << " threads: " << images_per_second(s) << " images/s (steady_clock wall time " << s.wall_ms
      << " ms = inference " << s.inference_ms << " ms + waiting for decode+preprocess " << s.decode_wait_ms
      << " ms, of " << s.decode_ms << " ms" << (s.overlap ? " run on a second thread during inference; " : "; ")
      << (s.warmup ? "warm-up of " + std::to_string(s.warmup_ms.size()) + " calls, " +
                         std::to_string(static_cast<int>(warmup_total)) + " ms, excluded"
                   : std::string("no warm-up: first calls included"))
      << "; clock() would say " << s.cpu_ms << " ms, the CPU time of all threads)";
}

}  // namespace

void print_summary(const Summary& summary, bool json) {
  std::ostringstream line;
  line << std::fixed << std::setprecision(2);
  if (json)
    write_json(line, summary);
  else
    write_text(line, summary);
  std::cout << line.str() << std::endl;
}

}  // namespace classify
