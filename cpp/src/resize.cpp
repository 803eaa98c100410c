// Pillow's bilinear resampling (libImaging/Resample.c of Pillow 13, which requirements.txt pins). When it
// shrinks, it widens the triangle filter by the scale factor (an antialiasing filter), computes the weights
// in double, rounds them to 22-bit fixed point, and filters in two passes, rows and columns, with an 8-bit
// image between them. Every one of those steps shows in the last bit of some pixels, so each is done as
// Pillow does it, the order of the passes included.
#include "resize.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include <opencv2/imgproc.hpp>

namespace classify {
namespace {

constexpr int kPrecisionBits = 32 - 8 - 2;

// One pass's filter: for each output pixel, which input pixels it weighs and by how much.
struct Coefficients {
  int taps = 0;                // weights per output pixel
  std::vector<int> first;      // first input pixel of each output pixel
  std::vector<int> count;      // input pixels used
  std::vector<int32_t> fixed;  // weights, taps per output pixel, in fixed point
};

// Pillow takes the box as C floats (single precision) and subtracts them as floats.
Coefficients bilinear_coefficients(int in_size, float in0, float in1, int out_size) {
  double scale = static_cast<double>(in1 - in0) / out_size;
  double filter_scale = std::max(scale, 1.0);
  double support = 1.0 * filter_scale;  // the bilinear (triangle) filter's support is 1
  Coefficients c;
  c.taps = static_cast<int>(std::ceil(support)) * 2 + 1;
  c.first.resize(out_size);
  c.count.resize(out_size);
  c.fixed.assign(static_cast<size_t>(out_size) * c.taps, 0);
  std::vector<double> weights(c.taps);
  const double reciprocal_scale = 1.0 / filter_scale;  // Pillow multiplies by it; dividing rounds differently
  for (int xx = 0; xx < out_size; ++xx) {
    double center = in0 + (xx + 0.5) * scale;
    int xmin = std::max(static_cast<int>(center - support + 0.5), 0);
    int xmax = std::min(static_cast<int>(center + support + 0.5), in_size) - xmin;
    double total = 0;
    for (int x = 0; x < xmax; ++x) {
      double distance = std::fabs((x + xmin - center + 0.5) * reciprocal_scale);
      weights[x] = distance < 1.0 ? 1.0 - distance : 0.0;
      total += weights[x];
    }
    for (int x = 0; x < xmax; ++x) {
      double w = total != 0.0 ? weights[x] / total : weights[x];
      double scaled = w * (1 << kPrecisionBits);
      c.fixed[static_cast<size_t>(xx) * c.taps + x] = static_cast<int32_t>(scaled < 0 ? scaled - 0.5 : scaled + 0.5);
    }
    c.first[xx] = xmin;
    c.count[xx] = xmax;
  }
  return c;
}

inline uint8_t clip8(int32_t accumulated) {
  int32_t value = accumulated >> kPrecisionBits;
  return static_cast<uint8_t>(std::clamp(value, 0, 255));
}

// The horizontal pass: each row of `in` filtered into the same row of `out`. The filter's arrays are read
// through local pointers: byte stores may alias anything, which would otherwise make the compiler reload
// them for every output pixel.
void resample_horizontally(const cv::Mat& in, const Coefficients& horizontal, cv::Mat& out) {
  const int out_w = out.cols, taps = horizontal.taps;
  const int32_t* fixed = horizontal.fixed.data();
  const int* firsts = horizontal.first.data();
  const int* counts = horizontal.count.data();
  for (int y = 0; y < out.rows; ++y) {
    const uint8_t* row = in.ptr<uint8_t>(y);
    uint8_t* result = out.ptr<uint8_t>(y);
    for (int xx = 0; xx < out_w; ++xx) {
      const int32_t* k = fixed + static_cast<size_t>(xx) * taps;
      int32_t s0 = 1 << (kPrecisionBits - 1), s1 = s0, s2 = s0;
      const uint8_t* p = row + 3 * firsts[xx];
      for (int x = 0; x < counts[xx]; ++x, p += 3) {
        s0 += p[0] * k[x];
        s1 += p[1] * k[x];
        s2 += p[2] * k[x];
      }
      result[3 * xx] = clip8(s0);
      result[3 * xx + 1] = clip8(s1);
      result[3 * xx + 2] = clip8(s2);
    }
  }
}

// The vertical pass: each column of `in` filtered into the same column of `out`, whole rows at a time,
// which vectorizes.
void resample_vertically(const cv::Mat& in, const Coefficients& vertical, cv::Mat& out) {
  std::vector<int32_t> sums(static_cast<size_t>(out.cols) * 3);
  for (int yy = 0; yy < out.rows; ++yy) {
    const int32_t* k = &vertical.fixed[static_cast<size_t>(yy) * vertical.taps];
    std::fill(sums.begin(), sums.end(), 1 << (kPrecisionBits - 1));
    for (int y = 0; y < vertical.count[yy]; ++y) {
      const uint8_t* row = in.ptr<uint8_t>(vertical.first[yy] + y);
      const int32_t weight = k[y];
      for (size_t i = 0; i < sums.size(); ++i) sums[i] += row[i] * weight;
    }
    uint8_t* result = out.ptr<uint8_t>(yy);
    for (size_t i = 0; i < sums.size(); ++i) result[i] = clip8(sums[i]);
  }
}

// The input pixels a pass reads, [begin, end): its first pass then filters only those rows or columns.
cv::Range used(const Coefficients& c) { return cv::Range(c.first.front(), c.first.back() + c.count.back()); }

// The same filter for an input that starts `by` pixels later.
void shift(Coefficients& c, int by) {
  for (int& first : c.first) first -= by;
}

// Pillow 13 filters columns first when the height loses more than twice as many pixels as the width
// (python-pillow/Pillow#9549), counted on the whole image, not the box; else rows first.
bool vertical_pass_first(const cv::Mat& image, int out_w, int out_h) {
  const int rows_lost = image.rows - out_h;
  return rows_lost > 0 && rows_lost > 2 * (image.cols - out_w);
}

}  // namespace

cv::Mat pillow_bilinear(const cv::Mat& image, double x0, double y0, double x1, double y1, int out_w, int out_h) {
  Coefficients horizontal = bilinear_coefficients(image.cols, static_cast<float>(x0), static_cast<float>(x1), out_w);
  Coefficients vertical = bilinear_coefficients(image.rows, static_cast<float>(y0), static_cast<float>(y1), out_h);
  cv::Mat result(out_h, out_w, CV_8UC3);
  if (vertical_pass_first(image, out_w, out_h)) {
    const cv::Range columns = used(horizontal);
    cv::Mat between(out_h, columns.size(), CV_8UC3);
    resample_vertically(image.colRange(columns), vertical, between);
    shift(horizontal, columns.start);
    resample_horizontally(between, horizontal, result);
  } else {
    const cv::Range rows = used(vertical);
    cv::Mat between(rows.size(), out_w, CV_8UC3);
    resample_horizontally(image.rowRange(rows), horizontal, between);
    shift(vertical, rows.start);
    resample_vertically(between, vertical, result);
  }
  return result;
}

cv::Mat fit_to_model(const cv::Mat& image, int resize_size, int input_size, Resize method) {
  int width = image.cols, height = image.rows, shorter = std::min(width, height);
  // torchvision's resized size: the longer side is truncated
  int resized_w = width == shorter ? resize_size : static_cast<int>(double(resize_size) * width / shorter);
  int resized_h = height == shorter ? resize_size : static_cast<int>(double(resize_size) * height / shorter);
  // Python's round(): halves to even, as nearbyint does in the default rounding mode
  int left = static_cast<int>(std::nearbyint((resized_w - input_size) / 2.0));
  int top = static_cast<int>(std::nearbyint((resized_h - input_size) / 2.0));
  if (method == Resize::OpenCV) {
    bool shrinking = resized_w <= width && resized_h <= height;
    cv::Mat resized;
    cv::resize(image, resized, cv::Size(resized_w, resized_h), 0, 0, shrinking ? cv::INTER_AREA : cv::INTER_LINEAR);
    return resized(cv::Rect(left, top, input_size, input_size)).clone();
  }
  double x_scale = double(width) / resized_w, y_scale = double(height) / resized_h;
  return pillow_bilinear(image, left * x_scale, top * y_scale, (left + input_size) * x_scale,
                         (top + input_size) * y_scale, input_size, input_size);
}

}  // namespace classify
