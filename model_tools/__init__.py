"""model_tools' commands: build, import, export, quantize, route and forget models (`python -m model_tools`).

The model files themselves (card, loading, exports, trust) are the library model_files; the engines that
run and verify them are engines/. This file itself imports nothing, so `python -m model_tools ...
--if-missing` answers without loading torch.
"""
