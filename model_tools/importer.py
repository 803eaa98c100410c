"""`python -m model_tools import`: any model file the worker loads -> one self-describing file that needs no trust.

The result is the state_dict format when the architecture is known by name and
the weights fit it; otherwise ONNX of the serving model (normalization and
softmax inside). Those are the two formats that hold no code (model_files.trust):
a TorchScript or torch.export network becomes ONNX too. Each carries the whole
card, so serving it needs no configuration and no MODEL_TRUSTED. Before it
counts, the written file is read back as the worker would read it (no options,
no trust) and checked against the source: the same top-1 on sample photos,
every probability within TOLERANCE.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from engines import onnxruntime_cpu
from engines.base import Run
from engines.eager import run_module
from engines.verify import ExportMismatch, verify
from model_files import TOLERANCE, export
from model_files.architectures import build_architecture
from model_files.card import ModelCard, ModelLoadError, ModelOptions, first_line, require_servable_name
from model_files.checkpoints import LoadedModel, load_model, save_state_dict
from model_files.files import written_aside
from model_files.onnx_file import read_onnx_card
from serving.preprocess import prepare

log = logging.getLogger("model_tools")

SAMPLE_PHOTOS = ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg")  # scikit-image's, where installed


def import_model(source: Path, options: ModelOptions, out: Path, name: str = "") -> str:
    """Write `out` from `source` and check it; returns the report to print.

    The written card names the model `name`, else as the source's card does (its own name, else the source
    file's). The file is written and checked beside `out`, and replaces it only once it passes: a failed import
    leaves `out` as it was (or absent), never an unchecked file that loads without trust.
    """
    loaded = load_model(source, options)
    if name:
        loaded = dataclasses.replace(loaded, card=dataclasses.replace(loaded.card, name=name))
    require_servable_name(loaded.card)
    onnx_needed = not _fits_architecture(loaded)
    if onnx_needed and out.suffix != ".onnx":  # the worker tells an ONNX file by its name
        raise ModelLoadError(f"{source} is not a named architecture whose weights fit it, so it is imported as "
                             f"ONNX: name the output {out.with_suffix('.onnx')}")
    with written_aside(out) as candidate:
        if onnx_needed:
            _write_onnx(loaded, source, candidate)
            kind, written = "ONNX", _read_onnx(candidate)
        else:
            save_state_dict(loaded.network, loaded.card, candidate)
            kind, written = f"state_dict of {loaded.card.arch}", _read_state_dict(candidate)
        difference, top1 = _compare(loaded, *written, _sample_photos(loaded.card))
    return _report(out, kind, written[0], loaded.card.sources, source, difference, top1)


def _write_onnx(loaded: LoadedModel, source: Path, out: Path) -> None:
    try:
        export.export_onnx(loaded, out)
    except Exception as exc:  # the ONNX exporter raises many types for operators it does not have
        raise ModelLoadError(f"{source} cannot be exported to ONNX, the one format for an architecture not known "
                             f"by name that needs no trust: {first_line(exc)}. Serve it as it is with "
                             "MODEL_TRUSTED=1") from None


def _read_state_dict(out: Path) -> tuple[ModelCard, Run]:
    """The written file as the worker reads it: no options, no trust."""
    written = load_model(out)
    return written.card, run_module(export.serving_module(written))


def _read_onnx(out: Path) -> tuple[ModelCard, Run]:
    return read_onnx_card(out), onnxruntime_cpu.open_file(out, "cpu", 0)


def _fits_architecture(loaded: LoadedModel) -> bool:
    """True when the named architecture, rebuilt, is the same code and takes these weights as they are."""
    if not loaded.card.arch:
        return False
    try:
        rebuilt = build_architecture(loaded.card.arch, len(loaded.card.class_names))
        rebuilt.load_state_dict(loaded.network.state_dict())
    except (ValueError, RuntimeError):
        return False
    return type(rebuilt) is type(loaded.network)


def _sample_photos(card: ModelCard) -> list[tuple[str, np.ndarray]]:
    try:
        import skimage
    except ImportError:
        return []  # the generated images of engines.verify still compare the two
    p = card.preprocessing
    folder = Path(skimage.data_dir)
    return [(name, prepare((folder / name).read_bytes(), p.resize_size, p.input_size, 10**8))
            for name in SAMPLE_PHOTOS if (folder / name).is_file()]


def _compare(source: LoadedModel, card: ModelCard, candidate: Run, photos: list[tuple[str, np.ndarray]]
             ) -> tuple[float, list[tuple[str, str, float]]]:
    """Largest probability difference over photos and generated images; each photo's top-1 by the written file."""
    if card != source.card:
        raise ModelLoadError(f"the written card {card} differs from the source's {source.card}")
    reference = run_module(export.serving_module(source))
    # Batches of 1 and 3: a batch size baked into the written graph shows at 3 as well as at 8, at less
    # than half the cost for a large model run twice in eager mode.
    difference = verify(reference, candidate, source.card.preprocessing.input_size, batch_sizes=(1, 3),
                        tolerance=TOLERANCE)
    top1 = []
    if photos:
        batch = np.stack([pixels for _, pixels in photos])
        expected, got = reference(batch), candidate(batch)
        difference = max(difference, float(np.abs(expected - got).max()))
        if difference > TOLERANCE or (expected.argmax(axis=1) != got.argmax(axis=1)).any():
            raise ExportMismatch(f"the written file's answers on sample photos differ from the source's "
                                 f"(largest probability difference {difference:.3g})")
        top1 = [(name, card.class_names[int(row.argmax())], float(row.max()))
                for (name, _), row in zip(photos, got)]
    return difference, top1


def _report(out: Path, kind: str, card: ModelCard, sources: dict[str, str], source: Path, difference: float,
            top1: list[tuple[str, str, float]]) -> str:
    """What was written, and where each value of its card came from when read from the source."""
    p, names = card.preprocessing, card.class_names
    shown = ", ".join(names) if len(names) <= 6 else f"{', '.join(names[:3])}, ..., {names[-1]}"
    lines = [f"wrote {out}: {kind}, serves without trust",
             f"  model:       {card.name} (architecture: {card.arch or 'not named'})",
             f"  classes:     {len(names)}: {shown}  [{sources['class_names']}]",
             f"  input size:  {p.input_size}  [{sources['input_size']}]",
             f"  resize size: {p.resize_size}  [{sources['resize_size']}]",
             f"  mean:        {','.join(f'{v:g}' for v in p.mean)}  [{sources['mean']}]",
             f"  std:         {','.join(f'{v:g}' for v in p.std)}  [{sources['std']}]",
             f"  checked against {source}: same top-1, largest probability difference {difference:.2g} "
             f"(tolerance {TOLERANCE:g})"]
    lines += [f"  {name}: {label} {probability:.3f}" for name, label, probability in top1]
    return "\n".join(lines)
