"""The Open Inference Protocol v2 (KServe v2, Triton's HTTP/REST API): a door over app/inference.py.

A v2 request becomes queue messages here: `infer` parses its body (JSON, JSON followed by binary tensors, or
one raw binary input) into images (a BYTES tensor of encoded files, or a UINT8 [N, H, W, 3] tensor of pixels
at the model's input size) and options (`classification` on the output: the top k as "score:index:label";
`parameters.timeout` in microseconds), and formats the core's answer as v2 outputs: PROBABILITIES, FP32
[N, classes], in JSON or as binary data. Every error is {"error": "..."} with the core's status. The routes,
shapes and extensions follow the protocol's specification (docs/api.md, and shared notes on the protocol).
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pybase64
from flask import Blueprint, Response, current_app, request

from app import inference
from app.errors import ApiError, failure_of, respond
from app.fleet import Fleet
from app.inference import Classification, Options
from app.queue_client import VersionStatus
from serving.protocol import InferenceResult

v2_api = Blueprint("v2", __name__, url_prefix="/v2")

SERVER_NAME = "imgcls"
SERVER_VERSION = "0.3.0"  # pyproject.toml's (a test checks)
EXTENSIONS = ["binary_tensor_data", "classification", "model_configuration"]
IMAGE_INPUT, PIXELS_INPUT, OUTPUT = "IMAGE", "PIXELS", "PROBABILITIES"
HEADER_LENGTH = "Inference-Header-Content-Length"
MICROSECONDS = 1e-6


@v2_api.errorhandler(Exception)
def v2_error(exc: Exception) -> Response:
    failure = failure_of(exc)
    return respond(failure, {"error": failure.message})


@v2_api.get("")
def server_metadata():
    return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": EXTENSIONS}


@v2_api.get("/health/live")
def live():
    return {"live": True}


@v2_api.get("/health/ready")
def ready():
    """Ready when /readyz is: POST /predict would be served."""
    _fleet().ready_status()
    return {"ready": True}


@v2_api.get("/models/<name>/ready")
@v2_api.get("/models/<name>/versions/<version>/ready")
def model_ready(name: str, version: str | None = None):
    _live_status(_fleet(), name, version)
    return {"name": name, "ready": True}


@v2_api.get("/models/<name>")
@v2_api.get("/models/<name>/versions/<version>")
def model_metadata(name: str, version: str | None = None):
    fleet = _fleet()
    info = _live_status(fleet, name, version).model
    return {"name": name, "versions": fleet.snapshot().versions[name], "platform": info.backend,
            "inputs": [{"name": IMAGE_INPUT, "datatype": "BYTES", "shape": [-1, 1]},
                       {"name": PIXELS_INPUT, "datatype": "UINT8", "shape": [-1, info.input_size, info.input_size, 3]}],
            "outputs": [{"name": OUTPUT, "datatype": "FP32", "shape": [-1, info.num_classes]}]}


@v2_api.get("/models/<name>/config")
@v2_api.get("/models/<name>/versions/<version>/config")
def model_config(name: str, version: str | None = None):
    """Triton's model configuration, the part that perf_analyzer and Triton's sample clients read."""
    info = _live_status(_fleet(), name, version).model
    return {"name": name, "platform": info.backend, "max_batch_size": info.batch_size,
            "input": [{"name": IMAGE_INPUT, "data_type": "TYPE_STRING", "dims": [1], "optional": True},
                      {"name": PIXELS_INPUT, "data_type": "TYPE_UINT8", "format": "FORMAT_NHWC",
                       "dims": [info.input_size, info.input_size, 3], "optional": True}],
            "output": [{"name": OUTPUT, "data_type": "TYPE_FP32", "dims": [info.num_classes]}],
            "dynamic_batching": {}}


@v2_api.post("/models/<name>/infer")
@v2_api.post("/models/<name>/versions/<version>/infer")
def infer(name: str, version: str | None = None):
    header, binary = _split_body()
    images = [binary] if header is None else _images(header, binary)
    header = header or {}
    request_parameters, output_parameters = _parameters(header, "the request"), _requested_output(header)
    classification = output_parameters.get("classification")
    options = Options(top_k=classification, probabilities=classification is None,
                      timeout=_timeout(request_parameters))
    binary_output = output_parameters.get("binary_data", request_parameters.get("binary_data_output", False))
    if not isinstance(binary_output, bool):
        raise _bad(f"binary_data={binary_output!r}: expected true or false")
    done = inference.classify(name, version, images, options)
    results = done.results_or_raise()
    output, data = _probabilities(results) if classification is None else _classes(results, done.top_k)
    return _answer(header, done, output, data, binary_output)


def _fleet() -> Fleet:
    return current_app.extensions["fleet"]


def _live_status(fleet: Fleet, name: str, version: str | None) -> VersionStatus:
    return fleet.live_status(fleet.name_for(name), version)  # UnknownModel for a name never served


# The request


def _split_body() -> tuple[dict | None, bytes]:
    """The JSON header and the binary data after it (binary tensor data extension); no header (None) for a raw
    body, which is one encoded image (`Inference-Header-Content-Length: 0`)."""
    body = request.get_data()
    length = request.headers.get(HEADER_LENGTH)
    if length is None:
        return _json_header(body), b""
    if not (length.isascii() and length.isdigit()) or int(length) > len(body):
        raise _bad(f"{HEADER_LENGTH}: {length[:20]!r} is not a length within the body's {len(body)} bytes")
    if int(length) == 0:
        return None, body
    return _json_header(body[:int(length)]), body[int(length):]


def _json_header(text: bytes) -> dict:
    try:
        header = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise _bad("the request is not JSON (binary data needs the Inference-Header-Content-Length header)") from None
    if not isinstance(header, dict):
        raise _bad("the request must be a JSON object")
    return header


def _images(header: dict, binary: bytes) -> list[inference.ImageInput]:
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise _bad(f"send exactly one input: {IMAGE_INPUT} (BYTES, encoded images) or {PIXELS_INPUT} "
                   "(UINT8 [N, height, width, 3])")
    tensor = inputs[0]
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
        raise _bad("an input's shape must be a list of whole numbers")
    size = _parameters(tensor, "an input").get("binary_data_size")
    if size is not None and (type(size) is not int or size != len(binary)):
        raise _bad(f"binary_data_size={size!r} but {len(binary)} bytes of binary data follow the JSON")
    if size is None and binary:
        raise _bad("binary data follows the JSON but no input names its binary_data_size")
    datatype = tensor.get("datatype")
    if datatype == "BYTES":
        return _encoded_images(shape, binary if size is not None else None, tensor)
    if datatype == "UINT8":
        return _pixel_images(shape, binary if size is not None else None, tensor)
    raise _bad(f"datatype {str(datatype)[:20]!r}: send BYTES (encoded images) or UINT8 [N, height, width, 3]")


def _encoded_images(shape: list[int], binary: bytes | None, tensor: dict) -> list[bytes]:
    if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
        raise _bad(f"a BYTES input of images has shape [N] or [N, 1]; got {shape}")
    elements = _length_prefixed(binary) if binary is not None else _base64_strings(tensor.get("data"))
    if len(elements) != shape[0]:
        raise _bad(f"shape {shape} holds {shape[0]} images; the data has {len(elements)}")
    return elements


def _length_prefixed(binary: bytes) -> list[bytes]:
    """BYTES elements in binary: each a 4-byte little-endian length, then that many bytes."""
    elements, offset = [], 0
    while offset < len(binary):
        if offset + 4 > len(binary):
            raise _bad("BYTES binary data ends inside an element's 4-byte length")
        (length,) = struct.unpack_from("<I", binary, offset)
        offset += 4
        if offset + length > len(binary):
            raise _bad(f"a BYTES element of {length} bytes runs past the binary data")
        elements.append(binary[offset:offset + length])
        offset += length
    return elements


def _base64_strings(data) -> list[bytes]:
    """BYTES elements in JSON: each image's file as a base64 string (JSON cannot carry raw bytes)."""
    flat = _flatten(data)
    if not all(isinstance(item, str) for item in flat):
        raise _bad("a BYTES input's JSON data must be base64 strings, one per image")
    try:
        return [pybase64.b64decode(item, validate=True) for item in flat]
    except ValueError:
        raise _bad("a BYTES input's JSON data must be base64 strings, one per image") from None


