"""Whether an engine gives the reference's answers: every export is checked so before it serves."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from engines.base import Run
from model_files import TOLERANCE
from model_files.card import ExportError, first_line


class ExportMismatch(ExportError):
    """An exported model does not compute what the eager model computes."""


def verify(reference: Run, candidate: Run, input_size: int, batch_sizes: Sequence[int] = (1, 8),
           tolerance: float = TOLERANCE) -> float:
    """Largest absolute probability difference between two models over several inputs per batch size.

    Inputs: uniform noise, smooth random images (which give confident, varied answers)
    and a constant image. Raises
    ExportMismatch above tolerance, or when the outputs' shapes differ.
    """
    worst = 0.0
    for images in check_batches(input_size, batch_sizes):
        batch_size = len(images)
        expected = np.asarray(reference(images))
        try:
            got = np.asarray(candidate(images))
        except Exception as exc:  # each runtime raises its own types; a failing engine is not a match
            raise ExportMismatch(f"the export fails on a batch of {batch_size}: {first_line(exc)}") from None
        if expected.shape != got.shape:
            raise ExportMismatch(f"batch of {batch_size}: output shape {got.shape}, expected {expected.shape}")
        worst = max(worst, float(np.abs(expected.astype(np.float64) - got).max()))
    if not worst <= tolerance:  # also catches NaN
        raise ExportMismatch(f"exported model differs from the eager model by up to {worst:.3g} "
                             f"(tolerance {tolerance:g})")
    return worst


def check_batches(input_size: int, batch_sizes: Sequence[int] = (1, 8)) -> list[np.ndarray]:
    """The images every check runs, per batch size: uniform noise, smooth random images and a constant image."""
    rng = np.random.default_rng(1234)
    batches = []
    for batch_size in batch_sizes:
        batches += [rng.integers(0, 256, (batch_size, input_size, input_size, 3), dtype=np.uint8),
                    _smooth_images(rng, batch_size, input_size),
                    np.full((batch_size, input_size, input_size, 3), 128, np.uint8)]
    return batches


def _smooth_images(rng: np.random.Generator, batch_size: int, size: int) -> np.ndarray:
    """Blobs of colour: a coarse random grid, upsampled by repetition and box-blurred."""
    cells = 8
    coarse = rng.integers(0, 256, (batch_size, cells, cells, 3)).astype(np.float32)
    repeat = -(-size // cells)
    fine = coarse.repeat(repeat, axis=1).repeat(repeat, axis=2)[:, :size, :size]
    for axis in (1, 2):
        fine = sum(np.roll(fine, shift, axis=axis) for shift in range(-3, 4)) / 7
    return fine.round().clip(0, 255).astype(np.uint8)
