"""What a model file may be without MODEL_TRUSTED=1: the one rule, for every format the service reads.

Without trust the worker (and `python -m model_tools`) reads only files that hold data, never code:

- a tensors-only state_dict, read with `torch.load(weights_only=True)`, of an architecture this
  project builds by name (model_files.architectures);
- an ONNX file whose every node is an operator of the standard domains (STANDARD_ONNX_DOMAINS)
  and whose external tensor data, if any, lies in the model file's own folder (check_onnx).

Everything else runs code of the file's choosing while torch loads it, before anything could inspect
it, so it needs trust (`require_trust` refuses it with the reason and the flag to set):

- pickled checkpoints: unpickling calls whatever the pickle names;
- TorchScript: `torch.jit.load` compiles the file's code/ and runs it (a scripted class's
  `__setstate__` runs during the load), and its operators include file I/O (`aten::from_file`
  writes any file the worker can write, `aten::save`); an operator allow-list would have to parse
  TorchScript's source itself, a second compiler that must agree with torch's on every file;
- torch.export programs (.pt2): `torch.export.load` unpickles payloads with `weights_only=False`
  (weights, constants, and the sample inputs when a weights-only load of them fails), loads compiled
  AOTInductor libraries from the archive, evaluates the graph's shape expressions with
  `sympy.sympify` (an `eval`), resolves operator names by attribute lookup on the `torch` module,
  and `ExportedProgram.module()` `exec`s the file's guard code. torch.export.load's own docstring
  says never to load one from an untrusted source.

The engine cache's exports (engines.cache) are not model files: the worker wrote them itself, into a
folder only it should write (docs/serving-your-model.md, "Trust").
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from model_files.card import ModelLoadError, ModelOptions

# ai.onnx (spelled "" or "ai.onnx") and ai.onnx.ml: the operators the ONNX standard defines. Any other
# domain is a custom operator, code that onnxruntime or OpenVINO runs only from a library of its own.
STANDARD_ONNX_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})

TORCHSCRIPT_RUNS_CODE = ("is TorchScript, whose code runs while torch loads it (torch.jit.load runs the file's "
                         "__setstate__ methods, and its operators can write files: aten::from_file, aten::save)")
EXPORTED_PROGRAM_RUNS_CODE = ("is a torch.export program, and torch.export.load runs code from the file while it "
                              "loads it (pickled payloads, compiled libraries, shape expressions and guards "
                              "evaluated as Python)")


def require_trust(path: Path, runs_code: str, options: ModelOptions) -> None:
    """Refuse a file of a format whose loading runs code of the file's choosing, unless it is trusted."""
    if not options.trusted:
        _refuse(path, runs_code, options)


def check_onnx(model, path: Path, options: ModelOptions) -> None:
    """Refuse, unless trusted, an ONNX model with a custom operator or external data outside its folder.

    `model` is the file's ModelProto, read without its external data. Every node is looked at: of the
    main graph, of the bodies of If/Loop/Scan nodes (graph attributes) and of the model's local functions.
    """
    if options.trusted:
        return
    for node in _onnx_nodes(model):
        if node.domain not in STANDARD_ONNX_DOMAINS:
            _refuse(path, f"has a node {node.op_type!r} of the custom operator domain {node.domain!r}, code that "
                          "only a custom-operator library runs", options)
    folder = path.resolve().parent
    for tensor in _onnx_tensors(model):
        location = _external_location(tensor)
        if location is not None and not _inside(folder, location):
            _refuse(path, f"reads tensor {tensor.name!r} from {location!r}, outside the model file's folder "
                          f"{folder}", options)


def _refuse(path: Path, what: str, options: ModelOptions) -> None:
    raise ModelLoadError(f"{path} {what}; without trust only tensors-only state_dicts and plain ONNX files are "
                         f"served. Where you trust the file and whoever wrote it: {options.names['trusted']}")


def _inside(folder: Path, location: str) -> bool:
    """Whether an external-data location names a file inside `folder` (no absolute path, no .., no symlink out)."""
    return not Path(location).is_absolute() and (folder / location).resolve().is_relative_to(folder)


def _external_location(tensor) -> str | None:
    import onnx

    if tensor.data_location != onnx.TensorProto.EXTERNAL:
        return None
    return next((entry.value for entry in tensor.external_data if entry.key == "location"), "")


def _onnx_nodes(model) -> Iterator:
    """Every node: of the main graph, of the model's local functions, of every graph nested in a node's attributes."""
    pending = [*model.graph.node, *(node for function in model.functions for node in function.node)]
    while pending:
        node = pending.pop()
        yield node
        pending.extend(inner for graph in _subgraphs(node) for inner in graph.node)


def _subgraphs(node) -> Iterator:
    """The graphs a node holds as attributes: an If's branches, a Loop's or Scan's body."""
    for attribute in node.attribute:
        if attribute.HasField("g"):
            yield attribute.g
        yield from attribute.graphs


def _onnx_tensors(model) -> Iterator:
    """Every TensorProto that can hold external data: initializers, sparse ones, constant attributes."""
    nodes = list(_onnx_nodes(model))
    for graph in [model.graph, *(graph for node in nodes for graph in _subgraphs(node))]:
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield from (sparse.values, sparse.indices)
    for node in nodes:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("sparse_tensor"):
                yield from (attribute.sparse_tensor.values, attribute.sparse_tensor.indices)
            for sparse in attribute.sparse_tensors:
                yield from (sparse.values, sparse.indices)