def _pixel_images(shape: list[int], binary: bytes | None, tensor: dict) -> list[np.ndarray]:
    if len(shape) != 4 or shape[3] != 3:
        raise _bad(f"a UINT8 input of pixels has shape [N, height, width, 3]; got {shape}")
    count = int(np.prod(shape))
    if binary is not None:
        if len(binary) != count:
            raise _bad(f"shape {shape} is {count} bytes of UINT8; the binary data has {len(binary)}")
        pixels = np.frombuffer(binary, dtype=np.uint8)
    else:
        flat = _flatten(tensor.get("data"))
        if len(flat) != count or not all(type(v) is int and 0 <= v <= 255 for v in flat):
            raise _bad(f"a UINT8 input of shape {shape} needs {count} whole numbers from 0 to 255")
        pixels = np.array(flat, dtype=np.uint8)
    return list(pixels.reshape(shape))


def _flatten(data) -> list:
    """The protocol's JSON tensor data, flat (row-major) or nested: its elements in order."""
    if not isinstance(data, list):
        raise _bad("an input needs its data: a JSON list, or binary data after the JSON")
    flat: list = []
    stack = [iter(data)]
    while stack:  # iteratively: nesting is the client's to choose, and must not exhaust the stack
        item = next(stack[-1], _END)
        if item is _END:
            stack.pop()
        elif isinstance(item, list):
            stack.append(iter(item))
        else:
            flat.append(item)
    return flat


