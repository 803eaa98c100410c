"""The model card: everything besides weights that serving a classifier needs, and where each value came from.

Each value comes from the first of these that says it:

1. the model file (the card model_tools writes into every file it makes);
2. what the user configured (MODEL_ARCH, LABELS_PATH, INPUT_SIZE, RESIZE_SIZE,
   MEAN, STD; or the same as flags of `python -m model_tools`);
3. the defaults of the architecture's published ImageNet weights, when the
   architecture is named;
4. torchvision's ImageNet convention (resize 256, crop 224, ImageNet mean and
   std; ImageNet's class names for 1000 outputs, else `class_N`), logged as an
   assumption.

A configured value that contradicts the file is an error, not a silent choice
of one of them. `ModelCard.sources` says where each value came from; the worker
publishes it and `GET /model` shows it.

The name follows one rule however the model is loaded: the name the file's own
card gives (`model_tools import --name`, else the name of the file it was
imported from), else the file's name without its suffix; never the
architecture, which many models share. MODEL_NAME overrides it when serving.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from model_files.architectures import Preprocessing, default_preprocessing, imagenet_class_names
from model_files.precision import AgreementReport
from serving.config import PRECISIONS, ConfigError, check_model_id_part

log = logging.getLogger("model_files")

CARD_FORMAT = 1  # version of the JSON card exported models carry
IMAGENET_CONVENTION = Preprocessing(224, 256, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
FROM_FILE = "model file"
ASSUMED = "assumed: torchvision's ImageNet convention"
PREPROCESSING_FIELDS = ("input_size", "resize_size", "mean", "std")


class ModelLoadError(RuntimeError):
    """The model file cannot be served; the message says why and what to do."""


class ExportError(RuntimeError):
    """This model has no export of this kind: the exporter refuses it, or (engines.verify.ExportMismatch) the
    export computes other answers. The model's own property, the same at every try (the engine cache
    remembers it); a failure of the machine's (memory, disk) is raised as what it is.
    """


@dataclass(frozen=True)
class ModelCard:
    """Everything besides weights that serving a classifier needs."""
    name: str
    arch: str
    class_names: tuple[str, ...]
    preprocessing: Preprocessing
    # card field -> where its value came from (FROM_FILE, an option's name, a default); not part of the card's identity
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)
    precision: str = "fp32"  # what the model computes in: a quantized file says int8, a BF16 engine bf16
    agreement: AgreementReport | None = None  # how a reduced precision's answers compare with float32's


# How the worker's configuration spells each option; the command line passes its flags' names instead.
ENVIRONMENT_NAMES = {"arch": "MODEL_ARCH", "labels_path": "LABELS_PATH", "input_size": "INPUT_SIZE",
                     "resize_size": "RESIZE_SIZE", "mean": "MEAN", "std": "STD", "trusted": "MODEL_TRUSTED=1"}


@dataclass(frozen=True)
class ModelOptions:
    """What the user says about a model file, for whatever the file does not say, and how to read it."""
    arch: str = ""
    labels_path: str = ""
    input_size: int = 0  # 0: not given
    resize_size: int = 0
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    trusted: bool = False
    names: Mapping[str, str] = field(default_factory=lambda: ENVIRONMENT_NAMES)  # option -> how the user sets it


def resolve_card(in_file: Mapping, options: ModelOptions, path: Path, count_outputs) -> ModelCard:
    """The card of a model file from its own fields (`in_file`, the card format's keys), options and defaults.

    count_outputs(input_size) gives the model's number of classes; it is asked only once the input size
    is known, and a label count that differs from it is an error naming both numbers.
    """
    sources: dict[str, str] = {}
    arch = _choose("arch", in_file.get("arch") or "", options, sources, path) or ""
    values = {}
    for name in PREPROCESSING_FIELDS:
        values[name] = _choose(name, in_file.get(name), options, sources, path)
        if values[name] is None:
            defaults, sources[name] = _architecture_defaults(arch)
            values[name] = getattr(defaults, name)
    preprocessing = Preprocessing(int(values["input_size"]), int(values["resize_size"]),
                                  tuple(map(float, values["mean"])), tuple(map(float, values["std"])))
    if preprocessing.resize_size < preprocessing.input_size:
        raise ModelLoadError(f"{path}: resize size {preprocessing.resize_size} ({sources['resize_size']}) is below "
                             f"input size {preprocessing.input_size} ({sources['input_size']})")
    num_outputs = count_outputs(preprocessing.input_size)
    class_names = _class_names(in_file.get("class_names"), options, num_outputs, sources, path)
    assumed = sorted(name for name, source in sources.items() if source.startswith("assumed"))
    if assumed:
        log.warning("%s does not say its %s, nor does the configuration: assumed %s", path, ", ".join(assumed),
                    ", ".join(f"{name}={_shown(name, preprocessing, class_names)}" for name in assumed))
    return ModelCard(in_file.get("name") or path.stem, arch, tuple(class_names), preprocessing, sources)


FINGERPRINT_CHUNK_BYTES = 1 << 20


def model_fingerprint(card: ModelCard, model_file: Path | None = None) -> str:
    """A short hash of the model file's bytes (when there is one) and the card without its sources: two workers of
    one name@version must serve the same model (the heartbeat compares it)."""
    digest = hashlib.sha256(json.dumps({k: v for k, v in asdict(card).items() if k != "sources"},
                                       sort_keys=True).encode())
    if model_file is not None:
        with open(model_file, "rb") as file:
            while chunk := file.read(FINGERPRINT_CHUNK_BYTES):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def require_servable_name(card: ModelCard) -> None:
    """ModelLoadError unless the card's name passes MODEL_NAME's rule: model_tools writes no file whose name a
    worker would refuse (it becomes the served name, in Redis keys and URLs, when MODEL_NAME is unset)."""
    try:
        check_model_id_part(card.name, "the model card's name")
    except ConfigError as exc:
        raise ModelLoadError(f"{exc}; when the file's card names no model, the card takes the file's name: "
                             "rename it, or import it with --name") from None


def _architecture_defaults(arch: str) -> tuple[Preprocessing, str]:
    """The preprocessing of the architecture's published weights if it has some, else the ImageNet convention."""
    try:
        return default_preprocessing(arch), f"default of {arch}'s published weights"
    except ValueError:
        return IMAGENET_CONVENTION, ASSUMED


def _choose(name: str, from_file, options: ModelOptions, sources: dict[str, str], path: Path):
    """The file's value, else the option's; None when neither says. Both saying different things is an error."""
    configured = getattr(options, name) or None
    if from_file not in (None, "", []):
        if configured is not None and _differs(from_file, configured):
            raise ModelLoadError(f"{options.names[name]} is {_spell(configured)} but {path} says {_spell(from_file)}; "
                                 f"unset {options.names[name]}, or import the model again with the new value "
                                 "(python -m model_tools import)")
        sources[name] = FROM_FILE
        return from_file
    if configured is not None:
        sources[name] = options.names[name]
    return configured


def _class_names(in_file, options: ModelOptions, num_outputs: int, sources: dict[str, str], path: Path) -> list[str]:
    configured = read_labels(Path(options.labels_path), options.names["labels_path"]) if options.labels_path else None
    if in_file:
        names, source = [str(n) for n in in_file], FROM_FILE
        if configured is not None and configured != names:
            raise ModelLoadError(f"{options.names['labels_path']}={options.labels_path} names other classes than "
                                 f"{path} carries; unset it, or import the model again with these labels")
    elif configured is not None:  # the file's name, not its path: GET /model shows the source to every client
        names, source = configured, f"{options.names['labels_path']} ({Path(options.labels_path).name})"
    elif num_outputs == 1000:
        names, source = imagenet_class_names(), "assumed: ImageNet's classes (the model has 1000 outputs)"
    else:
        names, source = [f"class_{i}" for i in range(num_outputs)], "assumed: no labels given, class_N"
    if len(names) != num_outputs:
        raise ModelLoadError(f"{source} names {len(names)} classes, but the model in {path} has {num_outputs} "
                             "outputs: one name per output, in output order")
    sources["class_names"] = source
    return names


def read_labels(path: Path, option: str = "LABELS_PATH") -> list[str]:
    """Class names from a text file (one per line), a JSON list, or TorchServe's index_to_name.json."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{option}={path}: cannot read it ({exc})") from None
    if path.suffix.lower() == ".json":
        return labels_from_json(text, f"{option}={path}")
    names = text.rstrip("\n").split("\n")
    names = [name.rstrip("\r").strip() for name in names]
    if not names or "" in names:
        raise ModelLoadError(f"{option}={path}: line {names.index('') + 1 if names else 1} is empty; "
                             "write one class name per line, in the model's output order")
    return names


def labels_from_json(text: str, where: str) -> list[str]:
    """Class names from a JSON list or any index_to_name.json TorchServe reads; `where` names it in errors."""
    try:
        labels = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{where} is not valid JSON: {exc}") from None
    if isinstance(labels, dict) and isinstance(labels.get("object_type_names"), list):
        labels = labels["object_type_names"]  # TorchServe's older examples: {"object_type_names": ["tench", ...]}
    elif isinstance(labels, dict):  # TorchServe: {"0": ["n01440764", "tench"], ...} or {"0": "tench", ...}
        try:
            by_index = {int(index): value for index, value in labels.items()}
        except ValueError:
            by_index = {}
        if sorted(by_index) != list(range(len(labels))):
            raise ModelLoadError(f"{where}: the keys of an index_to_name.json must be 0 to N-1")
        # TorchServe's load_label_mapping keeps a list's last element: the name after the WordNet id.
        labels = [by_index[i][-1] if isinstance(by_index[i], list) and by_index[i] else by_index[i]
                  for i in range(len(by_index))]
    if not isinstance(labels, list) or not labels or not all(isinstance(n, str) and n for n in labels):
        raise ModelLoadError(f"{where}: expected a JSON list of class names, or TorchServe's "
                             'index_to_name.json ({"0": ["wnid", "name"], ...})')
    return labels


def _differs(from_file, configured) -> bool:
    if isinstance(configured, tuple):
        return any(abs(float(a) - float(b)) > 1e-6 for a, b in zip(from_file, configured))
    return str(from_file) != str(configured)


def _spell(value) -> str:
    return ",".join(f"{v:g}" for v in value) if isinstance(value, (tuple, list)) else str(value)


def _shown(name: str, preprocessing: Preprocessing, class_names: list[str]) -> str:
    if name == "class_names":
        return f"{class_names[0]}..{class_names[-1]}"
    return _spell(getattr(preprocessing, name))


def first_line(exc: BaseException) -> str:
    """An exception's first non-empty line: torch's messages run to pages."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0].rstrip(":") if lines else type(exc).__name__


def card_fields(card: ModelCard) -> dict:
    """The card as the plain fields model files carry."""
    p = card.preprocessing
    return {"name": card.name, "arch": card.arch, "class_names": list(card.class_names),
            "input_size": p.input_size, "resize_size": p.resize_size, "mean": list(p.mean), "std": list(p.std)}


def card_to_json(card: ModelCard, export: dict | None = None) -> str:
    """The card as the JSON that exported models carry (TorchScript extra file, ONNX metadata).

    Besides the checkpoint's metadata fields it states the exported model's contract, so a
    client in any language knows what to feed it: `input` is uint8 RGB pixels, NHWC, already
    resized (shorter side to `resize_size`, bilinear) and center-cropped to `input_size`;
    `output` is softmax probabilities. mean/std are applied inside the model; they are here
    for the record, not for the client to apply again.
    """
    extra = {"export": export} if export else {}  # how the file was made (`trace --if-missing` compares it)
    if card.agreement is not None:
        extra["agreement"] = card.agreement.to_dict()
    return json.dumps({**card_fields(card), "format": CARD_FORMAT, "input": "uint8 NHWC RGB",
                       "output": "probabilities", "normalized_inside": True, "precision": card.precision, **extra},
                      indent=1)


def card_from_json(text: str | bytes) -> ModelCard:
    """Inverse of card_to_json; raises ModelLoadError for a card that is not one."""
    try:
        fields = json.loads(text)
        preprocessing = Preprocessing(int(fields["input_size"]), int(fields["resize_size"]),
                                      tuple(map(float, fields["mean"])), tuple(map(float, fields["std"])))
        precision = str(fields.get("precision", "fp32"))  # cards from before reduced precision are float32's
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r}, expected one of {', '.join(PRECISIONS)}")
        agreement = AgreementReport.from_dict(fields["agreement"]) if "agreement" in fields else None
        return ModelCard(str(fields["name"]), str(fields["arch"]), tuple(map(str, fields["class_names"])),
                         preprocessing, {name: FROM_FILE for name in ("arch", "class_names", *PREPROCESSING_FIELDS)},
                         precision, agreement)
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"the model card is not valid JSON with the expected fields: {exc!r}") from None
