"""The one core every protocol's route calls: images in, one typed outcome per image out.

A door (app/routes.py's native API, and each other protocol's adapter) parses its request into images and
`Options`, calls `classify`, and formats the `Classification` it returns, and its errors, its own way. Here a
request is admitted, each image is checked, the images are decoded in parallel within the process's decode budget
(app/decode_pool.py), and all of them are queued in one round trip (one message per image, batched with everyone
else's) and awaited under one deadline.

Errors of the whole request (no such model, no worker, a full queue, Redis down, too many images, not one
readable image) are raised as exceptions (app/errors.py turns them into responses); an error of one image (not
an image, too large, the model failed on it, no answer in time) is that image's outcome, so one corrupt upload
does not fail the rest.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import partial

import numpy as np
from flask import current_app, request

from app import access, metrics
from app.decode_pool import DecodePool
from app.errors import ApiError, image_error_status
from app.fleet import Fleet
from app.queue_client import InferenceQueue
from app.request_log import log_fields, new_job_ids
from serving.config import Settings
from serving.preprocess import EncodedImage, ImageError, decode, fit_to_model, read_header
from serving.protocol import InferenceResult, ModelInfo

# An image as a door receives it: an encoded file (JPEG, PNG, ...), or uint8 pixels (height x width x 3)
# already at the model's input size, as the Open Inference Protocol may send them.
ImageInput = bytes | np.ndarray


@dataclass(frozen=True)
class Options:
    top_k: int | None = None  # predictions per image; None: TOP_K (at most the model's classes)
    probabilities: bool = False  # every class's probability too, in each result
    timeout: float | None = None  # seconds: a deadline shorter than REQUEST_TIMEOUT


@dataclass(frozen=True)
class ImageOutcome:
    """One image's answer: the worker's result, or why there is none (status, code, message)."""
    result: InferenceResult | None
    failure: ApiError | None
    preprocess_ms: float


@dataclass(frozen=True)
class Classification:
    model: str
    version: str
    top_k: int
    outcomes: list[ImageOutcome]  # in the order the images came
    total_ms: float

    def results_or_raise(self) -> list[InferenceResult]:
        """Every image's result, for protocols without per-image errors: the first failure fails the request,
        naming its image."""
        for index, outcome in enumerate(self.outcomes):
            failure = outcome.failure
            if failure is not None:
                raise ApiError(failure.status, failure.code, f"image {index}: {failure.message}")
        return [outcome.result for outcome in self.outcomes]


def classify(requested_name: str | None, pinned_version: str | None, images: list[ImageInput],
             options: Options) -> Classification:
    """Classify a request's images with the model it names (None: the default one); raises for the whole request."""
    started = time.perf_counter()
    settings: Settings = current_app.config["SETTINGS"]
    _check_count(len(images), min(settings.max_images_per_request, settings.max_queue))
    _check_top_k_asked(options.top_k)  # here, before the charge: a request wrong in itself costs nothing
    deadline = time.time() + min(settings.request_timeout, options.timeout or math.inf)
    headers = [_read_header(image, settings.max_image_pixels) for image in images]  # cheap: before admission
    if all(isinstance(header, ApiError) for header in headers):
        raise headers[0]  # nothing to classify: the request is as bad as its first image
    fleet: Fleet = current_app.extensions["fleet"]
    name = fleet.name_for(requested_name)
    log_fields(model=name if pinned_version is None else f"{name}@{pinned_version}", images=len(images))
    metrics.observe_images(request.url_rule.rule, len(images))
    # 429 or 503 now rather than after decoding, if the client is over its limits or nobody would answer; a
    # refusal after the charge gives it back.
    with access.charged_for(len(images), fleet.client) as charge:
        queue, model = fleet.admitted(name, pinned_version, charge)
        log_fields(model=queue.keys.model_id)
        access.count_admitted(len(images))
        top_k = _checked_top_k(options.top_k, settings.top_k, model.num_classes)
        prepared = _prepare_all(images, headers, model)
        outcomes = _await(queue, prepared, deadline, top_k, options.probabilities, settings.request_timeout)
    for outcome in outcomes:
        if outcome.result is not None and outcome.result.success:
            metrics.observe_prediction(outcome.result.model, outcome.result.version,
                                       time.perf_counter() - started)
    return Classification(model.name, model.version, top_k, outcomes, (time.perf_counter() - started) * 1000)


@dataclass(frozen=True)
class _Prepared:
    pixels: np.ndarray | None  # None: the image failed before the queue
    failure: ApiError | None
    preprocess_ms: float


def _check_count(count: int, limit: int) -> None:
    if count == 0:
        raise ApiError(400, "missing_image", "the request carries no image")
    if count > limit:
        raise ApiError(400, "too_many_images", f"{count} images in one request; at most {limit} "
                       "(MAX_IMAGES_PER_REQUEST, or MAX_QUEUE if smaller)")