_END = object()


def _parameters(item: dict, what: str) -> dict:
    """The `parameters` object of the request, an input or an output ({} when absent)."""
    parameters = item.get("parameters", {})
    if not isinstance(parameters, dict):
        raise _bad(f"the parameters of {what} must be a JSON object")
    return parameters


def _requested_output(header: dict) -> dict:
    """The parameters of the one output a request may ask for (PROBABILITIES); {} when none is named."""
    outputs = header.get("outputs", [])
    if not isinstance(outputs, list) or len(outputs) > 1 or not all(isinstance(o, dict) for o in outputs):
        raise _bad(f"ask for at most one output, {OUTPUT}")
    if not outputs:
        return {}
    if outputs[0].get("name") != OUTPUT:
        raise _bad(f"no output {str(outputs[0].get('name'))[:40]!r}; this model has {OUTPUT}")
    parameters = _parameters(outputs[0], "an output")
    classification = parameters.get("classification")
    if classification is not None and (type(classification) is not int or classification < 1):
        raise _bad(f"classification={classification!r}: expected a whole number of at least 1")
    return parameters


def _timeout(parameters: dict) -> float | None:
    """The request's own deadline, `timeout` in microseconds (Triton's parameter); it can only shorten
    REQUEST_TIMEOUT."""
    given = parameters.get("timeout")
    if given is None:
        return None
    if type(given) is not int or given <= 0:
        raise _bad(f"timeout={given!r}: expected microseconds, a whole number above 0")
    return given * MICROSECONDS


def _bad(message: str) -> ApiError:
    return ApiError(400, "invalid_request", message)


# The answer


def _probabilities(results: list[InferenceResult]) -> tuple[dict, np.ndarray]:
    rows = np.stack([result.probabilities for result in results]).astype("<f4")
    return {"name": OUTPUT, "datatype": "FP32", "shape": list(rows.shape)}, rows


def _classes(results: list[InferenceResult], top_k: int) -> tuple[dict, list[str]]:
    """The classification extension: "score:index:label" per class, most probable first (Triton's 6 decimals)."""
    classes = [f"{p.probability:f}:{p.index}:{p.label}" for result in results for p in result.predictions]
    return {"name": OUTPUT, "datatype": "BYTES", "shape": [len(results), top_k]}, classes


def _answer(header: dict, done: Classification, output: dict, data, binary: bool) -> Response:
    answer = {"model_name": done.model, "model_version": done.version, "outputs": [output]}
    if "id" in header:
        answer["id"] = header["id"]
    if not binary:
        output["data"] = data.ravel().tolist() if isinstance(data, np.ndarray) else data
        return current_app.response_class(json.dumps(answer), mimetype="application/json")
    payload = data.tobytes() if isinstance(data, np.ndarray) else b"".join(
        struct.pack("<I", len(text.encode())) + text.encode() for text in data)
    output["parameters"] = {"binary_data_size": len(payload)}
    head = json.dumps(answer).encode()
    response = current_app.response_class(head + payload, mimetype="application/octet-stream")
    response.headers[HEADER_LENGTH] = str(len(head))
    return response
