// test_resize CASES: resizes images with resize.cpp and compares each result with Pillow's, value for value.
//
// CASES is a text file (tests/integration/test_cpp_resize.py writes it, with Pillow's outputs), one case
// a line, file names relative to its folder:
//   pillow INPUT.png EXPECTED.png X0 Y0 X1 Y1 OUT_W OUT_H
//       Pillow's Image.resize((OUT_W, OUT_H), BILINEAR, box=(X0, Y0, X1, Y1))
//   fit INPUT.png EXPECTED.png RESIZE_SIZE INPUT_SIZE
//       serving/preprocess.py's fit_to_model: shorter side to RESIZE_SIZE, center crop INPUT_SIZE
// Prints "ok" or "FAIL" and the case's line for each; exits 0 when every case equals Pillow's output
// exactly, 1 when one differs, 2 when the cases cannot be read. Exactly, because the port does Pillow's
// integer arithmetic step for step: any difference, even by 1, is a departure from it.
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>

#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>

#include "resize.h"

namespace fs = std::filesystem;

namespace {

// The resized image a case asks for, given the rest of its line; empty when that is not a case.
cv::Mat resize_as_asked(const std::string& kind, std::istream& parameters, const cv::Mat& input) {
  if (kind == "pillow") {
    double x0, y0, x1, y1;
    int out_w, out_h;
    if (parameters >> x0 >> y0 >> x1 >> y1 >> out_w >> out_h)
      return classify::pillow_bilinear(input, x0, y0, x1, y1, out_w, out_h);
  } else if (kind == "fit") {
    int resize_size, input_size;
    if (parameters >> resize_size >> input_size)
      return classify::fit_to_model(input, resize_size, input_size, classify::Resize::Pillow);
  }
  return {};
}

// Empty when equal, else how the two differ.
std::string difference(const cv::Mat& ours, const cv::Mat& expected) {
  if (ours.size() != expected.size() || ours.type() != expected.type())
    return "size or type differs: " + std::to_string(ours.cols) + "x" + std::to_string(ours.rows) + " against " +
           std::to_string(expected.cols) + "x" + std::to_string(expected.rows);
  cv::Mat diff;
  cv::absdiff(ours, expected, diff);
  int differing = cv::countNonZero(diff.reshape(1));
  if (differing == 0) return "";
  double largest;
  cv::minMaxLoc(diff.reshape(1), nullptr, &largest);
  return std::to_string(differing) + " of " + std::to_string(diff.total() * diff.channels()) +
         " values differ, by up to " + std::to_string(static_cast<int>(largest));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: test_resize CASES\n";
    return 2;
  }
  const fs::path folder = fs::path(argv[1]).parent_path();
  std::ifstream cases(argv[1]);
  std::string text;
  int failed = 0, passed = 0;
  while (std::getline(cases, text)) {
    std::istringstream line(text);
    std::string kind, input_name, expected_name;
    line >> kind >> input_name >> expected_name;
    cv::Mat input = cv::imread((folder / input_name).string(), cv::IMREAD_COLOR);
    cv::Mat expected = cv::imread((folder / expected_name).string(), cv::IMREAD_COLOR);
    cv::Mat ours = input.empty() ? cv::Mat() : resize_as_asked(kind, line, input);
    if (input.empty() || expected.empty() || ours.empty()) {
      std::cerr << "cannot run case: " << text << "\n";
      return 2;
    }
    std::string why = difference(ours, expected);
    std::cout << (why.empty() ? "ok " : "FAIL ") << text << (why.empty() ? "" : ": " + why) << "\n";
    (why.empty() ? passed : failed) += 1;
  }
  std::cout << passed << " passed, " << failed << " failed\n";
  return failed ? 1 : passed ? 0 : 2;
}
