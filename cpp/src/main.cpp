// classify: the C++ client of the image-classification service.
//
//   ./build/classify [--model M] [--topk K] [--batch N] [--threads T] [--json] [--save-crops D] image_dir|image
//
// Runs the TorchScript export of the serving model (python -m model_tools trace) on every image
// in a folder, or on one image: uint8 RGB pixels in, probabilities out, normalization inside the model. The model
// card inside the .pt file (model_card.json) gives the class names and the resize and crop.
// Preprocessing is the service's (serving/preprocess.py), pixel for pixel: shorter side to
// resize_size with Pillow's bilinear filter (resize.cpp), center crop to input_size.
// Speed (docs/cpp-client.md "The C++ client"): JPEGs decoded by libjpeg straight to RGB at Pillow's draft
// scale, freed memory kept in the heap, the next batch decoded during inference when a core is free.
// Those settings are fixed here; classify-bench (cpp/bench) can switch each off to measure it.
//
// Exit status: 0 every image file classified; 1 some image files skipped, each named on stderr with
// why (a GIF, a float TIFF, a broken file), the rest classified; 2 bad usage, missing model or
// folder or image, no image to classify; 3 inference failed. Files without an image file name are not read
// (one note line), and do not change the status.
#include <string>

#include "options.h"
#include "run.h"

int main(int argc, char** argv) {
  const std::string usage =
      std::string("usage: classify [--model M] [--topk K] [--batch N] [--threads T] [--json] image_dir|image\n") +
      classify::kOptionsHelp;
  return classify::run_command_line(argc, argv, usage);
}
