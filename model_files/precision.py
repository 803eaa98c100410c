"""How far a reduced-precision model's answers are from full precision's: the agreement report and its threshold.

A reduced-precision engine (BF16 compute, an INT8 quantized file) never gives float32's probabilities, so it
cannot pass engines.verify's tolerance. It is judged instead on what a client sees, over images it was not
calibrated on:

- top-1 agreement, counted only on the images where float32's top-1 leads its second by at least
  LEAD_MARGIN: where two classes nearly tie, either answer is float32's answer to rounding, and counting
  them would make the number measure the images rather than the model (a near tie flips under any change);
- top-5 overlap: the mean share of float32's five best classes that are among the candidate's five best;
- the largest difference of any probability.

Below the threshold (PRECISION_MIN_AGREEMENT, or `quantize --min-agreement`) the model is refused, the
message naming the numbers. The report travels in the model card (model_files.card) and GET /model shows it.
Imports numpy only.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np

# Float32's top-1 probability must exceed its second's by this much for the image to count in top-1 agreement:
# BF16 moves probabilities of EfficientNet-Lite0 on photos by up to ~0.09 (docs/precision.md), so a lead below
# 0.1 is one that rounding alone may reverse.
LEAD_MARGIN = 0.1
TOP_K = 5
SOURCE_LENGTH = 300  # most characters of a report's description of its images: it rides in every heartbeat


class PrecisionRefused(ValueError):
    """A reduced-precision model agrees with float32 less than the threshold asks; the message names the numbers."""


@dataclass(frozen=True)
class AgreementReport:
    """A reduced-precision model's answers against float32's on the same images."""

    precision: str  # "bf16" or "int8"
    images: int  # compared
    decisive: int  # of them, where float32's top-1 leads by at least `margin`
    top1_agreeing: int  # of the decisive ones, where the candidate's top-1 is float32's
    top1_agreeing_all: int  # of all the images, near ties included (for the record, not judged)
    top5_overlap: float  # mean share of float32's top 5 among the candidate's top 5
    max_difference: float  # largest absolute difference of any probability
    margin: float = LEAD_MARGIN
    images_source: str = ""  # what the images were, e.g. "13 held-out photos in heldout/"
    engine: str = ""  # the BACKEND that computed the candidate's answers

    @property
    def top1_agreement(self) -> float:
        """The judged number: agreement on the decisive images (0 when none is: nothing was verified)."""
        return self.top1_agreeing / self.decisive if self.decisive else 0.0

    def summary(self) -> str:
        return (f"{self.precision}: top-1 equal to float32's on {self.top1_agreeing} of {self.decisive} images where "
                f"float32's top-1 leads by >= {self.margin:g} ({self.top1_agreement:.1%}; "
                f"{self.top1_agreeing_all} of all {self.images}), top-5 overlap {self.top5_overlap:.1%}, "
                f"largest probability difference {self.max_difference:.3f}"
                + (f", with {self.engine}" if self.engine else "")
                + (f", on {self.images_source}" if self.images_source else ""))

    def to_dict(self) -> dict:
        return {**asdict(self), "top1_agreement": round(self.top1_agreement, 4)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, fields: dict) -> "AgreementReport":
        """Inverse of to_dict; ValueError for anything else."""
        try:
            return cls(str(fields["precision"]), int(fields["images"]), int(fields["decisive"]),
                       int(fields["top1_agreeing"]), int(fields["top1_agreeing_all"]), float(fields["top5_overlap"]),
                       float(fields["max_difference"]), float(fields["margin"]), str(fields.get("images_source", "")),
                       str(fields.get("engine", "")))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not an agreement report: {exc!r}") from None


def compare(reference: np.ndarray, candidate: np.ndarray, precision: str, margin: float = LEAD_MARGIN,
            images_source: str = "", engine: str = "") -> AgreementReport:
    """The agreement report of `candidate`'s probabilities against float32's `reference`, one row per image."""
    reference, candidate = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
    if reference.shape != candidate.shape or reference.ndim != 2 or len(reference) == 0:
        raise ValueError(f"probabilities of shapes {reference.shape} and {candidate.shape}: expected the same "
                         "(images, classes), at least one image")
    ordered = np.sort(reference, axis=1)
    decisive = ordered[:, -1] - ordered[:, -2] >= margin
    same_top1 = reference.argmax(axis=1) == candidate.argmax(axis=1)
    k = min(TOP_K, reference.shape[1])
    overlaps = [len(set(_top(r, k)) & set(_top(c, k))) / k for r, c in zip(reference, candidate)]
    return AgreementReport(precision, len(reference), int(decisive.sum()), int((same_top1 & decisive).sum()),
                           int(same_top1.sum()), float(np.mean(overlaps)),
                           float(np.abs(reference - candidate).max()), margin, images_source[:SOURCE_LENGTH],
                           engine)


def require_agreement(report: AgreementReport, threshold: float, setting: str) -> None:
    """PrecisionRefused when the judged top-1 agreement is below `threshold`; `setting` names how to change it."""
    if report.top1_agreement < threshold:
        raise PrecisionRefused(f"{report.summary()}: below {setting}={threshold:g}; calibrate on other images "
                               "(python -m model_tools quantize --method), or serve PRECISION=fp32")


def _top(row: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-row, kind="stable")[:k]
