// Preprocessing geometry: the service's, pixel for pixel (serving/preprocess.py, fit_to_model).
//
// The service computes torchvision's Resize(resize_size) + CenterCrop(input_size) by asking Pillow to
// resample just the crop's box with its BILINEAR filter. Pillow's bilinear is not OpenCV's INTER_LINEAR
// (resize.cpp says how), so pillow_bilinear is a port of Pillow's algorithm (libImaging/Resample.c);
// tests/integration/test_cpp_resize.py compares it with Pillow's own output.
#pragma once

#include <opencv2/core.hpp>

namespace classify {

// Pillow: the service's filter, exactly. OpenCV: INTER_AREA, the nearest built-in filter (a box
// instead of a triangle), which classify-bench offers for comparison.
enum class Resize { Pillow, OpenCV };

// Pillow's Image.resize((out_w, out_h), BILINEAR, box=(x0, y0, x1, y1)) of an 8-bit 3-channel image
// (channels are treated alike, so BGR or RGB).
cv::Mat pillow_bilinear(const cv::Mat& image, double x0, double y0, double x1, double y1, int out_w, int out_h);

// Shorter side to resize_size, center crop input_size: serving/preprocess.py's fit_to_model.
cv::Mat fit_to_model(const cv::Mat& image, int resize_size, int input_size, Resize method);

}  // namespace classify