def _read_header(image: ImageInput, max_pixels: int):
    """The image's header (format, size) read without decoding, or its failure; pixels pass as they are."""
    if isinstance(image, np.ndarray):
        return image
    try:
        return read_header(image, max_pixels)
    except ImageError as exc:
        return ApiError(image_error_status(exc.code), exc.code, str(exc))


def _check_top_k_asked(asked: int | None) -> None:
    """What a top_k must be whatever the model: at least 1 (its ceiling, the model's classes, is known at admission)."""
    if asked is not None and asked < 1:
        raise ApiError(400, "invalid_top_k", f"top_k={asked}: ask for at least 1")


def _checked_top_k(asked: int | None, default: int, classes: int) -> int:
    if asked is None:
        return min(default, classes)
    if asked > classes:
        raise ApiError(400, "invalid_top_k", f"top_k={asked}; the model has {classes} classes: ask for 1 to {classes}")
    return asked


def _prepare_all(images: list[ImageInput], headers: list, model: ModelInfo) -> list[_Prepared]:
    """The pixels the model takes for each image, in their order, or the image's failure; the encoded ones are
    decoded in parallel on this process's decode pool, within its budget."""
    to_decode = {index: header for index, header in enumerate(headers) if isinstance(header, EncodedImage)}
    pool: DecodePool = current_app.extensions["decode_pool"]
    decoded = pool.run_all([(_pixel_count(header), partial(_decode, header, model)) for header in to_decode.values()])
    by_index = dict(zip(to_decode, decoded))
    return [by_index[index] if index in by_index else _undecoded(image, header, model.input_size)
            for index, (image, header) in enumerate(zip(images, headers))]


def _pixel_count(encoded: EncodedImage) -> int:
    width, height = encoded.header.size
    return width * height


def _decode(encoded: EncodedImage, model: ModelInfo) -> _Prepared:
    """One image decoded and fitted to the model (on a decode thread), or its failure."""
    started = time.perf_counter()
    try:
        pixels = fit_to_model(decode(encoded, min_side=model.resize_size), model.resize_size, model.input_size)
    except ImageError as exc:
        return _Prepared(None, ApiError(image_error_status(exc.code), exc.code, str(exc)), 0.0)
    finally:
        # Pillow decodes into the header's own image (a JPEG's, for one), which the request holds until it is
        # answered: freed now, before this image's share of the budget goes back (app/decode_pool.py).
        encoded.header.close()
    return _Prepared(pixels, None, (time.perf_counter() - started) * 1000)


def _undecoded(image: ImageInput, header, input_size: int) -> _Prepared:
    """An image that needs no decoding: pixels already at the model's size, or one whose header failed."""
    if isinstance(header, ApiError):
        return _Prepared(None, header, 0.0)
    return _Prepared(*_checked_pixels(image, input_size), 0.0)


def _checked_pixels(pixels: np.ndarray, input_size: int) -> tuple[np.ndarray | None, ApiError | None]:
    expected = (input_size, input_size, 3)
    if pixels.dtype != np.uint8 or pixels.shape != expected:
        return None, ApiError(400, "wrong_input_shape", f"pixels of shape {list(pixels.shape)} ({pixels.dtype}); "
                              f"the model takes uint8 {list(expected)}")
    return pixels, None


def _await(queue: InferenceQueue, prepared: list[_Prepared], deadline: float, top_k: int, probabilities: bool,
           request_timeout: float) -> list[ImageOutcome]:
    """Queue every image that was prepared, in one round trip, and pair each with its answer or failure."""
    runnable = [p for p in prepared if p.pixels is not None]
    job_ids = new_job_ids(len(runnable))
    log_fields(job_id=",".join(job_ids))
    results = queue.classify([p.pixels for p in runnable], job_ids, deadline, top_k, probabilities,
                             access.priority()) if runnable else {}
    answers = iter(job_ids)
    outcomes = []
    for image in prepared:
        if image.pixels is None:
            outcomes.append(ImageOutcome(None, image.failure, image.preprocess_ms))
            continue
        result = results.get(next(answers))
        outcomes.append(ImageOutcome(result, _failure_of(result, request_timeout), image.preprocess_ms))
    return outcomes


def _failure_of(result: InferenceResult | None, request_timeout: float) -> ApiError | None:
    if result is None:
        return ApiError(504, "timeout", f"no answer within the request's deadline (REQUEST_TIMEOUT="
                        f"{request_timeout:g}s, or the request's own timeout)")
    if result.error is not None:
        return ApiError(500, result.error.code, result.error.message)
    return None
