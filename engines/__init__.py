"""Engines: what runs the serving model, a uint8 NHWC batch in, float32 probabilities out.

- `base`: the one interface: `Engine` (name, card, run), `Run` (the batch function) and
  `ExportEngine` (an engine that runs an export file: how to write the file, how to open it).
- `eager`: eager PyTorch, channels_last, any device; the reference the others are verified against.
- `torchscript`, `onnxruntime_cpu`, `openvino_cpu`: one module each, running an export file (model_files.export).
- `verify`: whether an engine's answers match the reference's.
- `choose`: which engine BACKEND gets, and the fallbacks of `auto`; `cache` keeps verified exports.

The worker opens its engine with `choose.open_engine`; model_tools' commands verify the files they
write with `verify`. Below them, model_files reads and writes the files. Imports torch: never used by the API.
"""
